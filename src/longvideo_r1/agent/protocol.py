"""Every string the navigation model reads, and the one parser of what it writes.

Inference (``lvr1 ask``), SFT exports and RL rollouts all build their
conversations here, so a checkpoint sees byte-identical prompts whichever
path produced them. The structural strings (the first user message, the tool
syntax, the observations) are the interface the released LongVideo-R1
checkpoints learned and are reproduced exactly; the system prompt, the
last-round instruction and the error observation are this project's prose.

Times are printed with :data:`TIME_DECIMALS` decimals (``37.5``, ``150.0``),
the form the checkpoints saw. See ``docs/protocol.md`` for every string with
an example conversation.

:func:`parse_reply` never raises on model output: whatever the model wrote
comes back as a :class:`Reply` holding an :class:`Action`, an :class:`Answer`
or a :class:`ParseError` whose message can be sent straight back to the model
(see :func:`error_message`).
"""

from __future__ import annotations

import ast
import itertools
import json
import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, get_args

from longvideo_r1.errors import ConfigError, TreeError
from longvideo_r1.llm import gbnf
from longvideo_r1.llm.gbnf import Chars, Constraint, Grammar, Ref, Rep, alt, opt, seq
from longvideo_r1.tree import LEVELS, Node, NodeId, Tree, format_node_id, parse_node_id

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
# Strings the model reads


def format_seconds(seconds: float) -> str:
    """One fixed precision everywhere, so equal times always print alike."""
    return f"{seconds:.{TIME_DECIMALS}f}"


def answer_instruction(answer_form: AnswerForm = "letter") -> str:
    """How a multiple-choice answer is written; no example letter (small models copy it)."""
    if answer_form == "letter":
        return "For a multiple-choice question, answer with the letter of the option you choose."
    if answer_form == "text":
        return (
            "For a multiple-choice question, answer with the text of the option you choose, "
            "copied exactly as it is written, without its letter."
        )
    if answer_form == "either":
        return (
            "For a multiple-choice question, answer with the letter of the option you choose "
            "or with its text copied exactly."
        )
    raise ConfigError(f"answer form must be one of {', '.join(ANSWER_FORMS)}, got {answer_form!r}")


def system_prompt(width: int, answer_form: AnswerForm = "letter") -> str:
    """Teach the tree, the round format and the tools for this video's width."""
    if width < 1:
        raise ValueError(f"tree width must be at least 1, got {width}")
    w = width
    how_to_answer = answer_instruction(answer_form)
    return f"""You answer questions about a long video that you cannot watch directly. The video has been cut into a tree of segments, each described by a text caption, and you explore this tree step by step until you know enough to answer.

The tree has three levels, and every split has the same width, {w}:
1. High level: the whole video in {w} consecutive segments, numbered 1 to {w}.
2. Medium level: each high-level segment h cut into {w} parts; (h, m) is part m of segment h ({w * w} medium segments in all).
3. Low level: each medium-level segment (h, m) cut into {w} short clips; (h, m, l) is clip l of (h, m) ({w**3} low segments in all).
Every number in an id counts from 1 to {w}, in time order.

At first you get only the question and the captions of the {w} high-level segments. Finer captions come only when you ask for them, so look where the answer is most likely to be.

In every round, first reason inside <think>...</think>: what the captions so far tell you, what is still missing, and which segment most likely holds it. Then do exactly one of these two things:
- If what you know is enough, give your final answer inside <answer>...</answer>. {how_to_answer}
- Otherwise call exactly one tool, and wait for its result in the next message:
  <tool>get_caption((h, m))</tool> returns the caption of medium-level segment (h, m).
  <tool>get_caption((h, m, l))</tool> returns the caption of low-level segment (h, m, l).
  <tool>video_qa((h, m, l), "query")</tool> shows the clip of low-level segment (h, m, l) to a vision model and returns its answer to your query. Use it for details the captions miss, such as a colour, a number, written text or who does what. It works only on a low-level segment whose caption you have already fetched; ask one precise question.
The high-level captions are already in front of you: never ask for them. Write ids as tuples of integers and the query as a quoted string.

Every reply has this form:
<think>your reasoning</think>
<tool>one tool call</tool>
or
<think>your reasoning</think>
<answer>your final answer</answer>"""


@dataclass(frozen=True)
class UserTurn:
    """A user message as its text parts; ``text`` is what a text-only chat template sees.

    OpenAI-compatible servers render text parts of one message joined by a
    newline for text-only models, so ``text`` and ``content`` reach the model
    as the same prompt.
    """

    parts: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.parts)

    @property
    def content(self) -> list[dict[str, str]]:
        return [{"type": "text", "text": part} for part in self.parts]

    def message(self, as_parts: bool = True) -> dict[str, Any]:
        """The chat message, with content parts (as the reference sent) or one string."""
        return {"role": "user", "content": self.content if as_parts else self.text}


def option_lines(choices: Sequence[str]) -> list[str]:
    """``A. text`` lines; choices that already carry their own letters are kept as they are."""
    if len(choices) > 26:
        raise ValueError(f"at most 26 choices can be lettered, got {len(choices)}")
    letters = _letters(len(choices))
    if all(_has_own_letter(c, letter) for c, letter in zip(choices, letters, strict=True)):
        return [c.strip() for c in choices]
    return [f"{letter}. {c.strip()}" for c, letter in zip(choices, letters, strict=True)]


def first_user_message(
    question: str,
    choices: Sequence[str] | None,
    duration: float,
    high_captions: Sequence[tuple[Node, str]],
) -> UserTurn:
    """The opening user turn: question, duration, then one line per high segment.

    The question part ends with a newline, as in the reference evaluation, so
    that the joined text has a blank line before the duration.
    """
    question_part = question.strip() + "\n"
    if choices:
        question_part += "\n".join(option_lines(choices)) + "\n"
    parts = [
        question_part,
        f"The total duration of the video is {format_seconds(duration)} seconds.",
    ]
    for node, caption in high_captions:
        if node.depth != 1:
            raise ValueError(f"first message takes high-level captions, got node {node.label}")
        parts.append(
            f"High-level Caption {node.id[0]} from {format_seconds(node.start)} "
            f"to {format_seconds(node.end)}:{caption.strip()}"
        )
    return UserTurn(tuple(parts))


def first_user_content(
    question: str,
    choices: Sequence[str] | None,
    duration: float,
    high_captions: Sequence[tuple[Node, str]],
) -> list[dict[str, str]]:
    """OpenAI content parts of the opening turn (how the reference sent it)."""
    return first_user_message(question, choices, duration, high_captions).content


def first_user_text(
    question: str,
    choices: Sequence[str] | None,
    duration: float,
    high_captions: Sequence[tuple[Node, str]],
) -> str:
    """The opening turn as one string, parts joined by newlines."""
    return first_user_message(question, choices, duration, high_captions).text


def caption_observation(node: Node, caption: str) -> str:
    """What a ``get_caption`` call returns; ids are written without spaces here."""
    if node.depth == 1:
        raise ValueError("high-level captions are given in the first message, not observed")
    tight = ",".join(str(i) for i in node.id)
    return (
        f"{node.level.capitalize()}-level Caption from tool get_caption(({tight})). "
        f"From {format_seconds(node.start)} to {format_seconds(node.end)}:{caption.strip()}"
    )


def qa_observation(answer: str) -> str:
    """What a ``video_qa`` call returns: the VLM's answer text only."""
    return f"<information>{answer.strip()}</information>"


def budget_notice(cause: str, call_not_run: bool) -> str:
    """What the model is told when a budget runs out; the last-round instruction follows."""
    sentence = cause[0].upper() + cause[1:]
    return sentence + (", so that call was not run." if call_not_run else ".")


def last_round_message(answer_form: AnswerForm = "letter") -> str:
    """Sent before the final round so the model answers instead of exploring."""
    how = {
        "letter": "the option's letter",
        "text": "the option's exact text",
        "either": "the option's letter or its exact text",
    }
    if answer_form not in how:
        answer_instruction(answer_form)  # raises the one-line error
    return (
        "This is your last round: no more tools can be called. Think it over in "
        "<think>...</think> and then give your best final answer in <answer>...</answer>; "
        f"for a multiple-choice question, answer with {how[answer_form]}."
    )


def error_message(error: ParseError | str) -> str:
    """Tell the model what was wrong with its last reply and what a valid one looks like."""
    problem = error.message if isinstance(error, ParseError) else error
    return (
        f"Your last reply could not be used: {problem.rstrip('.')}.\n"
        "Reply again: your reasoning inside <think>...</think>, followed by exactly one of\n"
        "<tool>get_caption((h, m))</tool>\n"
        "<tool>get_caption((h, m, l))</tool>\n"
        '<tool>video_qa((h, m, l), "your question")</tool>\n'
        "<answer>your final answer</answer>"
    )


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


def answer_in_form(letter: str, choices: Sequence[str], answer_form: AnswerForm) -> str:
    """What ``<answer>`` holds for option ``letter`` in this form (for training targets).

    ``text`` and ``either`` write the option's text; where that text would be
    read as another option (an option whose text is a letter, or two options
    with one text) the ``A. text`` line or the letter is written instead.
    """
    letters = _letters(len(choices))
    if letter not in letters:
        raise ValueError(f"{letter!r} is not one of the options {letters}")
    if answer_form == "letter":
        return letter
    return _answer_bodies(tuple(choices), "text")[letter][0]


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


def normalize_answer(text: str, choices: Sequence[str] | None = None) -> str | None:
    """The option letter an answer names, or ``None`` when it names none of the options.

    Accepts the ways models write a letter ("(A)", "A.", "A) text", "Answer: A",
    "The answer is (B).", ``\\boxed{C}``, markdown) and an answer that repeats
    one option's text exactly. Without choices the stripped text is returned.
    """
    if not choices:
        stripped = text.strip()
        return stripped or None
    letter, _problem = _match_choice(text, choices)
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


def _letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def _has_own_letter(choice: str, letter: str) -> bool:
    return re.match(rf"^\s*\(?{letter}[.):]\s", choice) is not None


def _choice_body(choice: str, letter: str) -> str:
    """An option's text without its own ``A.`` prefix, if it carries one."""
    return (
        re.sub(rf"^\s*\(?{letter}[.):]\s+", "", choice)
        if _has_own_letter(choice, letter)
        else choice
    )


def _plain(text: str) -> str:
    """Case- and space-insensitive form for comparing an answer with an option text."""
    return " ".join(text.lower().split()).rstrip(".").strip()


def _clean_answer(text: str) -> str:
    text = _BOXED.sub(r"\1", text)
    text = text.replace("**", "").replace("__", "").replace("`", "")
    text = " ".join(text.split())
    return text.strip().strip("*_\"'“”‘’ ").strip()


def _match_choice(text: str, choices: Sequence[str]) -> tuple[str | None, str | None]:
    """(letter, None) or (None, why not): the why feeds the parser's error message."""
    letters = _letters(len(choices))
    span = f"{letters[0]}-{letters[-1]}" if len(letters) > 1 else letters[0]
    cleaned = _clean_answer(text)
    if not cleaned:
        return None, "the <answer> is empty"
    bodies = {
        _plain(_choice_body(c, letter)): letter for c, letter in zip(choices, letters, strict=True)
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
        f"the answer {_quote(text)} does not name one option; answer with one letter ({span})"
    )


# ---------------------------------------------------------------------------------
# The parser


@dataclass(frozen=True)
class _Block:
    """One tool call or answer found in a reply, before it is interpreted."""

    kind: Literal["tool", "answer"]
    body: str
    fragment: str
    json_like: bool = False
    tag: str | None = None  # "tool", "tool_call" or "answer"; None for an untagged call


_THINK_OPEN = re.compile(r"<think\s*>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think\s*>", re.IGNORECASE)
_TAG = re.compile(r"<(/?)(tool_call|tool|answer)\s*>", re.IGNORECASE)
_OPEN_TAG = re.compile(r"<(tool_call|tool|answer)\s*>", re.IGNORECASE)
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n`]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_CALL_START = re.compile(r"\b(get_caption|video_qa)\s*\(", re.IGNORECASE)
_BARE_LINE = re.compile(
    r"^(?:[-*>]\s*)?(?:\*\*)?(?:(?:action|tool|tool call|call|next step)\s*:\s*)?(?:\*\*)?\s*`*"
    r"((?:get_caption|video_qa)\s*\(.*\))`*\s*[.;]?$",
    re.IGNORECASE,
)
_NAME_CALL = re.compile(r"^([A-Za-z_][\w.\-]*)\s*\(")

_ID_KEYS = frozenset(
    {"id", "ids", "node", "node_id", "nodes", "node_ids", "segment", "segment_id", "segments",
     "segment_ids", "seg", "seg_id", "clip", "clip_id", "index", "path", "args", "target",
     "position", "tuple", "low_segment", "segment_tuple"}
)  # fmt: skip
_QUERY_KEYS = frozenset({"query", "question", "q", "prompt", "text", "ask", "request"})
_NAME_KEYS = ("name", "tool", "tool_name", "function", "action", "function_name")
_ARG_KEYS = ("arguments", "parameters", "args", "params", "input", "kwargs", "action_input")


def parse_reply(
    text: str,
    tree: Tree | None = None,
    choices: Sequence[str] | None = None,
    fetched: Collection[NodeId] | None = None,
) -> Reply:
    """Read one model turn; never raises, whatever the text.

    With ``tree`` ids are range-checked; with ``choices`` answers become
    letters; with ``fetched`` (ids whose captions the model has seen)
    ``video_qa`` on a leaf it has not read yet is refused, as the prompt says.
    """
    raw = text if isinstance(text, str) else ""
    try:
        return _parse(raw, tree, choices, fetched)
    except Exception as exc:  # the parser must never take an episode down
        return Reply(
            None, ParseError(f"the reply could not be read ({type(exc).__name__})"), (), raw
        )


def _parse(
    raw: str,
    tree: Tree | None,
    choices: Sequence[str] | None,
    fetched: Collection[NodeId] | None,
) -> Reply:
    notes: list[str] = []
    if not raw.strip():
        return Reply(None, ParseError("the reply is empty"), (), raw)
    think, rest, think_open = _split_think(raw, notes)
    blocks = _tagged_blocks(rest, notes)
    if not blocks:
        blocks = _untagged_blocks(rest, notes)
    elif _outside_text(rest):
        notes.append("text outside the tags")
    result = _interpret(blocks, think, rest, think_open, tree, choices, fetched, notes)
    return Reply(think, result, tuple(dict.fromkeys(notes)), raw)


def _split_think(raw: str, notes: list[str]) -> tuple[str | None, str, bool]:
    """(think, the rest, think left open): actions are only looked for outside the thought."""
    opened = _THINK_OPEN.search(raw)
    if opened is None:
        closed = _THINK_CLOSE.search(raw)
        if closed is None:
            notes.append("no <think> block")
            return None, raw, False
        notes.append("</think> without <think>")
        return raw[: closed.start()].strip(), _drop_thinks(raw[closed.end() :]), False
    before = raw[: opened.start()]
    if before.strip():
        notes.append("text before <think>")
    closed = _THINK_CLOSE.search(raw, opened.end())
    if closed is not None:
        return (
            raw[opened.end() : closed.start()].strip(),
            before + "\n" + _drop_thinks(raw[closed.end() :]),
            False,
        )
    notes.append("<think> not closed")
    action = _OPEN_TAG.search(raw, opened.end())
    if action is None:
        return raw[opened.end() :].strip(), before, True
    return raw[opened.end() : action.start()].strip(), before + raw[action.start() :], False


def _drop_thinks(text: str) -> str:
    """Later <think> blocks are more thought, not actions."""
    return re.sub(r"<think\s*>.*?(?:</think\s*>|\Z)", "\n", text, flags=re.IGNORECASE | re.DOTALL)


def _tagged_blocks(rest: str, notes: list[str]) -> list[_Block]:
    """<tool>, <tool_call> and <answer> blocks, tolerating a missing open or close tag."""
    blocks: list[_Block] = []
    closes: dict[str, re.Match[str] | None] = {}
    pos = 0
    while (tag := _TAG.search(rest, pos)) is not None:
        name = tag.group(2).lower()
        kind: Literal["tool", "answer"] = "answer" if name == "answer" else "tool"
        if tag.group(1):  # a closing tag whose opening tag is missing: take its line
            body = rest[pos : tag.start()]
            body = body.rsplit("\n", 1)[-1] if body.rsplit("\n", 1)[-1].strip() else body
            if body.strip():
                notes.append(f"</{name}> without <{name}>")
                blocks.append(
                    _Block(kind, body, body.strip() + tag.group(0), name == "tool_call", name)
                )
            pos = tag.end()
            continue
        close = _next_close(rest, name, tag.end(), closes)
        following = _OPEN_TAG.search(rest, tag.end())
        if close is not None and (following is None or close.start() < following.start()):
            end, pos = close.start(), close.end()
        else:
            notes.append(f"<{name}> not closed")
            end = pos = following.start() if following is not None else len(rest)
        if name == "tool_call":
            notes.append("tool call in <tool_call>")
        blocks.append(
            _Block(kind, rest[tag.end() : end], rest[tag.start() : pos], name == "tool_call", name)
        )
    filled = [b for b in blocks if b.body.strip()]
    return filled or blocks


def _next_close(
    rest: str, name: str, start: int, cache: dict[str, re.Match[str] | None]
) -> re.Match[str] | None:
    """The next ``</name>`` at or after ``start``, remembered so long replies stay linear."""
    if name in cache:
        known = cache[name]
        if known is None or known.start() >= start:
            return known
    found = re.compile(rf"</{name}\s*>", re.IGNORECASE).search(rest, start)
    cache[name] = found
    return found


def _outside_text(rest: str) -> bool:
    """Whether anything but whitespace surrounds the tagged blocks."""
    stripped = re.sub(
        r"<(tool_call|tool|answer)\s*>.*?(?:</\1\s*>|\Z)", "", rest, flags=re.IGNORECASE | re.DOTALL
    )
    return bool(_TAG.sub("", stripped).strip())


def _untagged_blocks(rest: str, notes: list[str]) -> list[_Block]:
    """Tool calls small models write without <tool> tags: fenced, bare JSON or a bare line."""
    blocks: list[_Block] = []
    remaining = rest
    for fence in _FENCE.finditer(rest):
        body = fence.group(2).strip()
        if _looks_like_json_call(body) or _BARE_LINE.match(body):
            notes.append("tool call in a fenced block")
            blocks.append(_Block("tool", body, fence.group(0), body.startswith(("{", "["))))
            remaining = remaining.replace(fence.group(0), "\n", 1)
    decoder = json.JSONDecoder()
    for brace in re.finditer(r"(?m)^\s*(\{)", remaining):
        try:
            value, end = decoder.raw_decode(remaining, brace.start(1))
        except ValueError:
            continue
        if isinstance(value, dict) and any(k in value for k in _NAME_KEYS):
            notes.append("tool call as bare JSON")
            fragment = remaining[brace.start(1) : end]
            blocks.append(_Block("tool", fragment, fragment, True))
    for line in remaining.splitlines():
        if m := _BARE_LINE.match(line.strip()):
            notes.append("tool call without <tool> tags")
            blocks.append(_Block("tool", m.group(1), line.strip()))
    return blocks


def _looks_like_json_call(body: str) -> bool:
    if not body.startswith(("{", "[")):
        return False
    value = _load_json(body)
    if isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, dict) and any(k in value for k in (*_NAME_KEYS, *TOOLS))


def _interpret(
    blocks: list[_Block],
    think: str | None,
    rest: str,
    think_open: bool,
    tree: Tree | None,
    choices: Sequence[str] | None,
    fetched: Collection[NodeId] | None,
    notes: list[str],
) -> Action | Answer | ParseError:
    tools = [b for b in blocks if b.kind == "tool"]
    answers = [b for b in blocks if b.kind == "answer"]
    if tools and answers:
        return ParseError(
            f"the reply has both a tool call {_quote(tools[0].fragment)} and an answer "
            f"{_quote(answers[0].fragment)}; write one per round: call the tool now and "
            "answer after reading its result"
        )
    if len(tools) > 1:
        return ParseError(
            f"the reply has {len(tools)} tool calls ({_quote(tools[0].fragment)}, "
            f"{_quote(tools[1].fragment)}); call exactly one tool per round"
        )
    if tools:
        return _interpret_tool(tools[0], tree, fetched, notes)
    if answers:
        results = [_interpret_answer(b.body, choices) for b in answers]
        for result in results:
            if isinstance(result, ParseError):
                return result
        if len({r.letter or r.text for r in results if isinstance(r, Answer)}) > 1:
            return ParseError(
                f"the reply has {len(answers)} different answers ({_quote(answers[0].fragment)}, "
                f"{_quote(answers[1].fragment)}); give exactly one <answer>"
            )
        return results[0]
    return _missing_action(think, rest, think_open)


def _missing_action(think: str | None, rest: str, think_open: bool) -> ParseError:
    """Say why nothing usable was found, as specifically as the text allows."""
    if think_open:
        return ParseError(
            "the <think> block is never closed and no <tool> or <answer> follows it; close it "
            "with </think>, then call one tool or give the answer"
        )
    if think and (tag := _OPEN_TAG.search(think)):
        return ParseError(
            f"the {tag.group(0).lower()} is inside <think>...</think>; write it after </think>"
        )
    if call := _CALL_START.search(rest):
        return ParseError(
            f"the tool call {_quote(rest[call.start() :])} is not inside <tool>...</tool> tags"
        )
    return ParseError(
        "the reply has no <tool> call and no <answer>; after </think> write exactly one "
        "<tool>...</tool> or <answer>...</answer>"
    )


def _interpret_answer(body: str, choices: Sequence[str] | None) -> Answer | ParseError:
    text = body.strip()
    if not _clean_answer(text):
        return ParseError(
            "the <answer> is empty; put the final answer inside it, e.g. <answer>B</answer>"
        )
    if not choices:
        return Answer(text)
    letter, problem = _match_choice(text, choices)
    if letter is None:
        return ParseError(problem or "the answer names no option")
    return Answer(text, letter)


# Tool calls ------------------------------------------------------------------------


def _interpret_tool(
    block: _Block, tree: Tree | None, fetched: Collection[NodeId] | None, notes: list[str]
) -> Action | ParseError:
    body = _strip_fence(block.body.strip())
    if not body:
        return ParseError("the <tool> block is empty; write e.g. <tool>get_caption((1, 2))</tool>")
    call: tuple[str, list[Any], dict[str, Any]] | ParseError
    if body.startswith(("{", "[")) or (block.json_like and not _NAME_CALL.match(body)):
        call = _read_json_call(body)
        if isinstance(call, ParseError) and _CALL_START.search(body):
            call = _read_python_call(body)
        elif block.tag == "tool":  # <tool_call> and untagged JSON carry their own notes
            notes.append("tool call as JSON in <tool>")
    else:
        call = _read_python_call(body)
    if isinstance(call, ParseError):
        return call
    name, args, kwargs = call
    return _resolve(name, args, kwargs, tree, fetched)


def _strip_fence(body: str) -> str:
    if body.startswith("```"):
        body = re.sub(r"^```[^\n]*\n?", "", body)
        body = re.sub(r"\n?```\s*$", "", body)
    return body.strip().strip("`").strip()


def _read_python_call(body: str) -> tuple[str, list[Any], dict[str, Any]] | ParseError:
    """``name(args)`` read as Python literals, without executing anything."""
    head = _NAME_CALL.match(body)
    starts = list(_CALL_START.finditer(body))
    if head is None and len(starts) > 1:
        return ParseError(f"{_quote(body)} holds two tool calls; call exactly one tool per round")
    if head is None and starts:
        body = body[starts[0].start() :]
        head = _NAME_CALL.match(body)
    if head is None:
        return ParseError(
            f"cannot read the tool call {_quote(body)}; write get_caption((h, m)), "
            'get_caption((h, m, l)) or video_qa((h, m, l), "query")'
        )
    name = _tool_name(head.group(1))
    if name not in TOOLS:
        return _unknown_tool(head.group(1))
    arg_text = body[head.end() - 1 :]
    expr, tail = _parse_call_expr(arg_text)
    if expr is not None:
        if _CALL_START.search(tail):
            return ParseError(
                f"{_quote(body)} holds two tool calls; call exactly one tool per round"
            )
        try:
            args = [ast.literal_eval(a) for a in expr.args if not isinstance(a, ast.Starred)]
            kwargs = {k.arg or "": ast.literal_eval(k.value) for k in expr.keywords}
        except Exception:
            return _unreadable_args(name, arg_text)
        return name, args, kwargs
    if len(_CALL_START.findall(body)) > 1:
        return ParseError(f"{_quote(body)} holds two tool calls; call exactly one tool per round")
    if name == "video_qa" and (loose := _loose_video_qa(arg_text)) is not None:
        return name, list(loose), {}
    return _unreadable_args(name, arg_text)


def _parse_call_expr(arg_text: str) -> tuple[ast.Call | None, str]:
    """The shortest ``( ... )`` prefix that is a whole call, and what follows it."""
    tries = 0
    for close in re.finditer(r"\)", arg_text):
        tries += 1
        if tries > 256:  # a query of the grammar's longest length fits
            break
        try:
            expr = ast.parse("f" + arg_text[: close.end()], mode="eval").body
        except Exception:
            continue
        if isinstance(expr, ast.Call) and not any(isinstance(a, ast.Starred) for a in expr.args):
            return expr, arg_text[close.end() :]
    return None, ""


def _loose_video_qa(arg_text: str) -> tuple[str, str] | None:
    """``video_qa((1,2,3), "a "quoted" word")``: quotes inside an unescaped query."""
    m = re.match(r"^\(\s*(\(?[\d\s,]+\)?|\[[\d\s,]+\])\s*,\s*(.*)\)\s*[.;]?$", arg_text, re.DOTALL)
    if m is None:
        return None
    query = m.group(2).strip()
    pairs = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»"}
    if len(query) >= 2 and pairs.get(query[0]) == query[-1]:
        return m.group(1), query[1:-1]
    return None


def _read_json_call(body: str) -> tuple[str, list[Any], dict[str, Any]] | ParseError:
    """``{"name": ..., "arguments": {...}}`` and its many cousins."""
    value = _load_json(body)
    if value is None:
        return ParseError(f"cannot read the JSON tool call {_quote(body)}")
    if isinstance(value, list):
        if len(value) != 1:
            return ParseError(f"{_quote(body)} holds {len(value)} tool calls; call exactly one")
        value = value[0]
    if not isinstance(value, dict):
        return ParseError(f"the JSON tool call {_quote(body)} is not an object")
    if isinstance(value.get("function"), dict):
        value = value["function"]
    name_key = next((k for k in _NAME_KEYS if isinstance(value.get(k), str)), None)
    if name_key is None:
        bare = [k for k in value if _tool_name(k) in TOOLS]
        if len(bare) != 1:
            return ParseError(f'the JSON tool call {_quote(body)} has no "name"')
        name, arguments = bare[0], value[bare[0]]
    else:
        name = value[name_key]
        arg_key = next((k for k in _ARG_KEYS if k in value), None)
        if arg_key is not None:
            arguments = value[arg_key]
        else:
            arguments = {k: v for k, v in value.items() if k != name_key}
    if _tool_name(name) not in TOOLS:
        return _unknown_tool(name)
    name = _tool_name(name)
    if isinstance(arguments, str):
        decoded = _load_json(arguments)
        if isinstance(decoded, (dict, list)):
            arguments = decoded
        else:
            return _read_python_call(f"{name}({arguments})")
    if isinstance(arguments, dict):
        return name, [], arguments
    if isinstance(arguments, (list, tuple)):
        return name, list(arguments), {}
    return name, [arguments], {}


def _load_json(text: str) -> Any:
    """JSON, else a Python literal (single quotes), else ``None``."""
    try:
        return json.loads(text)
    except Exception:
        pass
    try:
        return ast.literal_eval(text)
    except Exception:
        return None


def _tool_name(name: str) -> str:
    return name.strip().split(".")[-1].lower().replace("-", "_")


def _unknown_tool(name: str) -> ParseError:
    return ParseError(
        f"unknown tool {_quote(str(name))}; the only tools are get_caption and video_qa"
    )


def _unreadable_args(name: str, arg_text: str) -> ParseError:
    example = "get_caption((2, 3))" if name == "get_caption" else 'video_qa((2, 3, 1), "query")'
    return ParseError(
        f"cannot read the arguments of {name}: {_quote(arg_text)}; ids are tuples of "
        f"integers and a query is a quoted string, e.g. {example}"
    )


def _resolve(
    name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    tree: Tree | None,
    fetched: Collection[NodeId] | None,
) -> Action | ParseError:
    """Turn call arguments into a checked :class:`Action`."""
    split = _split_args(name, args, kwargs)
    if isinstance(split, ParseError):
        return split
    raw_id, query = split
    node_id = _to_node_id(raw_id)
    if isinstance(node_id, ParseError):
        return node_id
    action = Action(name, node_id, query if name == "video_qa" else None)  # type: ignore[arg-type]
    problem = check_action(action, tree, fetched)
    return action if problem is None else ParseError(problem)


def check_action(
    action: Action, tree: Tree | None = None, fetched: Collection[NodeId] | None = None
) -> str | None:
    """Why a tool call may not run, worded for the model; ``None`` when it may.

    The parser checks every call it reads with it, and the tools check the
    calls that reach them from elsewhere (RL environments, scripts), so both
    keep one set of rules and one wording. ``fetched`` turns on the leaf rule.
    """
    if action.tool not in TOOLS:
        return _unknown_tool(str(action.tool)).message
    try:
        node_id = tuple(int(part) for part in action.node_id)
    except (TypeError, ValueError):
        return (
            f"{_quote(repr(action.node_id))} is not a segment id; ids are tuples of integers "
            "like (2, 3)"
        )
    problem = _check_id(action.tool, node_id, tree)
    if problem is not None:
        return problem.message
    if action.tool == "get_caption":
        return None
    query = "" if action.query is None else action.query
    if not isinstance(query, str):
        return f"the video_qa query must be a quoted string, got {_quote(repr(query))}"
    if not query.strip():
        return "the video_qa query is empty; ask one precise question about the clip"
    if fetched is not None and node_id not in {tuple(f) for f in fetched}:
        label = format_node_id(node_id)
        return (
            f"video_qa on {label} needs its low-level caption first; call "
            f"get_caption({label}) before asking about that clip"
        )
    return None


def _split_args(name: str, args: list[Any], kwargs: dict[str, Any]) -> tuple[Any, Any] | ParseError:
    """(id value, query) from positional and keyword arguments, or an arity error."""
    levels = {k: v for k, v in kwargs.items() if _level_of(k) is not None}
    ids = [v for k, v in kwargs.items() if k.lower() in _ID_KEYS]
    queries = [v for k, v in kwargs.items() if k.lower() in _QUERY_KEYS]
    unknown = [k for k in kwargs if k not in levels and k.lower() not in _ID_KEYS | _QUERY_KEYS]
    if levels:
        ordered = sorted(levels.items(), key=lambda kv: _level_of(kv[0]) or 0)
        ids.append(tuple(v for _k, v in ordered))
    positional = list(args)
    trailing_text = bool(positional) and isinstance(positional[-1], str)
    if not queries and trailing_text and (len(positional) > 1 or ids):
        queries.append(positional.pop())
    if (
        name == "video_qa"
        and not queries
        and len(positional) == 2
        and isinstance(positional[0], str)
    ):
        queries.append(positional.pop(0))  # query written first
    if positional:
        if all(_is_int(v) for v in positional) and len(positional) > 1:
            ids.append(tuple(positional))
        else:
            ids.extend(positional)
    usage = (
        "get_caption takes one segment id, e.g. get_caption((2, 3))"
        if name == "get_caption"
        else 'video_qa needs a segment id and a query, e.g. video_qa((2, 3, 1), "what is on the table?")'
    )
    if len(ids) != 1:
        if not ids and unknown:
            return ParseError(f"{usage}; got arguments named {', '.join(map(repr, unknown))}")
        if len(ids) > 1:
            return ParseError(f"{usage}; got {len(ids)} ids, ask for one segment per round")
        return ParseError(usage)
    if name == "get_caption" and queries:
        return ParseError(
            'get_caption takes only a segment id; to ask a question use video_qa((h, m, l), "query")'
        )
    if name == "video_qa" and len(queries) != 1:
        return ParseError(usage)
    return ids[0], (queries[0] if queries else None)


def _level_of(key: str) -> int | None:
    key = key.lower()
    for depth, words in enumerate((("high", "h"), ("medium", "mid", "m"), ("low", "l")), 1):
        if any(key == w or key.startswith(w + "_") or key.startswith(w + "-") for w in words):
            return depth
    return None


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, str) and value.strip().isdigit()


def _to_node_id(value: Any) -> NodeId | ParseError:
    """An id from whatever the model wrote: 2, (2, 3), [2, 3], ((2, 3),), "2,3"."""
    while (
        isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], (list, tuple))
    ):
        value = value[0]
    if isinstance(value, dict):
        levels = sorted((k for k in value if _level_of(k)), key=lambda k: _level_of(k) or 0)
        value = tuple(value[k] for k in levels) if levels else value
    if _is_int(value):
        value = (value,)
    if isinstance(value, str):
        try:
            return parse_node_id(value)
        except TreeError:
            return ParseError(
                f"{_quote(value)} is not a segment id; write e.g. (2, 3) or (2, 3, 1)"
            )
    if isinstance(value, (list, tuple)) and value and all(_is_int(v) for v in value):
        return tuple(int(float(v)) if not isinstance(v, str) else int(v) for v in value)
    if isinstance(value, (list, tuple)) and any(isinstance(v, (list, tuple)) for v in value):
        return ParseError(
            f"{_quote(repr(value))} names several segments; ask for one segment per round"
        )
    return ParseError(
        f"{_quote(repr(value))} is not a segment id; ids are tuples of integers like (2, 3)"
    )


def _check_id(name: str, node_id: NodeId, tree: Tree | None) -> ParseError | None:
    """Range, level and tool rules, worded for the model."""
    if tree is not None:
        try:
            tree.validate(node_id)
        except TreeError as exc:
            return ParseError(str(exc))
    else:
        if not 1 <= len(node_id) <= len(LEVELS):
            return ParseError(
                f"segment id {format_node_id(node_id)} has {len(node_id)} parts; ids have 2 "
                "(medium) or 3 (low) parts"
            )
        if any(part < 1 for part in node_id):
            return ParseError(f"segment id {format_node_id(node_id)} is invalid: ids count from 1")
    label = format_node_id(node_id)
    if len(node_id) == 1:
        if name == "video_qa":
            return ParseError(
                f"video_qa works on one low-level segment (h, m, l); {label} is a high-level segment"
            )
        return ParseError(
            f"get_caption({label}) asks for a high-level caption, which you already have; "
            "ask for a medium (h, m) or low (h, m, l) segment"
        )
    if name == "video_qa" and len(node_id) != len(LEVELS):
        return ParseError(
            f"video_qa works on one low-level segment (h, m, l); {label} is a medium-level "
            "segment, so fetch one of its low-level captions first"
        )
    return None


def _quote(fragment: str, limit: int = _QUOTE_LIMIT) -> str:
    """A short one-line quotation of what the model wrote."""
    flat = " ".join(str(fragment).split())
    if len(flat) > limit:
        flat = flat[: limit - 3].rstrip() + "..."
    return f"`{flat}`"


# ---------------------------------------------------------------------------------
# The reply grammar: constrained decoding admits exactly what the parser reads as canonical

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


def reply_grammars(rules: ReplyRules) -> tuple[Grammar, Grammar]:
    """(whole reply, what follows ``</think>``) as grammar trees; see :func:`reply_constraint`."""
    if rules.width < 1:
        raise ValueError(f"tree width must be at least 1, got {rules.width}")
    actions: list[Ref] = []
    rules_out: dict[str, gbnf.Expr] = {}
    if rules.tools:
        caption_ids = _caption_id_expr(rules) if rules.get_caption else None
        qa_ids = _qa_id_expr(rules) if rules.video_qa else None
        calls = []
        if caption_ids is not None:
            rules_out["caption-call"] = seq("get_caption(", caption_ids, ")")
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


def _caption_id_expr(rules: ReplyRules) -> gbnf.Expr | None:
    fetched = {tuple(f) for f in rules.fetched}
    ids = [i for depth in (2, 3) for i in _ids(rules.width, depth) if i not in fetched]
    return _id_trie(ids)


def _qa_id_expr(rules: ReplyRules) -> gbnf.Expr | None:
    fetched = {tuple(f) for f in rules.fetched}
    refused = {tuple(r) for r in rules.refused}
    leaves = [
        leaf
        for leaf in _ids(rules.width, 3)
        if (not rules.require_fetched_leaf or leaf in fetched) and leaf not in refused
    ]
    return _id_trie(leaves)


def _answer_expr(rules: ReplyRules) -> gbnf.Expr:
    if not rules.choices:
        return seq(Chars("A-Za-z0-9"), Rep(Chars("^<"), 0, OPEN_ANSWER_MAX_CHARS - 1))
    bodies = _answer_bodies(tuple(rules.choices), rules.answer_form)
    return alt(*(b for letter in sorted(bodies) for b in bodies[letter]))


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
    letters = _letters(len(choices))
    lines = option_lines(choices)
    out: dict[str, list[str]] = {}
    for choice, line, letter in zip(choices, lines, letters, strict=True):
        text = " ".join(_choice_body(choice, letter).split())
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
