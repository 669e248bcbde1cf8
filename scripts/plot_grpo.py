"""Draw a GRPO run's per-step reward curve and print its before/after table.

Reads what ``lvr1 train grpo`` wrote in its output directory: ``steps.jsonl``
(one row per logged step) for the curve, ``eval-before.json`` and
``eval-after.json`` for the table. The curve is the mean total reward of
each step's rollouts with its group spread (TRL's ``reward_std``) as a band,
and each reward term's mean (its own value, before the recipe's weight) as
dashed lines, so a rising total can be told apart from, say, a format bonus
alone; a second panel shows the share of
rollouts that ended with an answer and the mean rounds per rollout.

    python scripts/plot_grpo.py runs/grpo-nano --out docs/img/grpo-nano.png

The table (Markdown, on stdout) holds mean reward, accuracy, grounding F1,
rounds per question and the share answered, before and after training; a
second table, from ``rollouts.jsonl``, what each step's rollouts did (right
answers, video_qa asked and right after it, clue reads, rounds).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

TERMS = ("accuracy", "grounding_f1", "repeat", "video_qa", "format")
COLORS = dict(
    zip(TERMS, ("tab:purple", "tab:orange", "tab:brown", "tab:olive", "tab:green"), strict=True)
)
TABLE = (
    ("mean reward", "mean_reward", "{:.3f}"),
    ("accuracy", "accuracy", "{:.0%}"),
    ("grounding F1", "grounding_f1", "{:.3f}"),
    ("rounds per question", "rounds", "{:.2f}"),
    ("answered", "answered", "{:.0%}"),
)


def read_steps(path: Path) -> list[dict[str, Any]]:
    """The logged steps, in step order; a step logged twice (a resumed run) keeps its last row."""
    rows: dict[int, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            rows[int(row["step"])] = row
    return [rows[s] for s in sorted(rows)]


def series(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per-step curves: ``step``, ``reward``, ``reward_std``, each term, ``answered``, ``rounds``.

    The total comes from TRL's ``reward`` (falling back to our ``nav/mean_reward``);
    a term TRL did not log is read from ``nav/<term>``. Terms that are 0 at
    every step (weights switched off) are left out, so the legend names only
    what paid.
    """
    out: dict[str, list[float]] = {
        "step": [float(r["step"]) for r in rows],
        "reward": [float(r.get("reward", r.get("nav/mean_reward", 0.0))) for r in rows],
        "reward_std": [float(r.get("reward_std", 0.0)) for r in rows],
        "answered": [float(r.get("nav/answered", 0.0)) for r in rows],
        "rounds": [float(r.get("nav/rounds", 0.0)) for r in rows],
    }
    for term in TERMS:
        values = [float(r.get(f"rewards/{term}/mean", r.get(f"nav/{term}", 0.0))) for r in rows]
        if any(values):
            out[term] = values
    return out


def moving_mean(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to ``window`` steps: a short noisy run's trend, never its future."""
    out = []
    for i in range(len(values)):
        part = values[max(0, i - window + 1) : i + 1]
        out.append(sum(part) / len(part))
    return out


def table(before: dict[str, Any], after: dict[str, Any]) -> str:
    """The before/after Markdown table of two ``grpo-eval`` summaries."""
    lines = [
        f"| held-out ({before.get('questions', '?')} questions) | before | after |",
        "|---|---|---|",
    ]
    for label, key, form in TABLE:
        lines.append(f"| {label} | {form.format(before[key])} | {form.format(after[key])} |")
    return "\n".join(lines)


def behaviour(rollouts: list[dict[str, Any]]) -> str:
    """Per step, what the rollouts of ``rollouts.jsonl`` did: right answers, how many asked
    video_qa and how many of those were right, how many read a clue, and the mean rounds.

    A rising reward alone does not say whether the policy learned to read or
    to guess; this does.
    """
    steps: dict[int, list[dict[str, Any]]] = {}
    for row in rollouts:
        steps.setdefault(int(row["step"]), []).append(row)
    lines = [
        "| step | right | asked video_qa | right after asking | read a clue | rounds |",
        "|---|---|---|---|---|---|",
    ]
    for step in sorted(steps):
        rows = steps[step]
        right = [r.get("answer") == r.get("right") for r in rows]
        asked = [any(x.get("kind") == "video_qa" for x in r["rounds"]) for r in rows]
        after = sum(a and ok for a, ok in zip(asked, right, strict=True))
        clue = sum(r["rewards"].get("grounding_f1", 0.0) > 0 for r in rows)
        rounds = sum(len(r["rounds"]) for r in rows) / len(rows)
        n = len(rows)
        lines.append(
            f"| {step} | {sum(right)}/{n} | {sum(asked)}/{n} | {after}/{sum(asked)} "
            f"| {clue}/{n} | {rounds:.2f} |"
        )
    return "\n".join(lines)


def plot(curves: dict[str, list[float]], out: Path, title: str, window: int) -> None:
    """Write the two-panel figure (reward and terms; answered and rounds) to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    steps = curves["step"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True, height_ratios=(2, 1))
    low = [m - s for m, s in zip(curves["reward"], curves["reward_std"], strict=True)]
    high = [m + s for m, s in zip(curves["reward"], curves["reward_std"], strict=True)]
    top.fill_between(steps, low, high, color="tab:blue", alpha=0.15, label="± reward std")
    top.plot(steps, curves["reward"], "o-", color="tab:blue", ms=3, lw=1, label="mean reward")
    if len(steps) > window:
        trend = moving_mean(curves["reward"], window)
        top.plot(steps, trend, color="black", lw=2, label=f"{window}-step trailing mean")
    for term in TERMS:
        if term in curves:  # the term's own value, before its weight (the log has no weights)
            top.plot(
                steps,
                curves[term],
                lw=1,
                alpha=0.8,
                ls="--",
                color=COLORS[term],
                label=f"{term} (unweighted)",
            )
    top.set_ylabel("reward")
    top.set_title(title)
    top.legend(fontsize=7, ncol=2)
    top.grid(alpha=0.3)
    bottom.plot(steps, curves["answered"], "s-", ms=3, color="tab:green", label="answered")
    bottom.set_ylabel("answered", color="tab:green")
    bottom.set_ylim(-0.05, 1.05)
    twin = bottom.twinx()
    twin.plot(steps, curves["rounds"], "^-", ms=3, color="tab:red", label="rounds")
    twin.set_ylabel("rounds", color="tab:red")
    bottom.set_xlabel("optimiser step")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a `lvr1 train grpo` output directory")
    parser.add_argument("--out", type=Path, help="PNG to write (default: RUN/reward.png)")
    parser.add_argument("--title", help="figure title (default: the run's folder name)")
    parser.add_argument("--window", type=int, default=4, help="trailing-mean window, in steps")
    args = parser.parse_args(argv)
    log = args.run / "steps.jsonl"
    if not log.is_file():
        print(f"error: {log} does not exist (is {args.run} a grpo output?)", file=sys.stderr)
        return 2
    rows = read_steps(log)
    if not rows:
        print(f"error: {log} holds no step", file=sys.stderr)
        return 2
    out = args.out or args.run / "reward.png"
    plot(series(rows), out, args.title or f"GRPO {args.run.name}", max(1, args.window))
    print(f"{len(rows)} steps -> {out}")
    before, after = args.run / "eval-before.json", args.run / "eval-after.json"
    if before.is_file() and after.is_file():
        print(table(json.loads(before.read_text()), json.loads(after.read_text())))
    played = args.run / "rollouts.jsonl"
    if played.is_file():
        lines = played.read_text(encoding="utf-8").splitlines()
        print(behaviour([json.loads(line) for line in lines if line.strip()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
