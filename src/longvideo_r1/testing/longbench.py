"""The long benchmark ``testbench-long``: questions over the half-hour long test video.

Generated from the long video's manifest (:func:`write_longbench`), whose
plan is the same on every machine (:mod:`longvideo_r1.testing.longplan`),
and shipped as ``assets/testbench-long.json`` in the CG-Bench format, so
that ``lvr1 eval testbench-long`` runs the loader path of a real benchmark.
Every question has four options, one right, and clue intervals where its
answer is seen or said. Categories (``sub_category``):

* ``spoken-needle``: one fact said once (how many, or where);
* ``visual-needle``: one card, seen only by leaf captions (its colour, its number);
* ``on-screen-while-said``: the card word or the footage on screen while a fact is said;
* ``order``: whether one event comes before or after another;
* ``counting``: how often an object is mentioned, or a card colour shown, in the whole video.

Clue intervals come from the plan (sentence slots, card frames), not from
how long espeak-ng takes to say a sentence, so they do not change with the
speech engine's version.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from longvideo_r1.files import write_atomic
from longvideo_r1.questions.loaders import load_cgbench
from longvideo_r1.questions.schema import LETTERS, PathLike, QuestionList
from longvideo_r1.testing.longplan import CARD_COLOURS, FOOTAGE_LABELS, PLACES

LONGBENCH_NAME = "testbench-long"
LONGBENCH_VIDEO_UID = "testvideo-long"
LONGBENCH_FILE = Path(__file__).resolve().parent / "assets" / "testbench-long.json"
"""The shipped benchmark: CG-Bench format, regenerated with :func:`save_longbench`."""

CATEGORY_COUNTS: dict[str, int] = {
    "spoken-needle": 8,
    "visual-needle": 8,
    "on-screen-while-said": 8,
    "order": 6,
    "counting": 6,
}
"""Questions per category (fewer when a small manifest has too few facts or cards)."""

ORDER_CARD = ("before it is said", "after it is said", "while it is said", "it is never shown")
ORDER_LINES = ("before", "after", "at the same moment", "only one of the two is said")

Interval = tuple[float, float]


@dataclass(frozen=True)
class _Said:
    """One spoken fact with its segment's facts, as the questions need it."""

    id: str
    slot: Interval
    fact: Mapping[str, Any]
    segment: Mapping[str, Any]

    @property
    def claim(self) -> str:
        """``Marta Quill packed 37 lanterns``: the fact without its place."""
        f = self.fact
        return f"{f['person']} {f['verb']} {f['count']} {f['objects']}"


@dataclass(frozen=True)
class _Shown:
    """One card with its segment."""

    card: Mapping[str, Any]
    segment: Mapping[str, Any]

    @property
    def span(self) -> Interval:
        return (self.card["start"], self.card["end"])


@dataclass
class _Draft:
    """A question before its id and options are fixed."""

    category: str
    question: str
    right: str
    pool: list[str]
    clues: list[Interval]
    evidence: list[str]


def write_longbench(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The long benchmark in CG-Bench format, from the long video's manifest (or plan).

    Deterministic: the choices of facts, cards and options come from a
    generator seeded by the recipe's seed, so the same manifest always gives
    the same file. The right letters are spread evenly over A-D (in a seeded
    order), so no letter is a better blind guess than another.
    """
    rng = random.Random(f"{LONGBENCH_NAME}:{manifest['recipe']['seed']}")
    said = [
        _Said(c["id"], (c["slot"][0], c["slot"][1]), c["fact"], s)
        for s in manifest["segments"]
        for c in s["said"]
    ]
    shown = [_Shown(s["card"], s) for s in manifest["segments"] if s.get("card")]
    used: set[str] = set()
    drafts = [
        *_spoken_needles(rng, said, used),
        *_visual_needles(rng, shown, used),
        *_on_screen(rng, said, shown, used),
        *_orders(rng, said, shown, used),
        *_counts(rng, said, shown),
    ]
    positions = [k % 4 for k in range(len(drafts))]
    rng.shuffle(positions)
    return [
        _item(manifest, rng, n, d, at)
        for n, (d, at) in enumerate(zip(drafts, positions, strict=True), start=1)
    ]


def _item(
    manifest: Mapping[str, Any], rng: random.Random, n: int, d: _Draft, at: int
) -> dict[str, Any]:
    """One CG-Bench item: three seeded distractors, the right option at index ``at``."""
    others = sorted({p for p in d.pool if p != d.right})
    if len(others) < 3:
        raise ValueError(f"long bench question {d.question!r}: fewer than 3 distractors")
    choices = rng.sample(others, 3)
    choices.insert(at, d.right)
    return {
        "qid": f"tl-{n:02d}",
        "video_uid": LONGBENCH_VIDEO_UID,
        "duration": manifest["duration"],
        "question": d.question,
        "choices": choices,
        "right_answer": LETTERS[choices.index(d.right)],
        "answer": d.right,
        "clue_intervals": [list(c) for c in sorted(d.clues)],
        "sub_category": d.category,
        "evidence": d.evidence,
        "source": LONGBENCH_NAME,
    }


def _spread(rng: random.Random, items: Sequence[Any], n: int, used: set[str], key) -> list[Any]:
    """Up to ``n`` unused items, one from each of ``n`` equal runs of the video, marked used."""
    free = [i for i in items if key(i) not in used]
    if not free or n <= 0:
        return []
    n = min(n, len(free))
    picked = []
    for k in range(n):
        run = free[k * len(free) // n : (k + 1) * len(free) // n]
        picked.append(rng.choice(run))
    used.update(key(p) for p in picked)
    return picked


def _numbers_near(value: int, low: int = 10, high: int = 99, width: int = 20) -> list[str]:
    return [str(v) for v in range(max(low, value - width), min(high, value + width) + 1)]


# ---------------------------------------------------------------------------------------
# the categories


def _spoken_needles(rng: random.Random, said: list[_Said], used: set[str]) -> list[_Draft]:
    """How many objects one person handled, or where: said once, in one sentence."""
    places = sorted({s.fact["place"] for s in said} | set(PLACES))
    out = []
    for k, s in enumerate(_spread(rng, said, CATEGORY_COUNTS["spoken-needle"], used, _said_id)):
        f = s.fact
        if k % 2 == 0:
            question = f"According to the narrator, how many {f['objects']} did {f['person']} "
            question += f"{f['verb_base']}?"
            right, pool = str(f["count"]), _numbers_near(f["count"])
        else:
            question = f"According to the narrator, where did {f['person']} {f['verb_base']} "
            question += f"the {f['objects']}?"
            right, pool = f"at the {f['place']}", [f"at the {p}" for p in places]
        out.append(_Draft("spoken-needle", question, right, pool, [s.slot], [s.id]))
    return out


def _visual_needles(rng: random.Random, shown: list[_Shown], used: set[str]) -> list[_Draft]:
    """A card's colour or number, asked by its word: only leaf captions show cards."""
    numbers = {str(s.card["number"]) for s in shown}
    out = []
    for k, s in enumerate(_spread(rng, shown, CATEGORY_COUNTS["visual-needle"], used, _card_id)):
        card = s.card
        if k % 2 == 0:
            question = f"A card with the word {card['word']} on it appears on screen once. "
            question += "What colour is the card?"
            right, pool = card["colour"], list(CARD_COLOURS)
        else:
            question = f"Which number is written next to the word {card['word']} on screen?"
            right, pool = str(card["number"]), [*numbers, *_numbers_near(card["number"])]
        out.append(_Draft("visual-needle", question, right, pool, [s.span], [card["word"]]))
    return out


def _on_screen(
    rng: random.Random, said: list[_Said], shown: list[_Shown], used: set[str]
) -> list[_Draft]:
    """The card word, or the footage, on screen while one fact is said."""
    total = CATEGORY_COUNTS["on-screen-while-said"]
    by_id = {s.id: s for s in said}
    during = [s for s in shown if s.card.get("during") in by_id]
    words = [s.card["word"] for s in shown]
    out = []
    for s in _spread(rng, during, total - total * 3 // 8, used, _card_id):
        line = by_id[s.card["during"]]
        used.add(line.id)
        question = f"Which word is written on screen while the narrator says that {line.claim}?"
        clue = (min(line.slot[0], s.span[0]), max(line.slot[1], s.span[1]))
        out.append(_Draft("on-screen-while-said", question, s.card["word"], words, [clue],
                          [line.id, s.card["word"]]))  # fmt: skip
    carded = {s.card.get("during") for s in shown}
    plain = [s for s in said if s.id not in carded]
    labels = list(FOOTAGE_LABELS.values())
    for line in _spread(rng, plain, total - len(out), used, _said_id):
        question = f"What is on screen while the narrator says that {line.claim}?"
        right = FOOTAGE_LABELS[line.segment["footage"]]
        out.append(_Draft("on-screen-while-said", question, right, labels, [line.slot],
                          [line.id]))  # fmt: skip
    return out


def _orders(
    rng: random.Random, said: list[_Said], shown: list[_Shown], used: set[str]
) -> list[_Draft]:
    """Whether a card comes before or after a fact, or one fact before or after another.

    The two events are in segments at least a tenth of the video apart (at
    least one segment), so "at the same moment" is never right.
    """
    total = CATEGORY_COUNTS["order"]
    apart = max(1, len({s.segment["index"] for s in said}) // 10)
    out = []
    for s in _spread(rng, shown, total // 2, used, _card_id):
        line = _far_line(rng, said, s.segment["index"], apart, used)
        if line is None:
            continue
        question = f"Is the word {s.card['word']} shown on screen before or after the narrator "
        question += f"says that {line.claim}?"
        right = ORDER_CARD[0] if s.span[0] < line.slot[0] else ORDER_CARD[1]
        out.append(_Draft("order", question, right, list(ORDER_CARD), [s.span, line.slot],
                          [s.card["word"], line.id]))  # fmt: skip
    for first in _spread(rng, said, total - len(out), used, _said_id):
        line = _far_line(rng, said, first.segment["index"], apart, used)
        if line is None:
            continue
        question = f"Does the narrator say that {first.claim} before or after saying that "
        question += f"{line.claim}?"
        right = ORDER_LINES[0] if first.slot[0] < line.slot[0] else ORDER_LINES[1]
        out.append(_Draft("order", question, right, list(ORDER_LINES), [first.slot, line.slot],
                          [first.id, line.id]))  # fmt: skip
    return out


def _far_line(
    rng: random.Random, said: list[_Said], segment: int, apart: int, used: set[str]
) -> _Said | None:
    far = [s for s in said if abs(s.segment["index"] - segment) >= apart and s.id not in used]
    if not far:
        return None
    line = rng.choice(far)
    used.add(line.id)
    return line


def _counts(rng: random.Random, said: list[_Said], shown: list[_Shown]) -> list[_Draft]:
    """How many sentences mention an object, how many cards of a colour: the whole video."""
    total = CATEGORY_COUNTS["counting"]
    mentions: dict[str, list[_Said]] = {}
    for s in said:
        mentions.setdefault(s.fact["objects"], []).append(s)
    colours: dict[str, list[_Shown]] = {}
    for s in shown:
        colours.setdefault(s.card["colour"], []).append(s)
    out = []
    objects = _countable(rng, mentions, (total + 1) // 2)
    for name in objects:
        hits = mentions[name]
        question = f"In how many sentences does the narrator mention {name}?"
        out.append(_count_draft(question, hits, [h.slot for h in hits], [h.id for h in hits]))
    for colour in _countable(rng, colours, total - len(out)):
        cards = colours[colour]
        question = f"How many times does a {colour} card appear on screen in the whole video?"
        out.append(_count_draft(question, cards, [c.span for c in cards],
                                [c.card["word"] for c in cards]))  # fmt: skip
    return out


def _countable(rng: random.Random, groups: Mapping[str, list[Any]], n: int) -> list[str]:
    """Up to ``n`` names whose counts are 3-9 if enough are, else any, in a seeded order."""
    names = sorted(groups)
    preferred = [k for k in names if 3 <= len(groups[k]) <= 9]
    pool = preferred if len(preferred) >= n else names
    return rng.sample(pool, min(n, len(pool)))


def _count_draft(
    question: str, hits: Sequence[Any], clues: list[Interval], evidence: list[str]
) -> _Draft:
    right = len(hits)
    pool = [str(v) for v in range(max(1, right - 3), right + 4)]
    return _Draft("counting", question, str(right), pool, clues, evidence)


def _said_id(s: _Said) -> str:
    return s.id


def _card_id(s: _Shown) -> str:
    return str(s.card["word"])


# ---------------------------------------------------------------------------------------
# the shipped file


def save_longbench(manifest: Mapping[str, Any], path: PathLike | None = None) -> Path:
    """Write the long benchmark JSON (default: the shipped asset) atomically; returns its path."""
    target = Path(path) if path is not None else LONGBENCH_FILE
    text = json.dumps(write_longbench(manifest), indent=2, ensure_ascii=False) + "\n"
    write_atomic(target, text)
    return target


def load_longbench(*, subtitles: PathLike | None = None) -> QuestionList:
    """The shipped long benchmark as questions (benchmark ``testbench-long``).

    ``subtitles``: the folder holding ``testvideo-long.srt`` (the long
    video's own folder), to attach the narration's subtitles to every question.
    """
    loaded = load_cgbench(LONGBENCH_FILE, subtitles=subtitles or False)
    renamed = [replace(q, benchmark=LONGBENCH_NAME) for q in loaded]
    return QuestionList(renamed, source=loaded.source, benchmark=LONGBENCH_NAME)
