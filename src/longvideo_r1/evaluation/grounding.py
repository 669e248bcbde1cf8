"""Grounding: did a run's navigation reach the part of the video that holds the answer?

Benchmarks with clue intervals (CG-Bench, the shipped test benches) say where
each answer is. Per question the evaluation records, beside the answer:

* ``visited_nodes``: how many nodes the method chose to read;
* ``deepest_level``: the finest level among them (``medium`` or ``low``);
* ``clue_hit``: whether any of them overlaps a clue interval;
* precision, recall and F1 of the union of their spans against the union of
  the clue spans (:mod:`longvideo_r1.spans`, the paper's navigation measure),
  so a node read twice and a leaf inside a medium segment also read count once.

Which visits count: every get_caption of a medium or low node, and every
video_qa, as a visit of its leaf. The opening's high-level captions do not
count: every method that reads the tree is given them before it chooses
anything, so they say nothing about navigation (the random walk reads them
too, and they are left out of its figures alike). So caption-all, which reads
every leaf, gets recall 1 and a precision equal to the clues' share of the
video; the random walk gets what its random descent visited; uniform-frames
reads no node at all, and has no grounding (``None``, shown ``-``), which is not
the same as an agent that chose to read nothing (0).

Clues are cut to the video's duration first: a release may let an interval
run up to :data:`~longvideo_r1.questions.schema.CLUE_TOLERANCE` seconds past
it, and no visit can reach time that is not in the video.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from longvideo_r1.agent.trace import Trace, counted_visits, visited_spans
from longvideo_r1.spans import clip, span_f1, touches
from longvideo_r1.tree import LEVELS

NAVIGATION_FREE = frozenset({"uniform-frames"})
"""Methods that read no node of the tree by design: they have no grounding to measure."""


@dataclass(frozen=True)
class Grounding:
    """One question's grounding; ``None`` fields mean "not measurable", never zero."""

    visited_nodes: int | None = None
    deepest_level: str | None = None
    clue_hit: bool | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None


def deepest_level(levels: Iterable[str]) -> str | None:
    """The finest of ``levels`` (``low`` beats ``medium`` beats ``high``); None for none."""
    depths = [LEVELS.index(level) for level in levels]
    return LEVELS[max(depths)] if depths else None


def grounding_of(trace: Trace, clues: Sequence[tuple[float, float]], method: str) -> Grounding:
    """A run's grounding against a question's clue intervals (none: no clue figures)."""
    if method in NAVIGATION_FREE:
        return Grounding()
    visits = counted_visits(trace.evidence)
    spans = visited_spans(visits)
    found = Grounding(
        visited_nodes=len({e.node_id for e in visits}),
        deepest_level=deepest_level(e.level for e in visits),
    )
    truth = clip(clues, 0.0, trace.duration)
    if not truth:
        return found
    score = span_f1(spans, truth)
    return Grounding(
        visited_nodes=found.visited_nodes,
        deepest_level=found.deepest_level,
        clue_hit=touches(spans, truth),
        precision=score.precision,
        recall=score.recall,
        f1=score.f1,
    )
