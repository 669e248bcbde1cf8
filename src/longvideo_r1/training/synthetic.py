"""Synthetic questions with their own caption trees: training data without video or model.

:func:`synthetic_item` makes questions with caption trees
(:func:`synthetic_tree_captions`) for free, for CPU-scale training; a
``synthetic:N`` spec stands for N of them wherever questions are expected.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from longvideo_r1.errors import ConfigError
from longvideo_r1.questions.schema import LETTERS, Question
from longvideo_r1.training.hints import nodes_for_interval as interval_nodes
from longvideo_r1.training.trees import CaptionTree
from longvideo_r1.tree import LEVELS, Node, NodeId, Tree, width_for_duration

_PEOPLE = (
    "a woman in a grey coat",
    "a man with a backpack",
    "a boy in a red cap",
    "an elderly man",
    "a cyclist",
    "a young woman with long hair",
    "a chef in a white apron",
    "a man in a suit",
    "a girl in a yellow raincoat",
    "a delivery driver",
    "a teenager with headphones",
    "a woman carrying groceries",
)
_DOINGS = (
    "walks along the pavement",
    "opens a cupboard",
    "talks on the phone",
    "waits at a crossing",
    "looks out of a window",
    "sits down on a bench",
    "crosses the room",
    "pours a glass of water",
    "waves at someone off screen",
    "ties a shoelace",
    "checks a wristwatch",
    "reads a newspaper",
    "turns on a lamp",
    "rides past slowly",
)
_PLACES = (
    "a busy street",
    "a small kitchen",
    "an open-air market",
    "a quiet park",
    "a train platform",
    "an office with large windows",
    "a living room",
    "a harbour at dusk",
    "a school corridor",
    "a supermarket aisle",
)
_SHOTS = (
    "The camera holds a wide shot of {place}.",
    "The scene is set in {place}.",
    "A handheld camera moves through {place}.",
    "Soft daylight falls over {place}.",
)
_COLOURS = ("red", "blue", "green", "yellow", "black", "white", "orange", "purple")
_OBJECTS = ("umbrella", "mug", "box", "bag", "book", "bottle", "scarf", "helmet")
_THINGS = ("boxes", "chairs", "bags", "plates", "books", "flowers")
_NUMBERS = ("one", "two", "three", "four", "five", "six")
_ACTIONS = (
    "picks up a phone",
    "closes the door",
    "sits down",
    "starts running",
    "opens an umbrella",
    "takes off a jacket",
    "turns off the light",
    "puts on sunglasses",
)


Fact = tuple[tuple[float, float], str]


def synthetic_tree_captions(
    tree: Tree, facts: Sequence[Fact], rng: random.Random
) -> dict[NodeId, str]:
    """Plausible captions for every node of a tree, with each fact where its interval lies.

    Leaves get a scene line and one or two time-stamped filler events plus
    every fact that overlaps them; a medium caption retells one event of each
    of its leaves, a high caption one event of each of its mediums, and both
    keep every fact, so coarse captions summarise fine ones as a real
    captioner's would and the clue can be followed down the tree.
    """
    places = [rng.choice(_PLACES) for _ in range(tree.width)]
    fact_leaves = [
        ({n.id for n in interval_nodes(tree, start, end, 3)}, start, fact)
        for (start, end), fact in facts
    ]
    leaf_events: dict[NodeId, list[tuple[float, str, bool]]] = {}
    captions: dict[NodeId, str] = {}
    for leaf in tree.nodes(3):
        events = [
            (
                rng.uniform(leaf.start, leaf.end),
                f"{rng.choice(_PEOPLE)} {rng.choice(_DOINGS)}",
                False,
            )
            for _ in range(rng.randint(1, 2))
        ]
        events += [(max(t, leaf.start), f, True) for ids, t, f in fact_leaves if leaf.id in ids]
        events.sort()
        leaf_events[leaf.id] = events
        shot = rng.choice(_SHOTS).format(place=places[leaf.id[0] - 1])
        captions[leaf.id] = " ".join([shot, *(_event(t, s) for t, s, _f in events)])
    for depth in (2, 1):
        for node in tree.nodes(depth):
            events = _summary_events(tree, node, leaf_events, rng)
            lead = f"This part takes place in {places[node.id[0] - 1]}."
            captions[node.id] = " ".join([lead, *(_event(t, s) for t, s, _f in events)])
    return captions


def _event(t: float, sentence: str) -> str:
    return f"At {t:.1f}s, {sentence}."


def _summary_events(
    tree: Tree,
    node: Node,
    leaf_events: Mapping[NodeId, list[tuple[float, str, bool]]],
    rng: random.Random,
) -> list[tuple[float, str, bool]]:
    """One filler event per child, plus each fact below the node once, in time order."""
    chosen: list[tuple[float, str, bool]] = []
    facts: set[str] = set()
    for child in tree.children(node.id):
        below = [e for leaf in _leaves(tree, child) for e in leaf_events[leaf.id]]
        filler = [e for e in below if not e[2]]
        if filler:
            chosen.append(rng.choice(filler))
        for event in below:
            if event[2] and event[1] not in facts:
                facts.add(event[1])
                chosen.append(event)
    return sorted(chosen)


def _leaves(tree: Tree, node: Node) -> list[Node]:
    if node.depth == len(LEVELS):
        return [node]
    return [leaf for child in tree.children(node.id) for leaf in _leaves(tree, child)]


@dataclass(frozen=True)
class SyntheticItem:
    """A question with its video's caption tree, made up from templates."""

    question: Question
    ctree: CaptionTree


def synthetic_item(
    rng: random.Random,
    index: int = 0,
    duration: float | None = None,
    min_width: int = 4,
    max_width: int = 8,
) -> SyntheticItem:
    """One synthetic multiple-choice question over a synthetic caption tree.

    The right option is a fact placed at a random clue interval; the wrong
    options appear elsewhere in the video too, said of other people, so a
    navigator cannot answer from the option words alone and a detour into a
    wrong segment reads plausibly.
    """
    duration = duration if duration is not None else round(rng.uniform(600.0, 7200.0), 1)
    width = width_for_duration(duration, min_width, max_width)
    tree = Tree.for_video(duration, max(1, int(duration * 2)), width=width)
    kind = rng.choice(("colour", "object", "count", "sequence"))
    person = rng.choice(_PEOPLE)
    text, options, fact_lines, qtype = _template(kind, person, rng)
    right = rng.randrange(len(options))
    ordered = options[1:]
    ordered.insert(right, options[0])
    intervals = _clue_intervals(duration, len(fact_lines), rng)
    facts: list[Fact] = list(zip(intervals, fact_lines, strict=True))
    facts += _distractor_facts(kind, options[1:], person, duration, intervals, rng)
    question = Question(
        id=f"synthetic-{index}",
        video_id=f"synthetic-video-{index}",
        question=text,
        choices=ordered,
        answer=LETTERS[right],
        category=kind,
        clue_intervals=intervals,
        duration=duration,
        benchmark="synthetic",
        extra={"question_type": qtype},
    )
    captions = synthetic_tree_captions(tree, facts, rng)
    ctree = CaptionTree(question.video_id, tree, captions, f"synthetic-{index}", "synthetic")
    return SyntheticItem(question, ctree)


def _template(kind: str, person: str, rng: random.Random) -> tuple[str, list[str], list[str], str]:
    """Question text, options (right one first), fact sentences, question type."""
    who = person.removeprefix("a ").removeprefix("an ")
    if kind == "colour":
        thing = rng.choice(_OBJECTS)
        colours = rng.sample(_COLOURS, 4)
        return (
            f"What colour is the {thing} that the {who} picks up?",
            colours,
            [f"{person} picks up a {colours[0]} {thing}"],
            "perception",
        )
    if kind == "object":
        things = rng.sample(_OBJECTS, 4)
        return (
            f"What does the {who} put on the table?",
            [f"a {t}" for t in things],
            [f"{person} puts a {things[0]} on the table"],
            "perception",
        )
    if kind == "count":
        thing = rng.choice(_THINGS)
        numbers = rng.sample(_NUMBERS, 4)
        return (
            f"How many {thing} does the {who} carry?",
            numbers,
            [f"{person} carries {numbers[0]} {thing}"],
            "perception",
        )
    first, *others = rng.sample(_ACTIONS, 5)
    return (
        f"What does the {who} do right after they {first.split(' ', 1)[0].removesuffix('s')} "
        f"{first.split(' ', 1)[1]}?",
        others,
        [f"{person} {first}", f"{person} {others[0]}"],
        "reasoning",
    )


def _clue_intervals(duration: float, n: int, rng: random.Random) -> list[tuple[float, float]]:
    """``n`` consecutive intervals a few seconds to half a minute long, a short gap apart."""
    spans = [round(rng.uniform(3.0, 30.0), 1) for _ in range(n)]
    gaps = [round(rng.uniform(0.5, 12.0), 1) for _ in range(n - 1)]
    room = duration - sum(spans) - sum(gaps)
    t = round(rng.uniform(0.0, max(0.0, room - 1.0)), 1)
    out = []
    for i, span in enumerate(spans):
        out.append((t, round(min(duration, t + span), 1)))
        t = out[-1][1] + (gaps[i] if i < len(gaps) else 0.0)
    return out


def _distractor_facts(
    kind: str,
    wrong: Sequence[str],
    person: str,
    duration: float,
    clues: Sequence[tuple[float, float]],
    rng: random.Random,
) -> list[Fact]:
    """The wrong options, said of other people at times away from the clue."""
    out: list[Fact] = []
    others = [p for p in _PEOPLE if p != person]
    for wrong_option in wrong:
        for _ in range(20):
            start = round(rng.uniform(0.0, max(0.0, duration - 10.0)), 1)
            if all(start + 10.0 < s - 30.0 or start > e + 30.0 for s, e in clues):
                break
        else:
            continue
        who = rng.choice(others)
        sentence = {
            "colour": f"{who} holds something {wrong_option}",
            "object": f"{who} looks at {wrong_option}",
            "count": f"{wrong_option} people stand near {who}",
            "sequence": f"{who} {wrong_option}",
        }[kind]
        out.append(((start, start + rng.uniform(2.0, 8.0)), sentence))
    return out


SYNTHETIC_PREFIX = "synthetic:"


def synthetic_count(spec: str) -> int | None:
    """N of a ``synthetic:N`` data spec; ``None`` when the spec names something else (a file).

    The training recipe and ``lvr1 data`` both accept ``synthetic:N`` where a
    question file or trajectories are expected, so data can be made from a
    fresh clone with nothing downloaded.
    """
    if not spec.startswith(SYNTHETIC_PREFIX):
        return None
    count = spec[len(SYNTHETIC_PREFIX) :]
    if not count.isdigit() or int(count) < 1:
        raise ConfigError(f"{spec!r}: use synthetic:N with N >= 1")
    return int(count)


def synthetic_dataset(n: int, seed: int = 0, **options: Any) -> list[SyntheticItem]:
    """``n`` synthetic items; the same seed gives the same items."""
    rng = random.Random(seed)
    return [synthetic_item(random.Random(rng.getrandbits(64)), i, **options) for i in range(n)]
