"""The caption service: every caption request goes through the store.

The agent asks for captions lazily (``get``: one node when it navigates
there), ``lvr1 caption`` builds them eagerly (``build``: all nodes of some
levels, concurrently). Both paths make a caption at most once per key: the
store is checked first, a per-node lock keeps threads from making the same
node twice, and each caption is committed the moment it is made, so a build
that is interrupted or killed loses only the calls in flight and the next run
picks up where it stopped. A node that fails is recorded and skipped over;
the build reports it and the next run retries it.

This module talks to videos and captioners only through the attributes the
design contract names (``video.fingerprint``, ``video.info``,
``captioner.identity``, ``captioner.caption(ctx)``), so it works with any
implementation of them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from longvideo_r1.captions.captioner import CaptionContext
from longvideo_r1.captions.reference import strip_caption_tags
from longvideo_r1.captions.store import (
    ArtifactCache,
    CaptionKey,
    CaptionRecord,
    CaptionStore,
    VideoRecord,
)
from longvideo_r1.errors import CaptionError, LVR1Error
from longvideo_r1.progress import Bar, progress_bar
from longvideo_r1.tree import Node, NodeId, Tree

# the contract, as far as this module relies on it ----------------------------------


class VideoInfoLike(Protocol):
    path: Path
    duration: float
    n_frames: int


class VideoLike(Protocol):
    fingerprint: str
    info: VideoInfoLike


class CaptionResultLike(Protocol):
    text: str
    frame_times: list[float]
    frame_ids: list[int]
    frames_decoded: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float


class CaptionerLike(Protocol):
    identity: str

    def caption(self, ctx: Any) -> CaptionResultLike: ...


class CueLike(Protocol):
    start: float
    end: float
    text: str


ContextFactory = Callable[..., Any]
"""Builds the object handed to ``Captioner.caption`` from keyword arguments
``video, tree, node, cues, artifacts``; by default ``captioners.CaptionContext``."""


# results ---------------------------------------------------------------------------


@dataclass
class CaptionCost:
    """What captions cost: cache hits against calls made, and what the calls used."""

    hits: int = 0
    made: int = 0
    failed: int = 0
    seconds: float = 0.0
    frames_decoded: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add_made(self, record: CaptionRecord) -> None:
        self.made += 1
        self.seconds += record.seconds
        self.frames_decoded += record.frames_decoded
        self.prompt_tokens += record.prompt_tokens
        self.completion_tokens += record.completion_tokens


@dataclass(frozen=True)
class Fetched:
    """A caption and whether this request paid for it (False: served from the store)."""

    record: CaptionRecord
    made: bool


@dataclass
class BuildReport:
    """The outcome of one build; a killed or interrupted build is finished by running again."""

    total: int
    made: int = 0
    cached: int = 0
    failed: list[tuple[NodeId, str]] = field(default_factory=list)
    skipped: list[NodeId] = field(default_factory=list)
    interrupted: bool = False
    remaining: int = 0
    seconds: float = 0.0
    cost: CaptionCost = field(default_factory=CaptionCost)

    @property
    def ok(self) -> bool:
        """Every requested node has a caption now."""
        return not self.failed and not self.skipped and not self.interrupted

    def summary(self) -> str:
        parts = [
            f"{self.made} made",
            f"{self.cached} cached",
            f"{len(self.failed)} failed",
        ]
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped (failed before)")
        if self.interrupted:
            parts.append(f"interrupted with {self.remaining} left")
        cost = self.cost
        return (
            f"{self.total} captions: " + ", ".join(parts) + f" in {self.seconds:.1f} s "
            f"(captioning {cost.seconds:.1f} s, {cost.frames_decoded} frames decoded, "
            f"{cost.prompt_tokens} prompt + {cost.completion_tokens} completion tokens)"
        )


@dataclass(frozen=True)
class _Outcome:
    node: NodeId
    status: str  # "made" | "cached" | "failed" | "stopped"
    record: CaptionRecord | None = None
    error: str = ""


# the service -----------------------------------------------------------------------


class CaptionService:
    """Captions of one video's tree by one captioner, served from and kept in a store."""

    def __init__(
        self,
        video: VideoLike,
        tree: Tree,
        captioner: CaptionerLike,
        store: CaptionStore,
        cues: Sequence[CueLike] | None = None,
        context_factory: ContextFactory | None = None,
    ):
        self.video = video
        self.tree = tree
        self.captioner = captioner
        self.store = store
        self.cues: tuple[CueLike, ...] = tuple(cues or ())
        self.artifacts = ArtifactCache(store, video.fingerprint)
        self.cost = CaptionCost()
        self._context_factory = context_factory
        self._cost_lock = threading.Lock()
        self._locks: dict[NodeId, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        store.register_video(
            VideoRecord(
                fingerprint=video.fingerprint,
                path=str(video.info.path),
                duration=float(video.info.duration),
                n_frames=int(video.info.n_frames),
                width=tree.width,
            )
        )

    @property
    def identity(self) -> str:
        return self.captioner.identity

    def key(self, node_id: NodeId) -> CaptionKey:
        """The store key of a node's caption (the id is validated against the tree)."""
        node_id = self.tree.validate(node_id)
        return CaptionKey(self.video.fingerprint, self.tree.width, node_id, self.identity)

    def cached(self, node_id: NodeId) -> CaptionRecord | None:
        """The stored caption, without making one."""
        return self.store.get_caption(self.key(node_id))

    # lazy ----------------------------------------------------------------------

    def get(self, node_id: NodeId) -> CaptionRecord:
        """The node's caption: from the store, else made now, stored and returned."""
        return self.fetch(node_id).record

    def fetch(self, node_id: NodeId) -> Fetched:
        """Like :meth:`get`, and says whether the caption was made by this call.

        Callers that account per question (the agent's trace) need to tell a
        paid caption call from a cache hit.
        """
        key = self.key(node_id)
        record = self.store.get_caption(key)
        if record is None:
            with self._node_lock(key.node_id):
                record = self.store.get_caption(key)  # made while we waited?
                if record is None:
                    return Fetched(self._make(key), made=True)
        with self._cost_lock:
            self.cost.hits += 1
        return Fetched(record, made=False)

    def _node_lock(self, node_id: NodeId) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(node_id, threading.Lock())

    def _make(self, key: CaptionKey) -> CaptionRecord:
        """Call the captioner once; store the caption, or record the failure and re-raise."""
        node = self.tree.node(key.node_id)
        started = time.perf_counter()
        try:
            result = self.captioner.caption(self._context(node))
            record = self._record(key, result, time.perf_counter() - started)
        except Exception as exc:
            self.store.record_failure(key, describe_error(exc))
            with self._cost_lock:
                self.cost.failed += 1
            raise
        stored = self.store.put_caption(record)
        with self._cost_lock:
            self.cost.add_made(record)
        return stored

    def _context(self, node: Node) -> Any:
        factory = self._context_factory or CaptionContext
        return factory(
            video=self.video,
            tree=self.tree,
            node=node,
            cues=self._cues_for(node),
            artifacts=self.artifacts,
        )

    def _cues_for(self, node: Node) -> list[CueLike]:
        """Cues overlapping the node (an instant cue counts), so prompts stay node-sized."""
        return [
            cue
            for cue in self.cues
            if cue.start < node.end and (cue.end > node.start or cue.start >= node.start)
        ]

    def _record(self, key: CaptionKey, result: CaptionResultLike, elapsed: float) -> CaptionRecord:
        """Check a captioner's result and turn it into what the store keeps."""
        text = strip_caption_tags(str(result.text or ""))
        if not text:
            raise CaptionError(
                f"captioner {self.identity} returned an empty caption for node {key.label}"
            )
        return CaptionRecord(
            fingerprint=key.fingerprint,
            width=key.width,
            node_id=key.node_id,
            identity=key.identity,
            text=text,
            frame_times=tuple(float(t) for t in result.frame_times),
            frame_ids=tuple(int(i) for i in result.frame_ids),
            seconds=float(getattr(result, "seconds", 0.0) or elapsed),
            frames_decoded=int(result.frames_decoded),
            prompt_tokens=int(getattr(result, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(result, "completion_tokens", 0) or 0),
            created_at=time.time(),
        )

    # eager ---------------------------------------------------------------------

    def build(
        self,
        depths: Iterable[int] = (1, 2, 3),
        workers: int = 4,
        progress: bool = True,
        retry_failed: bool = True,
        force: bool = False,
    ) -> BuildReport:
        """Make every missing caption of the given levels, ``workers`` calls at a time.

        Cached nodes are skipped, failed nodes are retried (unless
        ``retry_failed`` is False), ``force`` forgets the levels' captions
        first. A failure never stops the build. Ctrl-C starts no new call and
        lets the calls in flight land (a second Ctrl-C abandons them); every
        caption made is kept and the report says how many remain.
        """
        if workers < 1:
            raise CaptionError(f"workers must be at least 1, got {workers}")
        started = time.monotonic()
        nodes = [node.id for node in self.tree.walk(tuple(depths))]
        fp, width = self.video.fingerprint, self.tree.width
        if force:
            self.store.delete_captions(fp, self.identity, width, nodes)
        have = {r.node_id for r in self.store.list_captions(fp, self.identity, width)}
        failed_before = {f.node_id for f in self.store.list_failures(fp, self.identity, width)}
        report = BuildReport(total=len(nodes))
        todo = []
        for node_id in nodes:
            if node_id in have:
                report.cached += 1
            elif node_id in failed_before and not retry_failed:
                report.skipped.append(node_id)
            else:
                todo.append(node_id)
        total = len(nodes) - len(report.skipped)
        with progress_bar(
            progress,
            title="[bold]captions[/] {task.description}",
            status="{task.fields[failed]} failed",
            description=self.identity,
            total=total,
            done=report.cached,
            failed=0,
        ) as bar:
            self._run(todo, workers, report, bar)
        report.seconds = time.monotonic() - started
        return report

    def _run(self, todo: list[NodeId], workers: int, report: BuildReport, bar: Bar) -> None:
        """Run the calls in a pool, collecting outcomes on this thread.

        On Ctrl-C no new call starts; calls already running are paid for, so
        they are let finish and kept (a second Ctrl-C abandons them).
        """
        stop = threading.Event()
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lvr1-caption")
        pending: dict[Future[_Outcome], NodeId] = {}
        try:
            pending = {pool.submit(self._build_one, node_id, stop): node_id for node_id in todo}
            self._collect(pending, report, bar)
        except KeyboardInterrupt:
            stop.set()
            report.interrupted = True
            pool.shutdown(wait=False, cancel_futures=True)
            bar.update(
                description="stopping: finishing the calls in flight (Ctrl-C again to abandon them)"
            )
            with suppress(KeyboardInterrupt):
                self._collect(pending, report, bar, draining=True)
            settled = report.made + report.cached + len(report.failed) + len(report.skipped)
            report.remaining = report.total - settled
        else:
            pool.shutdown(wait=True)

    def _collect(
        self,
        pending: dict[Future[_Outcome], NodeId],
        report: BuildReport,
        bar: Bar,
        draining: bool = False,
    ) -> None:
        """Tally outcomes as they land, waking often.

        Short waits keep this (the main) thread responsive to Ctrl-C
        whichever thread the signal lands on. An interrupt raised inside a
        call stops the build like one on this thread, once the outcomes that
        landed with it are counted; while draining it only loses that call.
        """
        while pending:
            for future in [f for f in pending if f.cancelled()]:
                del pending[future]  # wait() never reports a future cancelled before it ran
            done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            escaped: list[BaseException] = []
            for future in done:
                del pending[future]
                if future.cancelled():
                    continue
                error = future.exception()
                if error is None:
                    self._tally(future.result(), report, bar)
                else:
                    escaped.append(error)  # KeyboardInterrupt & co. raised inside a call
            if escaped and not draining:
                raise escaped[0]

    def _build_one(self, node_id: NodeId, stop: threading.Event) -> _Outcome:
        """One node of a build; never raises, so one bad node can't stop the others."""
        if stop.is_set():
            return _Outcome(node_id, "stopped")
        try:
            fetched = self.fetch(node_id)
        except Exception as exc:
            return _Outcome(node_id, "failed", error=describe_error(exc))
        return _Outcome(node_id, "made" if fetched.made else "cached", fetched.record)

    @staticmethod
    def _tally(outcome: _Outcome, report: BuildReport, bar: Bar) -> None:
        if outcome.status == "made" and outcome.record is not None:
            report.made += 1
            report.cost.add_made(outcome.record)
        elif outcome.status == "cached":
            report.cached += 1
        elif outcome.status == "failed":
            report.failed.append((outcome.node, outcome.error))
            report.cost.failed += 1
        else:
            return
        bar.update(advance=1, failed=len(report.failed))


def describe_error(exc: BaseException) -> str:
    """One line for failure tables: our errors speak for themselves, others name their type."""
    message = " ".join(str(exc).split())
    if isinstance(exc, LVR1Error):
        return message or type(exc).__name__
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
