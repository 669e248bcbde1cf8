"""What a policy does on its rollouts, in figures: per training step and on held-out questions.

The same summary (:func:`summarize`) serves both: the mean of each reward
term and of the total, accuracy, grounding F1, rounds and tool calls per
question, and how the runs ended. During training it is collected per
batch of rollouts (:class:`StepStats`) and written, merged with the
trainer's own log (loss, KL, reward std), one JSON line per logged step to
``steps.jsonl`` in the output directory; before and after training it
scores the policy on held-out questions (:func:`evaluate_policy`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from longvideo_r1.files import write_atomic
from longvideo_r1.progress import progress_bar
from longvideo_r1.training.reward import TERMS, tool_calls
from longvideo_r1.training.rollouts import Rollout
from longvideo_r1.tree import format_node_id


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def summarize(rollouts: Sequence[Rollout]) -> dict[str, float]:
    """Means over scored rollouts: each reward term, the total and the navigation figures.

    ``rounds`` and ``tool_calls`` are per question; ``answered`` and
    ``errors`` are shares of the runs; ``generated_tokens`` counts the
    model's tokens (mask 1), ``episode_tokens`` the whole sequence.
    """
    out: dict[str, float] = {"rollouts": float(len(rollouts))}
    for name in (*TERMS, "total"):
        out[name] = _mean([r.rewards.get(name, 0.0) for r in rollouts])
    out["mean_reward"] = out.pop("total")
    traces = [r.trace for r in rollouts]
    out["rounds"] = _mean([len(t.rounds) for t in traces])
    out["tool_calls"] = _mean([len(tool_calls(t)) for t in traces])
    out["answered"] = _mean([t.status == "answered" for t in traces])
    out["errors"] = _mean([t.status == "error" for t in traces])
    out["parse_errors"] = _mean([t.cost.parse_errors for t in traces])
    out["generated_tokens"] = _mean([r.generated_tokens for r in rollouts])
    out["episode_tokens"] = _mean([len(r.prompt_ids) + len(r.completion_ids) for r in rollouts])
    return out


def evaluate_policy(
    play: Callable[[str], Rollout], question_ids: Sequence[str], progress: str | None = None
) -> dict[str, Any]:
    """Play each held-out question once and summarize; ``accuracy`` and ``grounding_f1`` are
    the reward's own terms, so the figures match what training optimised.

    On a CPU the held-out set takes minutes, so ``progress`` (a title) shows a
    bar with the running accuracy.
    """
    started = time.perf_counter()
    rollouts: list[Rollout] = []
    right = 0
    with progress_bar(
        progress is not None,
        title="[bold]{task.description}[/]",
        status="{task.fields[right]} right",
        description=progress or "",
        total=len(question_ids),
        done=0,
        right=0,
    ) as bar:
        for question_id in question_ids:
            rollouts.append(play(question_id))
            right += rollouts[-1].rewards.get("accuracy", 0.0) >= 1.0
            bar.update(advance=1, right=right)
    summary: dict[str, Any] = summarize(rollouts)
    summary["questions"] = len(rollouts)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    summary["per_question"] = [
        {
            "id": r.question.id,
            "status": r.trace.status,
            "answer": r.trace.answer,
            "right": r.question.answer,
            "rounds": len(r.trace.rounds),
            "reward": r.rewards.get("total", 0.0),
            "path": round_path(r),
        }
        for r in rollouts
    ]
    return summary


class StepStats:
    """Rollout summaries since the last log, averaged when the trainer logs a step."""

    def __init__(self) -> None:
        self._pending: list[dict[str, float]] = []
        self._seconds = 0.0

    def add(self, summary: dict[str, float], seconds: float) -> None:
        self._pending.append(summary)
        self._seconds += seconds

    def take(self) -> dict[str, float]:
        """The mean of what was added since the last take (nothing: an empty dict)."""
        if not self._pending:
            return {}
        keys = self._pending[0].keys()
        out = {f"nav/{k}": _mean([p[k] for p in self._pending]) for k in keys}
        out["nav/rollout_seconds"] = round(self._seconds, 3)
        self._pending, self._seconds = [], 0.0
        return out


def round_path(done: Rollout) -> list[str]:
    """What each round did, as ``get_caption (1, 2)``, ``video_qa (1, 2, 3)`` or ``answer``:
    a before/after score says that answers changed, the path says how."""
    return [
        f"{r.kind} {format_node_id(r.node_id)}" if r.node_id is not None else str(r.kind)
        for r in done.trace.rounds
    ]


def rollout_row(step: int, done: Rollout) -> dict[str, Any]:
    """One training rollout as a line of ``rollouts.jsonl``: what the policy wrote each round,
    what video_qa told it, and what each reward term paid; the figures per step hide which
    behaviour a reward went to, this keeps it (caption observations are in the tree)."""
    trace = done.trace
    return {
        "step": step,
        "question": done.question.id,
        "status": trace.status,
        "answer": trace.answer,
        "right": done.question.answer,
        "rewards": {k: round(float(v), 4) for k, v in done.rewards.items()},
        "rounds": [
            {
                "kind": r.kind,
                "output": r.output,
                **({"node": list(r.node_id)} if r.node_id is not None else {}),
                **({"observation": r.observation} if r.kind == "video_qa" else {}),
            }
            for r in trace.rounds
        ],
    }


def append_log(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Add rows to a JSON-lines log, rewriting it atomically so a crash leaves whole rows."""
    if rows:
        _write_log(path, [*read_log(path), *rows])


def read_log(path: Path) -> list[dict[str, Any]]:
    """The rows of a step log; a missing file has none."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _write_log(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def trim_log(path: Path, step: int) -> None:
    """Drop the rows after ``step``: a resumed run redoes those steps and logs them again."""
    rows = read_log(path)
    kept = [r for r in rows if r.get("step", 0) <= step]
    if len(kept) != len(rows) or (step == 0 and rows):
        _write_log(path, kept)


def step_log_callback(path: Path, stats: StepStats) -> Any:
    """A transformers TrainerCallback writing each logged step to ``path`` (JSON lines).

    Each row holds the trainer's log (loss, KL, reward, reward std, each
    term's mean under ``rewards/<term>/mean``, learning rate) and the
    navigation figures of the rollouts since the previous row (``nav/...``).
    The file is rewritten atomically, so a crash leaves whole rows.
    """
    from transformers import TrainerCallback

    class StepLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs or "loss" not in logs:
                return
            row = {"step": state.global_step, "time": round(time.time(), 3)}
            row.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
            row.update(stats.take())
            append_log(path, [row])

    return StepLog()
