"""What both generators share: the record made from a navigator trace, and the runner.

Both build their record from the trace of the same navigator, so the
teacher's and the oracle's records have one format. Runs are resumable: a
record is written atomically the moment it is known, and a rerun skips
questions that have one (failures are retried only when asked).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from longvideo_r1.agent.trace import Trace
from longvideo_r1.errors import ConfigError
from longvideo_r1.progress import progress_bar
from longvideo_r1.questions.schema import Question
from longvideo_r1.training.hints import Grounding
from longvideo_r1.training.records import (
    DroppedTurn,
    Generator,
    GroundingModel,
    HintRecord,
    ObservationRecord,
    Outcome,
    TrajectoryCost,
    TrajectoryFolder,
    TrajectoryRecord,
)
from longvideo_r1.training.trees import CaptionTree


def _flat(content: Any) -> str:
    """A message's content as the one string a text-only chat template sees."""
    if isinstance(content, str):
        return content
    return "\n".join(part.get("text", "") for part in content if isinstance(part, dict))


def _question_fields(question: Question) -> dict[str, Any]:
    return {
        "question_id": question.id,
        "video_id": question.video_id,
        "benchmark": question.benchmark,
        "category": question.category,
        "question": question.question,
        "choices": list(question.choices),
        "answer": question.answer,
        "clue_intervals": list(question.clue_intervals),
    }


def _tree_fields(ctree: CaptionTree) -> dict[str, Any]:
    return {
        "fingerprint": ctree.fingerprint,
        "caption_identity": ctree.identity,
        "duration": ctree.tree.duration,
        "n_frames": ctree.tree.n_frames,
        "width": ctree.tree.width,
    }


def record_from_trace(
    record_id: str,
    generator: Generator,
    producer: str,
    question: Question,
    ctree: CaptionTree,
    grounding: Grounding,
    trace: Trace,
    outcome: Outcome,
    reason: str | None = None,
    seed: int | None = None,
    hints: Sequence[HintRecord] = (),
    dropped: Sequence[DroppedTurn] = (),
    seconds: float = 0.0,
) -> TrajectoryRecord:
    """Both generators' records come from a navigator trace, so they share one format."""
    observations = [
        ObservationRecord(
            round=r.index,
            kind=r.kind,
            node_id=r.node_id,
            query=r.query,
            text=r.observation,
            error=r.error,
        )
        for r in trace.rounds
        if r.observation is not None
    ]
    c = trace.cost
    cost = TrajectoryCost(
        rounds=c.rounds,
        teacher_calls=c.reasoning_calls + len(dropped),
        prompt_tokens=c.reasoning_prompt_tokens + sum(d.prompt_tokens for d in dropped),
        completion_tokens=c.reasoning_completion_tokens + sum(d.completion_tokens for d in dropped),
        dropped_prompt_tokens=sum(d.prompt_tokens for d in dropped),
        dropped_completion_tokens=sum(d.completion_tokens for d in dropped),
        caption_calls=c.caption_calls,
        video_qa_calls=c.video_qa_calls,
        video_qa_from_captions=c.video_qa_from_captions,
        seconds=seconds or c.end_to_end_seconds,
    )
    return TrajectoryRecord(
        id=record_id,
        generator=generator,
        producer=producer,
        seed=seed,
        **_question_fields(question),
        grounding=GroundingModel.of(grounding),
        **_tree_fields(ctree),
        outcome=outcome,
        reason=reason,
        predicted=trace.answer,
        hints=list(hints),
        dropped=list(dropped),
        messages=[{"role": m["role"], "content": _flat(m["content"])} for m in trace.messages()],
        observations=observations,
        cost=cost,
        trace=trace,
    )


def skipped_record(
    record_id: str, generator: Generator, producer: str, question: Question, reason: str
) -> TrajectoryRecord:
    """A question that could not be attempted, kept so the reason is reported and not retried."""
    return TrajectoryRecord(
        id=record_id,
        generator=generator,
        producer=producer,
        **_question_fields(question),
        outcome="skipped",
        reason=reason,
    )


def _outcome(trace: Trace, right: str | None, gave_up: bool) -> tuple[Outcome, str | None]:
    if trace.status == "error":
        return "error", trace.reason
    if trace.status == "no_answer":
        return "no_answer", trace.reason
    if trace.answer == right:
        return "correct", None
    if gave_up:
        return "gave_up", "wrong after every hint"
    return "wrong", f"answered {trace.answer!r}, expected {right!r}"


def _unfit(question: Question) -> str | None:
    """Why a question cannot yield a graded trajectory, or ``None``."""
    if question.answer is None:
        return "the question has no known answer"
    if len(question.choices) < 2:
        return "the question has fewer than two choices"
    return None


# ---------------------------------------------------------------------------------------
# the runner shared by both generators


@dataclass
class GenerationReport:
    """What a generation run did; ``outcomes`` counts the records written by this run."""

    total: int = 0
    written: int = 0
    already_done: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    interrupted: bool = False
    stopped: str | None = None
    """Why the run stopped early on its own (too many errors in a row), if it did."""

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())) or "none"
        tail = " (interrupted: rerun to finish)" if self.interrupted else ""
        if self.stopped:
            tail = f" (stopped: {self.stopped}; rerun with retry_failed)"
        return (
            f"{self.written} of {self.total} trajectories written ({parts}), "
            f"{self.already_done} already done, {self.seconds:.1f} s{tail}"
        )


_RETRIED: frozenset[str] = frozenset({"error", "skipped"})


@dataclass(frozen=True)
class _Job:
    record_id: str
    question: Question
    variant: int = 0


Work = Callable[[_Job, int], TrajectoryRecord]


def _run(
    jobs: Sequence[_Job],
    work: Work,
    folder: TrajectoryFolder,
    workers: int,
    retry_failed: bool,
    on_record: Callable[[TrajectoryRecord], None] | None,
    max_consecutive_errors: int | None = None,
    progress: str | None = None,
) -> GenerationReport:
    """Run the jobs not done yet on ``workers`` threads, saving each record as it comes.

    A run of errors in a row means a dead endpoint, not hard questions:
    past ``max_consecutive_errors`` the remaining jobs are not started, so
    a rerun with ``retry_failed`` has little to redo. ``progress`` names a
    progress bar on stderr (none when ``None``).
    """
    started = time.perf_counter()
    report = GenerationReport(total=len(jobs))
    todo = []
    for job in jobs:
        old = folder.load(job.record_id)
        if old is not None and not (retry_failed and old.outcome in _RETRIED):
            report.already_done += 1
        else:
            todo.append(job)
    lock = threading.Lock()
    slots = threading.local()
    counter = iter(range(1 << 30))
    stop = threading.Event()
    errors_in_a_row = 0

    def one(job: _Job) -> None:
        nonlocal errors_in_a_row
        if stop.is_set():
            return
        if not hasattr(slots, "index"):
            with lock:
                slots.index = next(counter)
        record = work(job, slots.index)
        folder.save(record)
        with lock:
            report.written += 1
            report.outcomes[record.outcome] += 1
            errors_in_a_row = errors_in_a_row + 1 if record.outcome == "error" else 0
            if max_consecutive_errors is not None and errors_in_a_row >= max_consecutive_errors:
                report.stopped = f"{errors_in_a_row} errors in a row, the last: {record.reason}"
                stop.set()
            outcomes = ", ".join(f"{k} {v}" for k, v in sorted(report.outcomes.items()))
            bar.update(advance=1, outcomes=outcomes)
        if on_record is not None:
            on_record(record)

    with progress_bar(
        progress is not None and bool(todo),
        title="[bold]{task.description}[/]",
        status="{task.fields[outcomes]}",
        description=progress or "",
        total=report.total,
        done=report.already_done,
        outcomes="",
    ) as bar:
        pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="lvr1-traj")
        try:
            futures = [pool.submit(one, job) for job in todo]
            for future in as_completed(futures):
                future.result()
        except KeyboardInterrupt:
            stop.set()
            report.interrupted = True
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            report.seconds = time.perf_counter() - started
    return report


def _jobs(questions: Iterable[Question], variants: int) -> list[_Job]:
    """One job per question and variant, grouped by video; ids must be unique (they name files)."""
    jobs: list[_Job] = []
    seen: set[str] = set()
    for question in questions:
        if question.id in seen:
            raise ConfigError(f"question id {question.id!r} appears twice; ids name the records")
        seen.add(question.id)
        for k in range(variants):
            record_id = question.id if variants == 1 else f"{question.id}~{k}"
            jobs.append(_Job(record_id, question, k))
    # One video's questions together, so its caption tree is loaded once.
    return sorted(jobs, key=lambda job: job.question.video_id)
