"""Evaluation: run a method over a benchmark, resumably, and measure accuracy against cost.

One harness runs the agent and its baselines (:mod:`longvideo_r1.evaluation.baselines`)
on the same questions, videos, caption cache and backends, and every method
returns a :class:`~longvideo_r1.agent.trace.Trace`, so the metrics treat them alike.
The evaluator here is the one process that holds a run folder: it plans what is
missing, checks the manifest and writes each result as it arrives. Engines
(:mod:`longvideo_r1.evaluation.jobs`, :mod:`longvideo_r1.evaluation.cluster`)
answer the questions; :mod:`longvideo_r1.evaluation.records` says what a run
leaves on disk and how strictly it is scored, :mod:`longvideo_r1.evaluation.metrics`
what it measures.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from longvideo_r1.agent import protocol
from longvideo_r1.agent.config import AgentConfig
from longvideo_r1.config import Settings
from longvideo_r1.errors import ConfigError, one_line
from longvideo_r1.evaluation.cluster import RayEngine, split_address
from longvideo_r1.evaluation.jobs import (
    Answered,
    BackendFactory,
    Engine,
    Job,
    ThreadEngine,
    default_backend_factory,
)
from longvideo_r1.evaluation.methods import AgentMethod, Method
from longvideo_r1.evaluation.metrics import compute_metrics
from longvideo_r1.evaluation.records import (
    AttemptEnd,
    EvalOutcome,
    ItemRecord,
    QuestionSource,
    RunFolder,
    RunManifest,
    RunStart,
    RunWhere,
    config_difference,
    file_sha256,
    with_prior,
)
from longvideo_r1.options import option
from longvideo_r1.questions.schema import Question


@dataclass(frozen=True)
class EvalOptions:
    """How to run (not what: that is the method): where, how many at once, subset, retries.

    ``workers`` unset means one thread here, or with ``ray`` one worker per
    ``ray_cpus`` CPUs of the cluster. ``ray`` is a Ray address: ``"local"``
    starts a cluster on this machine, ``"auto"`` joins the one started here
    by ``ray start`` (or named by ``RAY_ADDRESS``), anything else is the
    head's address.
    """

    workers: int | None = None
    limit: int | None = None
    retry_failed: bool = False
    progress: bool = True
    ray: str | None = None
    ray_cpus: float = 1.0
    max_consecutive_errors: int | None = option(
        8,
        "Stop starting questions after this many error records in a row, which means the "
        "endpoint is down or --videos is wrong; the questions of one missing video count "
        "once (0 or none: never stop).",
    )

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {self.limit}")
        if self.max_consecutive_errors is not None and self.max_consecutive_errors < 0:
            raise ConfigError(
                f"--max-consecutive-errors must be 0 or more, got {self.max_consecutive_errors}"
            )
        if not self.ray_cpus > 0:
            raise ConfigError(f"--ray-cpus must be more than 0, got {self.ray_cpus}")
        if self.ray is not None and self.ray not in ("local", "auto"):
            split_address(self.ray)


class Evaluator:
    """Runs one method over a question list into ``out_dir/<method>``, resumably."""

    def __init__(
        self,
        questions: Sequence[Question],
        *,
        questions_file: Path,
        benchmark: str,
        videos_dir: Path,
        out_dir: Path,
        settings: Settings,
        method: Method,
        options: EvalOptions | None = None,
        backend_factory: BackendFactory = default_backend_factory,
        console: Any = None,
    ) -> None:
        self.questions = list(questions)
        self.questions_file = questions_file
        self.benchmark = benchmark
        self.videos_dir = videos_dir
        self.folder = RunFolder(out_dir / method.name)
        self.settings = settings
        self.method = method
        self.options = options or EvalOptions()
        self.job = Job(settings, method, videos_dir, backend_factory)
        self.console = console
        self.stop = threading.Event()

    # setup -------------------------------------------------------------------------------

    def manifest(self, reasoning: str | None) -> RunManifest:
        return RunManifest(
            method=self.method.name,
            variant=self.method.variant,
            benchmark=self.benchmark,
            questions=QuestionSource(
                path=str(self.questions_file),
                sha256=file_sha256(self.questions_file),
                count=len(self.questions),
            ),
            identities=self.method.identities(self.settings, reasoning),
            params={
                **self.method.params(),
                "min_width": self.settings.min_width,
                "max_width": self.settings.max_width,
                "parser_version": protocol.PARSER_VERSION,
            },
        )

    def _check_manifest(self, new: RunManifest, where: RunWhere) -> RunManifest:
        """Adopt the folder's manifest if it matches; refuse in one line if it does not."""
        old = self.folder.read_manifest()
        if old is not None:
            defaults = AgentConfig().to_dict() if isinstance(self.method, AgentMethod) else {}
            diff = config_difference(old, new, defaults)
            if diff is not None:
                raise ConfigError(
                    f"{self.folder.root} holds results of another configuration ({diff}): "
                    "use another --out, or remove that folder to start over"
                )
            new = old
        new.runs.append(
            RunStart(
                started_at=datetime.now(timezone.utc),
                limit=self.options.limit,
                workers=where.workers,
                retry_failed=self.options.retry_failed,
                engine=where.engine,
                nodes=where.nodes,
                planned=len(self.chosen()),
            )
        )
        self.folder.write_manifest(new)
        return new

    def _record_end(self, manifest: RunManifest, interrupted: bool, stopped: str | None) -> None:
        """How this invocation ended, in its manifest entry: a report tells a limited run from a
        stopped, interrupted or killed one (a killed one never gets here)."""
        manifest.runs[-1].ended = (
            "interrupted" if interrupted else "stopped" if stopped else "finished"
        )
        manifest.runs[-1].stopped = stopped
        self.folder.write_manifest(manifest)

    def chosen(self) -> list[Question]:
        """The questions this invocation is meant to have results for (``--limit`` applied)."""
        return self.questions[: self.options.limit] if self.options.limit else self.questions

    def plan(self, done: dict[str, ItemRecord]) -> tuple[list[Question], int]:
        """(questions to run, questions skipped because their record stands)."""
        todo, skipped = [], 0
        for q in self.chosen():
            record = done.get(q.id)
            if record is not None and not (self.options.retry_failed and record.status == "error"):
                skipped += 1
            else:
                todo.append(q)
        return todo, skipped

    def engine(self) -> Engine:
        """Threads of this process, or Ray workers when ``options.ray`` names a cluster."""
        if self.options.ray is not None:
            return RayEngine(
                self.job,
                address=self.options.ray,
                workers=self.options.workers,
                cpus=self.options.ray_cpus,
                stop=self.stop,
            )
        return ThreadEngine(self.job, self.options.workers or 1, self.stop)

    # run ---------------------------------------------------------------------------------

    def run(self) -> EvalOutcome:
        """Run what is missing; Ctrl-C, or too many errors in a row, stops after the rounds in
        flight and keeps every record."""
        self.folder.create()
        with self.folder.lock():
            self.folder.clean_temporaries()
            engine = self.engine()
            try:
                reasoning = engine.start()
                manifest = self._check_manifest(self.manifest(reasoning), engine.where)
                done = self.folder.records()
                todo, skipped = self.plan(done)
                interrupted, ran, stopped = self._run_all(todo, engine, done)
                self._record_end(manifest, interrupted, stopped)
            except BaseException:
                self.stop.set()
                raise
            finally:
                engine.close()
        records = self.folder.records()
        return EvalOutcome(
            folder=self.folder.root,
            manifest=manifest,
            planned=len(todo) + skipped,
            skipped=skipped,
            ran=ran,
            interrupted=interrupted,
            records=list(records.values()),
            stopped=stopped,
        )

    def _run_all(
        self, todo: list[Question], engine: Engine, done: dict[str, ItemRecord]
    ) -> tuple[bool, int, str | None]:
        """(interrupted, questions answered and recorded in this run, why it stopped early)."""
        known = dict(done)
        ran: set[str] = set()
        spent: list[Answered] = []
        streak = ErrorStreak(self.options.max_consecutive_errors)
        stopped: str | None = None

        def keep(answered: Answered) -> None:
            if answered.partial:  # interrupted midway: no result, but its cost is kept
                if not any(a is answered for a in spent):  # nor twice, after a handover
                    spent.append(answered)
                    self._write_attempt(answered.record, "interrupted")
                return
            if answered.record.question_id in ran:  # drain() hands back one left mid-handover
                return
            old = known.get(answered.record.question_id)
            if old is not None and old.ran:  # retry_failed: what the old record spent stays
                self._write_attempt(old, "replaced")
            self._write(answered)
            known[answered.record.question_id] = answered.record
            ran.add(answered.record.question_id)
            bar.advance(known.values())

        with _Progress(self.options.progress and bool(todo), self.console) as bar:
            bar.start(self.method.name, len(todo), known.values())
            try:
                for answered in engine.results(todo):
                    keep(answered)
                    if answered.partial:
                        continue
                    stopped = streak.add(answered.record)
                    if stopped is not None:
                        break
            except KeyboardInterrupt:
                self.stop.set()
                bar.note("interrupted: finishing the rounds in flight; every result so far is kept")
                for answered in engine.drain():
                    keep(answered)
                return True, len(ran), None
            if stopped is not None:
                self.stop.set()
                bar.note(f"stopped: {stopped}; finishing the rounds in flight")
                for answered in engine.drain():
                    keep(answered)
        return False, len(ran), stopped

    def _write(self, answered: Answered) -> None:
        """The trace, then the record that points to it: a record is never without its trace.
        The record sums what earlier attempts at its question spent."""
        record = answered.record
        try:
            record = with_prior(record, self.folder.attempts_of(record.question_id))
            answered.record = record
            if answered.trace is not None:
                answered.trace.save(self.folder.trace_path(record.question_id))
            self.folder.write_record(record)
        except OSError as exc:
            raise ConfigError(
                f"cannot write the result of {record.question_id!r} under {self.folder.root}: "
                f"{exc.strerror or exc}"
            ) from None

    def _write_attempt(self, record: ItemRecord, ended: AttemptEnd) -> None:
        """Keep what an attempt spent, for the question's final record to sum."""
        try:
            self.folder.write_attempt(
                record.question_id, ended, record.cost, record.seconds, record.reason
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot write an attempt of {record.question_id!r} under {self.folder.root}: "
                f"{exc.strerror or exc}"
            ) from None


@dataclass
class ErrorStreak:
    """Error records in a row: past ``limit`` the endpoint is down or ``--videos`` is wrong,
    and every further question would only add an error record (seconds each, for a dead
    endpoint's retries). The questions of one missing video count once: a benchmark with a
    video not downloaded is not a wrong folder. ``limit`` 0 or None never stops."""

    limit: int | None
    count: int = 0
    videos: set[str] = field(default_factory=set)

    def add(self, record: ItemRecord) -> str | None:
        """Count one record as it arrives; why to stop, once the streak reaches the limit."""
        if record.status != "error":
            self.count = 0
            self.videos.clear()
            return None
        if record.failure == "missing_video":
            if record.video_id in self.videos:
                return None
            self.videos.add(record.video_id)
        self.count += 1
        if self.limit and self.count >= self.limit:
            return f"{self.count} errors in a row, the last: {one_line(record.reason or '?')}"
        return None


class _Progress:
    """The rich progress bar with running accuracy, failures and mean cost; silent when off."""

    def __init__(self, show: bool, console: Any) -> None:
        self.show = show
        self.console = console
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _Progress:
        if self.show:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                console=self.console or Console(stderr=True),
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def start(self, name: str, total: int, records: Iterable[ItemRecord]) -> None:
        if self._progress is not None:
            self._task = self._progress.add_task(name, total=total, stats=_stats(records))

    def advance(self, records: Iterable[ItemRecord]) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, stats=_stats(records))

    def note(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text)


def _stats(records: Iterable[ItemRecord]) -> str:
    items = list(records)
    if not items:
        return "no results yet"
    m = compute_metrics(items)
    acc = f"{m.accuracy:.1%}" if m.accuracy is not None else "-"
    secs = m.cost["seconds"].mean
    return f"acc {acc} ({m.correct}/{m.scored})  failures {m.failures}  {secs:.1f} s/q"
