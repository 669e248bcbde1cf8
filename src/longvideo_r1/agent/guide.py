"""The retrieval guide (``--guide K``): which unread segments get_caption is offered.

A small navigator reads the high-level captions and then either answers at
once or asks for ``(1, 1)``: the coarse captions give it no usable signal
about where a fact is. The guide gives it one from outside the model: each
round it ranks the unread children of the segments read so far (the high
ones from the start, so the offer reaches a leaf only through its parent) by
BM25 between the question and what can be read about each child without
making anything, its caption when the store already holds it, else its
digest, the words spoken in its span (subtitle lines and the speech
transcript the captioner cached). The grammar then offers get_caption only
on the K best, and the parser refuses any other id.

That is retrieval doing part of the navigator's work, so a run with a guide
is never reported as unguided navigation: :func:`agent_variant` names it
``retrieval-guided-bm25-kK`` in the run manifest and every report.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from longvideo_r1.captions.embedded import leaves_of
from longvideo_r1.captions.speech import Segment
from longvideo_r1.errors import ConfigError
from longvideo_r1.media.subtitles import cues_between
from longvideo_r1.tree import LEVELS, Node, NodeId, Tree

GUIDE_RANKER = "bm25"
"""How the guide ranks: BM25 (the ``bm25s`` package, Lucene's variant) over English words."""


class NodeTexts(Protocol):
    """What the guide may read about a segment the model has not read."""

    def text(self, node_id: NodeId) -> str: ...


def agent_variant(guide: int, min_depth: int = 0, answer_on_match: float = 0.0) -> str:
    """The agent's variant name in manifests and reports: guided runs say so first."""
    name = f"retrieval-guided-{GUIDE_RANKER}-k{guide}" if guide > 0 else "agent"
    if min_depth > 1:
        name += f"-min-depth-{min_depth}"
    if answer_on_match > 0:
        name += f"-answer-on-match-{answer_on_match:g}"
    return name


def frontier(tree: Tree, fetched: Collection[NodeId]) -> list[NodeId]:
    """Unread children of the segments read so far, in time order, shallower first."""
    read = {tuple(f) for f in fetched}
    out = []
    for depth in range(1, len(LEVELS)):
        for node in tree.nodes(depth):
            if node.id in read:
                out += [c.id for c in tree.children(node.id) if c.id not in read]
    return sorted(set(out), key=lambda i: (len(i), i))


def bm25_scores(query: str, documents: Sequence[str]) -> list[float]:
    """BM25 score of each document for the query's words (English stop words dropped).

    Lucene's variant, whose idf is never negative: with four to eight
    children a word found in most of them still counts a little, where
    Okapi's idf would turn it against them. All zeros when the query or
    every document has no word left.
    """
    bm25s = require_ranker()
    docs = bm25s.tokenize(list(documents), stopwords="en", show_progress=False, return_ids=False)
    words = bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)[0]
    if not words or not any(docs):
        return [0.0] * len(documents)
    index = bm25s.BM25()
    index.index(docs, show_progress=False)
    return [float(score) for score in index.get_scores(list(words))]


def asked_share(question: str, text: str) -> float:
    """The share of the question's distinct word stems that ``text`` holds.

    The halting guide's measure (``--answer-on-match``): a caption that holds
    most of what is asked is where a small navigator should stop reading.
    Question words and English stop words are dropped ("which", "how", "the"),
    and words are compared by their Snowball stems, so "counted" in a caption
    answers "count" in a question. 0 for a question with no word left.
    """
    bm25s = require_ranker()
    from bm25s.stopwords import STOPWORDS_EN_PLUS

    asked, read = bm25s.tokenize(
        [question, text],
        stopwords=list(STOPWORDS_EN_PLUS),
        stemmer=_stemmer(),
        show_progress=False,
        return_ids=False,
    )
    wanted = set(asked)
    return len(wanted & set(read)) / len(wanted) if wanted else 0.0


def _stemmer() -> Any:
    """English Snowball stems (PyStemmer, a dependency), one stemmer per call: it is cheap."""
    try:
        import Stemmer
    except ImportError:
        raise ConfigError(
            "--answer-on-match needs the PyStemmer package, a dependency of longvideo-r1: "
            "pip install PyStemmer"
        ) from None
    return Stemmer.Stemmer("english").stemWords


def require_ranker() -> Any:
    """The BM25 library, imported when a guided navigator is made (it loads scipy), so a
    missing package stops the run before any model call, in one line."""
    try:
        import bm25s
    except ImportError:
        raise ConfigError(
            "--guide needs the bm25s package, a dependency of longvideo-r1: pip install bm25s"
        ) from None
    return bm25s


@dataclass
class Guide:
    """One question's guide: each round, the ``k`` unread children most relevant to it."""

    tree: Tree
    texts: NodeTexts
    question: str
    k: int

    def offered(self, fetched: Collection[NodeId]) -> tuple[NodeId, ...]:
        """The ids get_caption is offered now, best first.

        Ties (no word of the question anywhere, the common case without
        speech) go to the deeper child, then the earlier one: with no signal
        the guide leads down from what was read rather than across.
        """
        candidates = frontier(self.tree, fetched)
        if not candidates:
            return ()
        scores = bm25_scores(self.question, [self.texts.text(c) for c in candidates])
        ranked = sorted(
            zip(candidates, scores, strict=True), key=lambda cs: (-cs[1], -len(cs[0]), cs[0])
        )
        return tuple(node_id for node_id, _score in ranked[: self.k])


@dataclass
class StoredTexts:
    """What can be read about a segment without making anything: stored caption, else digest.

    ``service`` is a :class:`~longvideo_r1.captions.service.CaptionService`
    (or anything with its ``tree``, ``cached``, ``cues``, ``artifacts`` and
    ``captioner``); what it lacks is read as empty. Texts are kept for the
    run: what an unread segment's store holds does not change while it is unread.
    """

    service: Any
    _seen: dict[NodeId, str] = field(default_factory=dict)

    def text(self, node_id: NodeId) -> str:
        if node_id not in self._seen:
            self._seen[node_id] = self._caption(node_id) or self.digest(node_id)
        return self._seen[node_id]

    def _caption(self, node_id: NodeId) -> str:
        cached = getattr(self.service, "cached", None)
        record = cached(node_id) if cached is not None else None
        return str(getattr(record, "text", "") or "").strip()

    def digest(self, node_id: NodeId) -> str:
        """The words spoken in the segment: its subtitle lines, then its cached transcript."""
        node = self.service.tree.node(node_id)
        cues = cues_between(getattr(self.service, "cues", ()), node.start, node.end)
        lines = [str(cue.text) for cue in cues]
        return " ".join([*lines, *self._speech(node)]).strip()

    def _speech(self, node: Node) -> list[str]:
        """The embedded captioner's per-leaf transcripts in the store, never transcribed here."""
        key_of = getattr(getattr(self.service, "captioner", None), "speech_key", None)
        artifacts = getattr(self.service, "artifacts", None)
        if key_of is None or artifacts is None:
            return []
        out = []
        for leaf in leaves_of(self.service.tree, node):
            value = artifacts.get(key_of(leaf))
            for segment in value if isinstance(value, list) else ():
                out.append(" ".join(Segment.from_json(segment).text.split()))
        return out
