"""``lvr1 train``: the rest of the line handed to the training module.

The training module owns its flags (its ``--help`` lists every recipe field), so
the CLI names the command and nothing more.
"""

from __future__ import annotations

import argparse

from longvideo_r1.training.command import main as train_main


def add_train_parser(sub) -> None:
    """``lvr1 train`` in the main parser: its flags are parsed by the training module."""
    train = sub.add_parser(
        "train",
        add_help=False,
        help="fine-tune the navigator: lvr1 train sft|grpo CONFIG.yaml (see docs/training.md)",
    )
    train.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def cmd_train(args: argparse.Namespace) -> int:
    """Hand the rest of the line to the training module, which has its own parser."""
    return train_main(args.rest)
