"""Jobs and engines: where and how the questions of a run are answered.

A :class:`Job` holds everything a worker needs and is pickled as it is to Ray
actors, so the threads of this process (:class:`ThreadEngine`) and the actors
of :mod:`longvideo_r1.evaluation.cluster` answer with the same code. Both
engines stand below the runner, which only plans, writes and reports.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from longvideo_r1.agent.navigator import RunInterrupted, describe_failure
from longvideo_r1.agent.session import VideoSession, make_reasoning_backend
from longvideo_r1.agent.trace import Trace
from longvideo_r1.config import Settings
from longvideo_r1.errors import LVR1Error
from longvideo_r1.evaluation.methods import Method
from longvideo_r1.evaluation.records import (
    Failure,
    ItemRecord,
    RunWhere,
    failed_record,
    record_from_trace,
    trace_name,
)
from longvideo_r1.llm.embedded import default_threads
from longvideo_r1.llm.factory import backend_from_settings
from longvideo_r1.questions.schema import Question

MAX_OPEN_SESSIONS = 2
"""Videos a worker keeps open at once; questions usually come grouped by video."""

BackendFactory = Callable[[Settings, int], Any]


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
    partial: bool = False
    """An interrupted attempt: ``record`` holds what it spent, and is not the question's
    result (the evaluator keeps its cost as an attempt, and the question runs again)."""


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

    def answer(self, question: Question, worker: _Worker, stop: threading.Event) -> Answered:
        """Answer one question; a ``partial`` answer when ``stop`` interrupted it midway (it
        has no result yet, but what it spent is handed back to be kept).

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
        partial = False
        try:
            trace = self.method.run(question, session, worker.reasoning(), stop)
        except RunInterrupted as interrupted:
            trace, partial = interrupted.trace, True
        except LVR1Error as exc:
            return failed("error", str(exc))
        except Exception as exc:  # a bug must not take the other questions down
            return failed("error", describe_failure(exc))
        record = record_from_trace(
            question, name, variant, trace, time.perf_counter() - started, trace_name(question.id)
        )
        record.worker = worker.index
        return Answered(record, trace, partial=partial)


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
        """Each question's result as soon as it is known; one interrupted midway yields a
        ``partial`` answer with what it spent, one never started yields nothing."""
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
        """One question per worker in flight, the next started as one is handed over: a run
        the evaluator stops (errors in a row) starts nothing after the result that stopped
        it, as the Ray engine does."""
        self.executor = ThreadPoolExecutor(self.size, thread_name_prefix="lvr1-eval")
        waiting = deque(todo)
        self._submit(waiting)
        while self.pending:
            done, _ = wait(list(self.pending), return_when=FIRST_COMPLETED)
            for future in done:
                answered = future.result()
                if answered is not None:
                    yield answered
                self.pending.pop(future, None)  # after the yield: a Ctrl-C there leaves it
                self._submit(waiting)  # for drain, and a stop there starts nothing more

    def _submit(self, waiting: deque[Question]) -> None:
        """Start questions until every worker has one (none once ``stop`` is set)."""
        assert self.executor is not None
        while waiting and len(self.pending) < self.size and not self.stop.is_set():
            q = waiting.popleft()
            self.pending[self.executor.submit(self._item, q)] = q

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
