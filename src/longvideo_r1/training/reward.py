"""The navigation reward: pure functions of a run's trace and its question.

The paper pays ``1.0 * accuracy + 1.0 * F1 - 0.2 * repeat``
(REFERENCE.md section 5). Its F1 sums the overlap of every visit with the
clues, so a visit made twice, or a leaf read inside a medium segment also
read, counts its evidence twice: coverage and precision can pass 1, and
repeating a covering visit *raises* the reward. Here every term is a
function of the trace alone, and the F1 is the evaluation's own
(:mod:`longvideo_r1.spans` on unions, the visits
:func:`~longvideo_r1.agent.trace.counted_visits` picks), so a second look
at the same seconds adds nothing and the repeat term can only lower the
total.

Terms, each in the trace's own units:

* ``accuracy``: 1 when the run answered and the answer is the right one;
* ``grounding_f1``: F1 of the union of visited spans against the union of
  the clue spans, in [0, 1]; with ``f1_only_if_right`` it is 0 for a wrong
  answer, so a policy cannot farm it by looking at the right place and then
  guessing;
* ``repeat``: (calls - unique calls) / unique calls, a call being a tool, an
  id and a query;
* ``video_qa``: video_qa calls that ran (the paper's were free; a vision
  model's are the costly ones);
* ``format``: the share of rounds the protocol read as canonical, for
  unconstrained rollouts (a constrained one is always 1).

The total is the weighted sum, with the costs (``repeat``, ``video_qa``)
subtracted; :class:`RewardWeights` holds the weights, the paper's by default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from longvideo_r1.agent import protocol
from longvideo_r1.agent.trace import Trace, counted_visits, visited_spans
from longvideo_r1.errors import ConfigError
from longvideo_r1.options import option
from longvideo_r1.questions.schema import Question
from longvideo_r1.spans import clip, span_f1

TERMS: tuple[str, ...] = ("accuracy", "grounding_f1", "repeat", "video_qa", "format")
"""The reward's terms, in the order trainers log them."""

COSTS = frozenset({"repeat", "video_qa"})
"""Terms whose weight is subtracted."""


@dataclass(frozen=True)
class RewardWeights:
    """How the terms add up; the defaults are the paper's 1.0 acc + 1.0 F1 - 0.2 repeat."""

    accuracy: float = option(1.0, "Weight of answering right (1) or not (0).")
    grounding_f1: float = option(
        1.0, "Weight of the F1 of visited time against clue time (unions, in [0, 1])."
    )
    repeat: float = option(0.2, "Subtracted per unit of (calls - unique calls) / unique calls.")
    video_qa: float = option(0.0, "Subtracted per video_qa call that ran (0: free, as the paper).")
    format: float = option(
        0.0, "Weight of the share of rounds read as canonical (unconstrained rollouts)."
    )
    f1_only_if_right: bool = option(False, "Pay the F1 term only when the answer is right.")

    def __post_init__(self) -> None:
        for name in TERMS:
            value = getattr(self, name)
            if value < 0:
                raise ConfigError(
                    f"reward weight {name} must be 0 or more (costs are subtracted), got {value}"
                )

    def signed(self) -> dict[str, float]:
        """Each term's weight with its sign: what multiplies the term in the total."""
        return {name: (-1.0 if name in COSTS else 1.0) * getattr(self, name) for name in TERMS}


def is_correct(trace: Trace, question: Question) -> bool:
    """The run answered, and with the question's answer (a letter for multiple choice)."""
    if trace.status != "answered" or trace.answer is None or question.answer is None:
        return False
    if question.choices:
        return trace.answer == question.answer
    said = protocol.normalize_answer(trace.answer)
    return said is not None and said.casefold() == question.answer.strip().casefold()


def accuracy(trace: Trace, question: Question) -> float:
    """1.0 for a right answer, else 0.0 (no answer, an error or a wrong one)."""
    return 1.0 if is_correct(trace, question) else 0.0


def grounding_f1(trace: Trace, clues: Sequence[tuple[float, float]]) -> float:
    """F1 of the union of the run's visits against the union of the clue spans, in [0, 1].

    The visits are the evaluation's (medium and low captions read, leaves
    asked about; the opening's high-level captions are not choices), each
    node once; the clues are cut to the video first. No clue time, or
    nothing visited, scores 0.
    """
    truth = clip(clues, 0.0, trace.duration)
    if not truth:
        return 0.0
    return span_f1(visited_spans(counted_visits(trace.evidence)), truth).f1


def tool_calls(trace: Trace) -> list[tuple[str, tuple[int, ...] | None, str | None]]:
    """Every tool call the model wrote, in order: (tool, id, query); refused ones included."""
    return [
        (r.kind, r.node_id, r.query) for r in trace.rounds if r.kind in ("get_caption", "video_qa")
    ]


def repeat_ratio(trace: Trace) -> float:
    """(calls - unique calls) / unique calls; 0 with no call at all.

    A call is its tool, id and query, so asking video_qa a new question
    about a clip is not a repeat, and reading the same caption again is.
    """
    calls = tool_calls(trace)
    unique = len(set(calls))
    return (len(calls) - unique) / unique if unique else 0.0


def video_qa_cost(trace: Trace) -> float:
    """video_qa calls that ran, by a vision model or from the clip's captions."""
    return float(trace.cost.video_qa_calls + trace.cost.video_qa_from_captions)


def format_validity(trace: Trace) -> float:
    """Share of rounds read as canonical: parsed, with no deviation the parser had to tolerate.

    A run with no round (it failed before the model spoke) scores 0.
    """
    rounds = [r for r in trace.rounds if r.output is not None]
    if not rounds:
        return 0.0
    clean = sum(1 for r in rounds if r.kind != "parse_error" and not r.notes)
    return clean / len(rounds)


def reward_terms(
    trace: Trace, question: Question, weights: RewardWeights | None = None
) -> dict[str, float]:
    """Every term plus ``total``, the weighted sum with costs subtracted.

    ``grounding_f1`` is reported as paid: 0 for a wrong answer under
    ``f1_only_if_right``.
    """
    weights = weights or RewardWeights()
    right = accuracy(trace, question)
    f1 = grounding_f1(trace, question.clue_intervals)
    if weights.f1_only_if_right and not right:
        f1 = 0.0
    terms = {
        "accuracy": right,
        "grounding_f1": f1,
        "repeat": repeat_ratio(trace),
        "video_qa": video_qa_cost(trace),
        "format": format_validity(trace),
    }
    terms["total"] = total(terms, weights)
    return terms


def total(terms: Mapping[str, float], weights: RewardWeights) -> float:
    """The weighted sum of ``terms`` (a term that is missing counts 0)."""
    return sum(w * terms.get(name, 0.0) for name, w in weights.signed().items())
