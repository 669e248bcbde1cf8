"""The reply grammar: constrained decoding admits exactly what the parser reads as canonical.

One round's :class:`ReplyRules` (ids not yet read, video_qa on read leaves
while its budget lasts, the answer form, only an answer on the last round,
and the levers for small navigators: no answer before a caption at
``min_depth`` was read, get_caption only on the ids a guide offers) become a
grammar for llama.cpp, vLLM and SGLang alike. The answers it admits are
checked with the parser itself, so the grammar can never admit a reply
:func:`~longvideo_r1.agent.replies.parse_reply` would read otherwise; the
same check gives the answer a training target writes (:func:`answer_in_form`).
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from longvideo_r1.agent.prompts import answer_instruction
from longvideo_r1.agent.protocol import (
    ANSWER_FORMS,
    AnswerForm,
    choice_body,
    option_letters,
    option_lines,
)
from longvideo_r1.agent.replies import parse_reply
from longvideo_r1.agent.toolcalls import RoundLimits
from longvideo_r1.llm import gbnf
from longvideo_r1.llm.gbnf import Chars, Constraint, Grammar, Ref, Rep, alt, opt, seq
from longvideo_r1.tree import NodeId

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
QUERY_MAX_CHARS = 200
"""Longest video_qa query the grammar admits (a precise question is short)."""
OPEN_ANSWER_MAX_CHARS = 300
"""Longest answer to an open question (no choices) the grammar admits."""
TAIL_MAX_CHARS = 400
"""At least the longest text after ``</think>`` any reply grammar admits, so a tail given
this many tokens always finishes (a token is at least one character)."""
THINK_CHARS_PER_TOKEN = 3
"""A think of N tokens, bounded in characters for engines that constrain the whole reply."""
_QUERY_FIRST = r'^"\\<\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000'
"""A query starts with a character ``str.strip`` keeps: no space of any script."""


@dataclass(frozen=True)
class ReplyRules:
    """What one round may contain, from the round's state.

    ``fetched`` holds every id whose caption the model has been given (the
    high ones from the start): get_caption is offered only for the others,
    since a small model otherwise asks for the same node again and again.
    ``refused`` holds leaves whose video_qa was refused as a repeated call.
    """

    width: int
    fetched: frozenset[NodeId] = frozenset()
    choices: tuple[str, ...] | None = None
    answer_form: AnswerForm = "letter"
    tools: bool = True
    """False on the last round: only an answer is admitted."""
    get_caption: bool = True
    """False once the get_caption budget is spent."""
    video_qa: bool = True
    """False once the video_qa budget is spent (or where there is no video_qa)."""
    require_fetched_leaf: bool = True
    refused: frozenset[NodeId] = frozenset()
    think_max_chars: int | None = None
    """Bound the ``<think>`` in the grammar (None: only the reply's token limit bounds it)."""
    min_depth: int = 0
    """No answer until a caption this deep (2 medium, 3 low) was read, while a tool call is
    left to make: a round that offers none (the last one) always admits the answer."""
    offered: tuple[NodeId, ...] | None = None
    """The only ids get_caption may ask for (``--guide``; None: every unread id)."""

    @property
    def answer_open(self) -> bool:
        """Whether this round admits an answer (see ``min_depth``)."""
        return depth_reached(self.fetched, self.min_depth) or not offers_a_call(self)

    def limits(self) -> RoundLimits:
        """What the parser must refuse of a reply decoded without this grammar."""
        return RoundLimits(self.min_depth, self.answer_open, self.offered)


def depth_reached(fetched: Collection[NodeId], min_depth: int) -> bool:
    """A caption at ``min_depth`` or deeper has been read (always, for 0 and 1)."""
    return min_depth <= 1 or any(len(node_id) >= min_depth for node_id in fetched)


def offers_a_call(rules: ReplyRules) -> bool:
    """Whether the round's grammar admits any tool call at all."""
    return rules.tools and bool(
        (rules.get_caption and caption_ids(rules)) or (rules.video_qa and qa_leaves(rules))
    )


def reply_grammars(rules: ReplyRules) -> tuple[Grammar, Grammar]:
    """(whole reply, what follows ``</think>``) as grammar trees; see :func:`reply_constraint`."""
    if rules.width < 1:
        raise ValueError(f"tree width must be at least 1, got {rules.width}")
    actions: list[Ref] = []
    rules_out: dict[str, gbnf.Expr] = {}
    if rules.tools:
        caption_trie = _id_trie(caption_ids(rules)) if rules.get_caption else None
        qa_ids = _id_trie(qa_leaves(rules)) if rules.video_qa else None
        calls = []
        if caption_trie is not None:
            rules_out["caption-call"] = seq("get_caption(", caption_trie, ")")
            calls.append(Ref("caption-call"))
        if qa_ids is not None:
            rules_out["qa-call"] = seq("video_qa(", qa_ids, ', "', Ref("query"), '")')
            rules_out["query"] = seq(
                Chars(_QUERY_FIRST), Rep(Chars(r'^"\\<\x00-\x1F'), 0, QUERY_MAX_CHARS - 1)
            )
            calls.append(Ref("qa-call"))
        if calls:
            rules_out["tool"] = seq("<tool>", alt(*calls), "</tool>")
            actions.append(Ref("tool"))
    if rules.answer_open:
        rules_out["answer"] = seq("<answer>", _answer_expr(rules), "</answer>")
        actions.append(Ref("answer"))
    rules_out["action"] = alt(*actions)
    whole = {"root": seq(THINK_OPEN, Ref("think"), THINK_CLOSE + "\n", Ref("action")),
             "think": _think(rules.think_max_chars), **rules_out}  # fmt: skip
    tail = {"root": seq("\n", Ref("action")), **rules_out}
    return Grammar(whole), Grammar(tail)


def reply_constraint(rules: ReplyRules, free_tokens: int = 768) -> Constraint:
    """The round's grammar for a backend: GBNF text for llama.cpp, vLLM and SGLang alike.

    Every reply it admits is one :func:`parse_reply` reads as canonical with
    the same tree, choices and fetched ids; ``free_tokens`` caps the think
    when a backend writes it freely and constrains only the rest.
    """
    whole, tail = reply_grammars(rules)
    chars = rules.think_max_chars or free_tokens * THINK_CHARS_PER_TOKEN
    bounded = Grammar({**whole.rules, "think": _think(chars)})
    return Constraint(
        grammar=whole.gbnf(),
        head=THINK_OPEN,
        stop=THINK_CLOSE,
        tail=tail.gbnf(),
        free_tokens=free_tokens,
        bounded=bounded.gbnf(),
        tail_tokens=TAIL_MAX_CHARS,
    )


def _think(max_chars: int | None) -> gbnf.Expr:
    """The think's text: no ``<``, so no tag can open or close inside it."""
    return Rep(Chars("^<"), 0, max_chars)


def _ids(width: int, depth: int) -> Iterator[NodeId]:
    """Every id of one level, in order."""
    return itertools.product(range(1, width + 1), repeat=depth)


def _id_trie(ids: Collection[NodeId]) -> gbnf.Expr | None:
    """``(h, m)`` / ``(h, m, l)`` for exactly these ids, shared prefixes written once."""
    if not ids:
        return None
    root: dict[int, Any] = {}
    for node_id in ids:
        branch = root
        for part in node_id:
            branch = branch.setdefault(part, {})
        branch[None] = True  # an id ends here

    def alternatives(branch: dict[Any, Any]) -> gbnf.Expr:
        options = []
        for part in sorted(k for k in branch if k is not None):
            below = branch[part]
            deeper = [k for k in below if k is not None]
            if not deeper:
                options.append(seq(str(part)))
                continue
            rest = seq(", ", alternatives(below))
            options.append(seq(str(part), opt(rest) if None in below else rest))
        return alt(*options)

    return seq("(", alternatives(root), ")")


def caption_ids(rules: ReplyRules) -> list[NodeId]:
    """The ids get_caption may ask for: unread medium and low ids, or the unread offered ones."""
    fetched = {tuple(f) for f in rules.fetched}
    if rules.offered is not None:
        everything = {i for depth in (2, 3) for i in _ids(rules.width, depth)}
        return sorted({tuple(i) for i in rules.offered} & everything - fetched)
    return [i for depth in (2, 3) for i in _ids(rules.width, depth) if i not in fetched]


def qa_leaves(rules: ReplyRules) -> list[NodeId]:
    """The leaves video_qa may ask about: read ones (unless the leaf rule is off), not refused."""
    fetched = {tuple(f) for f in rules.fetched}
    refused = {tuple(r) for r in rules.refused}
    return [
        leaf
        for leaf in _ids(rules.width, 3)
        if (not rules.require_fetched_leaf or leaf in fetched) and leaf not in refused
    ]


def _answer_expr(rules: ReplyRules) -> gbnf.Expr:
    if not rules.choices:
        return seq(Chars("A-Za-z0-9"), Rep(Chars("^<"), 0, OPEN_ANSWER_MAX_CHARS - 1))
    bodies = _answer_bodies(tuple(rules.choices), rules.answer_form)
    return alt(*(b for letter in sorted(bodies) for b in bodies[letter]))


def answer_in_form(letter: str, choices: Sequence[str], answer_form: AnswerForm) -> str:
    """What ``<answer>`` holds for option ``letter`` in this form (for training targets).

    ``text`` and ``either`` write the option's text; where that text would be
    read as another option (an option whose text is a letter, or two options
    with one text) the ``A. text`` line or the letter is written instead.
    """
    letters = option_letters(len(choices))
    if letter not in letters:
        raise ValueError(f"{letter!r} is not one of the options {letters}")
    if answer_form == "letter":
        return letter
    return _answer_bodies(tuple(choices), "text")[letter][0]


@lru_cache(maxsize=256)
def _answer_bodies(choices: tuple[str, ...], answer_form: AnswerForm) -> dict[str, list[str]]:
    """For each option letter, the ``<answer>`` texts of this form that read back as it.

    Each candidate is checked with the parser itself; an option text that
    reads as another option falls back to its ``A. text`` line, then to its
    letter, so every option stays answerable. Cached: every round of a
    question asks for the same choices. Callers must not change the lists.
    """
    if answer_form not in ANSWER_FORMS:
        answer_instruction(answer_form)  # raises the one-line error
    letters = option_letters(len(choices))
    lines = option_lines(choices)
    out: dict[str, list[str]] = {}
    for choice, line, letter in zip(choices, lines, letters, strict=True):
        text = " ".join(choice_body(choice, letter).split())
        if answer_form == "letter":
            candidates = [letter]
        elif answer_form == "text":
            candidates = [text, line, letter]
        else:
            candidates = [letter, text, line]
        good = [c for c in dict.fromkeys(candidates) if _reads_as(c, letter, choices)]
        out[letter] = good[:1] if answer_form == "text" else good
    return out


def _reads_as(body: str, letter: str, choices: Sequence[str]) -> bool:
    if "<" in body or not body.strip():
        return False
    reply = parse_reply(f"{THINK_OPEN}x{THINK_CLOSE}\n<answer>{body}</answer>", choices=choices)
    return reply.canonical and reply.answer is not None and reply.answer.letter == letter
