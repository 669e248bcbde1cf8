"""What the navigation model's replies mean, and the one way each is written.

Inference (``lvr1 ask``), SFT exports and RL rollouts all build their
conversations from the agent's protocol modules, so a checkpoint sees
byte-identical prompts whichever path produced them. This module holds what
the others share: the values a parsed reply holds (:class:`Action`,
:class:`Answer`, :class:`ParseError`, :class:`Reply`), the constants run
manifests record, the canonical rendering of what the model writes, and the
reading of an answer as one option (the parser, the grammar and the
evaluator must agree on which option an answer names).

The strings the model reads are in :mod:`longvideo_r1.agent.prompts`, the
parser in :mod:`longvideo_r1.agent.replies` and
:mod:`longvideo_r1.agent.toolcalls`, the reply grammar in
:mod:`longvideo_r1.agent.grammar`. See ``docs/protocol.md`` for every string
with an example conversation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from longvideo_r1.errors import ConfigError
from longvideo_r1.tree import LEVELS, NodeId, format_node_id

TIME_DECIMALS = 1
"""Decimals of every time the model reads (duration, segment bounds)."""

TOOLS: tuple[str, ...] = ("get_caption", "video_qa")
ToolName = Literal["get_caption", "video_qa"]

PARSER_VERSION = 2
"""Bumped when the parser accepts or reads a reply differently; run manifests record it.
2: no scorer reads a letter outside ``<answer>`` any more, and answers may be option texts."""

AnswerForm = Literal["letter", "text", "either"]
ANSWER_FORMS: tuple[str, ...] = get_args(AnswerForm)
"""What ``<answer>`` holds for a multiple-choice question: the option's letter (what the
released checkpoints learned), the option's exact text (small models pick the right text
far more often than the right letter), or either of them."""

_QUOTE_LIMIT = 60


# ---------------------------------------------------------------------------------
# Values the parser returns


@dataclass(frozen=True)
class Action:
    """One tool call: ``get_caption`` of a medium/low node, or ``video_qa`` on a leaf."""

    tool: ToolName
    node_id: NodeId
    query: str | None = None


@dataclass(frozen=True)
class Answer:
    """The final answer; ``letter`` is set when the question has choices."""

    text: str
    letter: str | None = None


@dataclass(frozen=True)
class ParseError:
    """Why a reply could not be used, worded to be sent back to the model."""

    message: str


@dataclass(frozen=True)
class Reply:
    """A parsed model turn.

    ``notes`` lists the tolerated deviations from the canonical format (for
    instance a missing ``<think>`` or a JSON tool call) so that training can
    reward clean formatting without inference having to reject it.
    """

    think: str | None
    result: Action | Answer | ParseError
    notes: tuple[str, ...] = ()
    raw: str = ""

    @property
    def action(self) -> Action | None:
        return self.result if isinstance(self.result, Action) else None

    @property
    def answer(self) -> Answer | None:
        return self.result if isinstance(self.result, Answer) else None

    @property
    def error(self) -> ParseError | None:
        return self.result if isinstance(self.result, ParseError) else None

    @property
    def ok(self) -> bool:
        return not isinstance(self.result, ParseError)

    @property
    def canonical(self) -> bool:
        """Usable and written exactly in the taught format."""
        return self.ok and not self.notes


# ---------------------------------------------------------------------------------
# Rendering what the model writes (SFT targets, logs, round trips)


def format_call(action: Action) -> str:
    """The Python-literal call, e.g. ``get_caption((1, 2))``."""
    _check_action(action)
    if action.tool == "get_caption":
        return f"get_caption({format_node_id(action.node_id)})"
    return f"video_qa({format_node_id(action.node_id)}, {_str_literal(action.query or '')})"


def render_tool_call(action: Action) -> str:
    """``<tool>get_caption((1, 2))</tool>``: the canonical tool block."""
    return f"<tool>{format_call(action)}</tool>"


def render_answer(answer: Answer | str) -> str:
    """``<answer>B</answer>``; the letter wins over the text when both are known."""
    if isinstance(answer, Answer):
        answer = answer.letter or answer.text
    return f"<answer>{answer}</answer>"


def render_reply(think: str | None, result: Action | Answer | str) -> str:
    """A whole canonical reply, as an SFT target would contain it."""
    body = render_tool_call(result) if isinstance(result, Action) else render_answer(result)
    return body if think is None else f"<think>{think}</think>\n{body}"


def join_reasoning(reasoning: str | None, content: str | None) -> str:
    """Put back the ``<think>`` block a server-side reasoning parser split off.

    Servers for reasoning models often return the thought apart from the
    content; the history sent back to the model must hold both, as written.
    """
    content = content or ""
    if not reasoning or re.search(r"<think\s*>", content, re.IGNORECASE):
        return content
    return f"<think>{reasoning}</think>{content}"


def _check_action(action: Action) -> None:
    if action.tool not in TOOLS:
        raise ValueError(f"unknown tool {action.tool!r}")
    if not 2 <= len(action.node_id) <= len(LEVELS):
        raise ValueError(f"tool calls take a medium or low id, got {action.node_id!r}")
    if action.tool == "video_qa" and (len(action.node_id) != len(LEVELS) or action.query is None):
        raise ValueError("video_qa needs a low-level id and a query")


def _str_literal(text: str) -> str:
    """A double-quoted Python literal that ``ast.literal_eval`` reads back to ``text``.

    ``<`` before a letter or ``/`` is escaped so a query can never close or
    open a tag of the reply it sits in.
    """
    out = []
    for i, ch in enumerate(text):
        nxt = text[i + 1 : i + 2]
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "<" and (nxt == "/" or nxt.isalpha()):
            out.append("\\x3c")
        elif not ch.isprintable():
            out.append(repr(ch)[1:-1])
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


# ---------------------------------------------------------------------------------
# Answers


def option_lines(choices: Sequence[str]) -> list[str]:
    """``A. text`` lines; choices that already carry their own letters are kept as they are."""
    if len(choices) > 26:
        raise ValueError(f"at most 26 choices can be lettered, got {len(choices)}")
    letters = option_letters(len(choices))
    if all(_has_own_letter(c, letter) for c, letter in zip(choices, letters, strict=True)):
        return [c.strip() for c in choices]
    return [f"{letter}. {c.strip()}" for c, letter in zip(choices, letters, strict=True)]


def normalize_answer(text: str, choices: Sequence[str] | None = None) -> str | None:
    """The option letter an answer names, or ``None`` when it names none of the options.

    Accepts the ways models write a letter ("(A)", "A.", "A) text", "Answer: A",
    "The answer is (B).", ``\\boxed{C}``, markdown) and an answer that repeats
    one option's text exactly. Without choices the stripped text is returned.
    """
    if not choices:
        stripped = text.strip()
        return stripped or None
    letter, _problem = match_choice(text, choices)
    return letter


_LETTER_ONLY = re.compile(r"^[(\[]?\s*([A-Za-z])\s*[)\]]?\s*[.:)]?$")
_LETTER_LEAD = re.compile(r"^(?:\(([A-Za-z])\)|\[([A-Za-z])\]|([A-Z])(?:[.:)]|\s+[-–:]))\s*\S")
_LETTER_IS = re.compile(
    r"^([A-Z])\s+is\s+(?:the\s+)?(?:correct|right|best|answer|final)\b", re.IGNORECASE
)
_ANSWER_PREFIX = re.compile(
    r"^(?:(?:so|thus|therefore|hence)[,:]?\s+)?(?:the\s+|my\s+)?"
    r"(?:(?:final|correct|best|right)\s+)*(?:answer|option|choice)\b"
    r"(?:\s+(?:is|would\s+be|should\s+be))?\s*[:：\-]?\s*",
    re.IGNORECASE,
)
_PAREN_LETTER = re.compile(r"\(([A-Z])\)")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def option_letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def _has_own_letter(choice: str, letter: str) -> bool:
    return re.match(rf"^\s*\(?{letter}[.):]\s", choice) is not None


def choice_body(choice: str, letter: str) -> str:
    """An option's text without its own ``A.`` prefix, if it carries one."""
    return (
        re.sub(rf"^\s*\(?{letter}[.):]\s+", "", choice)
        if _has_own_letter(choice, letter)
        else choice
    )


def _plain(text: str) -> str:
    """Case- and space-insensitive form for comparing an answer with an option text."""
    return " ".join(text.lower().split()).rstrip(".").strip()


def clean_answer(text: str) -> str:
    text = _BOXED.sub(r"\1", text)
    text = text.replace("**", "").replace("__", "").replace("`", "")
    text = " ".join(text.split())
    return text.strip().strip("*_\"'“”‘’ ").strip()


def match_choice(text: str, choices: Sequence[str]) -> tuple[str | None, str | None]:
    """(letter, None) or (None, why not): the why feeds the parser's error message."""
    letters = option_letters(len(choices))
    span = f"{letters[0]}-{letters[-1]}" if len(letters) > 1 else letters[0]
    cleaned = clean_answer(text)
    if not cleaned:
        return None, "the <answer> is empty"
    bodies = {
        _plain(choice_body(c, letter)): letter for c, letter in zip(choices, letters, strict=True)
    }
    bodies.update(
        {_plain(line): letter for line, letter in zip(option_lines(choices), letters, strict=True)}
    )

    def pick(letter: str) -> tuple[str | None, str | None]:
        letter = letter.upper()
        if letter in letters:
            return letter, None
        return None, f"the answer {letter} is not one of the options {span}"

    candidate = cleaned
    for _ in range(3):
        if m := _LETTER_ONLY.match(candidate):
            return pick(m.group(1))
        if _plain(candidate) in bodies:
            return bodies[_plain(candidate)], None
        if m := _LETTER_LEAD.match(candidate):
            return pick(next(g for g in m.groups() if g))
        if m := _LETTER_IS.match(candidate):
            return pick(m.group(1))
        stripped = _ANSWER_PREFIX.sub("", candidate, count=1)
        if stripped == candidate or not stripped:
            break
        candidate = stripped
    found = set(_PAREN_LETTER.findall(cleaned))
    if len(found) == 1:
        return pick(found.pop())
    return None, (
        f"the answer {quote(text)} does not name one option; answer with one letter ({span})"
    )


def quote(fragment: str, limit: int = _QUOTE_LIMIT) -> str:
    """A short one-line quotation of what the model wrote."""
    flat = " ".join(str(fragment).split())
    if len(flat) > limit:
        flat = flat[: limit - 3].rstrip() + "..."
    return f"`{flat}`"


# questions -------------------------------------------------------------------------

_ANY_LETTERING = re.compile(r"^\s*\(?([A-Z])[.):]\s")


def check_question(question: str, choices: Sequence[str] | None) -> tuple[str, list[str] | None]:
    """Refuse, before any model call, a question the protocol cannot render faithfully."""
    if not isinstance(question, str) or not question.strip():
        raise ConfigError("the question is empty")
    if choices is None:
        return question, None
    if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence):
        raise ConfigError("choices must be a list of option texts")
    items = list(choices)
    if not 2 <= len(items) <= 26:
        raise ConfigError(f"a multiple-choice question needs 2 to 26 choices, got {len(items)}")
    for i, choice in enumerate(items, 1):
        if not isinstance(choice, str) or not choice.strip():
            raise ConfigError(f"choice {i} is empty or not text: {choice!r}")
    _check_lettering(items)
    return question, items


def _check_lettering(items: list[str]) -> None:
    """Options carry their letters in order (``A. ...``) or not at all.

    Mixed or shuffled letters would be printed twice (``A. B. text``) and the
    model's letter would no longer name the option it read.
    """
    letters = [chr(ord("A") + i) for i in range(len(items))]
    own = [
        re.match(rf"^\s*\(?{letter}[.):]\s", c) is not None
        for c, letter in zip(items, letters, strict=True)
    ]
    if all(own):
        return
    if any(own) or all(_ANY_LETTERING.match(c) for c in items):
        raise ConfigError(
            "choices must all start with their own letters in order (A. ..., B. ...) or none "
            f"of them; got {', '.join(repr(c[:20]) for c in items[:4])}"
        )
