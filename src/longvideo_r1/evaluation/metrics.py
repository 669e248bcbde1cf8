"""Metrics: accuracy and cost of one method's run, from its records alone.

They read nothing but the records (and the manifest beside them), so the
progress bar of a run, its summary line and ``lvr1 report`` over finished
folders compute the same figures in the same way.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from longvideo_r1.agent.trace import Cost, Trace, captions_read
from longvideo_r1.errors import ConfigError
from longvideo_r1.evaluation.prices import GpuPrices
from longvideo_r1.evaluation.records import (
    EvalOutcome,
    ItemRecord,
    RunFolder,
    RunManifest,
    Unreadable,
    add_costs,
)
from longvideo_r1.tree import LEVELS, NodeId


class Distribution(BaseModel):
    """Mean, median and 90th percentile (nearest rank) of one cost over questions."""

    n: int = 0
    mean: float = 0.0
    median: float = 0.0
    p90: float = 0.0
    total: float = 0.0

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution:
        if not values:
            return cls()
        ordered = sorted(values)
        rank = max(1, math.ceil(0.9 * len(ordered)))
        return cls(
            n=len(ordered),
            mean=statistics.fmean(ordered),
            median=float(statistics.median(ordered)),
            p90=float(ordered[rank - 1]),
            total=float(sum(ordered)),
        )


class CategoryScore(BaseModel):
    n: int
    correct: int
    accuracy: float | None


class GroundingSummary(BaseModel):
    """Grounding over a group of questions (see :mod:`~longvideo_r1.evaluation.grounding`).

    ``n`` counts the questions with clue figures (clues, and a method that
    reads the tree); ``navigated`` those with a visit count, over which
    ``levels`` tells how deep the runs went (``none``: nothing read). A
    group without any is shown ``-``, never 0.
    """

    n: int = 0
    hits: int = 0
    f1: float | None = None
    precision: float | None = None
    recall: float | None = None
    navigated: int = 0
    levels: dict[str, int] = Field(default_factory=dict)

    @classmethod
    def of(cls, records: Sequence[ItemRecord]) -> GroundingSummary:
        clued = [r for r in records if r.clue_hit is not None]
        navigated = [r for r in records if r.visited_nodes is not None]
        levels = {name: 0 for name in (*reversed(LEVELS[1:]), "none")}
        for r in navigated:
            key = r.deepest_level if r.deepest_level in levels else "none"
            levels[key] += 1
        return cls(
            n=len(clued),
            hits=sum(1 for r in clued if r.clue_hit),
            f1=_mean([r.grounding_f1 for r in clued]),
            precision=_mean([r.grounding_precision for r in clued]),
            recall=_mean([r.grounding_recall for r in clued]),
            navigated=len(navigated),
            levels=levels if navigated else {},
        )


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


class PriorSpend(BaseModel):
    """What earlier attempts spent beyond the final records (interrupted or replaced ones)."""

    attempts: int = 0
    questions: int = 0
    cost: Cost = Field(default_factory=Cost)
    seconds: float = 0.0
    gpu_seconds: float = 0.0


COSTS: dict[str, Callable[[ItemRecord], float]] = {
    "rounds": lambda r: r.cost.rounds,
    "reasoning_calls": lambda r: r.cost.reasoning_calls,
    "caption_calls": lambda r: r.cost.caption_calls,
    "captions_made": lambda r: r.cost.captions_made,
    "captions_cached": lambda r: r.cost.captions_cached,
    "video_qa_calls": lambda r: r.cost.video_qa_calls,
    "video_qa_from_captions": lambda r: r.cost.video_qa_from_captions,
    "frames_decoded": lambda r: r.cost.frames_decoded,
    "tokens": lambda r: r.tokens,
    "reasoning_tokens": lambda r: r.cost.reasoning_tokens,
    "model_seconds": lambda r: r.cost.model_seconds,
    "seconds": lambda r: r.seconds,
}
"""Per-question costs the metrics summarise; ``seconds`` is end to end in the harness.
:func:`compute_metrics` adds ``gpu_seconds`` (the calls priced by a
:class:`~longvideo_r1.evaluation.prices.GpuPrices`) and ``seconds_spent`` and
``gpu_seconds_spent``, which add what earlier attempts at the question spent."""


class Metrics(BaseModel):
    """Accuracy and cost of one method's run.

    ``accuracy`` = correct / scored: every scored question counts, failures
    included (as wrong). ``failures`` counts the questions without an
    answer, by kind. Costs are over the questions a method ran for (a
    missing video costs nothing and would flatter the means). A run with
    fewer results than ``questions`` is *partial*: its questions without a
    result are not in any figure, so its accuracy is not the benchmark's.
    """

    method: str = ""
    variant: str = ""
    run: str = ""
    n: int
    questions: int | None = Field(
        default=None,
        description="Questions of the run's question file (the manifest's count); None: unknown.",
    )
    scored: int
    correct: int
    accuracy: float | None
    failures: int
    failure_kinds: dict[str, int]
    answered: int
    answered_accuracy: float | None = Field(
        description="Accuracy over answered questions only; for diagnosis, never the headline."
    )
    categories: dict[str, CategoryScore]
    cost: dict[str, Distribution]
    grounding: GroundingSummary = Field(default_factory=GroundingSummary)
    category_grounding: dict[str, GroundingSummary] = Field(default_factory=dict)
    prior: PriorSpend = Field(default_factory=PriorSpend)
    gpu_seconds_empty_store: float | None = Field(
        default=None,
        description="Mean GPU-equivalent seconds per question had the run started from an "
        "empty caption store: each distinct caption read on a video priced as made once, "
        "shared by that video's questions. None when no trace could be read.",
    )

    @property
    def partial(self) -> bool:
        """Some questions of the file have no result (--limit, stopped, killed, unreadable)."""
        return self.questions is not None and self.n < self.questions

    @property
    def coverage(self) -> str:
        """``n of questions``, or ``n`` when the question count is unknown."""
        return str(self.n) if self.questions is None else f"{self.n} of {self.questions}"


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def compute_metrics(
    records: Iterable[ItemRecord],
    method: str = "",
    variant: str = "",
    run: str = "",
    questions: int | None = None,
    prices: GpuPrices | None = None,
    reads: Mapping[str, set[NodeId]] | None = None,
) -> Metrics:
    """The metrics of ``records``; ``questions``, the question file's count, marks a partial run;
    ``prices`` turn calls into GPU-equivalent seconds (default: the paper's); ``reads``, the
    captions each question's trace read, price the run from an empty store."""
    prices = prices or GpuPrices()
    items = list(records)
    scored = [r for r in items if r.scored]
    correct = sum(1 for r in scored if r.correct)
    failed = [r for r in items if r.status != "answered"]
    kinds: dict[str, int] = {}
    for r in failed:
        kinds[r.failure or r.status] = kinds.get(r.failure or r.status, 0) + 1
    answered = [r for r in scored if r.status == "answered"]
    categories: dict[str, CategoryScore] = {}
    for name in sorted({r.category or "(none)" for r in scored}):
        group = [r for r in scored if (r.category or "(none)") == name]
        right = sum(1 for r in group if r.correct)
        categories[name] = CategoryScore(n=len(group), correct=right, accuracy=right / len(group))
    ran = [r for r in items if r.ran]
    cost = {name: Distribution.of([get(r) for r in ran]) for name, get in COSTS.items()}
    cost["gpu_seconds"] = Distribution.of([prices.seconds(r.cost) for r in ran])
    cost["seconds_spent"] = Distribution.of([r.seconds + r.prior_seconds for r in ran])
    cost["gpu_seconds_spent"] = Distribution.of([_gpu_spent(r, prices) for r in ran])
    return Metrics(
        method=method or (items[0].method if items else ""),
        variant=variant or (items[0].variant if items else ""),
        run=run,
        n=len(items),
        questions=questions,
        scored=len(scored),
        correct=correct,
        accuracy=_ratio(correct, len(scored)),
        failures=len(failed),
        failure_kinds=dict(sorted(kinds.items())),
        answered=sum(1 for r in items if r.status == "answered"),
        answered_accuracy=_ratio(sum(1 for r in answered if r.correct), len(answered)),
        categories=categories,
        cost=cost,
        grounding=GroundingSummary.of(ran),
        category_grounding={
            name: GroundingSummary.of([r for r in ran if (r.category or "(none)") == name])
            for name in sorted({r.category or "(none)" for r in ran})
        },
        prior=_prior(items, prices),
        gpu_seconds_empty_store=empty_store_gpu_seconds(ran, reads or {}, prices),
    )


def empty_store_gpu_seconds(
    records: Sequence[ItemRecord], reads: Mapping[str, set[NodeId]], prices: GpuPrices
) -> float | None:
    """Mean GPU-equivalent seconds per question from an empty store.

    A store filled before the run makes every caption free in the run's own
    figures, which flatters a method that reads many of them (caption-all
    reads every leaf). Here each distinct caption read on a video costs one
    caption made, shared by that video's questions; reasoning and vision
    calls count as they ran. Questions whose trace could not be read are left
    out; None when none could.
    """
    ran = [r for r in records if r.question_id in reads]
    if not ran:
        return None
    per_video: dict[str, set[NodeId]] = {}
    calls = 0.0
    for r in ran:
        per_video.setdefault(r.video_id, set()).update(reads[r.question_id])
        calls += r.cost.reasoning_calls * prices.reasoning + r.cost.video_qa_calls * prices.video_qa
    made = sum(len(nodes) for nodes in per_video.values())
    return (calls + made * prices.caption) / len(ran)


def _gpu_spent(record: ItemRecord, prices: GpuPrices) -> float:
    """The question's GPU-equivalent seconds, its earlier attempts included."""
    prior = prices.seconds(record.prior_cost) if record.prior_cost is not None else 0.0
    return prices.seconds(record.cost) + prior


def _prior(records: Sequence[ItemRecord], prices: GpuPrices) -> PriorSpend:
    """Earlier attempts of every question, summed: spent, though no final record shows it."""
    with_prior = [r for r in records if r.prior_attempts and r.prior_cost is not None]
    if not with_prior:
        return PriorSpend()
    total = add_costs(r.prior_cost for r in with_prior if r.prior_cost is not None)
    return PriorSpend(
        attempts=sum(r.prior_attempts for r in with_prior),
        questions=len(with_prior),
        cost=total,
        seconds=sum(r.prior_seconds for r in with_prior),
        gpu_seconds=prices.seconds(total),
    )


@dataclass(frozen=True)
class RunData:
    """What a method folder holds: its manifest, its readable records and the unreadable files,
    and the captions each question's trace read (questions whose trace is unreadable are
    absent)."""

    manifest: RunManifest
    records: list[ItemRecord]
    unreadable: list[Unreadable]
    reads: dict[str, set[NodeId]] = field(default_factory=dict)


def load_run(folder: Path) -> RunData:
    """A method folder's manifest and records, for reports; unreadable files named, not skipped
    in silence."""
    run = RunFolder(folder)
    manifest = run.read_manifest()
    if manifest is None:
        raise ConfigError(f"{folder} has no run.json: not an lvr1 eval method folder")
    records, unreadable = run.scan()
    reads = {}
    for record in records.values():
        if record.trace is None:
            continue
        try:
            trace = Trace.model_validate_json((folder / record.trace).read_bytes())
        except (OSError, ValidationError):
            continue  # the record's figures still count; only the empty-store price lacks it
        reads[record.question_id] = captions_read(trace)
    return RunData(manifest, list(records.values()), unreadable, reads)


def summary_line(outcome: EvalOutcome) -> str:
    """One line for the terminal: what ran, the accuracy, failures and mean time."""
    m = compute_metrics(outcome.records, questions=outcome.manifest.questions.count)
    acc = f"{m.accuracy:.1%} ({m.correct}/{m.scored})" if m.accuracy is not None else "n/a"
    kinds = ", ".join(f"{k} {v}" for k, v in m.failure_kinds.items())
    fail = f"{m.failures} failures ({kinds})" if m.failures else "no failures"
    state = "interrupted" if outcome.interrupted else "stopped" if outcome.stopped else "done"
    results = f"{m.coverage} results" + (" (partial)" if m.partial else "")
    return (
        f"{outcome.manifest.method} [{outcome.manifest.variant}] {state}: ran {outcome.ran}, "
        f"skipped {outcome.skipped} finished; {results}, accuracy {acc}, {fail}, "
        f"{m.cost['seconds'].mean:.1f} s and {m.cost['tokens'].mean:.0f} tokens per question; "
        f"{outcome.folder}"
    )
