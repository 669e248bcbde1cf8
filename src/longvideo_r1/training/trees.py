"""Caption trees without the video: what trajectory generation reads instead of a video.

Both generators drive the production :class:`~longvideo_r1.agent.tools.ToolBox`
over captions already in the store (or made up), so the observations and the
leaf rule are inference's own while nothing is decoded or captioned.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from longvideo_r1.agent.tools import CaptionClipAnswerer, ClipAnswerer, GetCaption, ToolBox, VideoQA
from longvideo_r1.captions.records import CaptionRecord, VideoRecord
from longvideo_r1.captions.service import Fetched
from longvideo_r1.captions.store import CaptionStore
from longvideo_r1.errors import CaptionError, LVR1Error
from longvideo_r1.questions.schema import Question
from longvideo_r1.training.records import TrajectoryError
from longvideo_r1.tree import NodeId, Tree, format_node_id


@dataclass(frozen=True)
class CaptionTree:
    """One video's geometry and the caption of every node, as generation needs them.

    Generation never opens a video: the captions were made (or imported)
    before, and the tree is rebuilt from the duration and frame count the
    store recorded when they were made.
    """

    video_id: str
    tree: Tree
    captions: Mapping[NodeId, str]
    fingerprint: str = ""
    identity: str = "synthetic"
    path: str = ""

    def missing(self) -> list[NodeId]:
        """Nodes of the three levels without a caption, in walk order."""
        return [n.id for n in self.tree.walk() if n.id not in self.captions]

    def text(self, node_id: NodeId) -> str:
        try:
            return self.captions[tuple(node_id)]
        except KeyError:
            raise CaptionError(
                f"video {self.video_id}: no cached caption for node {format_node_id(node_id)} "
                f"under {self.identity}"
            ) from None

    @classmethod
    def from_store(
        cls,
        store: CaptionStore,
        fingerprint: str,
        identity: str,
        video_id: str | None = None,
        width: int | None = None,
    ) -> CaptionTree:
        """The stored captions of one video by one captioner, at the width they were made for."""
        video = store.get_video(fingerprint)
        if video is None:
            raise TrajectoryError(f"the caption store knows no video {fingerprint[:12]}")
        tree = Tree.for_video(video.duration, video.n_frames, width=width or video.width)
        records = store.list_captions(fingerprint, identity, width=tree.width)
        return cls(
            video_id=video_id or Path(video.path).stem,
            tree=tree,
            captions={r.node_id: r.text for r in records},
            fingerprint=fingerprint,
            identity=identity,
            path=video.path,
        )


class TreeSource(Protocol):
    """Finds the caption tree of a question's video (raises :class:`TrajectoryError`)."""

    def get(self, question: Question) -> CaptionTree: ...


class MappingTrees:
    """Caption trees held in memory, by video id (tests, synthetic data)."""

    def __init__(self, trees: Mapping[str, CaptionTree] | Iterable[CaptionTree]):
        items = trees.values() if isinstance(trees, Mapping) else trees
        self.trees = {t.video_id: t for t in items}

    def get(self, question: Question) -> CaptionTree:
        try:
            return self.trees[question.video_id]
        except KeyError:
            raise TrajectoryError(f"no caption tree for video {question.video_id}") from None


class StoreTrees:
    """Caption trees from a :class:`CaptionStore`, matched to questions by video file name.

    The store keys captions by content fingerprint and remembers each video's
    path; a question names its video by id (CG-Bench: ``<video_uid>.mp4``), so
    the file's stem or name finds it. ``fingerprints`` overrides the match.
    Incomplete trees are refused up front unless ``require_complete`` is off:
    a teacher that meets a missing caption mid-run wastes the run.
    """

    def __init__(
        self,
        store: CaptionStore,
        identity: str,
        fingerprints: Mapping[str, str] | None = None,
        require_complete: bool = True,
        cache_size: int = 16,
    ) -> None:
        self.store = store
        self.identity = identity
        self.fingerprints = dict(fingerprints or {})
        self.require_complete = require_complete
        self.cache_size = max(1, cache_size)
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, CaptionTree] = OrderedDict()
        self._by_name: dict[str, list[VideoRecord]] | None = None

    def get(self, question: Question) -> CaptionTree:
        """The tree of the question's video; the last few trees stay in memory."""
        with self._lock:
            key = question.video_id
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            ctree = self._load(question)
            self._cache[key] = ctree
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return ctree

    def _load(self, question: Question) -> CaptionTree:
        fingerprint = self.fingerprints.get(question.video_id) or self._find(question)
        ctree = CaptionTree.from_store(self.store, fingerprint, self.identity, question.video_id)
        missing = ctree.missing()
        if not ctree.captions:
            raise TrajectoryError(
                f"video {question.video_id}: no captions under {self.identity} at width "
                f"{ctree.tree.width}; caption it first (lvr1 caption)"
            )
        if missing and self.require_complete:
            total = len(list(ctree.tree.walk()))
            raise TrajectoryError(
                f"video {question.video_id}: {len(missing)} of {total} captions missing under "
                f"{self.identity}, e.g. {format_node_id(missing[0])}; caption it first"
            )
        return ctree

    def _find(self, question: Question) -> str:
        if self._by_name is None:
            self._by_name = {}
            for video in self.store.list_videos():
                for key in {Path(video.path).stem, Path(video.path).name}:
                    self._by_name.setdefault(key, []).append(video)
        names = (question.video_id, str(question.extra.get("video_file") or ""))
        found = [v for name in names if name for v in self._by_name.get(name, [])]
        if not found:
            raise TrajectoryError(f"video {question.video_id} is not in the caption store")
        # Several copies of one name: the one with most captions, then the latest.
        return max(
            found,
            key=lambda v: (
                len(self.store.list_captions(v.fingerprint, self.identity, width=v.width)),
                v.registered_at,
            ),
        ).fingerprint


def unavailable_trees(questions: Iterable[Question], trees: TreeSource) -> dict[str, str]:
    """Videos of the questions whose caption tree cannot be had, each with the reason.

    Run before a generation so that uncaptioned videos are named at once and
    together, instead of turning into ``skipped`` records one by one (which a
    rerun keeps unless asked to retry them).
    """
    out: dict[str, str] = {}
    seen: set[str] = set()
    for question in questions:
        if question.video_id in seen:
            continue
        seen.add(question.video_id)
        try:
            trees.get(question)
        except LVR1Error as exc:
            out[question.video_id] = str(exc)
    return out


@dataclass(frozen=True)
class _VideoInfo:
    path: Path


@dataclass(frozen=True)
class _VideoStub:
    fingerprint: str
    info: _VideoInfo


class CachedCaptions:
    """A caption source for :class:`~longvideo_r1.agent.tools.GetCaption` that only serves.

    It answers from a :class:`CaptionTree`, so the tools, the observations
    and the leaf rule are the production ones while nothing is decoded or
    captioned; a missing node raises :class:`CaptionError` (the run ends
    ``error``, never with an invented caption).
    """

    def __init__(self, ctree: CaptionTree) -> None:
        self.ctree = ctree
        self.tree = ctree.tree
        self.video = _VideoStub(ctree.fingerprint, _VideoInfo(Path(ctree.path or ctree.video_id)))

    @property
    def identity(self) -> str:
        return self.ctree.identity

    def fetch(self, node_id: NodeId) -> Fetched:
        record = CaptionRecord(
            fingerprint=self.ctree.fingerprint,
            width=self.tree.width,
            node_id=tuple(node_id),
            identity=self.ctree.identity,
            text=self.ctree.text(node_id),
        )
        return Fetched(record, made=False)

    def cached(self, node_id: NodeId) -> CaptionRecord | None:
        """The node's caption if the tree holds it: what the retrieval guide (``--guide``)
        ranks unread segments by, as it would a store's."""
        try:
            return self.fetch(node_id).record
        except CaptionError:
            return None


AnswererFactory = Callable[[CaptionTree, Question], ClipAnswerer]


def caption_answerer(ctree: CaptionTree, question: Question) -> ClipAnswerer:
    """video_qa from the leaf's own caption, marked as such (no vision model involved)."""
    return CaptionClipAnswerer(CachedCaptions(ctree))


def make_toolbox(ctree: CaptionTree, answerer: ClipAnswerer) -> ToolBox:
    """The production tools over a cached tree: same observations, same leaf rule."""
    source = CachedCaptions(ctree)
    return ToolBox(ctree.tree, GetCaption(source), VideoQA(answerer, ctree.tree))
