"""The one geometry: spans partition the video exactly and ids round-trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from longvideo_r1.errors import TreeError
from longvideo_r1.tree import (
    Tree,
    format_node_id,
    parse_node_id,
    width_for_duration,
)


@pytest.mark.parametrize(
    ("duration", "expected"),
    [(60, 4), (150, 4), (16 * 125, 5), (16 * 216, 6), (3600, 6), (7200, 8), (36000, 8)],
)
def test_width_follows_the_paper_formula(duration, expected):
    assert width_for_duration(duration) == expected


def test_width_respects_configured_bounds():
    assert width_for_duration(60, min_width=3) == 3
    assert width_for_duration(36000, max_width=6) == 6
    with pytest.raises(TreeError):
        width_for_duration(0)
    with pytest.raises(TreeError):
        width_for_duration(100, min_width=5, max_width=4)


@pytest.mark.parametrize("width", [3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("n_frames", [1, 97, 1001, 4093])
def test_every_level_partitions_time_and_frames(width, n_frames):
    tree = Tree(duration=n_frames / 29.97, n_frames=n_frames, width=width)
    for depth in (1, 2, 3):
        nodes = tree.nodes(depth)
        assert len(nodes) == width**depth
        assert nodes[0].start == 0 and nodes[-1].end == tree.duration
        assert nodes[0].frame_start == 0 and nodes[-1].frame_end == n_frames
        for a, b in zip(nodes, nodes[1:], strict=False):
            assert a.end == b.start
            assert a.frame_end == b.frame_start
        assert sum(n.frame_end - n.frame_start for n in nodes) == n_frames


@pytest.mark.parametrize("width", [3, 4, 5, 6, 7, 8])
def test_children_tile_their_parent_exactly(width):
    tree = Tree(duration=1234.5, n_frames=30863, width=width)
    for parent in tree.walk((1, 2)):
        kids = tree.children(parent.id)
        assert kids[0].start == parent.start
        assert kids[-1].end == parent.end
        assert kids[0].frame_start == parent.frame_start
        assert kids[-1].frame_end == parent.frame_end


@given(width=st.integers(3, 8), depth=st.integers(1, 3), data=st.data())
def test_flat_index_round_trip(width, depth, data):
    tree = Tree(duration=100.0, n_frames=2500, width=width)
    index = data.draw(st.integers(0, width**depth - 1))
    node_id = tree.from_flat(depth, index)
    assert tree.flat_index(node_id) == index
    assert parse_node_id(format_node_id(node_id)) == node_id


def test_low_flat_index_matches_reference_formula():
    tree = Tree(duration=500.0, n_frames=15000, width=5)
    h, m, low = 3, 2, 4
    assert tree.flat_index((h, m, low)) == (h - 1) * 25 + (m - 1) * 5 + (low - 1)


def test_caption_and_video_qa_boundaries_agree():
    tree = Tree(duration=333.3, n_frames=9999, width=6)
    for leaf in tree.nodes(3):
        qa = tree.qa_times(leaf.id)
        cap = tree.sample_times(leaf.id)
        assert leaf.start <= min(qa) and max(qa) < leaf.end
        assert leaf.start <= min(cap) and max(cap) < leaf.end
        assert len(qa) == 16 and len(cap) == 32


def test_sample_plans_by_level():
    tree = Tree(duration=600.0, n_frames=18000, width=5)
    assert len(tree.sample_times((1,))) == 128
    assert len(tree.sample_times((1, 1))) == 64
    assert tree.plan((1,)).max_side == 256
    assert tree.plan((1, 1)).max_side == 362
    assert tree.plan((1, 1, 1)).max_side == 512


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [((5,), "1..4"), ((0, 1), "1..4, 1..4"), ((1, 2, 3, 4), "4 parts"), ((), "0 parts")],
)
def test_invalid_ids_name_the_valid_range(bad, fragment):
    tree = Tree(duration=150.0, n_frames=3750, width=4)
    with pytest.raises(TreeError) as info:
        tree.node(bad)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_video_qa_requires_a_leaf():
    tree = Tree(duration=150.0, n_frames=3750, width=4)
    with pytest.raises(TreeError, match="low-level"):
        tree.qa_times((1, 2))


def test_parse_node_id_forms():
    assert parse_node_id("(2,)") == (2,)
    assert parse_node_id("(1, 3)") == (1, 3)
    assert parse_node_id("1.3.2") == (1, 3, 2)
    with pytest.raises(TreeError):
        parse_node_id("one")


def test_covering_and_leaf_at():
    tree = Tree(duration=160.0, n_frames=4000, width=4)
    assert tree.leaf_at(0).id == (1, 1, 1)
    assert tree.leaf_at(159.99).id == (4, 4, 4)
    assert tree.leaf_at(1e9).id == (4, 4, 4)
    assert [n.id for n in tree.covering(35, 45, 1)] == [(1,), (2,)]
    assert [n.id for n in tree.covering(35, 39, 1)] == [(1,)]
    assert [n.id for n in tree.covering(35, 45, 2)] == [(1, 4), (2, 1)]
    assert [n.id for n in tree.covering(40, 40, 1)] == [(2,)]


@pytest.mark.parametrize("width", [3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("duration", [60.0, 151.6, 333.3, 1234.5, 3600.0, 7199.96])
def test_boundaries_belong_to_the_node_that_starts_there(width, duration):
    tree = Tree(duration=duration, n_frames=int(duration * 25), width=width)
    for depth in (1, 2, 3):
        nodes = tree.nodes(depth)
        for left, right in zip(nodes, nodes[1:], strict=False):
            assert tree.index_at(depth, right.start) == tree.flat_index(right.id)
            assert [n.id for n in tree.covering(left.start, right.start, depth)] == [left.id]
            assert [n.id for n in tree.covering(right.start, right.end, depth)] == [right.id]
            assert tree.covering(right.start, right.start, depth)[0].id == right.id
        assert tree.leaf_at(duration).id == tree.nodes(3)[-1].id
