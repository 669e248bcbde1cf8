"""Evaluation: run a method over a benchmark, resumably, and measure accuracy against cost.

One harness runs the agent and its baselines (:mod:`longvideo_r1.evaluation.baselines`)
on the same questions, videos, caption cache and backends, and every method
returns a :class:`~longvideo_r1.agent.trace.Trace`, so the metrics treat them alike.

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

Scoring is strict: the recorded letter must equal the expected letter.
A question without an answer (``no_answer``, ``error``, an unparsable reply)
is wrong and is also counted apart, never replaced by a guess. The cost
figures come from the traces; ``seconds`` is wall time per question as the
harness saw it (opening the video, decoding frames, captions made on demand
and network included).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import queue
import statistics
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field, ValidationError

from longvideo_r1 import __version__
from longvideo_r1.agent import protocol
from longvideo_r1.agent.navigator import AgentConfig, RunInterrupted
from longvideo_r1.agent.trace import Cost, Status, Trace
from longvideo_r1.config import Settings, first_difference
from longvideo_r1.errors import ConfigError, LVR1Error, validation_line
from longvideo_r1.files import safe_name, write_atomic
from longvideo_r1.llm.embedded import default_threads
from longvideo_r1.llm.factory import backend_from_settings
from longvideo_r1.questions.loaders import Question

METHODS = ("agent", "uniform-frames", "caption-all", "random-walk")
RECORD_FORMAT = 1
MANIFEST_FORMAT = 1
MAX_OPEN_SESSIONS = 2
"""Videos a worker keeps open at once; questions usually come grouped by video."""

Failure = Literal["missing_video", "video", "error", "no_answer", "unparsable"]
BackendFactory = Callable[[Settings, int], Any]


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
    return ItemRecord(
        question_id=question.id,
        video_id=question.video_id,
        benchmark=question.benchmark,
        category=question.category,
        method=method,
        variant=variant,
        expected=question.answer,
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
    )


def failed_record(
    question: Question, method: str, variant: str, failure: Failure, reason: str, seconds: float
) -> ItemRecord:
    """A question the method could not even start (missing or unreadable video)."""
    return ItemRecord(
        question_id=question.id,
        video_id=question.video_id,
        benchmark=question.benchmark,
        category=question.category,
        method=method,
        variant=variant,
        expected=question.answer,
        status="error",
        reason=reason,
        failure=failure,
        seconds=seconds,
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


def config_difference(old: RunManifest, new: RunManifest) -> str | None:
    """The first setting that differs, worded for a one-line refusal."""
    return first_difference(old.config(), new.config())


class RunFolder:
    """``OUT/<method>``: manifest, records, traces and the lock of one method's run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.results = root / "results"
        self.traces = root / "traces"
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
        write_atomic(self.manifest_path, manifest.model_dump_json(indent=2) + "\n")

    def records(self) -> dict[str, ItemRecord]:
        """Every readable record by question id; a damaged file is ignored and rerun."""
        out: dict[str, ItemRecord] = {}
        if not self.results.is_dir():
            return out
        for path in sorted(self.results.glob("*.json")):
            if path.name.startswith("."):
                continue
            with contextlib.suppress(OSError, ValidationError):
                record = ItemRecord.model_validate_json(path.read_bytes())
                out[record.question_id] = record
        return out

    def write_record(self, record: ItemRecord) -> Path:
        path = self.results / f"{safe_name(record.question_id)}.json"
        return write_atomic(path, record.model_dump_json(indent=2) + "\n")

    def trace_path(self, question_id: str) -> Path:
        return self.root / trace_name(question_id)

    def clean_temporaries(self) -> None:
        """Half-written files of a killed run: never read, removed so they do not pile up."""
        for folder in (self.results, self.traces, self.root):
            if folder.is_dir():
                for path in folder.glob(".*.tmp"):
                    path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One writer per folder; the OS drops the lock when the process dies, even by SIGKILL."""
        self.root.mkdir(parents=True, exist_ok=True)
        handle = (self.root / ".lock").open("a")
        try:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise ConfigError(
                    f"another lvr1 eval is writing to {self.root}; wait for it or use another --out"
                ) from None
            yield
        finally:
            handle.close()


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return validation_line(exc)
    return str(getattr(exc, "strerror", None) or exc)


# methods -------------------------------------------------------------------------------


class Method(Protocol):
    """One way of answering a question; the agent and each baseline implement it."""

    name: str
    variant: str
    needs_reasoning: bool

    def params(self) -> dict[str, Any]:
        """Parameters that change results (they go into the manifest)."""
        ...

    def identities(self, settings: Settings, reasoning: str | None) -> dict[str, str]:
        """The identity of every model whose output the method uses."""
        ...

    def run(self, question: Question, session: Any, backend: Any, stop: threading.Event) -> Trace:
        """Answer one question; raise RunInterrupted when ``stop`` is set midway."""
        ...


def caption_identity(settings: Settings) -> str:
    from longvideo_r1.agent.session import make_captioner

    return str(make_captioner(settings).identity)


def video_qa_identity(settings: Settings) -> str:
    """Named as the tools name it: a VLM, or the captioner's notes when there is none."""
    if settings.video_qa.base_url:
        return f"vlm:{settings.video_qa.model}"
    return f"captions:{caption_identity(settings)}"


@dataclass
class AgentMethod:
    """The navigator itself, exactly as ``lvr1 ask`` runs it."""

    config: AgentConfig = field(default_factory=AgentConfig)
    name: str = "agent"
    variant: str = "agent"
    needs_reasoning: bool = True

    def params(self) -> dict[str, Any]:
        return self.config.to_dict()

    def identities(self, settings: Settings, reasoning: str | None) -> dict[str, str]:
        return {
            "reasoning": reasoning or "",
            "caption": caption_identity(settings),
            "video_qa": video_qa_identity(settings),
        }

    def run(self, question: Question, session: Any, backend: Any, stop: threading.Event) -> Trace:
        def check(rnd: Any) -> None:
            # Stop between rounds on Ctrl-C; a round that just answered is kept.
            if stop.is_set() and rnd.kind != "answer":
                raise KeyboardInterrupt  # the navigator turns it into RunInterrupted

        navigator = session.navigator(backend, self.config)
        return navigator.run(question.question, question.choice_lines() or None, on_round=check)


@dataclass(frozen=True)
class MethodOptions:
    """Everything that picks and shapes a method, from the command line or a script."""

    method: str = "agent"
    agent: AgentConfig = field(default_factory=AgentConfig)
    frames: int = 32
    frame_side: int = 448
    walk_calls: int | None = None
    seed: int = 0
    max_reply_tokens: int = 1024

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.frames < 1:
            raise ConfigError(f"--frames must be at least 1, got {self.frames}")
        if self.frame_side < 32:
            raise ConfigError(f"--frame-side must be at least 32 pixels, got {self.frame_side}")
        if self.walk_calls is not None and self.walk_calls < 1:
            raise ConfigError(f"--walk-calls must be at least 1, got {self.walk_calls}")


def make_method(options: MethodOptions, settings: Settings) -> Method:
    """The method object for a name; baselines pick their variant from the settings."""
    if options.method == "agent":
        return AgentMethod(options.agent)
    from longvideo_r1.evaluation import baselines

    answer = baselines.AnswerStep(options.agent.constrain, options.agent.answer_form)
    if options.method == "uniform-frames":
        return baselines.UniformFrames(
            frames=options.frames,
            frame_side=options.frame_side,
            use_vlm=bool(settings.video_qa.base_url),
            max_reply_tokens=options.max_reply_tokens,
            answer=answer,
        )
    if options.method == "caption-all":
        return baselines.CaptionAll(max_reply_tokens=options.max_reply_tokens, answer=answer)
    if options.walk_calls is None:
        raise ConfigError("random-walk needs a number of get_caption calls (--walk-calls N)")
    return baselines.RandomWalk(
        calls=options.walk_calls,
        seed=options.seed,
        max_reply_tokens=options.max_reply_tokens,
        answer=answer,
    )


def agent_mean_caption_calls(out_dir: Path) -> float | None:
    """The agent's mean get_caption calls per question in ``out_dir/agent`` (opening excluded).

    The random walk spends the same budget, so the comparison is navigation
    against chance at equal cost.
    """
    records = [r for r in RunFolder(out_dir / "agent").records().values() if r.ran]
    if not records:
        return None
    calls = [max(0, r.cost.caption_calls - (r.width or 0)) for r in records]
    return sum(calls) / len(calls)


def resolve_walk_calls(options: MethodOptions, out_dir: Path) -> MethodOptions:
    """Fix the random walk's budget once: given, recorded by an earlier run, or the agent's mean."""
    if options.method != "random-walk" or options.walk_calls is not None:
        return options
    earlier = RunFolder(out_dir / "random-walk").read_manifest()
    if earlier is not None and isinstance(earlier.params.get("walk_calls"), int):
        calls = int(earlier.params["walk_calls"])
    else:
        mean = agent_mean_caption_calls(out_dir)
        if mean is None:
            raise ConfigError(
                f"random-walk spends the agent's mean number of get_caption calls, but "
                f"{out_dir / 'agent'} has no results: run --method agent first or give "
                "--walk-calls N"
            )
        calls = max(1, round(mean))
    return MethodOptions(**{**options.__dict__, "walk_calls": calls})


# the runner ----------------------------------------------------------------------------


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

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {self.limit}")
        if not self.ray_cpus > 0:
            raise ConfigError(f"--ray-cpus must be more than 0, got {self.ray_cpus}")
        if self.ray is not None and self.ray not in ("local", "auto"):
            split_address(self.ray)


def split_address(address: str) -> tuple[str, int]:
    """(host, port) of a Ray head's ``HOST:PORT`` (``ray://`` allowed); one line if malformed."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            "--ray takes HOST:PORT (the head's address, port 6379 unless `ray start --head "
            f"--port` said otherwise), 'auto', or no value for Ray on this machine; got {address!r}"
        )
    return host.strip("[]"), int(port)


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

    @property
    def errors(self) -> int:
        return sum(1 for r in self.records if r.status == "error")


@dataclass
class Answered:
    """One question's result as a worker hands it back: the record and its trace, unwritten.

    Workers never write into the run folder; the process that holds the
    folder's lock does, whether the workers are its own threads or Ray
    actors on other machines. So both paths leave the same files, and only
    the machine that runs ``lvr1 eval`` needs to see ``--out``.
    """

    record: ItemRecord
    trace: Trace | None = None


@dataclass
class _Worker:
    """One worker's own reasoning backend and open videos; never used by two threads at once."""

    index: int
    settings: Settings
    make_backend: Callable[[], Any] | None
    backend: Any = None
    sessions: OrderedDict[tuple[str, str], Any] = field(default_factory=OrderedDict)

    def reasoning(self) -> Any:
        if self.backend is None and self.make_backend is not None:
            self.backend = self.make_backend()
        return self.backend

    def load(self) -> str | None:
        """Load the reasoning model now and name it; None for methods that use none.

        Loading an embedded model is a one-off cost of the worker, not of its
        first question, so it happens before any question's clock starts.
        """
        backend = self.reasoning()
        if backend is None:
            return None
        load = getattr(backend, "load", None)
        if callable(load):
            load()
        return str(backend.identity)

    def session(self, path: Path, subtitles: Path | None) -> Any:
        """This worker's session on a video (its own handles; the SQLite store is shared)."""
        from longvideo_r1.agent.session import VideoSession

        key = (str(path), str(subtitles or ""))
        if key in self.sessions:
            self.sessions.move_to_end(key)
            return self.sessions[key]
        session = VideoSession.open(path, self.settings, subtitles=subtitles)
        self.sessions[key] = session
        while len(self.sessions) > MAX_OPEN_SESSIONS:
            _, old = self.sessions.popitem(last=False)
            old.close()
        return session

    def close(self) -> None:
        for session in self.sessions.values():
            with contextlib.suppress(Exception):
                session.close()
        self.sessions.clear()
        if self.backend is not None:
            with contextlib.suppress(Exception):
                self.backend.close()


def default_backend_factory(settings: Settings, workers: int) -> Any:
    """A reasoning backend for one worker; embedded ones split the cores between workers."""
    from longvideo_r1.agent.session import make_reasoning_backend

    if settings.reasoning.base_url or workers == 1:
        return make_reasoning_backend(settings)
    threads = max(1, default_threads() // workers)
    return backend_from_settings(settings.reasoning, "reasoning", n_threads=threads)


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to answer questions, wherever it runs.

    It is pickled to Ray workers as it is, so a thread here and an actor on
    another machine build their backends and sessions from the same
    settings and answer with the same code.
    """

    settings: Settings
    method: Method
    videos_dir: Path
    backend_factory: BackendFactory = default_backend_factory

    def worker(self, index: int, sharing: int) -> _Worker:
        """A worker with its own backend, made on first use; ``sharing`` workers split the cores."""

        def make() -> Any:
            return self.backend_factory(self.settings, sharing)

        return _Worker(index, self.settings, make if self.method.needs_reasoning else None)

    def answer(self, question: Question, worker: _Worker, stop: threading.Event) -> Answered | None:
        """Answer one question; None when ``stop`` interrupted it (it has no result yet).

        Every other outcome is a record: a missing or unreadable video, an
        endpoint failure and a bug in a method each cost one question, never
        the run.
        """
        name, variant = self.method.name, self.method.variant
        started = time.perf_counter()
        path = question.video_path(self.videos_dir)

        def failed(kind: Failure, reason: str) -> Answered:
            record = failed_record(
                question, name, variant, kind, reason, time.perf_counter() - started
            )
            record.worker = worker.index
            return Answered(record)

        if not path.is_file():
            return failed("missing_video", f"video not found: {path}")
        try:
            session = worker.session(path, question.subtitles)
        except LVR1Error as exc:
            return failed("video", str(exc))
        try:
            trace = self.method.run(question, session, worker.reasoning(), stop)
        except RunInterrupted:
            return None
        except LVR1Error as exc:
            return failed("error", str(exc))
        except Exception as exc:  # a bug must not take the other questions down
            from longvideo_r1.agent.navigator import describe_failure

            return failed("error", describe_failure(exc))
        record = record_from_trace(
            question, name, variant, trace, time.perf_counter() - started, trace_name(question.id)
        )
        record.worker = worker.index
        return Answered(record, trace)


def trace_name(question_id: str) -> str:
    """Where a question's trace goes, relative to the run folder (what its record points to)."""
    return f"traces/{safe_name(question_id)}.json"


class Engine(Protocol):
    """Where the questions of a run are answered: threads here, or workers on a Ray cluster.

    The evaluator plans, writes and reports; an engine only turns questions
    into :class:`Answered` results, in whatever order they finish.
    """

    size: int
    """Questions answered at once."""
    where: RunWhere

    def start(self) -> str | None:
        """Start the workers and load their models; the reasoning model's identity."""
        ...

    def results(self, todo: Sequence[Question]) -> Iterator[Answered]:
        """Each question's result as soon as it is known (interrupted ones yield nothing)."""
        ...

    def drain(self) -> Iterator[Answered]:
        """After Ctrl-C: stop the questions in flight between rounds; the results still coming."""
        ...

    def close(self) -> None: ...


class ThreadEngine:
    """Questions on threads of this process, one :class:`_Worker` (backend, videos) per thread."""

    def __init__(self, job: Job, workers: int, stop: threading.Event) -> None:
        self.job = job
        self.size = workers
        self.where = RunWhere(engine="threads", workers=workers)
        self.stop = stop
        self.pool = [job.worker(i, workers) for i in range(workers)]
        self.free: queue.Queue[_Worker] = queue.Queue()
        for worker in self.pool:
            self.free.put(worker)
        self.executor: ThreadPoolExecutor | None = None
        self.pending: dict[Future[Answered | None], Question] = {}

    def start(self) -> str | None:
        names = [worker.load() for worker in self.pool]
        return names[0]

    def results(self, todo: Sequence[Question]) -> Iterator[Answered]:
        self.executor = ThreadPoolExecutor(self.size, thread_name_prefix="lvr1-eval")
        for q in todo:
            self.pending[self.executor.submit(self._item, q)] = q
        for future in as_completed(list(self.pending)):
            answered = future.result()
            if answered is not None:
                yield answered
            self.pending.pop(future, None)  # after the yield: a Ctrl-C there leaves it for drain

    def drain(self) -> Iterator[Answered]:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
        for future in list(self.pending):
            if future.done() and not future.cancelled() and future.exception() is None:
                answered = future.result()
                if answered is not None:
                    yield answered
            self.pending.pop(future, None)

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
        for worker in self.pool:
            worker.close()

    def _item(self, question: Question) -> Answered | None:
        if self.stop.is_set():
            return None
        worker = self.free.get()
        try:
            return self.job.answer(question, worker, self.stop)
        finally:
            self.free.put(worker)


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
            diff = config_difference(old, new)
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
            )
        )
        self.folder.write_manifest(new)
        return new

    def plan(self, done: dict[str, ItemRecord]) -> tuple[list[Question], int]:
        """(questions to run, questions skipped because their record stands)."""
        chosen = self.questions[: self.options.limit] if self.options.limit else self.questions
        todo, skipped = [], 0
        for q in chosen:
            record = done.get(q.id)
            if record is not None and not (self.options.retry_failed and record.status == "error"):
                skipped += 1
            else:
                todo.append(q)
        return todo, skipped

    def engine(self) -> Engine:
        """Threads of this process, or Ray workers when ``options.ray`` names a cluster."""
        if self.options.ray is not None:
            from longvideo_r1.evaluation.cluster import RayEngine

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
        """Run what is missing; Ctrl-C stops after the rounds in flight and keeps every record."""
        with self.folder.lock():
            self.folder.clean_temporaries()
            engine = self.engine()
            try:
                reasoning = engine.start()
                manifest = self._check_manifest(self.manifest(reasoning), engine.where)
                done = self.folder.records()
                todo, skipped = self.plan(done)
                interrupted, ran = self._run_all(todo, engine, done)
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
        )

    def _run_all(
        self, todo: list[Question], engine: Engine, done: dict[str, ItemRecord]
    ) -> tuple[bool, int]:
        """(interrupted, questions answered and recorded in this run)."""
        known = dict(done)
        ran: set[str] = set()

        def keep(answered: Answered) -> None:
            self._write(answered)
            known[answered.record.question_id] = answered.record
            ran.add(answered.record.question_id)
            bar.advance(known.values())

        with _Progress(self.options.progress and bool(todo), self.console) as bar:
            bar.start(self.method.name, len(todo), known.values())
            try:
                for answered in engine.results(todo):
                    keep(answered)
            except KeyboardInterrupt:
                self.stop.set()
                bar.note("interrupted: finishing the rounds in flight; every result so far is kept")
                for answered in engine.drain():
                    keep(answered)
                return True, len(ran)
        return False, len(ran)

    def _write(self, answered: Answered) -> None:
        """The trace, then the record that points to it: a record is never without its trace."""
        record = answered.record
        try:
            if answered.trace is not None:
                answered.trace.save(self.folder.trace_path(record.question_id))
            self.folder.write_record(record)
        except OSError as exc:
            raise ConfigError(
                f"cannot write the result of {record.question_id!r} under {self.folder.root}: "
                f"{exc.strerror or exc}"
            ) from None


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


# metrics -------------------------------------------------------------------------------


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


COSTS: dict[str, Callable[[ItemRecord], float]] = {
    "rounds": lambda r: r.cost.rounds,
    "caption_calls": lambda r: r.cost.caption_calls,
    "captions_made": lambda r: r.cost.captions_made,
    "captions_cached": lambda r: r.cost.captions_cached,
    "video_qa_calls": lambda r: r.cost.video_qa_calls,
    "frames_decoded": lambda r: r.cost.frames_decoded,
    "tokens": lambda r: r.tokens,
    "reasoning_tokens": lambda r: r.cost.reasoning_tokens,
    "model_seconds": lambda r: r.cost.model_seconds,
    "seconds": lambda r: r.seconds,
}
"""Per-question costs the metrics summarise; ``seconds`` is end to end in the harness."""


class Metrics(BaseModel):
    """Accuracy and cost of one method's run.

    ``accuracy`` = correct / scored: every scored question counts, failures
    included (as wrong). ``failures`` counts the questions without an
    answer, by kind. Costs are over the questions a method ran for (a
    missing video costs nothing and would flatter the means).
    """

    method: str = ""
    variant: str = ""
    run: str = ""
    n: int
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


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def compute_metrics(
    records: Iterable[ItemRecord], method: str = "", variant: str = "", run: str = ""
) -> Metrics:
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
    return Metrics(
        method=method or (items[0].method if items else ""),
        variant=variant or (items[0].variant if items else ""),
        run=run,
        n=len(items),
        scored=len(scored),
        correct=correct,
        accuracy=_ratio(correct, len(scored)),
        failures=len(failed),
        failure_kinds=dict(sorted(kinds.items())),
        answered=sum(1 for r in items if r.status == "answered"),
        answered_accuracy=_ratio(sum(1 for r in answered if r.correct), len(answered)),
        categories=categories,
        cost={name: Distribution.of([get(r) for r in ran]) for name, get in COSTS.items()},
    )


def load_run(folder: Path) -> tuple[RunManifest, list[ItemRecord]]:
    """A method folder's manifest and records, for reports."""
    run = RunFolder(folder)
    manifest = run.read_manifest()
    if manifest is None:
        raise ConfigError(f"{folder} has no run.json: not an lvr1 eval method folder")
    return manifest, list(run.records().values())


def summary_line(outcome: EvalOutcome) -> str:
    """One line for the terminal: what ran, the accuracy, failures and mean time."""
    m = compute_metrics(outcome.records)
    acc = f"{m.accuracy:.1%} ({m.correct}/{m.scored})" if m.accuracy is not None else "n/a"
    kinds = ", ".join(f"{k} {v}" for k, v in m.failure_kinds.items())
    fail = f"{m.failures} failures ({kinds})" if m.failures else "no failures"
    state = "interrupted" if outcome.interrupted else "done"
    return (
        f"{outcome.manifest.method} [{outcome.manifest.variant}] {state}: ran {outcome.ran}, "
        f"skipped {outcome.skipped} finished; {m.n} results, accuracy {acc}, {fail}, "
        f"{m.cost['seconds'].mean:.1f} s and {m.cost['tokens'].mean:.0f} tokens per question; "
        f"{outcome.folder}"
    )
