"""Write half of the long test bench, every category kept: the question file of the table in
docs/benchmarks.md ("The long test bench: does the agent navigate?").

The whole bench (36 questions) costs about an hour per agent configuration on two CPU cores,
because the 0.5B navigator's first prompt is 6.5k tokens and starts with the question, so no
prefix is shared between questions. Half of it, the same half for every configuration, keeps
each category: every other question of a category, and for the visual needles two colour and
two number questions.

    python benchmarks/longbench_half.py runs/long/testbench-long-half.json
    python benchmarks/longbench_half.py runs/long/testbench-long-five.json --per-category 1

``--per-category N`` keeps only the first N of each category of that half: the subset the
slower rows of the table (the 1.5B navigator, single levers) ran on.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from importlib import resources
from pathlib import Path

VISUAL_NEEDLES = (0, 3, 4, 7)
"""Positions kept among the eight visual needles, which alternate colour and number."""


def half(questions: list[dict]) -> list[dict]:
    """Every other question of each category (the visual needles by VISUAL_NEEDLES)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for q in questions:
        groups[q["sub_category"]].append(q)
    kept = []
    for category, group in groups.items():
        positions = VISUAL_NEEDLES if category == "visual-needle" else range(0, len(group), 2)
        kept += [group[i] for i in positions if i < len(group)]
    return sorted(kept, key=lambda q: q["qid"])


def first_of_each(questions: list[dict], n: int) -> list[dict]:
    """The first ``n`` questions of each category, in question order."""
    seen: dict[str, int] = defaultdict(int)
    kept = []
    for q in questions:
        if seen[q["sub_category"]] < n:
            seen[q["sub_category"]] += 1
            kept.append(q)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="question file to write (CG-Bench JSON)")
    parser.add_argument(
        "--per-category", type=int, metavar="N", help="keep the first N of each category"
    )
    args = parser.parse_args()
    if args.per_category is not None and args.per_category < 1:
        parser.error(f"--per-category must be at least 1, got {args.per_category}")
    asset = resources.files("longvideo_r1.testing") / "assets" / "testbench-long.json"
    kept = half(json.loads(asset.read_text()))
    if args.per_category is not None:
        kept = first_of_each(kept, args.per_category)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(kept, indent=1))
    print(f"{len(kept)} questions: {', '.join(q['qid'] for q in kept)} -> {args.out}")


if __name__ == "__main__":
    main()
