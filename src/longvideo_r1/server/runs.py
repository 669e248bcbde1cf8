"""Questions asked through the server: queued on one worker, their events kept for readers.

The embedded reasoning model is one llama.cpp context: two questions on it at
once would interleave their conversations. So every question goes through
one queue and one worker thread that owns the reasoning backend (made on
first use, kept until the server stops); a question asked while another runs
waits and is told how many are ahead of it. Each run keeps its events, so a
page that connects late, or twice, reads the run from its start.

A run works as ``lvr1 ask`` does: the session's navigator with the server's
agent settings, and its trace written where ``ask`` writes them.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longvideo_r1.agent.config import AgentConfig
from longvideo_r1.agent.session import VideoSession
from longvideo_r1.agent.trace import Round, trace_file_name
from longvideo_r1.errors import LVR1Error, one_line
from longvideo_r1.llm.backends import ChatBackend
from longvideo_r1.server.events import RunningCost, answer_event, opening_event, round_event
from longvideo_r1.server.paths import NotFound
from longvideo_r1.server.traces import TraceShelf

log = logging.getLogger(__name__)

RUNS_KEPT = 200
"""Finished runs whose events stay readable (their traces stay on disk regardless)."""


@dataclass
class Run:
    """One question on one video: its events so far and whether it has ended."""

    id: str
    video_id: str
    session: VideoSession
    question: str
    choices: list[str] | None
    stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    """Set when the server stops: readers are let go at once (the run itself is lost)."""
    events: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def emit(self, event: dict[str, Any], last: bool = False) -> None:
        with self._cond:
            self.events.append(event)
            self.done = self.done or last
            self._cond.notify_all()

    def follow(self, wait: float = 15.0) -> Iterator[dict[str, Any] | None]:
        """The run's events from the first, as they come; None after ``wait`` seconds of
        quiet (a reader sends a keep-alive then), ending after the last event."""
        seen = 0
        while True:
            with self._cond:
                if seen == len(self.events) and not self.done and not self.stopping.is_set():
                    self._cond.wait(wait)
                fresh = self.events[seen:]
                seen += len(fresh)
                finished = self.done and seen == len(self.events)
            if not fresh and not finished:
                yield None
            yield from fresh
            if finished:
                return
            if self.stopping.is_set():
                yield {"kind": "error", "message": "the server is stopping; this run is lost"}
                return

    def let_go(self) -> None:
        """Wake the readers so they see the server stopping."""
        with self._cond:
            self._cond.notify_all()


class RunQueue:
    """One worker thread answering the queued questions in turn."""

    def __init__(
        self,
        backend_factory: Callable[[], ChatBackend],
        config: AgentConfig,
        shelf: TraceShelf,
        trace_dir: Path,
    ) -> None:
        self._backend_factory = backend_factory
        self._backend: ChatBackend | None = None
        self.config = config
        self.shelf = shelf
        self.trace_dir = trace_dir
        self._queue: queue.Queue[Run | None] = queue.Queue()
        self._runs: dict[str, Run] = {}
        self._lock = threading.Lock()
        self._waiting = 0
        self._stopping = threading.Event()
        self._worker = threading.Thread(target=self._work, name="lvr1-serve-runs", daemon=True)
        self._worker.start()

    def submit(
        self, session: VideoSession, video_id: str, question: str, choices: list[str] | None
    ) -> Run:
        """Queue a question (already checked by the caller) and return its run."""
        run = Run(secrets.token_hex(8), video_id, session, question, choices, self._stopping)
        with self._lock:
            self._runs[run.id] = run
            ahead = self._waiting
            self._waiting += 1
            self._forget_old()
        run.emit({"kind": "status", "at": 0.0, "text": _queued_text(ahead), "ahead": ahead})
        self._queue.put(run)
        return run

    def get(self, run_id: str) -> Run:
        with self._lock:
            run = self._runs.get(run_id)
        if run is None:
            raise NotFound(f"no run with id {run_id!r}")
        return run

    def let_readers_go(self) -> None:
        """End every open event stream now (the server is stopping, and waits for them)."""
        self._stopping.set()
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.let_go()

    def close(self, timeout: float = 2.0) -> None:
        """Stop after the question in hand; the backend is closed by the worker."""
        self.let_readers_go()
        self._queue.put(None)
        self._worker.join(timeout)

    def _forget_old(self) -> None:
        done = [r for r in self._runs.values() if r.done]
        for old in done[: max(0, len(self._runs) - RUNS_KEPT)]:
            del self._runs[old.id]

    def _work(self) -> None:
        try:
            while (run := self._queue.get()) is not None:
                try:
                    self._answer(run)
                except Exception as exc:  # a bug: the page hears of it, the server lives on
                    log.exception("question %r failed", run.question[:60])
                    run.emit({"kind": "error", "message": f"internal error: {one_line(exc)}"}, True)
                finally:
                    with self._lock:
                        self._waiting -= 1
        finally:
            if self._backend is not None:
                self._backend.close()

    def _answer(self, run: Run) -> None:
        started = time.perf_counter()
        session = run.session
        run.emit({"kind": "status", "at": 0.0, "text": "reading the high-level captions"})
        try:
            if self._backend is None:
                self._backend = self._backend_factory()
            navigator = session.navigator(self._backend, self.config)
        except LVR1Error as exc:
            run.emit({"kind": "error", "message": one_line(exc)}, last=True)
            return
        cached_before = set(session.cached_captions())
        cost = RunningCost()
        opened = {n.id for n in session.tree.nodes(1)} <= cached_before
        if opened:  # the opening reads them from the store at once: show them now
            run.emit(
                opening_event(session.tree, session.cached_captions(), cached_before, cost, 0.0)
            )

        def on_round(rnd: Round) -> None:
            nonlocal opened
            at = round(time.perf_counter() - started, 3)
            if not opened:
                opened = True
                run.emit(
                    opening_event(session.tree, session.cached_captions(), cached_before, cost, at)
                )
            run.emit(round_event(session.tree, rnd, cost, at))

        trace = navigator.run(run.question, run.choices, on_round=on_round)
        if not opened and trace.high_captions:
            at = round(time.perf_counter() - started, 3)
            run.emit(
                opening_event(session.tree, session.cached_captions(), cached_before, cost, at)
            )
        path = self.trace_dir / trace_file_name(session.video.fingerprint)
        trace.save(path)
        at = round(time.perf_counter() - started, 3)
        run.emit(answer_event(trace, self.shelf.id_of(path), at), last=True)


def _queued_text(ahead: int) -> str:
    if ahead == 0:
        return "starting"
    return f"queued behind {ahead} question{'s' if ahead > 1 else ''}"
