"""The one parser of what the navigation model writes.

:func:`parse_reply` never raises on model output: whatever the model wrote
comes back as a :class:`~longvideo_r1.agent.protocol.Reply` holding an
:class:`~longvideo_r1.agent.protocol.Action`, an
:class:`~longvideo_r1.agent.protocol.Answer` or a
:class:`~longvideo_r1.agent.protocol.ParseError` whose message can be sent
straight back to the model (see
:func:`~longvideo_r1.agent.prompts.error_message`). This module reads the
reply as a whole (the think, the tagged or untagged blocks, one action or
one answer); :mod:`longvideo_r1.agent.toolcalls` reads the tool call inside.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from typing import Literal

from longvideo_r1.agent.protocol import (
    TOOLS,
    Action,
    Answer,
    ParseError,
    Reply,
    clean_answer,
    match_choice,
    quote,
)
from longvideo_r1.agent.toolcalls import (
    CALL_START,
    NAME_KEYS,
    Block,
    RoundLimits,
    check_answer,
    interpret_tool,
    load_json,
)
from longvideo_r1.tree import NodeId, Tree

_THINK_OPEN = re.compile(r"<think\s*>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think\s*>", re.IGNORECASE)
_TAG = re.compile(r"<(/?)(tool_call|tool|answer)\s*>", re.IGNORECASE)
_OPEN_TAG = re.compile(r"<(tool_call|tool|answer)\s*>", re.IGNORECASE)
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n`]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_BARE_LINE = re.compile(
    r"^(?:[-*>]\s*)?(?:\*\*)?(?:(?:action|tool|tool call|call|next step)\s*:\s*)?(?:\*\*)?\s*`*"
    r"((?:get_caption|video_qa)\s*\(.*\))`*\s*[.;]?$",
    re.IGNORECASE,
)


def parse_reply(
    text: str,
    tree: Tree | None = None,
    choices: Sequence[str] | None = None,
    fetched: Collection[NodeId] | None = None,
    limits: RoundLimits | None = None,
) -> Reply:
    """Read one model turn; never raises, whatever the text.

    With ``tree`` ids are range-checked; with ``choices`` answers become
    letters; with ``fetched`` (ids whose captions the model has seen)
    ``video_qa`` on a leaf it has not read yet is refused, as the prompt says;
    with ``limits`` (the round's ``--min-depth`` and ``--guide``) an answer
    given too early and a get_caption on an id not offered are refused.
    """
    raw = text if isinstance(text, str) else ""
    try:
        return _parse(raw, tree, choices, fetched, limits)
    except Exception as exc:  # the parser must never take an episode down
        return Reply(
            None, ParseError(f"the reply could not be read ({type(exc).__name__})"), (), raw
        )


def _parse(
    raw: str,
    tree: Tree | None,
    choices: Sequence[str] | None,
    fetched: Collection[NodeId] | None,
    limits: RoundLimits | None = None,
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
    result = _interpret(blocks, think, rest, think_open, tree, choices, fetched, notes, limits)
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


def _tagged_blocks(rest: str, notes: list[str]) -> list[Block]:
    """<tool>, <tool_call> and <answer> blocks, tolerating a missing open or close tag."""
    blocks: list[Block] = []
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
                    Block(kind, body, body.strip() + tag.group(0), name == "tool_call", name)
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
            Block(kind, rest[tag.end() : end], rest[tag.start() : pos], name == "tool_call", name)
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


def _untagged_blocks(rest: str, notes: list[str]) -> list[Block]:
    """Tool calls small models write without <tool> tags: fenced, bare JSON or a bare line."""
    blocks: list[Block] = []
    remaining = rest
    for fence in _FENCE.finditer(rest):
        body = fence.group(2).strip()
        if _looks_like_json_call(body) or _BARE_LINE.match(body):
            notes.append("tool call in a fenced block")
            blocks.append(Block("tool", body, fence.group(0), body.startswith(("{", "["))))
            remaining = remaining.replace(fence.group(0), "\n", 1)
    decoder = json.JSONDecoder()
    for brace in re.finditer(r"(?m)^\s*(\{)", remaining):
        try:
            value, end = decoder.raw_decode(remaining, brace.start(1))
        except ValueError:
            continue
        if isinstance(value, dict) and any(k in value for k in NAME_KEYS):
            notes.append("tool call as bare JSON")
            fragment = remaining[brace.start(1) : end]
            blocks.append(Block("tool", fragment, fragment, True))
    for line in remaining.splitlines():
        if m := _BARE_LINE.match(line.strip()):
            notes.append("tool call without <tool> tags")
            blocks.append(Block("tool", m.group(1), line.strip()))
    return blocks


def _looks_like_json_call(body: str) -> bool:
    if not body.startswith(("{", "[")):
        return False
    value = load_json(body)
    if isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, dict) and any(k in value for k in (*NAME_KEYS, *TOOLS))


def _interpret(
    blocks: list[Block],
    think: str | None,
    rest: str,
    think_open: bool,
    tree: Tree | None,
    choices: Sequence[str] | None,
    fetched: Collection[NodeId] | None,
    notes: list[str],
    limits: RoundLimits | None = None,
) -> Action | Answer | ParseError:
    tools = [b for b in blocks if b.kind == "tool"]
    answers = [b for b in blocks if b.kind == "answer"]
    if tools and answers:
        return ParseError(
            f"the reply has both a tool call {quote(tools[0].fragment)} and an answer "
            f"{quote(answers[0].fragment)}; write one per round: call the tool now and "
            "answer after reading its result"
        )
    if len(tools) > 1:
        return ParseError(
            f"the reply has {len(tools)} tool calls ({quote(tools[0].fragment)}, "
            f"{quote(tools[1].fragment)}); call exactly one tool per round"
        )
    if tools:
        return interpret_tool(tools[0], tree, fetched, notes, limits.offered if limits else None)
    if answers and (early := check_answer(limits)) is not None:
        return ParseError(early)
    if answers:
        results = [_interpret_answer(b.body, choices) for b in answers]
        for result in results:
            if isinstance(result, ParseError):
                return result
        if len({r.letter or r.text for r in results if isinstance(r, Answer)}) > 1:
            return ParseError(
                f"the reply has {len(answers)} different answers ({quote(answers[0].fragment)}, "
                f"{quote(answers[1].fragment)}); give exactly one <answer>"
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
    if call := CALL_START.search(rest):
        return ParseError(
            f"the tool call {quote(rest[call.start() :])} is not inside <tool>...</tool> tags"
        )
    return ParseError(
        "the reply has no <tool> call and no <answer>; after </think> write exactly one "
        "<tool>...</tool> or <answer>...</answer>"
    )


def _interpret_answer(body: str, choices: Sequence[str] | None) -> Answer | ParseError:
    text = body.strip()
    if not clean_answer(text):
        return ParseError(
            "the <answer> is empty; put the final answer inside it, e.g. <answer>B</answer>"
        )
    if not choices:
        return Answer(text)
    letter, problem = match_choice(text, choices)
    if letter is None:
        return ParseError(problem or "the answer names no option")
    return Answer(text, letter)
