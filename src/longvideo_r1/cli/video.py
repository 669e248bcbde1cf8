"""``lvr1 tree`` and ``lvr1 caption``: one video's caption tree, shown or filled.

Both work on a video's tree and its cached captions with the captioner alone, no
reasoning model: the same captioner and tree flags pick which captions they mean.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from longvideo_r1.agent.session import tree_payload
from longvideo_r1.captions.reference import (
    DEFAULT_IMPORT_IDENTITY,
    IMPORTED_PREFIX,
    export_reference_file,
    import_reference_file,
)
from longvideo_r1.cli.common import (
    _captioner_option,
    _endpoint_options,
    _session,
    _settings,
    _tree_options,
)
from longvideo_r1.cli.render import _print_report, print_tree
from longvideo_r1.errors import ConfigError
from longvideo_r1.tree import LEVELS

LEVEL_DEPTHS = {name: depth for depth, name in enumerate(LEVELS, start=1)}


def add_tree_parser(sub, common: argparse.ArgumentParser) -> None:
    """``lvr1 tree``: a video's tree and whatever captions are cached, nothing made."""
    tree = sub.add_parser(
        "tree",
        parents=[common],
        help="show a video's caption tree: duration, width, every node's span",
        description="Print the duration, tree width and every node's time span, with the "
        "caption where one is cached for the chosen captioner. Makes no captions.",
    )
    tree.add_argument("video", metavar="VIDEO", help="video file")
    tree.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    _captioner_option(tree)
    _tree_options(tree)
    _endpoint_options(tree, "caption", "caption (names whose captions to show)")


def add_caption_parser(sub, common: argparse.ArgumentParser) -> None:
    """``lvr1 caption``: every missing caption of the chosen levels, cached."""
    caption = sub.add_parser(
        "caption",
        parents=[common],
        help="caption every node of a video's tree (eager, resumable)",
        description="Make every missing caption of the chosen levels, N at a time, and cache "
        "them. Cached captions are skipped; nodes that failed are retried. Interrupt any "
        "time: finished captions are kept.",
    )
    caption.add_argument("video", metavar="VIDEO", help="video file")
    _captioner_option(caption)
    caption.add_argument(
        "--levels",
        default="high,medium,low",
        help="comma-separated levels to caption (default: high,medium,low)",
    )
    caption.add_argument(
        "--workers",
        type=int,
        default=2,
        metavar="N",
        help="concurrent caption requests (default 2)",
    )
    caption.add_argument(
        "--force",
        action="store_true",
        help="remake captions already cached; the old ones are served until every new one is "
        "made, and an interrupted --force run goes on from where it stopped when run again",
    )
    caption.add_argument(
        "--no-retry", action="store_true", help="skip nodes that failed before instead of retrying"
    )
    caption.add_argument(
        "--subtitles", metavar="PATH", help="SRT/VTT file (default: same stem beside the video)"
    )
    caption.add_argument(
        "--import-reference",
        metavar="PATH",
        help="import captions in the reference JSON format before anything else, stored as "
        "'imported:reference' (or --captioner imported:NAME), never as a model's captions; "
        "a file written for another video (its video_name, or frame times that do not fit "
        "this video's duration) is refused",
    )
    caption.add_argument(
        "--force-match",
        action="store_true",
        help="with --import-reference: import a file whose video_name or duration does not "
        "match this video (the report says what did not match)",
    )
    caption.add_argument(
        "--replace",
        action="store_true",
        help="with --import-reference: overwrite captions an earlier import stored under the "
        "same imported:NAME that differ from the file's (without it, such an import is "
        "refused and nothing is written)",
    )
    caption.add_argument(
        "--export-reference", metavar="PATH", help="write the captions in the reference JSON format"
    )
    caption.add_argument("--quiet", action="store_true", help="no progress bar")
    _tree_options(caption)
    _endpoint_options(caption, "caption", "caption")


def _parse_levels(text: str) -> tuple[int, ...]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in LEVEL_DEPTHS]
    if unknown or not names:
        raise ConfigError(
            f"--levels takes a comma-separated subset of high,medium,low; got {text!r}"
        )
    return tuple(sorted({LEVEL_DEPTHS[n] for n in names}))


def _check_import_flags(args: argparse.Namespace) -> None:
    """Refuse import flags that would do nothing, or store imported text as a model's.

    ``--captioner embedded|vlm`` with ``--import-reference`` is refused rather than
    ignored: it used to store the file under that model's identity, so whoever
    types it expects later runs with that captioner to read the import; ignored,
    those runs would quietly make captions of their own. One line says what to
    type instead.
    """
    if not args.import_reference:
        for flag, given in (("--replace", args.replace), ("--force-match", args.force_match)):
            if given:
                raise ConfigError(f"{flag} applies only with --import-reference")
        return
    if args.captioner and not args.captioner.startswith(IMPORTED_PREFIX):
        raise ConfigError(
            f"--import-reference stores captions as imported:NAME, not as --captioner "
            f"{args.captioner}: use --captioner imported:NAME or leave --captioner out"
        )


def cmd_tree(args: argparse.Namespace) -> int:
    settings = _settings(args)
    with _session(args, settings) as session:
        payload = tree_payload(session.video, session.tree, session.cached_captions())
        payload["captioner"] = session.captioner.identity
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        print_tree(payload)
    return 0


def cmd_caption(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    depths = _parse_levels(args.levels)
    _check_import_flags(args)
    if args.import_reference and not args.captioner:
        args.captioner = DEFAULT_IMPORT_IDENTITY
    settings = _settings(args)
    if args.force and settings.captioner.startswith(IMPORTED_PREFIX):
        raise ConfigError(
            f"--force would delete the captions imported as {settings.captioner}, which no "
            "captioner can remake; to change them, import again with --import-reference FILE "
            "--replace"
        )
    with _session(args, settings) as session:
        if args.import_reference:
            summary = import_reference_file(
                Path(args.import_reference),
                session.video,
                session.tree,
                session.store,
                identity=session.captioner.identity,
                force_match=args.force_match,
                replace=args.replace,
            )
            console.print(str(summary), highlight=False)
        report = session.service.build(
            depths=depths,
            workers=args.workers,
            progress=not args.quiet,
            retry_failed=not args.no_retry,
            force=args.force,
        )
        _print_report(report, console)
        if args.export_reference:
            export_reference_file(
                Path(args.export_reference),
                session.video,
                session.tree,
                session.store,
                session.captioner.identity,
            )
            console.print(f"wrote {args.export_reference}")
    return 0 if report.ok else 1
