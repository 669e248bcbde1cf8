"""The caption service: every caption request goes through the store.

The agent asks for captions lazily (``get``: one node when it navigates
there), ``lvr1 caption`` builds them eagerly (``build``: all nodes of some
levels, concurrently). Both paths make a caption at most once per key: the
store is checked first, a per-node lock keeps threads from making the same
node twice, a claim in the store (with a lease this service renews while the
call runs) keeps other processes from making it too, and each caption is
committed the moment it is made, so a build that is interrupted or killed
loses only the calls in flight and the next run picks up where it stopped. A
node that fails is recorded with what the attempt spent and skipped over; the
build reports it and the next run retries it. A forced rebuild stages its new
captions and swaps them in when it is done, so until then the old are served.

This module talks to videos and captioners only through the attributes the
design contract names (``video.fingerprint``, ``video.info``,
``captioner.identity``, ``captioner.caption(ctx)``), so it works with any
implementation of them.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from longvideo_r1.captions.captioner import CallCost, CaptionContext, charge_failure, spent_by
from longvideo_r1.captions.records import CaptionKey, CaptionRecord, ClaimOwner, VideoRecord
from longvideo_r1.captions.reference import strip_caption_tags
from longvideo_r1.captions.store import ArtifactCache, CaptionStore
from longvideo_r1.errors import CaptionError, LVR1Error, StoreError
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
    """What captions cost: cache hits against calls made, and what the calls used.

    The totals count every call this side paid for, failed ones included;
    ``failed_seconds`` and ``failed_frames_decoded`` say how much of them the
    failures were. A caption another process made is a hit here: it costs 0.
    """

    hits: int = 0
    made: int = 0
    failed: int = 0
    seconds: float = 0.0
    frames_decoded: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failed_seconds: float = 0.0
    failed_frames_decoded: int = 0

    def add_made(self, record: CaptionRecord) -> None:
        self.made += 1
        self._spend(record.seconds, record.frames_decoded)
        self.prompt_tokens += record.prompt_tokens
        self.completion_tokens += record.completion_tokens

    def add_failed(self, spent: CallCost) -> None:
        self.failed += 1
        self._spend(spent.seconds, spent.frames_decoded)
        self.failed_seconds += spent.seconds
        self.failed_frames_decoded += spent.frames_decoded
        self.prompt_tokens += spent.prompt_tokens
        self.completion_tokens += spent.completion_tokens

    def _spend(self, seconds: float, frames_decoded: int) -> None:
        self.seconds += seconds
        self.frames_decoded += frames_decoded


@dataclass(frozen=True)
class Fetched:
    """A caption and whether this request paid for it (False: served from the store).

    When ``made``, the record's cost fields are what this request paid, even in
    the rare race another process won (its text is served, its cost is not ours).
    """

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
    forced: bool = False
    swapped: int = 0
    """With ``force``: new captions that replaced the old ones at the end."""

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
        if self.forced:
            parts.append(
                f"{self.swapped} swapped in for the old"
                if not self.interrupted
                else "the old captions stay in use until a --force run finishes"
            )
        cost = self.cost
        failed = (
            f"; failed calls {cost.failed_seconds:.1f} s, {cost.failed_frames_decoded} frames"
            if cost.failed
            else ""
        )
        return (
            f"{self.total} captions: " + ", ".join(parts) + f" in {self.seconds:.1f} s "
            f"(captioning {cost.seconds:.1f} s, {cost.frames_decoded} frames decoded, "
            f"{cost.prompt_tokens} prompt + {cost.completion_tokens} completion tokens{failed})"
        )


@dataclass(frozen=True)
class _Outcome:
    node: NodeId
    status: str  # "made" | "cached" | "failed" | "busy" | "stopped"
    record: CaptionRecord | None = None
    error: str = ""
    spent: CallCost | None = None


class _Busy(Exception):
    """Another process is making the node; a build comes back to it later."""


class _Stopped(Exception):
    """The build was interrupted while this node waited for another process."""


class _Heartbeat:
    """Renews this service's claims while their captions are made, so a long call keeps them.

    A thread runs only while claims are held. If the process dies, renewal
    stops with it and the lease runs out (on this host, the dead pid frees the
    claim at once).
    """

    def __init__(self, store: CaptionStore, owner: Callable[[], ClaimOwner], lease: float):
        self.store = store
        self.owner = owner
        self.lease = lease
        self._held: set[CaptionKey] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, key: CaptionKey) -> None:
        with self._lock:
            self._held.add(key)
            if self._thread is None or not self._thread.is_alive():  # none, or lost in a fork
                self._thread = threading.Thread(
                    target=self._run, name="lvr1-caption-claims", daemon=True
                )
                self._thread.start()

    def drop(self, key: CaptionKey) -> None:
        with self._lock:
            self._held.discard(key)

    def _run(self) -> None:
        while True:
            time.sleep(self.lease / 3)
            with self._lock:
                keys = list(self._held)
                if not keys:
                    self._thread = None
                    return
            with suppress(LVR1Error):  # a busy store: the next beat tries again
                self.store.renew_claims(keys, self.owner(), self.lease)


# the service -----------------------------------------------------------------------


class CaptionService:
    """Captions of one video's tree by one captioner, served from and kept in a store.

    ``lease`` is how long a claim on a node lasts without renewal (it is
    renewed every third of it while the call runs); ``poll`` is the longest
    pause between two looks of a request waiting for another process's caption.
    """

    def __init__(
        self,
        video: VideoLike,
        tree: Tree,
        captioner: CaptionerLike,
        store: CaptionStore,
        cues: Sequence[CueLike] | None = None,
        context_factory: ContextFactory | None = None,
        lease: float = 30.0,
        poll: float = 0.5,
    ):
        self.video = video
        self.tree = tree
        self.captioner = captioner
        self.store = store
        self.cues: tuple[CueLike, ...] = tuple(cues or ())
        self.artifacts = ArtifactCache(store, video.fingerprint)
        self.cost = CaptionCost()
        self.lease = lease
        self.poll = poll
        self._token = uuid.uuid4().hex
        self._heartbeat = _Heartbeat(store, self.owner, lease)
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

    def owner(self) -> ClaimOwner:
        """Who this service is in the claims table (a forked child is someone else)."""
        return ClaimOwner.current(self._token)

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
        paid caption call from a cache hit. A caption another process is
        making is waited for and served as a hit.
        """
        return self._fetch(self.key(node_id))

    def _fetch(
        self,
        key: CaptionKey,
        staged: bool = False,
        stop: threading.Event | None = None,
        wait: bool = True,
    ) -> Fetched:
        """Serve, wait for or make one caption (a staged one for a forced rebuild).

        Without ``wait`` a node another process is making raises :class:`_Busy`.
        """
        lookup = self.store.get_staged if staged else self.store.get_caption
        record = lookup(key)
        if record is None:
            with self._node_lock(key.node_id):
                record = self._claim(key, staged, stop, wait)
                if record is None:
                    try:
                        return Fetched(self._make(key, staged), made=True)
                    finally:
                        self._release(key)
        with self._cost_lock:
            self.cost.hits += 1
        return Fetched(record, made=False)

    def _node_lock(self, node_id: NodeId) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(node_id, threading.Lock())

    def _claim(
        self, key: CaptionKey, staged: bool, stop: threading.Event | None, wait: bool
    ) -> CaptionRecord | None:
        """The caption if it is stored now, else None once this service holds the claim.

        While another process holds it, look again with growing pauses (up to
        ``poll``) until it stores the caption, gives the claim up or lets it lapse.
        """
        pause = min(0.02, self.poll)
        while True:
            claim = self.store.claim(key, self.owner(), self.lease, staged=staged)
            if claim.record is not None:
                return claim.record
            if claim.ours:
                self._heartbeat.hold(key)
                return None
            if not wait:
                raise _Busy(claim.holder)
            if stop is not None and stop.is_set():
                raise _Stopped
            time.sleep(pause)
            pause = min(pause * 2, self.poll)

    def _release(self, key: CaptionKey) -> None:
        """Give the claim up; if the store is busy the lease lapses by itself."""
        self._heartbeat.drop(key)
        with suppress(StoreError):
            self.store.release_claim(key, self.owner())

    def _make(self, key: CaptionKey, staged: bool = False) -> CaptionRecord:
        """Call the captioner once; store the caption, or record the failure and re-raise.

        A failure is recorded with what the call spent (the frames it decoded,
        its time, the tokens of a reply that could not be used), and the error
        carries that spend as ``exc.spent`` for whoever accounts for it.
        """
        node = self.tree.node(key.node_id)
        started = time.perf_counter()
        try:
            result = self.captioner.caption(self._context(node))
            record = self._record(key, result, time.perf_counter() - started)
        except Exception as exc:
            spent = spent_by(exc) or CallCost(0, seconds=time.perf_counter() - started)
            charge_failure(exc, spent)
            self.store.record_failure(
                key,
                describe_error(exc),
                seconds=spent.seconds,
                frames_decoded=spent.frames_decoded,
                prompt_tokens=spent.prompt_tokens,
                completion_tokens=spent.completion_tokens,
            )
            with self._cost_lock:
                self.cost.add_failed(spent)
            raise
        stored = (self.store.stage_caption if staged else self.store.put_caption)(record)
        with self._cost_lock:
            self.cost.add_made(record)
        # the stored text is served; the cost is this call's even if another process won
        return replace(
            stored,
            seconds=record.seconds,
            frames_decoded=record.frames_decoded,
            prompt_tokens=record.prompt_tokens,
            completion_tokens=record.completion_tokens,
        )

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
        ``retry_failed`` is False). ``force`` remakes the levels' captions
        into a staging table and swaps them in when the build ends
        uninterrupted: until then, and if it is stopped, the old captions are
        served, and the next forced build goes on from what was staged. A
        failure never stops the build. Ctrl-C starts no new call and lets the
        calls in flight land (a second Ctrl-C abandons them); every caption
        made is kept and the report says how many remain. Nodes another
        process is making are left for last, then waited for and counted cached.
        """
        if workers < 1:
            raise CaptionError(f"workers must be at least 1, got {workers}")
        started = time.monotonic()
        nodes = [node.id for node in self.tree.walk(tuple(depths))]
        fp, width = self.video.fingerprint, self.tree.width
        if force:
            have = self.store.staged_nodes(fp, self.identity, width)
        else:
            have = {r.node_id for r in self.store.list_captions(fp, self.identity, width)}
        failed_before = {f.node_id for f in self.store.list_failures(fp, self.identity, width)}
        report = BuildReport(total=len(nodes), forced=force)
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
            self._run(todo, workers, report, bar, staged=force)
        if force and not report.interrupted:
            report.swapped = self.store.swap_staged(fp, self.identity, width, nodes)
        report.seconds = time.monotonic() - started
        return report

    def _run(
        self, todo: list[NodeId], workers: int, report: BuildReport, bar: Bar, staged: bool
    ) -> None:
        """Run the calls in a pool, collecting outcomes on this thread.

        On Ctrl-C no new call starts; calls already running are paid for, so
        they are let finish and kept (a second Ctrl-C abandons them).
        """
        stop = threading.Event()
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lvr1-caption")
        pending: dict[Future[_Outcome], NodeId] = {}

        def submit(node_id: NodeId, wait: bool) -> None:
            pending[pool.submit(self._build_one, node_id, stop, staged, wait)] = node_id

        try:
            for node_id in todo:
                submit(node_id, wait=False)
            self._collect(pending, report, bar, retry=lambda n: submit(n, wait=True))
        except KeyboardInterrupt:
            stop.set()
            report.interrupted = True
            pool.shutdown(wait=False, cancel_futures=True)
            bar.update(
                description="stopping: finishing the calls in flight (Ctrl-C again to abandon them)"
            )
            with suppress(KeyboardInterrupt):
                self._collect(pending, report, bar)
            settled = report.made + report.cached + len(report.failed) + len(report.skipped)
            report.remaining = report.total - settled
        else:
            pool.shutdown(wait=True)

    def _collect(
        self,
        pending: dict[Future[_Outcome], NodeId],
        report: BuildReport,
        bar: Bar,
        retry: Callable[[NodeId], None] | None = None,
    ) -> None:
        """Tally outcomes as they land, waking often; ``retry`` requeues a busy node.

        Short waits keep this (the main) thread responsive to Ctrl-C
        whichever thread the signal lands on. An interrupt raised inside a
        call stops the build like one on this thread, once the outcomes that
        landed with it are counted; while draining (no ``retry``) it only
        loses that call, and busy nodes are left for the next run.
        """
        while pending:
            for future in [f for f in pending if f.cancelled()]:
                del pending[future]  # wait() never reports a future cancelled before it ran
            done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            escaped: list[BaseException] = []
            for future in done:
                node_id = pending.pop(future)
                if future.cancelled():
                    continue
                error = future.exception()
                if error is not None:
                    escaped.append(error)  # KeyboardInterrupt & co. raised inside a call
                elif future.result().status == "busy" and retry is not None:
                    retry(node_id)  # made by another process: wait for it after the rest
                else:
                    self._tally(future.result(), report, bar)
            if escaped and retry is not None:
                raise escaped[0]

    def _build_one(
        self, node_id: NodeId, stop: threading.Event, staged: bool, wait: bool
    ) -> _Outcome:
        """One node of a build; never raises, so one bad node can't stop the others."""
        if stop.is_set():
            return _Outcome(node_id, "stopped")
        try:
            fetched = self._fetch(self.key(node_id), staged=staged, stop=stop, wait=wait)
        except _Busy:
            return _Outcome(node_id, "busy")
        except _Stopped:
            return _Outcome(node_id, "stopped")
        except Exception as exc:
            return _Outcome(node_id, "failed", error=describe_error(exc), spent=spent_by(exc))
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
            report.cost.add_failed(outcome.spent or CallCost(0))
        else:
            return
        bar.update(advance=1, failed=len(report.failed))


def describe_error(exc: BaseException) -> str:
    """One line for failure tables: our errors speak for themselves, others name their type."""
    message = " ".join(str(exc).split())
    if isinstance(exc, LVR1Error):
        return message or type(exc).__name__
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
