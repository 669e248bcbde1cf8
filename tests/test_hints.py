"""Clue intervals -> merged intervals -> node ids -> escalating hints, against hand-made cases."""

from __future__ import annotations

import pytest

from longvideo_r1.errors import ConfigError
from longvideo_r1.training.hints import (
    HINT_KINDS,
    Hint,
    HintConfig,
    HintLadder,
    append_hint,
    ground,
    hint_for,
    leaf_holding,
    merge_intervals,
    nodes_for_interval,
)
from longvideo_r1.tree import Tree, format_node_id

DURATIONS = (97.1, 150.0, 1805.4, 2410.0, 7199.97)


def ids(nodes) -> list[tuple[int, ...]]:
    return [n.id for n in nodes]


# merging ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("second_start", "merged"),
    [(24.9, True), (25.0, True), (25.1, False)],
)
def test_intervals_merge_when_the_gap_is_at_most_five_seconds(second_start, merged):
    out = merge_intervals([(10.0, 20.0), (second_start, 30.0)])
    assert out == ([(10.0, 30.0)] if merged else [(10.0, 20.0), (second_start, 30.0)])


def test_a_five_second_gap_that_floating_point_writes_as_more_still_merges():
    assert 8.3 - 3.3 > 5.0
    assert merge_intervals([(0.0, 3.3), (8.3, 12.0)]) == [(0.0, 12.0)]
    assert merge_intervals([(0.0, 3.3), (8.4, 12.0)]) == [(0.0, 3.3), (8.4, 12.0)]


def test_merging_sorts_and_absorbs_overlapping_and_nested_intervals():
    raw = [(50.0, 60.0), (0.0, 5.0), (52.0, 55.0), (58.0, 70.0), (74.0, 80.0), (100.0, 100.0)]
    assert merge_intervals(raw) == [(0.0, 5.0), (50.0, 80.0), (100.0, 100.0)]


def test_the_gap_is_configurable():
    raw = [(0.0, 10.0), (12.0, 20.0), (20.0, 30.0)]
    assert merge_intervals(raw, max_gap=0.0) == [(0.0, 10.0), (12.0, 30.0)]
    assert merge_intervals(raw, max_gap=2.0) == [(0.0, 30.0)]
    tree = Tree.for_video(150.0, 1500, width=4)
    assert ground(tree, raw, max_gap=0.0).intervals == ((0.0, 10.0), (12.0, 30.0))


def test_a_backwards_interval_is_refused():
    with pytest.raises(ConfigError, match="ends before it starts"):
        merge_intervals([(10.0, 5.0)])


# ids ----------------------------------------------------------------------------------


def test_a_hand_made_case_at_width_four():
    # 150 s at width 4: high 37.5 s, medium 9.375 s, low 2.34375 s.
    tree = Tree.for_video(150.0, 1500, width=4)
    g = ground(tree, [(80.0, 88.0), (91.0, 95.0)])
    assert g.intervals == ((80.0, 95.0),)
    assert g.high == ((3,),)
    assert g.medium == ((3, 1), (3, 2), (3, 3))
    # 80 / 2.34375 = 34.1 -> flat 34 = (3, 1, 3); 95 / 2.34375 = 40.5 -> flat 40 = (3, 3, 1)
    assert g.low == ((3, 1, 3), (3, 1, 4), (3, 2, 1), (3, 2, 2), (3, 2, 3), (3, 2, 4), (3, 3, 1))


def test_intervals_in_two_high_segments_name_both_in_time_order():
    tree = Tree.for_video(150.0, 1500, width=4)
    g = ground(tree, [(141.0, 145.0), (10.0, 12.0)])
    assert g.intervals == ((10.0, 12.0), (141.0, 145.0))
    assert g.high == ((1,), (4,))
    assert g.medium == ((1, 2), (4, 4))
    assert g.low == ((1, 2, 1), (1, 2, 2), (4, 4, 1), (4, 4, 2))


@pytest.mark.parametrize("width", range(3, 9))
@pytest.mark.parametrize("duration", DURATIONS)
def test_boundaries_are_half_open_at_every_node(width: int, duration: float):
    tree = Tree.for_video(duration, 1000, width=width)
    for depth in (1, 2, 3):
        nodes = tree.nodes(depth)
        for before, node in zip(nodes, nodes[1:], strict=False):
            # ends exactly where the node starts: the node is not reached
            ending = nodes_for_interval(tree, max(0.0, node.start - 1.0), node.start, depth)
            assert node.id not in ids(ending)
            assert ids(ending)[-1] == before.id
            # starts exactly where the node starts: the one before is not reached
            starting = nodes_for_interval(tree, node.start, node.start + 1e-3, depth)
            assert ids(starting) == [node.id]
            # the node's own span is that node alone
            assert ids(nodes_for_interval(tree, node.start, node.end, depth)) == [node.id]


@pytest.mark.parametrize("width", range(3, 9))
@pytest.mark.parametrize("duration", DURATIONS)
def test_an_instant_maps_to_the_leaf_that_holds_it(width: int, duration: float):
    tree = Tree.for_video(duration, 1000, width=width)
    for leaf in tree.nodes(3):
        assert leaf_holding(tree, leaf.start).id == leaf.id
        g = ground(tree, [(leaf.start, leaf.start)])
        assert g.low == (leaf.id,)
        assert g.medium == (leaf.id[:2],)
        assert g.high == (leaf.id[:1],)


def test_an_instant_inside_a_leaf_and_at_the_very_end():
    tree = Tree.for_video(150.0, 1500, width=4)
    assert ground(tree, [(90.0, 90.0)]).low == ((3, 2, 3),)  # 90 / 2.34375 = 38.4 -> flat 38
    assert ground(tree, [(150.0, 150.0)]).low == ((4, 4, 4),)


def test_intervals_past_the_end_are_clamped_to_the_video():
    tree = Tree.for_video(150.0, 1500, width=4)
    g = ground(tree, [(148.0, 151.0)])
    assert g.high == ((4,),) and g.medium == ((4, 4),) and g.low == ((4, 4, 4),)
    assert ground(tree, [(160.0, 170.0)]).low == ((4, 4, 4),)


def test_one_interval_covering_a_whole_high_segment():
    tree = Tree.for_video(150.0, 1500, width=4)
    g = ground(tree, [(37.5, 75.0)])
    assert g.high == ((2,),)
    assert g.medium == tuple((2, m) for m in range(1, 5))
    assert len(g.low) == 16 and g.low[0] == (2, 1, 1) and g.low[-1] == (2, 4, 4)


# escalation ---------------------------------------------------------------------------


def test_the_escalation_goes_high_medium_low_verify_then_gives_up():
    tree = Tree.for_video(150.0, 1500, width=4)
    ladder = HintLadder.for_question(tree, [(85.0, 88.0)])
    hints = [ladder.next() for _ in range(4)]
    assert [h.kind for h in hints] == list(HINT_KINDS)
    assert [h.level for h in hints] == [1, 2, 3, 4]
    assert ladder.next() is None
    assert ladder.next() is None
    high, medium, low, verify = hints
    assert high.node_ids == ((3,),)
    assert "high-level segment (3,) (from 75.0 to 112.5 s)" in high.text
    assert medium.node_ids == ((3, 2),)
    assert "medium-level segment (3, 2) (from 84.4 to 93.8 s)" in medium.text
    assert low.node_ids == ((3, 2, 1), (3, 2, 2))
    assert "low-level segments (3, 2, 1) (from 84.4 to 86.7 s), (3, 2, 2)" in low.text
    assert "video_qa" in verify.text and "may be wrong" in verify.text
    assert "(3, 2, 1)" in verify.text
    for hint in hints:
        assert "as though you had worked this out yourself" in hint.text
        assert "never mention the hint" in hint.text
    # coarser hints do not give away finer ids
    assert "(3, 2)" not in high.text
    assert "(3, 2, 1)" not in medium.text


def test_fewer_hints_when_configured_and_none_without_clues():
    tree = Tree.for_video(150.0, 1500, width=4)
    ladder = HintLadder.for_question(tree, [(85.0, 88.0)], HintConfig(max_hints=2))
    assert [ladder.next().kind, ladder.next().kind] == ["high", "medium"]
    assert ladder.next() is None
    assert HintLadder.for_question(tree, []).next() is None
    assert hint_for(1, tree, ground(tree, [])) is None


def test_long_id_lists_are_summarised():
    tree = Tree.for_video(150.0, 1500, width=4)
    g = ground(tree, [(0.0, 150.0)])
    hint = hint_for(3, tree, g, HintConfig(max_listed=3))
    assert hint is not None and len(hint.node_ids) == 64
    assert "and 61 more in between" in hint.text
    assert format_node_id((1, 1, 4)) not in hint.text


def test_a_hint_is_appended_to_text_and_to_content_parts():
    hint = Hint(1, "high", ((2,),), "HINT")
    assert append_hint("observation", hint) == "observation\n\nHINT"
    parts = [{"type": "text", "text": "a"}]
    assert append_hint(parts, hint) == [*parts, {"type": "text", "text": "HINT"}]


def test_config_is_checked_and_documented():
    with pytest.raises(ConfigError):
        HintConfig(max_gap=-1.0)
    with pytest.raises(ConfigError):
        HintConfig(max_hints=5)
    from dataclasses import fields

    assert all(f.metadata.get("help") for f in fields(HintConfig))
