"""The one geometry of the caption tree.

Captions, video_qa clips, grounding hints, rewards and the evidence in traces
all ask this module where a node starts and ends; nobody else computes a width
or a span. The reference split frames flat for captions but nested for
video_qa, so their boundaries could disagree by a frame; here every span comes
from the same flat partition of the timeline.

Node ids are 1-based tuples: ``(h,)`` high, ``(h, m)`` medium, ``(h, m, l)``
low (leaf). A level-``k`` node is the flat segment ``(h-1) w^(k-1) + ... ``
among ``w^k`` equal slices of ``[0, duration)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from longvideo_r1.errors import TreeError

NodeId = tuple[int, ...]

LEVELS: tuple[str, ...] = ("high", "medium", "low")
"""Level names by depth (depth 1 = high)."""


def width_for_duration(duration_s: float, min_width: int = 4, max_width: int = 8) -> int:
    """Tree width ``clamp(round((D / 16) ** (1/3)), min, max)`` as in the paper.

    Leaves then last about 12-23 s in the unclamped range; MLVU-length videos
    use ``min_width=3``.
    """
    if duration_s <= 0 or not math.isfinite(duration_s):
        raise TreeError(f"video duration must be a positive number of seconds, got {duration_s}")
    if not 1 <= min_width <= max_width:
        raise TreeError(f"need 1 <= min_width <= max_width, got {min_width} and {max_width}")
    return max(min_width, min(max_width, round((duration_s / 16) ** (1 / 3))))


@dataclass(frozen=True)
class LevelPlan:
    """How many frames a caption call samples from one node, and how large."""

    frames: int
    max_side: int
    max_words: int


DEFAULT_PLANS: dict[str, LevelPlan] = {
    "high": LevelPlan(frames=128, max_side=256, max_words=400),
    "medium": LevelPlan(frames=64, max_side=362, max_words=400),
    "low": LevelPlan(frames=32, max_side=512, max_words=200),
}
DEFAULT_QA_PLAN = LevelPlan(frames=16, max_side=1024, max_words=0)


@dataclass(frozen=True)
class Node:
    """One segment of the tree with its span in seconds and in frames."""

    id: NodeId
    start: float
    end: float
    frame_start: int
    frame_end: int

    @property
    def depth(self) -> int:
        return len(self.id)

    @property
    def level(self) -> str:
        return LEVELS[self.depth - 1]

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def label(self) -> str:
        """The id as the protocol writes it: ``(1,)``, ``(1, 2)``, ``(1, 2, 3)``."""
        return format_node_id(self.id)


def format_node_id(node_id: NodeId) -> str:
    """Python-literal form of an id, e.g. ``(2,)`` or ``(1, 3, 4)``."""
    if len(node_id) == 1:
        return f"({node_id[0]},)"
    return "(" + ", ".join(str(i) for i in node_id) + ")"


_ID_RE = re.compile(r"^\(?\s*(\d+)\s*(?:[,.]\s*(\d+)\s*)?(?:[,.]\s*(\d+)\s*)?,?\s*\)?$")


def parse_node_id(text: str) -> NodeId:
    """Read ``(1, 2)``, ``1,2`` or ``1.2`` as a node id (range is checked by the tree)."""
    match = _ID_RE.match(text.strip())
    if not match:
        raise TreeError(f"not a node id: {text!r} (expected e.g. (2,), (2, 3) or (2, 3, 1))")
    return tuple(int(g) for g in match.groups() if g is not None)


@dataclass(frozen=True)
class Tree:
    """Geometry of one video's caption tree.

    ``duration`` and ``n_frames`` should come from decoded timestamps (see
    :mod:`longvideo_r1.media.video`); seconds are authoritative and frame ranges are
    the matching slices of the frame index for constant-rate video.
    """

    duration: float
    n_frames: int
    width: int
    plans: dict[str, LevelPlan] = field(default_factory=lambda: dict(DEFAULT_PLANS))
    qa_plan: LevelPlan = DEFAULT_QA_PLAN

    def __post_init__(self) -> None:
        if self.duration <= 0 or not math.isfinite(self.duration):
            raise TreeError(f"video duration must be positive, got {self.duration}")
        if self.n_frames < 1:
            raise TreeError(f"video must have at least one frame, got {self.n_frames}")
        if self.width < 1:
            raise TreeError(f"tree width must be at least 1, got {self.width}")

    @classmethod
    def for_video(
        cls,
        duration: float,
        n_frames: int,
        min_width: int = 4,
        max_width: int = 8,
        width: int | None = None,
        plans: dict[str, LevelPlan] | None = None,
        qa_plan: LevelPlan | None = None,
    ) -> Tree:
        """Tree with the paper's width for this duration unless ``width`` is given."""
        w = width if width is not None else width_for_duration(duration, min_width, max_width)
        return cls(
            duration=duration,
            n_frames=n_frames,
            width=w,
            plans=dict(plans or DEFAULT_PLANS),
            qa_plan=qa_plan or DEFAULT_QA_PLAN,
        )

    # ids <-> flat indices ------------------------------------------------------------

    def count(self, depth: int) -> int:
        """Number of nodes at a depth (1 = high)."""
        return self.width**depth

    def validate(self, node_id: NodeId) -> NodeId:
        """Return the id as a tuple of ints, or raise naming the valid range."""
        try:
            node_id = tuple(int(i) for i in node_id)
        except (TypeError, ValueError):
            raise TreeError(f"not a node id: {node_id!r}") from None
        if not 1 <= len(node_id) <= len(LEVELS):
            raise TreeError(
                f"node id {node_id!r} has {len(node_id)} parts; ids have 1 (high), "
                "2 (medium) or 3 (low) parts"
            )
        for part in node_id:
            if not 1 <= part <= self.width:
                shape = ", ".join([f"1..{self.width}"] * len(node_id))
                raise TreeError(
                    f"node {format_node_id(node_id)} is out of range: this video has width "
                    f"{self.width}, so {LEVELS[len(node_id) - 1]} ids are ({shape})"
                )
        return node_id

    def flat_index(self, node_id: NodeId) -> int:
        """0-based position among the nodes of its level, e.g. (h-1)w^2+(m-1)w+(l-1)."""
        index = 0
        for part in self.validate(node_id):
            index = index * self.width + (part - 1)
        return index

    def from_flat(self, depth: int, index: int) -> NodeId:
        """Inverse of :meth:`flat_index`."""
        if not 1 <= depth <= len(LEVELS):
            raise TreeError(f"depth must be 1..{len(LEVELS)}, got {depth}")
        if not 0 <= index < self.count(depth):
            raise TreeError(f"flat index {index} out of range 0..{self.count(depth) - 1}")
        parts = []
        for _ in range(depth):
            index, rest = divmod(index, self.width)
            parts.append(rest + 1)
        return tuple(reversed(parts))

    # spans -------------------------------------------------------------------------

    def node(self, node_id: NodeId) -> Node:
        """The node with its [start, end) seconds and [frame_start, frame_end) frames."""
        node_id = self.validate(node_id)
        depth = len(node_id)
        k = self.flat_index(node_id)
        n = self.count(depth)
        start = self._start(depth, k)
        end = self.duration if k + 1 == n else self._start(depth, k + 1)
        return Node(
            id=node_id,
            start=start,
            end=end,
            frame_start=(self.n_frames * k) // n,
            frame_end=(self.n_frames * (k + 1)) // n,
        )

    def nodes(self, depth: int) -> list[Node]:
        """All nodes of one level, in time order."""
        return [self.node(self.from_flat(depth, k)) for k in range(self.count(depth))]

    def walk(self, depths: tuple[int, ...] = (1, 2, 3)) -> Iterator[Node]:
        """Nodes of the given depths, coarse levels first, each in time order."""
        for depth in depths:
            yield from self.nodes(depth)

    def children(self, node_id: NodeId) -> list[Node]:
        node_id = self.validate(node_id)
        if len(node_id) == len(LEVELS):
            return []
        return [self.node((*node_id, i)) for i in range(1, self.width + 1)]

    def _start(self, depth: int, index: int) -> float:
        """Start of the index-th node of a level, on the leaf grid.

        Every level's boundaries are computed as leaf boundaries, so a parent
        starts exactly (to the bit) where its first child starts.
        """
        leaves = self.count(len(LEVELS))
        return self.duration * (index * leaves // self.count(depth)) / leaves

    def index_at(self, depth: int, t: float) -> int:
        """Flat index of the node of a level whose [start, end) holds ``t`` (clamped).

        The first guess divides; it is then checked against the spans :meth:`node`
        reports, so a time exactly on a boundary belongs to the node that starts there.
        """
        n = self.count(depth)
        if not t > 0:
            return 0
        k = min(n - 1, int(t / self.duration * n))
        while k > 0 and self._start(depth, k) > t:
            k -= 1
        while k + 1 < n and self._start(depth, k + 1) <= t:
            k += 1
        return k

    def leaf_at(self, t: float) -> Node:
        """The leaf whose span holds time ``t`` (clamped to the video)."""
        depth = len(LEVELS)
        return self.node(self.from_flat(depth, self.index_at(depth, t)))

    def covering(self, start: float, end: float, depth: int) -> list[Node]:
        """Nodes of a level whose spans overlap ``[start, end)``; an instant is one node.

        An interval ending exactly where a node starts does not reach into it.
        """
        first = self.index_at(depth, start)
        last = first
        if end > start:
            last = self.index_at(depth, end)
            if last > first and self._start(depth, last) >= end:
                last -= 1
        return [self.node(self.from_flat(depth, k)) for k in range(first, last + 1)]

    # frame plans -------------------------------------------------------------------

    def plan(self, node_id: NodeId) -> LevelPlan:
        return self.plans[LEVELS[len(self.validate(node_id)) - 1]]

    def sample_times(self, node_id: NodeId, frames: int | None = None) -> list[float]:
        """Timestamps a caption call samples: centres of equal slices of the span."""
        node = self.node(node_id)
        n = frames if frames is not None else self.plan(node_id).frames
        return _centres(node.start, node.end, n)

    def qa_times(self, node_id: NodeId) -> list[float]:
        """Timestamps of a video_qa clip: the leaf's own span, never a neighbour's."""
        node_id = self.validate(node_id)
        if len(node_id) != len(LEVELS):
            raise TreeError(
                f"video_qa needs a low-level id (h, m, l); got {format_node_id(node_id)}"
            )
        node = self.node(node_id)
        return _centres(node.start, node.end, self.qa_plan.frames)


def _centres(start: float, end: float, n: int) -> list[float]:
    if n < 1:
        raise TreeError(f"frame count must be at least 1, got {n}")
    step = (end - start) / n
    return [start + (i + 0.5) * step for i in range(n)]
