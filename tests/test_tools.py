"""get_caption, video_qa and the episode's ToolBox over a real caption service and store."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers_captions import FakeContext, FakeInfo, FakeResult, FakeVideo

from longvideo_r1.agent import prompts
from longvideo_r1.agent.protocol import Action
from longvideo_r1.agent.tools import (
    CAPTION_ONLY_NOTE,
    CaptionClipAnswerer,
    GetCaption,
    ToolBox,
    VideoQA,
    VLMClipAnswerer,
    rejection,
)
from longvideo_r1.captions.captioner import CallCost
from longvideo_r1.captions.service import CaptionService
from longvideo_r1.captions.store import CaptionStore
from longvideo_r1.errors import CaptionError, ConfigError
from longvideo_r1.tree import NodeId, Tree, format_node_id

# the docs' example video: 150 s at width 4
CAPTIONS: dict[NodeId, str] = {
    (1,): "A street market opens in the morning.",
    (2,): "A baker carries bread out of a shop.",
    (3,): "Traffic passes the bakery.",
    (4,): "The market closes at dusk.",
    (3, 2): "A blue bus stops by the bakery door.",
    (3, 2, 4): "A blue bus with lettering on its side pulls away.",
}


class TextCaptioner:
    """Captions from a table (a default line otherwise), counting every call it makes."""

    identity = "test:text:v1"

    def __init__(self, fail: set[NodeId] | None = None) -> None:
        self.calls: list[NodeId] = []
        self.fail = set(fail or ())

    def caption(self, ctx: Any) -> FakeResult:
        node_id = ctx.node.id
        self.calls.append(node_id)
        if node_id in self.fail:
            raise CaptionError(f"scripted failure for node {format_node_id(node_id)}")
        times = ctx.tree.sample_times(node_id, 4)
        return FakeResult(
            text=CAPTIONS.get(node_id, f"Caption of {format_node_id(node_id)}."),
            frame_times=times,
            frame_ids=[int(t * 10) for t in times],
            frames_decoded=4,
            prompt_tokens=100,
            completion_tokens=20,
            seconds=0.5,
        )


@dataclass
class ScriptedAnswerer:
    """A clip answerer that replies from a list and records what it was asked."""

    answers: list[str] = field(default_factory=lambda: ["The side of the bus reads 'City Line 7'."])
    asked: list[tuple[NodeId, str]] = field(default_factory=list)
    identity: str = "test:answerer"

    def ask(self, leaf_id: NodeId, query: str) -> tuple[str, CallCost]:
        self.asked.append((leaf_id, query))
        return self.answers.pop(0), CallCost(16, 300, 12, 0.25)


@pytest.fixture
def tree() -> Tree:
    return Tree.for_video(150.0, 1500, width=4)


@pytest.fixture
def captioner() -> TextCaptioner:
    return TextCaptioner()


@pytest.fixture
def service(store: CaptionStore, tree: Tree, captioner: TextCaptioner) -> CaptionService:
    video = FakeVideo(info=FakeInfo(Path("/videos/bakery.mp4"), 150.0, 1500))
    return CaptionService(video, tree, captioner, store, context_factory=FakeContext)


@pytest.fixture
def answerer() -> ScriptedAnswerer:
    return ScriptedAnswerer()


@pytest.fixture
def box(service: CaptionService, tree: Tree, answerer: ScriptedAnswerer) -> ToolBox:
    return ToolBox(tree, GetCaption(service), VideoQA(answerer, tree))


# get_caption -----------------------------------------------------------------------


def test_caption_observations_are_the_protocol_strings(service, captioner):
    tool = GetCaption(service)
    medium = tool((3, 2))
    assert medium.observation == (
        "Medium-level Caption from tool get_caption((3,2)). "
        "From 84.4 to 93.8:A blue bus stops by the bakery door."
    )
    low = tool((3, 2, 4))
    assert low.observation == (
        "Low-level Caption from tool get_caption((3,2,4)). "
        "From 91.4 to 93.8:A blue bus with lettering on its side pulls away."
    )
    assert low.ok and low.error is None
    assert low.text == CAPTIONS[(3, 2, 4)]
    assert (low.node.start, low.node.end) == (91.40625, 93.75)
    assert captioner.calls == [(3, 2), (3, 2, 4)]


def test_a_second_fetch_is_a_cache_hit_that_costs_nothing(service, captioner):
    tool = GetCaption(service)
    first, again = tool((1, 3)), tool((1, 3))
    assert (first.made, first.cache_hit) == (True, False)
    assert (first.frames_decoded, first.prompt_tokens, first.completion_tokens) == (4, 100, 20)
    assert (again.made, again.cache_hit) == (False, True)
    assert (again.frames_decoded, again.prompt_tokens, again.completion_tokens) == (0, 0, 0)
    assert again.observation == first.observation
    assert captioner.calls == [(1, 3)]


def test_high_level_ids_are_refused_with_an_error_observation(service, captioner):
    result = GetCaption(service)((2,))
    problem = (
        "get_caption((2,)) asks for a high-level caption, which you already have; ask for a "
        "medium (h, m) or low (h, m, l) segment"
    )
    assert result.error == problem
    assert result.observation == prompts.error_message(problem)
    assert result.observation.startswith(f"Your last reply could not be used: {problem}.\n")
    assert not result.made and captioner.calls == []


@pytest.mark.parametrize(
    ("node_id", "expected"),
    [
        (
            (5, 1),
            "node (5, 1) is out of range: this video has width 4, so medium ids are (1..4, 1..4)",
        ),
        ((1, 1, 9), "node (1, 1, 9) is out of range"),
        ((1, 2, 3, 4), "has 4 parts"),
        ((0, 1), "out of range"),
    ],
)
def test_out_of_range_ids_come_back_as_error_observations(service, captioner, node_id, expected):
    result = GetCaption(service)(node_id)
    assert not result.ok and expected in result.error
    assert result.observation == prompts.error_message(result.error)
    assert result.node is None and captioner.calls == []


def test_a_captioner_failure_is_raised_not_observed(store, tree):
    video = FakeVideo(info=FakeInfo(Path("/videos/bakery.mp4"), 150.0, 1500))
    failing = TextCaptioner(fail={(2, 2)})
    service = CaptionService(video, tree, failing, store, context_factory=FakeContext)
    with pytest.raises(CaptionError, match=r"\(2, 2\)"):
        GetCaption(service)((2, 2))


# video_qa -------------------------------------------------------------------------


def test_video_qa_wraps_the_answer_and_passes_its_cost(tree, answerer):
    result = VideoQA(answerer, tree)((3, 2, 4), "  What is written on the bus? ")
    assert (
        result.observation == "<information>The side of the bus reads 'City Line 7'.</information>"
    )
    assert answerer.asked == [((3, 2, 4), "What is written on the bus?")]
    assert result.query == "What is written on the bus?"
    assert (result.frames_decoded, result.prompt_tokens, result.completion_tokens) == (16, 300, 12)
    assert result.made and not result.cache_hit


@pytest.mark.parametrize(
    ("node_id", "query", "expected"),
    [
        ((3, 2), "q?", "is a medium-level segment"),
        ((3,), "q?", "is a high-level segment"),
        ((3, 2, 9), "q?", "out of range"),
        ((3, 2, 4), "   ", "the video_qa query is empty"),
    ],
)
def test_video_qa_refuses_bad_ids_and_empty_queries(tree, answerer, node_id, query, expected):
    result = VideoQA(answerer, tree)(node_id, query)
    assert expected in result.error
    assert result.observation == prompts.error_message(result.error)
    assert answerer.asked == []


def test_caption_answerer_says_it_is_not_a_vision_model(service, tree, captioner):
    answerer = CaptionClipAnswerer(service)
    assert answerer.identity == "captions:test:text:v1"
    made = VideoQA(answerer, tree)((3, 2, 4), "What is written on the bus?")
    assert made.observation == (
        "<information>[No vision model is configured: these are the CPU captioner's notes on "
        "this clip, not an answer to the query.] A blue bus with lettering on its side pulls "
        "away.</information>"
    )
    assert made.text.startswith(CAPTION_ONLY_NOTE)
    assert made.frames_decoded == 4  # the leaf caption was made for this call
    assert made.from_captions and answerer.looks is False
    again = VideoQA(answerer, tree)((3, 2, 4), "Anything else?")
    assert again.frames_decoded == 0 and again.observation == made.observation
    assert captioner.calls == [(3, 2, 4)]


def test_an_answerer_is_a_vision_model_unless_it_says_otherwise(tree, answerer):
    answerer.answers = ["one", "two"]
    assert VideoQA(answerer, tree)((3, 2, 4), "q?").from_captions is False
    answerer.looks = False
    assert VideoQA(answerer, tree)((3, 2, 4), "q?").from_captions is True


def test_vlm_answerer_hands_video_tree_and_cues_to_the_clip_qa(tree):
    class FakeClipQA:
        client = type("Client", (), {"model": "Qwen/Qwen3-VL-8B-Instruct"})()

        def __init__(self) -> None:
            self.calls: list[tuple] = []

        def ask(self, video, tree, leaf_id, query, cues=()):
            self.calls.append((video, tree, leaf_id, query, cues))
            return "red", CallCost(16, 900, 5, 1.5)

    clip_qa, video, cues = FakeClipQA(), object(), ("cue",)
    answerer = VLMClipAnswerer(clip_qa, video, tree, cues)
    assert answerer.identity == "vlm:Qwen/Qwen3-VL-8B-Instruct"
    result = VideoQA(answerer, tree)((1, 1, 1), "What colour is the car?")
    assert result.observation == "<information>red</information>"
    assert clip_qa.calls == [(video, tree, (1, 1, 1), "What colour is the car?", ("cue",))]
    assert VideoQA(answerer, tree).identity == "vlm:Qwen/Qwen3-VL-8B-Instruct"


# the episode ----------------------------------------------------------------------


def test_high_captions_come_through_the_toolbox_and_count(box, captioner):
    highs = box.high_captions()
    assert [r.node_id for r in highs] == [(1,), (2,), (3,), (4,)]
    assert [r.text for r in highs] == [CAPTIONS[(i,)] for i in range(1, 5)]
    assert all(r.observation == "" and r.made for r in highs)
    assert (box.counts.caption_calls, box.counts.high_captions, box.counts.captions_made) == (
        4,
        4,
        4,
    )
    assert box.counts.agent_caption_calls == 0
    assert box.fetched == {(1,), (2,), (3,), (4,)}

    fresh = box.fresh()
    assert fresh.fetched == set() and fresh.counts.caption_calls == 0
    fresh.high_captions()
    assert (fresh.counts.captions_made, fresh.counts.captions_cached) == (0, 4)
    assert len(captioner.calls) == 4


def test_video_qa_needs_the_leaf_caption_first(box, answerer):
    ask = Action("video_qa", (3, 2, 4), "What is written on the bus?")
    refused = box.execute(ask)
    assert refused.error == (
        "video_qa on (3, 2, 4) needs its low-level caption first; call "
        "get_caption((3, 2, 4)) before asking about that clip"
    )
    assert refused.observation == prompts.error_message(refused.error)
    assert answerer.asked == [] and box.counts.rejected == 1

    fetched = box.execute(Action("get_caption", (3, 2, 4)))
    assert fetched.ok and (3, 2, 4) in box.fetched
    answered = box.execute(ask)
    assert answered.ok and answered.observation.startswith("<information>")
    assert (box.counts.video_qa_calls, box.counts.caption_calls, box.counts.rejected) == (1, 1, 1)


def test_the_leaf_rule_can_be_switched_off(box, answerer):
    lax = box.fresh(require_fetched_leaf=False)
    assert lax.execute(Action("video_qa", (1, 1, 1), "Who is there?")).ok
    assert answerer.asked == [((1, 1, 1), "Who is there?")]


def test_toolbox_counts_made_and_cached_captions(box):
    box.execute(Action("get_caption", (2, 3)))
    box.execute(Action("get_caption", (2, 3)))
    box.execute(Action("get_caption", (9, 9)))
    counts = box.counts
    assert (counts.caption_calls, counts.captions_made, counts.captions_cached) == (2, 1, 1)
    assert counts.rejected == 1 and box.fetched == {(2, 3)}


def test_rejection_uses_the_parsers_rules_and_words(tree):
    assert rejection(tree, Action("get_caption", (1, 2))) is None
    assert rejection(tree, Action("video_qa", (1, 2, 3), 'a "quoted" </tool> query')) is None
    assert "query is empty" in rejection(tree, Action("video_qa", (1, 2, 3), None))
    assert "unknown tool" in rejection(tree, Action("look", (1, 2)))  # type: ignore[arg-type]
    assert "needs its low-level caption first" in rejection(
        tree, Action("video_qa", (1, 2, 3), "q"), fetched={(1, 2)}
    )


def test_toolbox_refuses_tools_of_another_tree(service, tree, answerer):
    other = Tree.for_video(150.0, 1500, width=5)
    with pytest.raises(ConfigError, match="different tree"):
        ToolBox(tree, GetCaption(service), VideoQA(answerer, other))


def test_identities_name_the_captioner_and_the_answerer(box):
    assert box.identities() == {"caption": "test:text:v1", "video_qa": "test:answerer"}
    assert box.get_caption.video_path == "/videos/bakery.mp4"
    assert box.get_caption.fingerprint == "f" * 64
