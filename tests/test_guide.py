"""The retrieval guide: BM25 over what can be read of unread segments, the K best offered."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers_captions import FakeContext, FakeInfo, FakeVideo
from test_tools import ScriptedAnswerer, TextCaptioner

from longvideo_r1.agent.config import AgentConfig
from longvideo_r1.agent.guide import (
    Guide,
    StoredTexts,
    agent_variant,
    asked_share,
    bm25_scores,
    frontier,
)
from longvideo_r1.agent.navigator import Navigator
from longvideo_r1.agent.tools import GetCaption, ToolBox, VideoQA
from longvideo_r1.captions.service import CaptionService
from longvideo_r1.captions.store import CaptionStore
from longvideo_r1.errors import ConfigError
from longvideo_r1.media.subtitles import Cue
from longvideo_r1.tree import Node, NodeId, Tree

TREE = Tree.for_video(150.0, 1500, width=4)
HIGHS = {(1,), (2,), (3,), (4,)}


def test_bm25_puts_the_segment_with_the_asked_words_first():
    docs = [
        "The market opens and the market closes.",
        "A blue bus stops by the bakery door, the bus driver waves.",
        "Bread at the bakery.",
        "",
    ]
    scores = bm25_scores("What vehicle passes the bakery? Is it a bus?", docs)
    assert scores[1] > scores[2] > scores[0] == scores[3] == 0.0
    assert bm25_scores("What is it?", docs) == [0.0] * 4  # nothing but stop words
    assert bm25_scores("bus", ["", " "]) == [0.0, 0.0]  # nothing to rank


def test_a_word_most_segments_hold_still_counts_for_them():
    """Okapi's idf turns a word found in three of four documents against them; Lucene's does not."""
    scores = bm25_scores("bakery", ["bakery bread", "bakery cake", "bakery bus", "market"])
    assert min(scores[:3]) > scores[3] == 0.0


def test_the_frontier_is_the_unread_children_of_what_was_read():
    assert frontier(TREE, HIGHS) == [(h, m) for h in range(1, 5) for m in range(1, 5)]
    after = frontier(TREE, HIGHS | {(3, 2)})
    assert (3, 2) not in after and len(after) == 15 + 4
    assert after[-4:] == [(3, 2, 1), (3, 2, 2), (3, 2, 3), (3, 2, 4)]
    assert (1, 1, 1) not in after  # a leaf only through its parent
    assert frontier(TREE, HIGHS | {(3, 2), (3, 2, 4)})[-3:] == [(3, 2, 1), (3, 2, 2), (3, 2, 3)]


class DictTexts:
    def __init__(self, texts: dict[NodeId, str]) -> None:
        self.texts = texts
        self.asked: list[NodeId] = []

    def text(self, node_id: NodeId) -> str:
        self.asked.append(node_id)
        return self.texts.get(node_id, "")


def test_the_guide_offers_the_k_best_and_leads_down_when_nothing_matches():
    texts = DictTexts(
        {
            (3, 2): "a blue bus stops by the bakery",
            (1, 4): "the bakery opens",
            (2, 2): "a bus timetable",
        }
    )
    guide = Guide(TREE, texts, "What vehicle passes the bakery, a bus?", k=2)
    assert guide.offered(HIGHS) == ((3, 2), (1, 4))
    assert Guide(TREE, texts, "What vehicle passes the bakery, a bus?", k=5).offered(HIGHS)[:3] == (
        (3, 2),
        (1, 4),
        (2, 2),
    )
    # no word matches: the children of what was read come first, in time order
    blind = Guide(TREE, DictTexts({}), "What vehicle passes?", k=2)
    assert blind.offered(HIGHS | {(3, 2)}) == ((3, 2, 1), (3, 2, 2))
    assert blind.offered(HIGHS) == ((1, 1), (1, 2))
    everything = {n.id for d in (1, 2, 3) for n in TREE.nodes(d)}
    assert blind.offered(everything) == ()


class SpeechCaptioner(TextCaptioner):
    """Stands in for the embedded captioner: per-leaf transcripts under its speech keys."""

    def speech_key(self, leaf: Node) -> str:
        return f"speech:test:{round(leaf.start * 1000)}-{round(leaf.end * 1000)}"


@pytest.fixture
def service(tmp_path: Path):
    video = FakeVideo(info=FakeInfo(Path("/videos/bakery.mp4"), 150.0, 1500))
    cues = [Cue(60.0, 62.0, "The bus to the harbour leaves at seven.")]  # inside (2, 3)
    with CaptionStore(tmp_path / "store.sqlite") as store:
        yield CaptionService(
            video, TREE, SpeechCaptioner(), store, cues=cues, context_factory=FakeContext
        )


def test_stored_texts_read_the_stored_caption_else_the_words_spoken_and_make_nothing(service):
    service.get((3, 2))  # a caption the store holds (from an earlier build)
    leaf = TREE.node((1, 4, 2))
    service.artifacts.put(
        service.captioner.speech_key(leaf), [[leaf.start, leaf.end, "  the  red  tram  "]]
    )
    service.captioner.calls.clear()
    texts = StoredTexts(service)
    assert texts.text((3, 2)) == "A blue bus stops by the bakery door."
    assert texts.text((2, 3)) == "The bus to the harbour leaves at seven."
    assert texts.text((1, 4)) == "the red tram"  # its leaves' transcripts
    assert texts.text((1, 4, 2)) == "the red tram" and texts.text((1, 4, 1)) == ""
    assert texts.text((4, 4)) == ""
    assert service.captioner.calls == []  # nothing was made to rank


def test_runs_are_named_by_their_levers():
    assert agent_variant(0) == agent_variant(0, 1) == "agent"
    assert agent_variant(2) == "retrieval-guided-bm25-k2"
    assert agent_variant(0, 2) == "agent-min-depth-2"
    assert agent_variant(3, 3) == "retrieval-guided-bm25-k3-min-depth-3"


def test_a_missing_bm25_library_is_one_line_before_any_model_call(monkeypatch, service):
    monkeypatch.setitem(sys.modules, "bm25s", None)  # import bm25s now raises ImportError
    with pytest.raises(ConfigError, match="--guide needs the bm25s package.*pip install bm25s"):
        bm25_scores("bus", ["a bus"])
    tools = ToolBox(TREE, GetCaption(service), VideoQA(ScriptedAnswerer(answers=[]), TREE))
    with pytest.raises(ConfigError, match="--guide needs the bm25s package"):
        Navigator(None, tools, TREE, AgentConfig(guide=2))  # type: ignore[arg-type]
    Navigator(None, tools, TREE, AgentConfig())  # type: ignore[arg-type]  # unguided: no BM25


def test_asked_share_counts_the_question_stems_a_caption_holds():
    question = "According to the narrator, how many envelopes did Anton Mercer count?"
    # stems left: accord, narrat, mani, envelop, anton, mercer, count (7)
    assert asked_share(question, "Speech: Anton Mercer counted 98 envelopes.") == 4 / 7
    assert asked_share(question, "Speech: Anton Quill sold three pans.") == 1 / 7
    assert asked_share(question, "") == 0.0
    assert asked_share("What is it?", "anything") == 0.0  # nothing left to look for
