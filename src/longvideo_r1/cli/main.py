"""The ``lvr1`` command line.

The CLI is the composition root: it reads settings, opens the video, builds the
tree, picks a captioner and hands them to the modules that do the work. It
renders results; it holds no logic of its own. Any :class:`LVR1Error` becomes
one line on stderr and exit status 2.

Each command module (``video``, ``ask``, ``evaluate``, ``serve``, ``data``, ``train``) holds
its sub-parser and its ``cmd_*`` functions; this module wires them into one parser
and runs every command through the one handler of errors and interrupts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from longvideo_r1 import __version__
from longvideo_r1.cli.ask import add_ask_parser, add_demo_parser, cmd_ask, cmd_demo
from longvideo_r1.cli.common import _common_parser
from longvideo_r1.cli.data import DATA_COMMANDS, add_data_parser, build_data_parser
from longvideo_r1.cli.evaluate import add_eval_parser, add_report_parser, cmd_eval, cmd_report
from longvideo_r1.cli.serve import add_serve_parser, cmd_serve
from longvideo_r1.cli.train import add_train_parser, cmd_train
from longvideo_r1.cli.video import add_caption_parser, add_tree_parser, cmd_caption, cmd_tree
from longvideo_r1.errors import LVR1Error


def build_parser() -> argparse.ArgumentParser:
    common = _common_parser()
    parser = argparse.ArgumentParser(
        prog="lvr1",
        description="Answer questions about long videos by navigating a tree of captions.",
    )
    parser.add_argument("--version", action="version", version=f"lvr1 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    add_tree_parser(sub, common)
    add_caption_parser(sub, common)
    add_ask_parser(sub, common)
    add_demo_parser(sub, common)
    add_eval_parser(sub, common)
    add_report_parser(sub)
    add_serve_parser(sub, common)
    add_data_parser(sub)
    add_train_parser(sub)
    return parser


def cmd_data(args: argparse.Namespace) -> int:
    """Parse the rest of the line with the data parser and run its step."""
    data_args = build_data_parser().parse_args(args.rest)
    return _run_command(f"data {data_args.step}", DATA_COMMANDS[data_args.step], data_args)


COMMANDS = {
    "train": cmd_train,
    "data": cmd_data,
    "tree": cmd_tree,
    "caption": cmd_caption,
    "ask": cmd_ask,
    "demo": cmd_demo,
    "eval": cmd_eval,
    "report": cmd_report,
    "serve": cmd_serve,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        # The training module owns its flags (its --help lists every recipe field).
        return cmd_train(argparse.Namespace(rest=argv[1:]))
    if argv[:1] == ["data"]:
        # Built on demand: its flags come from the generators' config dataclasses.
        return cmd_data(argparse.Namespace(rest=argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    return _run_command(args.command, COMMANDS[args.command], args)


def _run_command(name: str, command: Callable[[argparse.Namespace], int], args) -> int:
    """Run one command: an LVR1Error becomes one line and its exit status, Ctrl-C 130."""
    try:
        return command(args)
    except LVR1Error as exc:
        print(f"lvr1 {name}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"lvr1 {name}: interrupted; finished work is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
