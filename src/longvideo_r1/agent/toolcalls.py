"""Reading one tool call, and the rules every tool call obeys.

Small models write a call in many ways (Python, JSON in a dozen shapes,
keyword arguments, ids as lists, dicts or strings); everything here turns one
such block into a checked :class:`~longvideo_r1.agent.protocol.Action` or a
:class:`~longvideo_r1.agent.protocol.ParseError` worded for the model.
:func:`check_action` holds the rules themselves, shared by the parser and
the tools, so both keep one wording; :class:`RoundLimits` adds what one round
of a run admits beyond them (``--min-depth``, ``--guide``).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

from longvideo_r1.agent.protocol import TOOLS, Action, ParseError, quote
from longvideo_r1.errors import TreeError
from longvideo_r1.tree import LEVELS, NodeId, Tree, format_node_id, parse_node_id


@dataclass(frozen=True)
class Block:
    """One tool call or answer found in a reply, before it is interpreted."""

    kind: Literal["tool", "answer"]
    body: str
    fragment: str
    json_like: bool = False
    tag: str | None = None  # "tool", "tool_call" or "answer"; None for an untagged call


@dataclass(frozen=True)
class RoundLimits:
    """What one round admits beyond the protocol's rules, as the run's levers set it.

    ``answer_open`` is False while ``--min-depth`` still holds the answer back
    (no caption at ``min_depth`` or deeper read yet, and a tool call left to
    make); ``offered`` is, with ``--guide``, the only ids get_caption may ask
    for this round, best first (None: any id). The grammar admits exactly
    this, and the parser refuses the rest for models decoded without it.
    """

    min_depth: int = 0
    answer_open: bool = True
    offered: tuple[NodeId, ...] | None = None


CALL_START = re.compile(r"\b(get_caption|video_qa)\s*\(", re.IGNORECASE)
_NAME_CALL = re.compile(r"^([A-Za-z_][\w.\-]*)\s*\(")

_ID_KEYS = frozenset(
    {"id", "ids", "node", "node_id", "nodes", "node_ids", "segment", "segment_id", "segments",
     "segment_ids", "seg", "seg_id", "clip", "clip_id", "index", "path", "args", "target",
     "position", "tuple", "low_segment", "segment_tuple"}
)  # fmt: skip
_QUERY_KEYS = frozenset({"query", "question", "q", "prompt", "text", "ask", "request"})
NAME_KEYS = ("name", "tool", "tool_name", "function", "action", "function_name")
_ARG_KEYS = ("arguments", "parameters", "args", "params", "input", "kwargs", "action_input")


def interpret_tool(
    block: Block,
    tree: Tree | None,
    fetched: Collection[NodeId] | None,
    notes: list[str],
    offered: Collection[NodeId] | None = None,
) -> Action | ParseError:
    body = _strip_fence(block.body.strip())
    if not body:
        return ParseError("the <tool> block is empty; write e.g. <tool>get_caption((1, 2))</tool>")
    call: tuple[str, list[Any], dict[str, Any]] | ParseError
    if body.startswith(("{", "[")) or (block.json_like and not _NAME_CALL.match(body)):
        call = _read_json_call(body)
        if isinstance(call, ParseError) and CALL_START.search(body):
            call = _read_python_call(body)
        elif block.tag == "tool":  # <tool_call> and untagged JSON carry their own notes
            notes.append("tool call as JSON in <tool>")
    else:
        call = _read_python_call(body)
    if isinstance(call, ParseError):
        return call
    name, args, kwargs = call
    return _resolve(name, args, kwargs, tree, fetched, offered)


def _strip_fence(body: str) -> str:
    if body.startswith("```"):
        body = re.sub(r"^```[^\n]*\n?", "", body)
        body = re.sub(r"\n?```\s*$", "", body)
    return body.strip().strip("`").strip()


def _read_python_call(body: str) -> tuple[str, list[Any], dict[str, Any]] | ParseError:
    """``name(args)`` read as Python literals, without executing anything."""
    head = _NAME_CALL.match(body)
    starts = list(CALL_START.finditer(body))
    if head is None and len(starts) > 1:
        return ParseError(f"{quote(body)} holds two tool calls; call exactly one tool per round")
    if head is None and starts:
        body = body[starts[0].start() :]
        head = _NAME_CALL.match(body)
    if head is None:
        return ParseError(
            f"cannot read the tool call {quote(body)}; write get_caption((h, m)), "
            'get_caption((h, m, l)) or video_qa((h, m, l), "query")'
        )
    name = _tool_name(head.group(1))
    if name not in TOOLS:
        return _unknown_tool(head.group(1))
    arg_text = body[head.end() - 1 :]
    expr, tail = _parse_call_expr(arg_text)
    if expr is not None:
        if CALL_START.search(tail):
            return ParseError(
                f"{quote(body)} holds two tool calls; call exactly one tool per round"
            )
        try:
            args = [ast.literal_eval(a) for a in expr.args if not isinstance(a, ast.Starred)]
            kwargs = {k.arg or "": ast.literal_eval(k.value) for k in expr.keywords}
        except Exception:
            return _unreadable_args(name, arg_text)
        return name, args, kwargs
    if len(CALL_START.findall(body)) > 1:
        return ParseError(f"{quote(body)} holds two tool calls; call exactly one tool per round")
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
    value = load_json(body)
    if value is None:
        return ParseError(f"cannot read the JSON tool call {quote(body)}")
    if isinstance(value, list):
        if len(value) != 1:
            return ParseError(f"{quote(body)} holds {len(value)} tool calls; call exactly one")
        value = value[0]
    if not isinstance(value, dict):
        return ParseError(f"the JSON tool call {quote(body)} is not an object")
    if isinstance(value.get("function"), dict):
        value = value["function"]
    name_key = next((k for k in NAME_KEYS if isinstance(value.get(k), str)), None)
    if name_key is None:
        bare = [k for k in value if _tool_name(k) in TOOLS]
        if len(bare) != 1:
            return ParseError(f'the JSON tool call {quote(body)} has no "name"')
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
        decoded = load_json(arguments)
        if isinstance(decoded, (dict, list)):
            arguments = decoded
        else:
            return _read_python_call(f"{name}({arguments})")
    if isinstance(arguments, dict):
        return name, [], arguments
    if isinstance(arguments, (list, tuple)):
        return name, list(arguments), {}
    return name, [arguments], {}


def load_json(text: str) -> Any:
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
        f"unknown tool {quote(str(name))}; the only tools are get_caption and video_qa"
    )


def _unreadable_args(name: str, arg_text: str) -> ParseError:
    example = "get_caption((2, 3))" if name == "get_caption" else 'video_qa((2, 3, 1), "query")'
    return ParseError(
        f"cannot read the arguments of {name}: {quote(arg_text)}; ids are tuples of "
        f"integers and a query is a quoted string, e.g. {example}"
    )


def _resolve(
    name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    tree: Tree | None,
    fetched: Collection[NodeId] | None,
    offered: Collection[NodeId] | None = None,
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
    problem = check_action(action, tree, fetched, offered)
    return action if problem is None else ParseError(problem)


def check_action(
    action: Action,
    tree: Tree | None = None,
    fetched: Collection[NodeId] | None = None,
    offered: Collection[NodeId] | None = None,
) -> str | None:
    """Why a tool call may not run, worded for the model; ``None`` when it may.

    The parser checks every call it reads with it, and the tools check the
    calls that reach them from elsewhere (RL environments, scripts), so both
    keep one set of rules and one wording. ``fetched`` turns on the leaf rule;
    ``offered`` (``--guide``) limits get_caption to those ids.
    """
    if action.tool not in TOOLS:
        return _unknown_tool(str(action.tool)).message
    try:
        node_id = tuple(int(part) for part in action.node_id)
    except (TypeError, ValueError):
        return (
            f"{quote(repr(action.node_id))} is not a segment id; ids are tuples of integers "
            "like (2, 3)"
        )
    problem = _check_id(action.tool, node_id, tree)
    if problem is not None:
        return problem.message
    if action.tool == "get_caption":
        return _not_offered(node_id, offered)
    query = "" if action.query is None else action.query
    if not isinstance(query, str):
        return f"the video_qa query must be a quoted string, got {quote(repr(query))}"
    if not query.strip():
        return "the video_qa query is empty; ask one precise question about the clip"
    if fetched is not None and node_id not in {tuple(f) for f in fetched}:
        label = format_node_id(node_id)
        return (
            f"video_qa on {label} needs its low-level caption first; call "
            f"get_caption({label}) before asking about that clip"
        )
    return None


def check_answer(limits: RoundLimits | None) -> str | None:
    """Why an answer may not be given in this round, worded for the model; ``None`` when it may."""
    if limits is None or limits.answer_open:
        return None
    depth = min(max(limits.min_depth, 2), len(LEVELS))
    levels = " or ".join(f"{level}-level" for level in LEVELS[depth - 1 :])
    shape = "(h, m)" if depth == 2 else "(h, m, l)"
    if limits.offered:
        shape = format_node_id(limits.offered[0])
    return (
        f"no answer is accepted before you have read a {levels} caption; call "
        f"get_caption({shape}) first, and answer after reading it"
    )


def _not_offered(node_id: NodeId, offered: Collection[NodeId] | None) -> str | None:
    """The guide's rule: get_caption only on the ids offered this round (``None``: any)."""
    if offered is None or node_id in {tuple(o) for o in offered}:
        return None
    label = format_node_id(node_id)
    if not offered:
        return f"get_caption({label}) is not offered in this round: no segment is left to read"
    choices = ", ".join(format_node_id(o) for o in offered)
    return f"get_caption({label}) is not offered in this round; ask for one of {choices}"


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
            return ParseError(f"{quote(value)} is not a segment id; write e.g. (2, 3) or (2, 3, 1)")
    if isinstance(value, (list, tuple)) and value and all(_is_int(v) for v in value):
        return tuple(int(float(v)) if not isinstance(v, str) else int(v) for v in value)
    if isinstance(value, (list, tuple)) and any(isinstance(v, (list, tuple)) for v in value):
        return ParseError(
            f"{quote(repr(value))} names several segments; ask for one segment per round"
        )
    return ParseError(
        f"{quote(repr(value))} is not a segment id; ids are tuples of integers like (2, 3)"
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
