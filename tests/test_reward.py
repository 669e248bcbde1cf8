"""The navigation reward, checked by hand on traces built over a known tree.

The tree: 640 s at width 4, so a high segment is 160 s, a medium one 40 s
and a leaf 10 s; (1, 2) covers [40, 80) and (1, 2, 1) covers [40, 50).
"""

from __future__ import annotations

import math

import pytest

from longvideo_r1.agent.trace import Evidence, Round, Trace
from longvideo_r1.errors import ConfigError
from longvideo_r1.questions.schema import Question
from longvideo_r1.spans import length, union
from longvideo_r1.training.reward import (
    TERMS,
    RewardWeights,
    accuracy,
    format_validity,
    grounding_f1,
    repeat_ratio,
    reward_terms,
    total,
    video_qa_cost,
)
from longvideo_r1.tree import Tree

TREE = Tree.for_video(640.0, 1280, width=4)
CLUE = [(40.0, 50.0)]


def question(clues=CLUE, answer="A") -> Question:
    return Question(
        id="q",
        video_id="v",
        question="What colour is the mug?",
        choices=["red", "blue", "green", "white"],
        answer=answer,
        clue_intervals=clues,
        duration=640.0,
    )


def run(*calls, answer: str | None = "A", parse_errors: int = 0) -> Trace:
    """A trace as the navigator writes it: one round per call, each node's evidence once."""
    trace = Trace(question="What colour is the mug?", duration=640.0, width=4)
    seen = set()
    for index, call in enumerate(calls, 1):
        tool, node_id = call[0], tuple(call[1])
        query = call[2] if len(call) > 2 else None
        trace.rounds.append(
            Round(index=index, output="...", kind=tool, node_id=node_id, query=query)
        )
        node = TREE.node(node_id)
        if (node_id, tool) not in seen:
            seen.add((node_id, tool))
            trace.evidence.append(
                Evidence(
                    node_id=node_id,
                    level=node.level,
                    start=node.start,
                    end=node.end,
                    how=tool,
                    round=index,
                    query=query,
                )
            )
        if tool == "video_qa":
            trace.cost.video_qa_from_captions += 1
    for _ in range(parse_errors):
        trace.rounds.append(Round(index=len(trace.rounds) + 1, output="??", kind="parse_error"))
    if answer is not None:
        trace.rounds.append(Round(index=len(trace.rounds) + 1, output="...", kind="answer"))
        trace.status, trace.answer = "answered", answer
    else:
        trace.status = "no_answer"
    return trace


def reference_reward(trace: Trace, clues, correct: bool) -> float:
    """The reference's reward, loophole included: overlaps summed over every get_caption
    visit (duplicates and nested ones too), the visited length taken as a union."""
    visits = [TREE.node(r.node_id) for r in trace.rounds if r.kind == "get_caption"]
    spans = [(n.start, n.end) for n in visits]
    clue_len = sum(e - s for s, e in clues)
    summed = sum(max(0.0, min(e, ce) - max(s, cs)) for s, e in spans for cs, ce in clues)
    coverage = summed / clue_len
    precision = summed / length(union(spans)) if spans else 0.0
    f1 = 2 * coverage * precision / (coverage + precision) if summed else 0.0
    calls = [
        (r.kind, r.node_id, r.query) for r in trace.rounds if r.kind in ("get_caption", "video_qa")
    ]
    repeat = (len(calls) - len(set(calls))) / len(set(calls)) if calls else 0.0
    return 1.0 * correct + 1.0 * f1 - 0.2 * repeat


# the terms ---------------------------------------------------------------------------------


def test_accuracy_pays_only_a_right_answer():
    assert accuracy(run(("get_caption", (1, 2))), question()) == 1.0
    assert accuracy(run(("get_caption", (1, 2)), answer="B"), question()) == 0.0
    assert accuracy(run(("get_caption", (1, 2)), answer=None), question()) == 0.0
    unanswerable = question(answer=None)
    assert accuracy(run(("get_caption", (1, 2))), unanswerable) == 0.0


def test_a_medium_visit_over_the_clue_scores_its_f1_by_hand():
    # visited [40, 80) against the clue [40, 50): precision 10/40, recall 1, F1 = 0.4
    assert grounding_f1(run(("get_caption", (1, 2))), CLUE) == pytest.approx(0.4)


def test_the_leaf_inside_the_medium_counts_once():
    # union [40, 80): the same 0.4 as the medium alone; the reference sums 10 + 10 s
    trace = run(("get_caption", (1, 2)), ("get_caption", (1, 2, 1)))
    assert grounding_f1(trace, CLUE) == pytest.approx(0.4)


def test_the_leaf_on_the_clue_scores_one_and_a_miss_zero():
    assert grounding_f1(run(("get_caption", (1, 2, 1))), CLUE) == pytest.approx(1.0)
    assert grounding_f1(run(("get_caption", (2, 1, 1))), CLUE) == 0.0
    assert grounding_f1(run(), CLUE) == 0.0
    assert grounding_f1(run(("get_caption", (1, 2, 1))), []) == 0.0


def test_a_leaf_beside_the_clue_halves_the_precision():
    # [40, 60) against [40, 50): precision 0.5, recall 1, F1 = 2/3
    trace = run(("get_caption", (1, 2, 1)), ("get_caption", (1, 2, 2)))
    assert grounding_f1(trace, CLUE) == pytest.approx(2 / 3)


def test_high_level_captions_are_not_visits():
    trace = run(("get_caption", (1, 2, 1)))
    trace.evidence.insert(
        0, Evidence(node_id=(1,), level="high", start=0.0, end=160.0, how="get_caption", round=0)
    )
    assert grounding_f1(trace, CLUE) == pytest.approx(1.0)


def test_repeat_is_calls_minus_unique_over_unique():
    assert repeat_ratio(run()) == 0.0
    assert repeat_ratio(run(("get_caption", (1, 2)), ("get_caption", (1, 2, 1)))) == 0.0
    twice = run(("get_caption", (1, 2)), ("get_caption", (1, 2)), ("get_caption", (1, 2, 1)))
    assert repeat_ratio(twice) == pytest.approx(0.5)  # 3 calls, 2 unique
    asked = run(
        ("get_caption", (1, 2, 1)),
        ("video_qa", (1, 2, 1), "what colour?"),
        ("video_qa", (1, 2, 1), "which mug?"),
    )
    assert repeat_ratio(asked) == 0.0  # a new question about the clip is a new call


def test_video_qa_cost_counts_the_calls_that_ran():
    asked = run(("get_caption", (1, 2, 1)), ("video_qa", (1, 2, 1), "what colour?"))
    assert video_qa_cost(asked) == 1.0
    assert video_qa_cost(run(("get_caption", (1, 2, 1)))) == 0.0


def test_format_is_the_share_of_canonical_rounds():
    assert format_validity(run(("get_caption", (1, 2)))) == 1.0
    # one call, one parse error, one answer: 2 of 3 rounds canonical
    assert format_validity(run(("get_caption", (1, 2)), parse_errors=1)) == pytest.approx(2 / 3)
    tolerated = run(("get_caption", (1, 2)))
    tolerated.rounds[0].notes = ["no <think> block"]
    assert format_validity(tolerated) == pytest.approx(1 / 2)
    assert format_validity(Trace(question="q", duration=1.0, width=4)) == 0.0


# the total and its weights -----------------------------------------------------------------


def test_default_weights_are_the_papers():
    assert RewardWeights().signed() == {
        "accuracy": 1.0,
        "grounding_f1": 1.0,
        "repeat": -0.2,
        "video_qa": -0.0,
        "format": 0.0,
    }
    terms = reward_terms(run(("get_caption", (1, 2)), ("get_caption", (1, 2, 1))), question())
    assert set(terms) == {*TERMS, "total"}
    assert terms["total"] == pytest.approx(1.0 + 0.4)


def test_weights_are_configurable_and_costs_subtract():
    trace = run(
        ("get_caption", (1, 2, 1)),
        ("get_caption", (1, 2, 1)),
        ("video_qa", (1, 2, 1), "what colour?"),
        parse_errors=1,
    )
    weights = RewardWeights(accuracy=2.0, grounding_f1=0.5, repeat=1.0, video_qa=0.1, format=1.0)
    terms = reward_terms(trace, question(), weights)
    # repeat: 3 calls, 2 unique -> 0.5; format: 4 of 5 rounds clean
    expected = 2.0 * 1 + 0.5 * 1.0 - 1.0 * 0.5 - 0.1 * 1 + 1.0 * 0.8
    assert terms["total"] == pytest.approx(expected)
    assert total(terms, weights) == pytest.approx(expected)


def test_f1_only_if_right_withholds_the_f1_of_a_wrong_answer():
    wrong = run(("get_caption", (1, 2, 1)), answer="C")
    assert reward_terms(wrong, question())["grounding_f1"] == pytest.approx(1.0)
    gated = reward_terms(wrong, question(), RewardWeights(f1_only_if_right=True))
    assert gated["grounding_f1"] == 0.0 and gated["total"] == 0.0
    right = reward_terms(
        run(("get_caption", (1, 2, 1))), question(), RewardWeights(f1_only_if_right=True)
    )
    assert right["total"] == pytest.approx(2.0)


def test_a_negative_weight_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="repeat must be 0 or more"):
        RewardWeights(repeat=-0.2)


# the reference's loophole ------------------------------------------------------------------


def test_repeating_a_covering_visit_games_the_reference_but_not_ours():
    once = run(("get_caption", (1, 2, 1)))
    again = run(("get_caption", (1, 2, 1)), ("get_caption", (1, 2, 1)))
    thrice = run(*[("get_caption", (1, 2, 1))] * 3)
    assert reference_reward(once, CLUE, True) == pytest.approx(2.0)
    assert reference_reward(again, CLUE, True) > 2.0  # coverage and precision 2, F1 2: 2.8
    assert reference_reward(again, CLUE, True) == pytest.approx(2.8)
    ours = [reward_terms(t, question())["total"] for t in (once, again, thrice)]
    assert ours[0] == pytest.approx(2.0)
    assert ours[1] == pytest.approx(1.8) and ours[2] == pytest.approx(1.6)
    assert ours[0] > ours[1] > ours[2]


def test_nested_visits_game_the_reference_but_not_ours():
    # medium then its leaf: the reference sums 10 s twice against a 40 s union
    nested = run(("get_caption", (1, 2)), ("get_caption", (1, 2, 1)))
    medium = run(("get_caption", (1, 2)))
    assert reference_reward(nested, CLUE, True) > reference_reward(medium, CLUE, True)
    ours = reward_terms(nested, question())
    assert ours["total"] == pytest.approx(reward_terms(medium, question())["total"])


@pytest.mark.parametrize("repeats", [1, 2, 5])
def test_every_term_stays_in_range_however_often_a_visit_repeats(repeats):
    trace = run(*[("get_caption", (1, 2))] * repeats, *[("get_caption", (1, 2, 1))] * repeats)
    terms = reward_terms(trace, question())
    for name in ("accuracy", "grounding_f1", "format"):
        assert 0.0 <= terms[name] <= 1.0
    assert terms["total"] <= 2.0 and not math.isnan(terms["total"])
