"""The long test video's script: what it says and shows, second by second, from a seed.

The long benchmark (``testbench-long``) needs a video of half an hour whose
every fact is known: unique spoken facts in every segment, so that a coarse
caption cannot hold them all, and short visual events that only the leaves of
the caption tree see. This module decides all of it without touching a file:
the same recipe gives the same plan on every machine, so the shipped
questions can be checked against it without building the video
(:mod:`longvideo_r1.testing.longvideo` builds it, recording the same plan in
its manifest).

* Segments of :attr:`LongRecipe.segment_seconds` each show one of the test
  video's source clips (looped from a seeded offset) and say
  :attr:`LongRecipe.sentences` facts, one per equal slot: a unique person, a
  verb, a number, an object and a place (``"Marta Quill packed 37 lanterns at
  the old harbour."``), drawn from the word lists below.
* Some segments show a card for :data:`CARD_SECONDS`: a coloured panel over
  most of the picture with a word and a number on it (``"MAPLE 47"``), which
  the embedded captioner reads as a main colour, a shot of its own and
  on-screen text. Each card is placed between the sample times of the
  embedded captioner's high and medium levels (:func:`coarse_sample_times`),
  so only leaf captions see it, and where it can inside the first seconds of
  a spoken fact, so that "what is on screen while X is said" has one answer.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from longvideo_r1.captions.embedded import EMBEDDED_PLANS
from longvideo_r1.testing.sources import CLIPS
from longvideo_r1.tree import LEVELS, Tree

PLAN_VERSION = 1
"""Bump when the plan changes for the same recipe (word lists, placement rules)."""

SPEECH_LEAD = 0.5
"""Seconds from a slot's start to its first word."""
MIN_SPOKEN = 2.2
"""Every fact sentence lasts at least this long (the build checks it; espeak-ng says the
shortest in 2.4 s)."""
CARD_OVERLAP = 1.5
"""A card is on screen while a sentence is said when it overlaps the sentence's first
:data:`MIN_SPOKEN` seconds by this much (and no other sentence at all)."""
CARD_SECONDS = 2.0
"""How long a card stays on screen: two or three leaf samples (every 0.9 s at 30 minutes)."""
CARD_CLEARANCE = 0.3
"""Seconds kept between a card and the nearest high- or medium-level sample time."""
CARD_EDGE = 0.5
"""Seconds kept between a card and its segment's ends."""

FIRST_NAMES = (
    "Marta", "Oskar", "Helena", "Tobias", "Ingrid", "Rafael", "Greta", "Milo",
    "Selma", "Victor", "Nadia", "Felix", "Agnes", "Hugo", "Clara", "Anton",
    "Lena", "Bruno", "Vera", "Emil", "Rosa", "Jonas", "Ida", "Leon",
)  # fmt: skip
LAST_NAMES = (
    "Quill", "Barrow", "Fenwick", "Holt", "Marsh", "Tanner", "Crane", "Ashby",
    "Lowell", "Pike", "Rook", "Sutton", "Vance", "Wren", "Dorsey", "Kemp",
    "Lyle", "Mercer", "Nash", "Orton", "Pryce", "Thorne", "Webb", "Yates",
)  # fmt: skip
VERBS = (
    ("packed", "pack"), ("counted", "count"), ("painted", "paint"), ("carried", "carry"),
    ("sold", "sell"), ("bought", "buy"), ("repaired", "repair"), ("found", "find"),
    ("stacked", "stack"), ("loaded", "load"), ("washed", "wash"), ("sorted", "sort"),
)  # fmt: skip
OBJECTS = (
    "lanterns", "teacups", "ladders", "blankets", "candles", "baskets", "helmets", "kettles",
    "mirrors", "pillows", "shovels", "violins", "umbrellas", "anchors", "barrels", "bottles",
    "buckets", "compasses", "drums", "envelopes", "feathers", "hammers", "jackets", "kites",
    "lemons", "maps", "needles", "oranges", "pencils", "rakes", "saddles", "tickets",
    "trumpets", "wagons", "whistles", "clocks", "boots", "ropes", "scarves", "spoons",
    "apples", "bells", "brushes", "cameras", "chairs", "coins", "crates", "flags",
    "gloves", "jars", "keys", "mugs", "nets", "pans", "plates", "rings",
    "sacks", "tents", "towels", "vases",
)  # fmt: skip
PLACES = (
    "north market", "old harbour", "train station", "city library", "village school",
    "river bridge", "bakery", "town hall", "fire station", "post office", "museum",
    "flower shop", "bus depot", "lighthouse", "farm", "garage", "hospital", "stadium",
    "theatre", "boatyard", "hotel", "church", "castle", "airport", "factory", "gallery",
    "warehouse", "campsite", "dairy", "cinema",
)  # fmt: skip
CARD_WORDS = (
    "MAPLE", "COMET", "RIVET", "TULIP", "ORBIT", "PIXEL", "CEDAR", "BISON",
    "CORAL", "DELTA", "EMBER", "FJORD", "HAVEN", "JUMBO", "KOALA", "LOTUS",
    "MANGO", "NOVEL", "OPERA", "PANDA", "QUARTZ", "RADAR", "SALSA", "TOPAZ",
    "VIPER", "WALTZ", "YACHT", "ZEBRA", "ACORN", "BLAZE", "CIDER", "DINGO",
    "EAGLE", "FROST", "GECKO", "HONEY", "IVORY", "LEMUR", "MOCHA", "NINJA",
)  # fmt: skip
"""Never spoken: a card's word is only readable on screen."""

CARD_COLOURS: dict[str, tuple[str, str]] = {
    "red": ("0xDC1E1E", "white"),
    "pink": ("0xEB3CC8", "white"),
    "purple": ("0x8C32E6", "white"),
    "blue": ("0x2846E6", "white"),
    "cyan": ("0x14D2D2", "black"),
}
"""Panel fill and text colour, each hue in the middle of the embedded captioner's range for
its name; none is the main colour of any source clip, so a card always reads as a new shot."""

FOOTAGE_LABELS: dict[str, str] = {
    "bikes": "a cyclist riding through city traffic",
    "pedestrians": "people walking along a path beside a lawn",
    "box": "a hand lifting a yellow box above a table",
    "carphone": "a man in a red bow tie sitting in a car",
    "tree": "a green tree seen through a window",
    "cup": "a hand tilting a black cup",
    "rabbit": "a grey cartoon rabbit by his burrow",
}
"""Short names of the source clips, for the options of on-screen questions."""

CARD_FOOTAGE = ("pedestrians", "box", "carphone", "tree", "cup", "rabbit")
"""Footage a card may be shown over: bikes.mp4 has shot changes of its own, which would
take the leaf's few OCR frames (shot starts come first) away from the card."""


@dataclass(frozen=True)
class LongRecipe:
    """What the long test video is made of; the manifest records it, so a change rebuilds."""

    seed: int = 12
    segments: int = 60
    segment_seconds: float = 30.0
    sentences: int = 6
    """Spoken facts per segment, one per equal slot."""
    cards: int = 30
    """Segments that show a card."""
    fps: int = 10
    width: int = 480
    height: int = 270


@dataclass(frozen=True)
class Fact:
    """One spoken fact; the person is unique in the whole video."""

    person: str
    verb: str
    verb_base: str
    count: int
    objects: str
    place: str

    @property
    def sentence(self) -> str:
        return f"{self.person} {self.verb} {self.count} {self.objects} at the {self.place}."


@dataclass(frozen=True)
class Line:
    """A fact in its slot: said from ``slot[0] + SPEECH_LEAD`` and done before ``slot[1]``."""

    id: str
    slot: tuple[float, float]
    fact: Fact


@dataclass(frozen=True)
class Card:
    """A coloured panel with a word and a number, on screen for frames ``[frame_start, frame_end)``."""

    word: str
    number: int
    colour: str
    frame_start: int
    frame_end: int
    start: float
    end: float
    during: str | None
    """The id of the line said while the card is on screen, if any."""

    @property
    def text(self) -> str:
        return f"{self.word} {self.number}"


@dataclass(frozen=True)
class SegmentPlan:
    """One segment: its span, its footage and where in the clip it starts, its lines, its card."""

    index: int
    frame_start: int
    frame_end: int
    start: float
    end: float
    footage: str
    offset: float
    """Where the footage starts, as a share of the clip's length (lengths differ by release)."""
    lines: tuple[Line, ...]
    card: Card | None


@dataclass(frozen=True)
class LongPlan:
    """The whole script; :meth:`to_manifest` is what the manifest records of it."""

    recipe: LongRecipe
    segments: tuple[SegmentPlan, ...]
    coarse_frames: dict[str, int] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return self.segments[-1].frame_end

    @property
    def duration(self) -> float:
        return self.n_frames / self.recipe.fps

    def lines(self) -> list[Line]:
        return [line for s in self.segments for line in s.lines]

    def to_manifest(self) -> dict[str, Any]:
        """JSON-ready plan: recipe, geometry and every segment with its facts and card."""
        shown = {c.key: c.shown for c in CLIPS}
        return {
            "plan_version": PLAN_VERSION,
            "recipe": asdict(self.recipe),
            "coarse_frames": dict(self.coarse_frames),
            "fps": self.recipe.fps,
            "width": self.recipe.width,
            "height": self.recipe.height,
            "n_frames": self.n_frames,
            "duration": self.duration,
            "tree_width": _tree(self.duration, self.n_frames).width,
            "segments": [_segment_json(s, shown[s.footage]) for s in self.segments],
        }


def _segment_json(segment: SegmentPlan, shown: str) -> dict[str, Any]:
    card = None
    if segment.card is not None:
        card = {**asdict(segment.card), "text": segment.card.text}
    return {
        "index": segment.index,
        "frame_start": segment.frame_start,
        "frame_end": segment.frame_end,
        "start": segment.start,
        "end": segment.end,
        "footage": segment.footage,
        "label": FOOTAGE_LABELS[segment.footage],
        "shown": shown,
        "offset": segment.offset,
        "said": [
            {"id": ln.id, "slot": list(ln.slot), "text": ln.fact.sentence, "fact": asdict(ln.fact)}
            for ln in segment.lines
        ],
        "card": card,
    }


# ---------------------------------------------------------------------------------------
# the plan


def plan_long_video(recipe: LongRecipe | None = None) -> LongPlan:
    """The script for ``recipe`` (default :class:`LongRecipe`), the same on every machine."""
    recipe = recipe or LongRecipe()
    if recipe.segments < 1 or recipe.sentences < 1 or recipe.segment_seconds <= 0:
        raise ValueError(f"a long video needs segments, sentences and seconds: {recipe}")
    rng = random.Random(recipe.seed)
    footage = _footage_order(rng, recipe.segments)
    facts = _facts(rng, recipe.segments * recipe.sentences)
    bare = [
        _segment(recipe, i, footage[i], facts[i * recipe.sentences :], round(rng.random(), 3))
        for i in range(recipe.segments)
    ]
    n_frames = bare[-1].frame_end
    tree = _tree(n_frames / recipe.fps, n_frames)
    coarse = {level: _coarse_frames(tree, level) for level in LEVELS[:-1]}
    cards = _place_cards(rng, recipe, bare, tree, coarse_sample_times(tree, coarse))
    return LongPlan(recipe, tuple(replace(s, card=cards.get(s.index)) for s in bare), coarse)


def _segment(
    recipe: LongRecipe, i: int, footage: str, facts: list[Fact], offset: float
) -> SegmentPlan:
    """Segment ``i`` (0-based) without its card: its span, footage and one fact per slot."""
    frames = round(recipe.segment_seconds * recipe.fps)
    first = i * frames
    start, end = first / recipe.fps, (first + frames) / recipe.fps
    slot = (end - start) / recipe.sentences
    lines = tuple(
        Line(
            id=f"s{i + 1:02d}.{k + 1}",
            slot=(_r(start + k * slot), _r(start + (k + 1) * slot)),
            fact=facts[k],
        )
        for k in range(recipe.sentences)
    )
    return SegmentPlan(i + 1, first, first + frames, start, end, footage, offset, lines, None)


def _r(t: float) -> float:
    return round(t, 3)


def _tree(duration: float, n_frames: int) -> Tree:
    return Tree.for_video(duration, n_frames)


def _footage_order(rng: random.Random, n: int) -> list[str]:
    """Every clip in turn (a fresh shuffle each round), never the same clip twice in a row."""
    keys = [c.key for c in CLIPS]
    order: list[str] = []
    while len(order) < n:
        round_ = rng.sample(keys, len(keys))
        if order and round_[0] == order[-1]:
            round_.append(round_.pop(0))
        order += round_
    return order[:n]


def _facts(rng: random.Random, n: int) -> list[Fact]:
    """``n`` facts, each about a different person."""
    people = [f"{a} {b}" for a in FIRST_NAMES for b in LAST_NAMES]
    if n > len(people):
        raise ValueError(f"the word lists name {len(people)} people, the recipe needs {n}")
    out = []
    for person in rng.sample(people, n):
        verb, base = rng.choice(VERBS)
        out.append(
            Fact(person, verb, base, rng.randint(12, 99), rng.choice(OBJECTS), rng.choice(PLACES))
        )
    return out


# ---------------------------------------------------------------------------------------
# cards


def _coarse_frames(tree: Tree, level: str) -> int:
    """Frames the embedded captioner samples per node of a level (as its caption() does)."""
    depth = LEVELS.index(level) + 1
    first = tree.nodes(depth)[0]
    return min(EMBEDDED_PLANS[level].frames, tree.plan(first.id).frames)


def coarse_sample_times(tree: Tree, frames: dict[str, int]) -> list[float]:
    """Every time the embedded captioner samples for a high or medium caption, sorted."""
    times: list[float] = []
    for level, n in frames.items():
        for node in tree.nodes(LEVELS.index(level) + 1):
            times += tree.sample_times(node.id, n)
    return sorted(times)


def _place_cards(
    rng: random.Random,
    recipe: LongRecipe,
    segments: list[SegmentPlan],
    tree: Tree,
    coarse: list[float],
) -> dict[int, Card]:
    """Up to ``recipe.cards`` cards, by segment index, with unique words."""
    eligible = [s for s in segments if s.footage in CARD_FOOTAGE]
    words = rng.sample(CARD_WORDS, min(len(CARD_WORDS), recipe.cards))
    cards: dict[int, Card] = {}
    for segment in rng.sample(eligible, len(eligible)):
        if len(cards) == len(words):
            break
        spot = _card_spot(rng, recipe, segment, tree, coarse)
        if spot is None:
            continue
        first, during = spot
        last = first + round(CARD_SECONDS * recipe.fps)
        colour = rng.choice(sorted(CARD_COLOURS))
        cards[segment.index] = Card(
            word=words[len(cards)],
            number=rng.randint(10, 99),
            colour=colour,
            frame_start=first,
            frame_end=last,
            start=_r(first / recipe.fps),
            end=_r(last / recipe.fps),
            during=during,
        )
    return cards


def _card_spot(
    rng: random.Random, recipe: LongRecipe, segment: SegmentPlan, tree: Tree, coarse: list[float]
) -> tuple[int, str | None] | None:
    """(first frame, line said meanwhile) for a card in this segment, or None if none fits.

    A spot is clear of every coarse sample time by :data:`CARD_CLEARANCE`,
    away from the segment's ends and inside one leaf that lies wholly in the
    segment: the leaf's OCR reads the first frames of its shots first (two at
    the leaf level), and the card must be the second shot, after the
    footage, not the third after a change of footage. Spots overlapping the
    first :data:`MIN_SPOKEN` seconds of a sentence are preferred.
    """
    fps, length = recipe.fps, round(CARD_SECONDS * recipe.fps)
    edge = round(CARD_EDGE * fps)
    spots: list[tuple[int, str | None]] = []
    for first in range(segment.frame_start + edge, segment.frame_end - edge - length + 1):
        start, end = first / fps, (first + length) / fps
        i = bisect.bisect_left(coarse, start - CARD_CLEARANCE)
        if i < len(coarse) and coarse[i] < end + CARD_CLEARANCE:
            continue
        leaf = tree.leaf_at(start)
        if leaf.id != tree.leaf_at(end - 0.5 / fps).id:
            continue
        if leaf.start < segment.start or leaf.end > segment.end:
            continue  # the footage change would be a shot start, read before the card
        spots.append((first, _line_during(segment, start, end)))
    said = [s for s in spots if s[1] is not None]
    pool = said or spots
    return rng.choice(pool) if pool else None


def _line_during(segment: SegmentPlan, start: float, end: float) -> str | None:
    """The line a card at ``[start, end)`` is shown during, if it overlaps one enough.

    Slots are longer than any sentence plus its lead, so a card that overlaps
    one sentence's first seconds this much cannot reach into the next.
    """
    for line in segment.lines:
        spoken = line.slot[0] + SPEECH_LEAD
        if min(end, spoken + MIN_SPOKEN) - max(start, spoken) >= CARD_OVERLAP:
            return line.id
    return None
