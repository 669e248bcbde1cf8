"""Distinctive words: what sets one part of a video apart from the rest of it.

A coarse caption that quotes a few spoken lines does not tell its reader
which of its parts holds a fact. Naming, per part, the words said or shown
there does, but only if the words are the part's own: the most frequent
words of speech are the filler every part shares ("so", "really", "clip").
So words are ranked by TF-IDF: sublinear term frequency in the part times
``log((N + 1) / (df + 1))``, where a document is one leaf of the video and
``df`` counts the leaves that say the word. A word said in every leaf scores
0 and is never listed; a word no leaf says (read on screen only) scores
highest. With no documents at all (a silent video, speech switched off) every
word weighs the same and frequency alone ranks them.

Pure functions over text, no I/O: the embedded captioner
(:mod:`longvideo_r1.captions.embedded`) gathers the texts and renders the lines.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

_STOP_TEXT = """a about above after again all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers him his how i if in into is it its itself
    just me more most my no nor not now of off on once only or other our out over own same
    she should so some such than that the their them then there these they this those through
    to too under until up very was we were what when where which while who whom why will with
    would you your yes oh okay ok uh um yeah gonna got get one two"""
STOP_WORDS = frozenset(_STOP_TEXT.split())
"""Function words and speech fillers never worth a caption's words, whatever their weight."""

_WORD_RE = re.compile(r"[^\W\d_][\w'-]*", re.UNICODE)


def content_words(text: str) -> list[str]:
    """Lower-case words of three letters or more, stop words dropped, in order of use."""
    out = []
    for word in _WORD_RE.findall(text.lower()):
        word = word.strip("'-")
        if len(word) >= 3 and word not in STOP_WORDS:
            out.append(word)
    return out


@dataclass(frozen=True)
class DocumentFrequencies:
    """In how many documents (leaves of one video) each word occurs."""

    documents: int = 0
    counts: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, documents: Iterable[Iterable[str]]) -> DocumentFrequencies:
        """Frequencies over ``documents``, each given as its texts."""
        counts: Counter[str] = Counter()
        n = 0
        for texts in documents:
            n += 1
            counts.update({w for text in texts for w in content_words(text)})
        return cls(n, counts)

    def idf(self, word: str) -> float:
        """``log((N + 1) / (df + 1))``: 0 for a word in every document; 1 for all without any."""
        if self.documents == 0:
            return 1.0
        return math.log((self.documents + 1) / (self.counts.get(word, 0) + 1))


def word_counts(texts: Iterable[str]) -> tuple[Counter[str], dict[str, int]]:
    """How often each content word occurs, and the order words first appear (to break ties)."""
    counts: Counter[str] = Counter()
    first: dict[str, int] = {}
    for text in texts:
        for word in content_words(text):
            counts[word] += 1
            first.setdefault(word, len(first))
    return counts, first


def distinctive_words(
    texts: Iterable[str], frequencies: DocumentFrequencies, limit: int
) -> list[str]:
    """The ``limit`` words of ``texts`` with the highest TF-IDF, ties in order of first use.

    Words that score 0 (said everywhere) are left out even when fewer than
    ``limit`` remain: listing filler would read as if it told parts apart.
    """
    counts, first = word_counts(texts)
    scores = {w: (1 + math.log(n)) * frequencies.idf(w) for w, n in counts.items()}
    ranked = sorted((w for w, s in scores.items() if s > 0), key=lambda w: (-scores[w], first[w]))
    return ranked[: max(0, limit)]


@dataclass(frozen=True)
class Part:
    """One child of a coarse node as its line names it: id, span and distinctive words."""

    label: str
    span: str
    words: tuple[str, ...]


PARTS_HEADER = "Distinctive words per part:"


def part_lines(parts: Sequence[Part], budget: int) -> list[str]:
    """A header and one line per part with as many of its words as ``budget`` words allow.

    Every part keeps its line (a reader must see that each part was looked
    at) and all get the same number of words at most; with no room for one
    word each there are no lines at all, rather than a list that stops midway.
    """
    if not parts:
        return []
    for keep in range(max(1, *(len(p.words) for p in parts)), 0, -1):
        lines = [PARTS_HEADER]
        for part in parts:
            said = ", ".join(part.words[:keep]) if part.words else "nothing distinctive"
            lines.append(f"Part {part.label} {part.span}: {said}.")
        if sum(len(line.split()) for line in lines) <= budget:
            return lines
    return []
