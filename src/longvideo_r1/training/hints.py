"""Grounding hints: where a question's answer lies in the tree, told to a teacher step by step.

Training data comes from a strong teacher model playing the agent. When the
teacher answers wrongly, its wrong turn is dropped and it is nudged towards
the part of the video that holds the answer, a little more precisely each
time: first the high-level segment(s), then the medium ids, then the low
ids, then a warning that the captions there may be wrong and the clip should
be checked with video_qa. A fifth wrong answer ends the attempt.

The "where" comes from a benchmark's clue intervals (CG-Bench's
``clue_intervals``, seconds). Intervals that nearly touch are merged first
(a gap of at most :attr:`HintConfig.max_gap` seconds), then each merged
interval is mapped to node ids through :mod:`longvideo_r1.tree` only, the
one geometry every other module uses. Boundaries are half-open like the
spans themselves: an interval that ends exactly where a node starts does not
reach into that node, and a zero-length interval (an instant) belongs to the
leaf whose span holds it, and to that leaf's ancestors.

The hint texts are written for the teacher alone: each one asks it to use
the hint but to reason as though it had found that part itself, so the kept
trajectory reads as the agent's own navigation. The hints never enter the
exported conversations.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from longvideo_r1.errors import ConfigError
from longvideo_r1.options import option
from longvideo_r1.tree import LEVELS, Node, NodeId, Tree, format_node_id

Interval = tuple[float, float]
HintKind = Literal["high", "medium", "low", "verify"]

HINT_KINDS: tuple[HintKind, ...] = ("high", "medium", "low", "verify")
"""The escalation, in order: hint ``k`` (1-based) is ``HINT_KINDS[k - 1]``."""

_EPS = 1e-6
"""Seconds of slack when comparing a gap with the merge threshold: ``25.1 - 20.1`` is
``5.000000000000002`` in floating point and must still count as a 5 s gap."""


@dataclass(frozen=True)
class HintConfig:
    """How clue intervals become hints."""

    max_gap: float = option(
        5.0, "Clue intervals whose gap is at most this many seconds are merged into one."
    )
    max_hints: int = option(
        4,
        "Hints given before giving up (1: high ids, 2: medium ids, 3: low ids, 4: verify "
        "with video_qa); one more wrong answer after the last hint ends the attempt.",
    )
    max_listed: int = option(
        12, "Node ids named in one hint at most; the rest are summarised as a count."
    )

    def __post_init__(self) -> None:
        if not (self.max_gap >= 0 and math.isfinite(self.max_gap)):
            raise ConfigError(f"max_gap must be 0 or more seconds, got {self.max_gap}")
        if not 0 <= self.max_hints <= len(HINT_KINDS):
            raise ConfigError(f"max_hints must be 0..{len(HINT_KINDS)}, got {self.max_hints}")
        if self.max_listed < 1:
            raise ConfigError(f"max_listed must be at least 1, got {self.max_listed}")


# intervals -> node ids -----------------------------------------------------------------


def merge_intervals(intervals: Iterable[Sequence[float]], max_gap: float = 5.0) -> list[Interval]:
    """Sorted intervals with every pair closer than ``max_gap`` seconds joined.

    A question's evidence is often annotated as several pieces of one scene;
    a few seconds apart they are one place to look, and a hint that names
    them once is both shorter and more natural.
    """
    items = sorted((float(s), float(e)) for s, e in intervals)
    merged: list[Interval] = []
    for start, end in items:
        if end < start:
            raise ConfigError(f"clue interval [{start}, {end}] ends before it starts")
        if merged and start - merged[-1][1] <= max_gap + _EPS:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def nodes_for_interval(tree: Tree, start: float, end: float, depth: int) -> list[Node]:
    """Nodes of one level that the half-open interval ``[start, end)`` reaches into.

    An instant (``end <= start``) maps to the node holding it. Clamped to the video.
    """
    start = min(max(0.0, start), tree.duration)
    end = min(max(0.0, end), tree.duration)
    return tree.covering(start, max(start, end), depth)


def leaf_holding(tree: Tree, t: float) -> Node:
    """The leaf whose ``[start, end)`` holds ``t`` (the last leaf for ``t >= duration``)."""
    return tree.leaf_at(t)


@dataclass(frozen=True)
class Grounding:
    """Where a question's answer lies: merged intervals and the ids of every level over them."""

    intervals: tuple[Interval, ...]
    high: tuple[NodeId, ...]
    medium: tuple[NodeId, ...]
    low: tuple[NodeId, ...]

    def ids(self, depth: int) -> tuple[NodeId, ...]:
        """The ids of one level (1 = high)."""
        return (self.high, self.medium, self.low)[depth - 1]

    @property
    def empty(self) -> bool:
        return not self.intervals

    def to_dict(self) -> dict[str, object]:
        return {
            "intervals": [list(i) for i in self.intervals],
            "high": [list(i) for i in self.high],
            "medium": [list(i) for i in self.medium],
            "low": [list(i) for i in self.low],
        }


def ground(tree: Tree, intervals: Iterable[Sequence[float]], max_gap: float = 5.0) -> Grounding:
    """Merge the clue intervals and map them to node ids, level by level, in time order."""
    merged = merge_intervals(intervals, max_gap)
    per_depth: list[tuple[NodeId, ...]] = []
    for depth in range(1, len(LEVELS) + 1):
        ids: list[NodeId] = []
        for start, end in merged:
            for node in nodes_for_interval(tree, start, end, depth):
                if node.id not in ids:
                    ids.append(node.id)
        per_depth.append(tuple(sorted(ids, key=lambda i: tree.flat_index(i))))
    return Grounding(tuple(merged), per_depth[0], per_depth[1], per_depth[2])


# hints ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hint:
    """One escalation step: which level it names and the text the teacher reads."""

    level: int
    """1-based position in the escalation."""
    kind: HintKind
    node_ids: tuple[NodeId, ...]
    text: str


_PREAMBLE = (
    "[Private hint for this question. Use it, but reason as though you had worked this "
    "out yourself from the captions: never mention the hint or that you were told. "
    "Answering from what you have read so far would be wrong.]"
)


def hint_text(kind: HintKind, tree: Tree, grounding: Grounding, max_listed: int = 12) -> str:
    """The words of one hint, in this project's phrasing; spans come from the tree."""
    if kind == "high":
        where = _where(tree, grounding.high, max_listed)
        body = f"The relevant part of the video is high-level {where}."
    elif kind == "medium":
        where = _where(tree, grounding.medium, max_listed)
        body = (
            f"The relevant part of the video is medium-level {where}. Read the caption there "
            "before you answer."
        )
    elif kind == "low":
        where = _where(tree, grounding.low, max_listed)
        body = (
            f"The relevant part of the video is low-level {where}. Read the caption there "
            "before you answer."
        )
    else:
        where = _where(tree, grounding.low, max_listed)
        body = (
            f"The captions of the relevant part, low-level {where}, may be wrong or miss the "
            "detail that matters. Check the clip itself with video_qa (fetch its low-level "
            "caption first if you have not) and trust what you see over the captions."
        )
    return f"{_PREAMBLE}\n{body}"


def _where(tree: Tree, ids: Sequence[NodeId], max_listed: int) -> str:
    """``segment (2, 3) (from 84.4 to 93.8 s)`` or ``segments ...`` with a span each."""
    shown = [
        f"{format_node_id(i)} (from {tree.node(i).start:.1f} to {tree.node(i).end:.1f} s)"
        for i in ids[:max_listed]
    ]
    if len(ids) > max_listed:
        shown.append(f"and {len(ids) - max_listed} more in between")
    noun = "segment" if len(ids) == 1 else "segments"
    return f"{noun} {', '.join(shown)}"


def hint_for(
    level: int, tree: Tree, grounding: Grounding, config: HintConfig | None = None
) -> Hint | None:
    """The hint after the ``level``-th wrong answer, or ``None``: time to give up.

    Without clue intervals there is nothing to point at, so the first wrong
    answer already ends the attempt.
    """
    config = config or HintConfig()
    if level < 1:
        raise ValueError(f"hint levels count from 1, got {level}")
    if level > config.max_hints or grounding.empty:
        return None
    kind = HINT_KINDS[level - 1]
    ids = grounding.high if kind == "high" else grounding.medium if kind == "medium" else None
    node_ids = ids if ids is not None else grounding.low
    return Hint(level, kind, node_ids, hint_text(kind, tree, grounding, config.max_listed))


@dataclass
class HintLadder:
    """The escalation for one question: each wrong answer takes the next rung."""

    tree: Tree
    grounding: Grounding
    config: HintConfig = field(default_factory=HintConfig)
    given: list[Hint] = field(default_factory=list)

    @classmethod
    def for_question(
        cls, tree: Tree, intervals: Iterable[Sequence[float]], config: HintConfig | None = None
    ) -> HintLadder:
        config = config or HintConfig()
        return cls(tree, ground(tree, intervals, config.max_gap), config)

    def next(self) -> Hint | None:
        """The next hint, or ``None`` when the ladder is spent (give up)."""
        hint = hint_for(len(self.given) + 1, self.tree, self.grounding, self.config)
        if hint is not None:
            self.given.append(hint)
        return hint


def append_hint(content: str | list[dict[str, str]], hint: Hint) -> str | list[dict[str, str]]:
    """A user turn's content with the hint added after a blank line (text or content parts)."""
    if isinstance(content, str):
        return f"{content}\n\n{hint.text}"
    return [*content, {"type": "text", "text": hint.text}]
