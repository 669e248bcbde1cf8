"""Run records, folders and outcomes: what an evaluation leaves on disk and reads back.

The files are the contract between whoever answers the questions (threads here,
Ray actors elsewhere), the process that writes them, and the reports read later;
they live apart from all of those, so each reads them without the others.

What a run leaves under ``OUT/<method>/``:

* ``run.json``: the manifest. Method, variant, its parameters, the identity
  of every model involved, the benchmark and the question file's sha256. A
  rerun with anything else there is refused: results of two configurations
  are never mixed in one folder.
* ``results/<question id>.json``: one :class:`ItemRecord` per question,
  written atomically (temporary file, fsync, rename) the moment it is known.
  A killed run keeps every record written; a rerun skips them. Failures are
  records too (status ``error`` with the reason) and are run again only when
  asked (``retry_failed``).
* ``traces/<question id>.json``: the full trace, for inspection.
* ``attempts/<question id>.<n>.json``: an :class:`Attempt`, what an earlier
  attempt at a question spent before it was interrupted (Ctrl-C, or a run
  stopped on errors in a row) or before its record was replaced
  (``retry_failed``). The question's final record sums them
  (``prior_attempts``, ``prior_cost``), so a report can say what a result
  cost in all. A process killed outright (SIGKILL, out of memory) writes
  nothing at the kill: the reasoning calls of the question it was answering
  are recorded nowhere, and the captions it made are in the caption store,
  where the rerun finds them and counts them as cached.

Scoring is strict: the recorded letter must equal the expected letter.
A question without an answer (``no_answer``, ``error``, an unparsable reply)
is wrong and is also counted apart, never replaced by a guess. The cost
figures come from the traces; ``seconds`` is wall time per question as the
harness saw it (opening the video, decoding frames, captions made on demand
and network included).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from longvideo_r1 import __version__
from longvideo_r1.agent import protocol
from longvideo_r1.agent.trace import Cost, Status, Trace
from longvideo_r1.config import first_difference
from longvideo_r1.errors import ConfigError, validation_line
from longvideo_r1.evaluation.grounding import grounding_of
from longvideo_r1.files import folder_lock, safe_name, write_atomic
from longvideo_r1.questions.schema import Question

RECORD_FORMAT = 1
MANIFEST_FORMAT = 1

Failure = Literal["missing_video", "video", "error", "no_answer", "unparsable"]
Ended = Literal["finished", "interrupted", "stopped"]
"""How one invocation ended: every planned question ran, Ctrl-C, or too many errors in a row."""


# records -------------------------------------------------------------------------------


class ItemRecord(BaseModel):
    """One question's result: everything the metrics need, without the trace."""

    format: int = RECORD_FORMAT
    question_id: str
    video_id: str
    benchmark: str
    category: str | None = None
    method: str
    variant: str
    expected: str | None = Field(description="The right letter; None when the release has none.")
    answer: str | None = Field(default=None, description="The letter the method gave.")
    raw_answer: str | None = None
    correct: bool = False
    status: Status
    reason: str | None = None
    failure: Failure | None = Field(
        default=None, description="Why there is no answer; None when answered."
    )
    cost: Cost = Field(default_factory=Cost)
    seconds: float = Field(
        default=0.0, description="Wall time of this question in the harness, end to end."
    )
    width: int | None = None
    duration: float | None = None
    video: str | None = None
    trace: str | None = Field(default=None, description="Trace path, relative to the run folder.")
    worker: int = 0
    node: str | None = Field(
        default=None, description="The Ray node that answered it; None for a run on threads."
    )
    started_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    visited_nodes: int | None = Field(
        default=None,
        description="Medium and low nodes the method chose to read (video_qa: its leaf); "
        "None for a method that reads none by design, or a record older than the field.",
    )
    deepest_level: str | None = Field(
        default=None, description="The finest level among those visits; None for none."
    )
    clue_hit: bool | None = Field(
        default=None,
        description="A visit overlaps a clue interval; None without clues or grounding.",
    )
    grounding_precision: float | None = None
    grounding_recall: float | None = None
    grounding_f1: float | None = Field(
        default=None,
        description="F1 of the union of visited spans against the union of clue spans.",
    )
    prior_attempts: int = Field(
        default=0, description="Earlier attempts at this question (interrupted or replaced)."
    )
    prior_cost: Cost | None = Field(
        default=None, description="What those attempts spent, summed; None when none."
    )
    prior_seconds: float = Field(default=0.0, description="Their wall time in the harness.")

    @property
    def scored(self) -> bool:
        return self.expected is not None

    @property
    def ran(self) -> bool:
        """A method ran for it (there is a trace and a cost), whatever the outcome."""
        return self.trace is not None

    @property
    def tokens(self) -> int:
        c = self.cost
        return (
            c.reasoning_prompt_tokens
            + c.reasoning_completion_tokens
            + c.caption_prompt_tokens
            + c.caption_completion_tokens
            + c.vlm_prompt_tokens
            + c.vlm_completion_tokens
        )


def failure_of(trace: Trace) -> Failure | None:
    """Classify a trace's missing answer, so reports can tell a crash from a silent model."""
    if trace.status == "answered":
        return None
    if trace.status == "no_answer":
        reason = trace.reason or ""
        return "unparsable" if reason.startswith("unparsable") else "no_answer"
    return "error"


def record_from_trace(
    question: Question, method: str, variant: str, trace: Trace, seconds: float, trace_path: str
) -> ItemRecord:
    """Score a trace strictly: the normalised letter must equal the expected one."""
    answer = trace.answer
    if answer is not None and question.choices:
        answer = protocol.normalize_answer(answer, question.choice_lines())
    status: Status = trace.status
    reason = trace.reason
    if status == "answered" and answer is None:
        status, reason = "no_answer", f"unparsable answer {trace.raw_answer!r}"
    grounding = grounding_of(trace, question.clue_intervals, method)
    return ItemRecord(
        **_about(question, method, variant),
        answer=answer if status == "answered" else None,
        raw_answer=trace.raw_answer,
        correct=status == "answered" and answer is not None and answer == question.answer,
        status=status,
        reason=reason,
        failure=failure_of(trace.model_copy(update={"status": status, "reason": reason})),
        cost=trace.cost,
        seconds=seconds,
        width=trace.width,
        duration=trace.duration,
        video=trace.video,
        trace=trace_path,
        visited_nodes=grounding.visited_nodes,
        deepest_level=grounding.deepest_level,
        clue_hit=grounding.clue_hit,
        grounding_precision=grounding.precision,
        grounding_recall=grounding.recall,
        grounding_f1=grounding.f1,
    )


def _about(question: Question, method: str, variant: str) -> dict[str, Any]:
    """What every record says of its question and method, whatever became of the run."""
    return {
        "question_id": question.id,
        "video_id": question.video_id,
        "benchmark": question.benchmark,
        "category": question.category,
        "method": method,
        "variant": variant,
        "expected": question.answer,
    }


def failed_record(
    question: Question, method: str, variant: str, failure: Failure, reason: str, seconds: float
) -> ItemRecord:
    """A question the method could not even start (missing or unreadable video)."""
    return ItemRecord(
        **_about(question, method, variant),
        status="error",
        reason=reason,
        failure=failure,
        seconds=seconds,
    )


# attempts ------------------------------------------------------------------------------

AttemptEnd = Literal["interrupted", "replaced"]


class Attempt(BaseModel):
    """What one earlier attempt at a question spent, kept so its final record can say it."""

    format: int = RECORD_FORMAT
    question_id: str
    attempt: int = Field(description="1 for the first attempt kept, then 2, ...")
    ended: AttemptEnd = Field(
        description="interrupted: stopped between rounds (Ctrl-C, or the run stopped on "
        "errors in a row); replaced: its record was run again (retry_failed)."
    )
    reason: str | None = None
    cost: Cost = Field(default_factory=Cost)
    seconds: float = 0.0
    written_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))


def add_costs(costs: Iterable[Cost]) -> Cost:
    """Field by field sums: what several attempts spent together."""
    total: dict[str, Any] = {}
    for cost in costs:
        for name, value in cost.model_dump().items():
            total[name] = total.get(name, 0) + value
    return Cost.model_validate(total)


def with_prior(record: ItemRecord, attempts: Sequence[Attempt]) -> ItemRecord:
    """``record`` with the earlier ``attempts`` summed into its prior fields."""
    if not attempts:
        return record
    return record.model_copy(
        update={
            "prior_attempts": len(attempts),
            "prior_cost": add_costs(a.cost for a in attempts),
            "prior_seconds": sum(a.seconds for a in attempts),
        }
    )


# files ---------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class QuestionSource(BaseModel):
    """Which question file a run answers; the hash catches an edited file under the same name."""

    path: str
    sha256: str
    count: int


class RunStart(BaseModel):
    """One invocation on a folder: how it was asked to run (not part of the configuration)."""

    started_at: datetime
    limit: int | None = None
    workers: int = 1
    retry_failed: bool = False
    engine: Literal["threads", "ray"] = "threads"
    nodes: int | None = Field(default=None, description="Ray: machines the workers ran on.")
    planned: int | None = Field(
        default=None,
        description="Questions this invocation meant to have results for (--limit applied); "
        "None in manifests written before it was recorded.",
    )
    ended: Ended | None = Field(
        default=None,
        description="How it ended; None while it runs, when it was killed, or in manifests "
        "written before it was recorded.",
    )
    stopped: str | None = Field(default=None, description="Why it stopped early on its own.")


@dataclass(frozen=True)
class RunWhere:
    """Where an engine runs the questions, as the manifest records it."""

    engine: Literal["threads", "ray"]
    workers: int
    nodes: int | None = None


class RunManifest(BaseModel):
    """What produced the results of one folder; results of another configuration are refused."""

    format: int = MANIFEST_FORMAT
    method: str
    variant: str
    benchmark: str
    questions: QuestionSource
    identities: dict[str, str] = Field(description="Model identity per role the method uses.")
    params: dict[str, Any] = Field(default_factory=dict)
    version: str = __version__
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    runs: list[RunStart] = Field(default_factory=list)

    def config(self) -> dict[str, Any]:
        """The fields that must match for results to be comparable."""
        return {
            "method": self.method,
            "variant": self.variant,
            "benchmark": self.benchmark,
            "question file": self.questions.sha256,
            **{f"{role} model": name for role, name in sorted(self.identities.items())},
            **{f"parameter {k}": v for k, v in sorted(self.params.items())},
        }


def config_difference(
    old: RunManifest, new: RunManifest, param_defaults: Mapping[str, Any] | None = None
) -> str | None:
    """The first setting that differs, worded for a one-line refusal.

    ``param_defaults`` are the method's parameters as they were before a
    parameter existed: a folder made before it resumes while it keeps that value.
    """
    absent = {f"parameter {k}": v for k, v in (param_defaults or {}).items()}
    return first_difference(old.config(), new.config(), absent)


class RunFolder:
    """``OUT/<method>``: manifest, records, traces and the lock of one method's run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.results = root / "results"
        self.traces = root / "traces"
        self.attempts = root / "attempts"
        self.manifest_path = root / "run.json"

    def read_manifest(self) -> RunManifest | None:
        if not self.manifest_path.exists():
            return None
        try:
            return RunManifest.model_validate_json(self.manifest_path.read_bytes())
        except (OSError, ValidationError) as exc:
            raise ConfigError(
                f"{self.manifest_path} is not a run manifest ({_first_error(exc)}): "
                "use another --out"
            ) from None

    def write_manifest(self, manifest: RunManifest) -> None:
        try:
            write_atomic(self.manifest_path, manifest.model_dump_json(indent=2) + "\n")
        except OSError as exc:
            raise ConfigError(unwritable(self.manifest_path, exc)) from None

    def records(self) -> dict[str, ItemRecord]:
        """Every readable record by question id; a damaged file is ignored and rerun."""
        return self.scan()[0]

    def scan(self) -> tuple[dict[str, ItemRecord], list[Unreadable]]:
        """Every readable record by question id, and the result files that could not be read,
        so a report can say what it did not count."""
        out: dict[str, ItemRecord] = {}
        unreadable: list[Unreadable] = []
        if not self.results.is_dir():
            return out, unreadable
        for path in sorted(self.results.glob("*.json")):
            if path.name.startswith("."):
                continue
            try:
                record = ItemRecord.model_validate_json(path.read_bytes())
            except (OSError, ValidationError) as exc:
                unreadable.append(Unreadable(path, _first_error(exc)))
                continue
            out[record.question_id] = record
        return out, unreadable

    def create(self) -> None:
        """Make the folder, or refuse in one line where ``--out`` cannot hold one."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            why = unwritable(self.manifest_path, exc)
            raise ConfigError(f"--out cannot hold the run: {why}") from None

    def write_record(self, record: ItemRecord) -> Path:
        path = self.results / f"{safe_name(record.question_id)}.json"
        return write_atomic(path, record.model_dump_json(indent=2) + "\n")

    def trace_path(self, question_id: str) -> Path:
        return self.root / trace_name(question_id)

    def attempts_of(self, question_id: str) -> list[Attempt]:
        """The earlier attempts kept for a question, in order; unreadable files are skipped
        (an attempt only adds to a cost, it is never a result)."""
        found: list[Attempt] = []
        if not self.attempts.is_dir():
            return found
        for path in self.attempts.glob(f"{safe_name(question_id)}.*.json"):
            try:
                attempt = Attempt.model_validate_json(path.read_bytes())
            except (OSError, ValidationError):
                continue
            if attempt.question_id == question_id:  # "q1.*" also matches a question "q1.5"
                found.append(attempt)
        return sorted(found, key=lambda a: a.attempt)

    def write_attempt(
        self,
        question_id: str,
        ended: AttemptEnd,
        cost: Cost,
        seconds: float,
        reason: str | None = None,
    ) -> Attempt:
        """Keep what an attempt spent, atomically, as the next attempt of the question."""
        earlier = self.attempts_of(question_id)
        number = 1 + max((a.attempt for a in earlier), default=0)
        attempt = Attempt(
            question_id=question_id,
            attempt=number,
            ended=ended,
            reason=reason,
            cost=cost,
            seconds=seconds,
        )
        path = self.attempts / f"{safe_name(question_id)}.{number}.json"
        write_atomic(path, attempt.model_dump_json(indent=2) + "\n")
        return attempt

    def clean_temporaries(self) -> None:
        """Half-written files of a killed run: never read, removed so they do not pile up."""
        for folder in (self.results, self.traces, self.attempts, self.root):
            if folder.is_dir():
                for path in folder.glob(".*.tmp"):
                    path.unlink(missing_ok=True)

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """One writer per folder; the OS drops the lock when the process dies, even by SIGKILL."""
        return folder_lock(self.root, "lvr1 eval")


@dataclass(frozen=True)
class Unreadable:
    """A result file that is not a record (damaged, or not ours): never counted, always named."""

    path: Path
    reason: str


def unwritable(path: Path, exc: OSError) -> str:
    """``cannot write PATH: why``, naming the file that stands where a folder must be."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"cannot write {path}: {parent} is a file, not a folder"
            break
    if path.is_dir():
        return f"cannot write {path}: it is a folder"
    return f"cannot write {path}: {exc.strerror or exc}"


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return validation_line(exc)
    return str(getattr(exc, "strerror", None) or exc)


def trace_name(question_id: str) -> str:
    """Where a question's trace goes, relative to the run folder (what its record points to)."""
    return f"traces/{safe_name(question_id)}.json"


@dataclass
class EvalOutcome:
    """What a run did; ``records`` holds every record of the folder, earlier runs' included."""

    folder: Path
    manifest: RunManifest
    planned: int
    skipped: int
    ran: int
    interrupted: bool
    records: list[ItemRecord]
    stopped: str | None = None
    """Why the run stopped early on its own (too many errors in a row), if it did."""

    @property
    def errors(self) -> int:
        return sum(1 for r in self.records if r.status == "error")
