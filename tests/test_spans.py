"""Spans as sets: unions, overlaps and F1, checked by hand and against a brute-force count."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from longvideo_r1.spans import clip, length, overlap, span_f1, touches, union


def test_union_joins_overlapping_nested_and_touching_spans_and_drops_empty_ones():
    assert union([(10, 20), (0, 5), (15, 30), (12, 13), (5, 7), (40, 40), (50, 45)]) == [
        (0.0, 7.0),
        (10.0, 30.0),
    ]
    assert union([]) == []


def test_length_counts_each_second_once():
    assert length([(0, 10), (5, 15), (5, 15)]) == 15.0
    assert length([(0, 10), (20, 25)]) == 15.0


def test_overlap_of_two_unions_by_hand():
    visited = [(0, 10), (10, 20), (30, 40)]  # two touching leaves and one apart
    clues = [(15, 35), (18, 19)]  # a nested clue counts once
    assert overlap(visited, clues) == 5.0 + 5.0
    assert overlap(clues, visited) == 10.0
    assert overlap([(0, 10)], [(10, 20)]) == 0.0  # half-open: meeting at an edge is no overlap


def test_touches_needs_a_shared_second():
    assert touches([(0, 10)], [(9.5, 11)])
    assert not touches([(0, 10)], [(10, 11)])
    assert not touches([], [(0, 1)])


def test_span_f1_by_hand():
    # visited 0-20 and 30-40 (30 s), clue 15-35 (20 s): common 5 + 5 = 10 s
    score = span_f1([(0, 10), (10, 20), (30, 40)], [(15, 35)])
    assert score.precision == pytest.approx(10 / 30)
    assert score.recall == pytest.approx(10 / 20)
    assert score.f1 == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))  # 0.4


def test_span_f1_repeats_and_nesting_count_once():
    once = span_f1([(0, 10)], [(5, 15)])
    again = span_f1([(0, 10), (0, 10), (2, 4)], [(5, 15), (6, 7)])
    assert once == again
    assert once.precision == once.recall == once.f1 == 0.5


def test_span_f1_of_everything_is_the_clue_share():
    """Reading the whole video (caption-all): recall 1, precision the clue's share of it."""
    score = span_f1([(0, 50), (50, 100)], [(10, 20), (30, 35)])
    assert (score.precision, score.recall) == (0.15, 1.0)


def test_span_f1_of_nothing_or_a_miss_is_zero_and_needs_a_clue():
    assert span_f1([], [(0, 1)]).f1 == 0.0
    miss = span_f1([(0, 10)], [(20, 30)])
    assert (miss.precision, miss.recall, miss.f1) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="reference"):
        span_f1([(0, 1)], [(5, 5)])


def test_clip_cuts_a_clue_past_the_end():
    assert clip([(140, 152.5), (160, 170)], 0.0, 151.6) == [(140.0, 151.6)]


_spans = st.lists(
    st.tuples(st.integers(0, 60), st.integers(0, 60)).map(lambda t: (min(t), max(t))),
    max_size=6,
)


def _seconds(spans) -> set[int]:
    return {t for s, e in spans for t in range(s, e)}


@given(_spans, _spans)
def test_overlap_and_length_match_a_count_of_whole_seconds(a, b):
    assert length(a) == len(_seconds(a))
    assert overlap(a, b) == len(_seconds(a) & _seconds(b))
