#!/usr/bin/env python3
"""Build the project's real test videos (and optionally a long loop and bad inputs).

Thin wrapper over :mod:`longvideo_r1.testing.testvideo`,
:mod:`longvideo_r1.testing.longvideo` and :mod:`longvideo_r1.testing.badinputs`;
see there for what is built.

    python scripts/make_test_video.py                  # data/testvideo/testvideo.{mp4,srt,json}
    python scripts/make_test_video.py --long 7200      # + a 2-hour loop, by stream copy
    python scripts/make_test_video.py --testbench-long # + data/testvideo-long/ (30 min, ~3 min)
    python scripts/make_test_video.py --bad data/bad   # + bad-input fixtures

Needs espeak-ng (apt-get install espeak-ng) and apt access to download opencv-doc
once; the data directory is $LVR1_DATA or <repo>/data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from longvideo_r1.errors import LVR1Error
    from longvideo_r1.testing import badinputs, longvideo, testvideo
except ImportError:  # running from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from longvideo_r1.errors import LVR1Error
    from longvideo_r1.testing import badinputs, longvideo, testvideo


def main(argv: list[str] | None = None) -> int:
    """Parse options, build, print the paths; one-line errors and exit 2 on failure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default: $LVR1_DATA/testvideo or <repo>/data/testvideo)",
    )
    parser.add_argument(
        "--long",
        type=float,
        metavar="SECONDS",
        default=None,
        help="also loop the test video to this many seconds (stream copy)",
    )
    parser.add_argument(
        "--testbench-long",
        action="store_true",
        help="also build the long test video of `lvr1 eval testbench-long` "
        "(30 min; into $LVR1_DATA/testvideo-long, not --out)",
    )
    parser.add_argument(
        "--bad",
        type=Path,
        metavar="DIR",
        default=None,
        help="also write the bad-input fixtures into DIR",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--quiet", action="store_true", help="print only the resulting paths")
    args = parser.parse_args(argv)
    log = None if args.quiet else (lambda message: print(message, file=sys.stderr))
    try:
        video = testvideo.build_test_video(args.out, force=args.force, log=log)
        print(video)
        if args.long is not None:
            print(testvideo.build_long_video(None, args.long, args.out, log=log))
        if args.testbench_long:
            print(longvideo.build_long_testvideo(force=args.force, log=log))
        if args.bad is not None:
            for name, path in badinputs.build_bad_inputs(args.bad, log=log).items():
                print(f"{name}\t{path}")
    except LVR1Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
