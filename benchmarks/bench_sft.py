"""SFT speed on this machine: full fine-tune against LoRA, same recipe, side by side.

Each fine-tune runs in its own process (so peak memory is its own) for a few
optimiser steps of a recipe (by default ``configs/sft-nano.yaml``: SmolLM2-135M
on 2,600-token oracle conversations), with checkpoints and GGUF output off.
Printed per fine-tune: steps, the trainer's own runtime (model loading and
saving excluded), seconds per step, steps per second, the loss of the first
and last step, and peak resident memory.

    python benchmarks/bench_sft.py --recipe configs/sft-nano.yaml --steps 4
    python benchmarks/bench_sft.py --recipe configs/sft-tiny.yaml --steps 12 --json out.json

The first step includes warm-up (allocations, the first backward), so a
handful of steps is the least that says anything. Each process makes its
own data and (for a GGUF base) its own dequantized copy in a temporary
folder; that time is in ``total_s``, not in the trainer's runtime.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from longvideo_r1.training.recipe import load_recipe
from longvideo_r1.training.sft import run_sft

FINETUNES = ("full", "lora")


def one(recipe_path: str, finetune: str, steps: int, out_dir: str) -> dict:
    """Train ``steps`` steps with one fine-tune and return its figures."""
    recipe = load_recipe(
        recipe_path,
        {
            "finetune": finetune,
            "max_steps": steps,
            "output_dir": out_dir,
            "save_steps": 10**6,
            "resume": "never",
            "gguf": "none",
            "logging_steps": 1,
        },
    )
    result = run_sft(recipe)
    losses = [row["loss"] for row in result.log_history if "loss" in row]
    runtime = next(
        (row["train_runtime"] for row in result.log_history if "train_runtime" in row),
        result.seconds,
    )
    return {
        "finetune": finetune,
        "model": recipe.model,
        "steps": result.steps,
        "train_s": round(runtime, 1),
        "s_per_step": round(runtime / max(1, result.steps), 2),
        "steps_per_s": round(result.steps / runtime, 4) if runtime else 0.0,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "total_s": round(result.seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="configs/sft-nano.yaml", help="SFT recipe (YAML)")
    parser.add_argument("--steps", type=int, default=4, help="optimiser steps per fine-tune")
    parser.add_argument(
        "--finetunes", nargs="+", default=list(FINETUNES), choices=FINETUNES, help="which to run"
    )
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--one", choices=FINETUNES, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.one:  # the child: one fine-tune, its row as JSON on the last line
        print(json.dumps(one(args.recipe, args.one, args.steps, args.out)))
        return 0

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-sft-") as tmp:
        for finetune in args.finetunes:
            command = [sys.executable, __file__, "--recipe", args.recipe, "--steps"]
            command += [str(args.steps), "--one", finetune, "--out", str(Path(tmp) / finetune)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{finetune}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                return 1
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{finetune}: done in {rows[-1]['total_s']} s", file=sys.stderr)

    print("| fine-tune | steps | train s | s / step | steps / s | loss first -> last | peak MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        loss = f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}" if r["loss_first"] else "-"
        print(
            f"| {r['finetune']} | {r['steps']} | {r['train_s']} | {r['s_per_step']} | "
            f"{r['steps_per_s']} | {loss} | {r['peak_rss_mb']} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
