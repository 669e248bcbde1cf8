"""Spans of time as sets: unions, overlaps and the F1 of one set of spans against another.

How well a run's navigation found a question's evidence is a comparison of
two sets of seconds: the spans of the nodes it visited and the clue
intervals of the question. Both are compared as *unions*, so a span visited
twice, or a leaf visited inside a medium segment also visited, counts once,
and so do overlapping clue intervals. The evaluation reports it (``lvr1
report``) and a training reward can score a trajectory with the very same
functions, which is why they sit in the ground layer, below both.

Spans are half-open ``[start, end)`` seconds; spans that touch join into one,
and empty spans (``end <= start``) hold no time and are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Span = tuple[float, float]


def union(spans: Iterable[Sequence[float]]) -> list[Span]:
    """The disjoint, sorted spans covering exactly the time ``spans`` cover.

    Touching spans (one ends where the next starts, as neighbouring nodes of
    the tree do) become one.
    """
    items = sorted((float(s), float(e)) for s, e in spans if float(e) > float(s))
    merged: list[Span] = []
    for start, end in items:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def length(spans: Iterable[Sequence[float]]) -> float:
    """Seconds covered by ``spans``, each second once however many spans hold it."""
    return sum(end - start for start, end in union(spans))


def overlap(a: Iterable[Sequence[float]], b: Iterable[Sequence[float]]) -> float:
    """Seconds covered by both ``a`` and ``b``: ``|union(a) ∩ union(b)|``."""
    left, right = union(a), union(b)
    total, i, j = 0.0, 0, 0
    while i < len(left) and j < len(right):
        start = max(left[i][0], right[j][0])
        end = min(left[i][1], right[j][1])
        total += max(0.0, end - start)
        if left[i][1] <= right[j][1]:
            i += 1
        else:
            j += 1
    return total


def clip(spans: Iterable[Sequence[float]], start: float, end: float) -> list[Span]:
    """``spans`` cut to ``[start, end)``: a clue annotated past a video's end holds no
    second of the video there, so no navigation could reach it."""
    return union((max(s, start), min(e, end)) for s, e in spans)


def touches(a: Iterable[Sequence[float]], b: Iterable[Sequence[float]]) -> bool:
    """Some second lies in both: spans that only meet at an edge share none."""
    return overlap(a, b) > 0.0


@dataclass(frozen=True)
class SpanScore:
    """Precision, recall and F1 of a set of spans against reference spans.

    precision = ``|V ∩ C| / |V|`` (how much of what was looked at was evidence),
    recall = ``|V ∩ C| / |C|`` (how much of the evidence was looked at), on
    unions. Nothing looked at scores 0 on all three: no look is not a precise
    one.
    """

    precision: float
    recall: float
    f1: float


def span_f1(visited: Iterable[Sequence[float]], reference: Iterable[Sequence[float]]) -> SpanScore:
    """How well ``visited`` covers ``reference``; ``reference`` must hold some time."""
    seen, truth = union(visited), union(reference)
    wanted = length(truth)
    if wanted <= 0.0:
        raise ValueError("span_f1 needs reference spans that hold some time")
    looked = length(seen)
    common = overlap(seen, truth)
    precision = common / looked if looked > 0.0 else 0.0
    recall = common / wanted
    f1 = 2 * precision * recall / (precision + recall) if common > 0.0 else 0.0
    return SpanScore(precision, recall, f1)
