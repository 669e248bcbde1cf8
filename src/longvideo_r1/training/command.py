"""``lvr1 train``: the two training stages and the held-out score of a policy.

* ``lvr1 train sft CONFIG.yaml``: stage 1, supervised fine-tuning
  (:mod:`~longvideo_r1.training.sft`);
* ``lvr1 train grpo CONFIG.yaml``: stage 2, multi-turn GRPO
  (:mod:`~longvideo_r1.training.grpo`);
* ``lvr1 train grpo-eval CONFIG.yaml [--model DIR]``: the figures a GRPO run
  reports before and after training (mean reward, accuracy, grounding F1,
  rounds per question), for any checkpoint.

Each subcommand's ``--help`` lists every recipe key; ``-o key=value``
replaces one. Bad input ends in one line and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from longvideo_r1.errors import LVR1Error
from longvideo_r1.files import write_atomic
from longvideo_r1.training.grpo import evaluate_checkpoint, run_grpo
from longvideo_r1.training.recipe import (
    GRPORecipe,
    grpo_recipe_help,
    load_recipe,
    parse_overrides,
)
from longvideo_r1.training.sft import (
    add_override_option,
    add_recipe_parser,
    add_sft_parser,
    run_sft,
)

SCORE_COLUMNS = (
    "mean_reward",
    "accuracy",
    "grounding_f1",
    "rounds",
    "tool_calls",
    "answered",
    "format",
)


def build_parser(prog: str = "lvr1 train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Fine-tune the navigator.")
    sub = parser.add_subparsers(dest="stage", required=True)
    add_sft_parser(sub)
    add_recipe_parser(
        sub,
        "grpo",
        "multi-turn GRPO on the navigator's own rollouts (TRL GRPOTrainer, rollout_func)",
        "Stage-2 reinforcement learning.",
        grpo_recipe_help(),
        "configs/grpo-tiny.yaml",
    )
    score = sub.add_parser(
        "grpo-eval",
        help="score a policy on a GRPO recipe's held-out questions (eval_data)",
        description="Play each held-out question of the recipe's eval_data once and print the "
        "mean reward, accuracy, grounding F1 and rounds per question.",
    )
    score.add_argument("config", help="the GRPO recipe whose eval_data, reward and turns apply")
    score.add_argument(
        "--model",
        metavar="DIR",
        help="the model to score (default: the recipe's output_dir when it holds a model, "
        "else the recipe's starting model)",
    )
    score.add_argument("--out", metavar="FILE", help="also write the scores as JSON")
    add_override_option(score)
    return parser


def format_scores(scores: dict[str, Any]) -> str:
    """One table row per figure, as docs/training.md shows them."""
    lines = [f"{scores.get('questions', 0)} held-out questions ({scores.get('model', '')})"]
    lines += [f"  {name:<13} {float(scores[name]):.3f}" for name in SCORE_COLUMNS]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``lvr1 train``; one-line errors, exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        overrides = parse_overrides(args.override)
        if args.stage == "sft":
            print(run_sft(load_recipe(args.config, overrides)).summary())
        elif args.stage == "grpo":
            print(
                run_grpo(load_recipe(args.config, overrides, GRPORecipe), progress=True).summary()
            )
        else:
            recipe = load_recipe(args.config, overrides, GRPORecipe)
            scores = evaluate_checkpoint(recipe, args.model, progress=True)
            if args.out:
                write_atomic(Path(args.out), json.dumps(scores, indent=2) + "\n")
            print(format_scores(scores))
    except LVR1Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
