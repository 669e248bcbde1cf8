"""Which trajectories are fit for training, and why the others are not.

:func:`filter_records` keeps what is fit for training (correct, every turn
canonical, the leaf rule kept, no tool refused, no mention of a hint) and
counts what it dropped and why. :mod:`longvideo_r1.training.exports` turns kept
records into trainer formats.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from longvideo_r1.agent import grammar, prompts, protocol, replies
from longvideo_r1.agent.protocol import Action
from longvideo_r1.options import option
from longvideo_r1.training.records import TrajectoryRecord
from longvideo_r1.tree import NodeId, Tree


@dataclass(frozen=True)
class FilterConfig:
    """What a trajectory must satisfy to be trained on."""

    allow_forced: bool = option(
        False,
        "Keep trajectories that needed the last-round or a budget notice (two user turns in "
        "a row, which per-round exports must join).",
    )
    allow_repeats: bool = option(
        True, "Keep trajectories that call the same tool on the same node twice."
    )
    max_rounds: int | None = option(None, "Drop trajectories longer than this (None: any).")
    max_chars: int | None = option(
        None,
        "Drop conversations longer than this many characters, a tokenizer-free stand-in for "
        "the trainer's sequence cutoff (about 4 characters a token; None: any).",
    )
    reject_hint_mentions: bool = option(
        True, "Drop trajectories whose reasoning mentions a hint (it should read as its own)."
    )
    strict_format: bool = option(
        True,
        "Require every reply to be <think>...</think> followed by the tool call or answer "
        "exactly as the protocol renders it (ids as (h, m), the answer as a bare letter).",
    )


_HINT_WORDS = re.compile(r"\bhint(s|ed)?\b|\bI was told\b|\bI've been told\b", re.IGNORECASE)
_ERROR_PREFIX = prompts.error_message("x").split(":", 1)[0]


def check_record(record: TrajectoryRecord, config: FilterConfig | None = None) -> str | None:
    """Why a record is unfit for training, or ``None`` when it is fit.

    The conversation is re-read with the protocol's own parser: every
    assistant turn must be canonical, tool calls must be followed by their
    real observation (not an error), video_qa only on a leaf whose caption was
    read before, and the last turn must be the right letter.
    """
    config = config or FilterConfig()
    if record.outcome != "correct":
        return record.outcome
    messages = record.messages
    if len(messages) < 3 or [m["role"] for m in messages[:2]] != ["system", "user"]:
        return "malformed_conversation"
    tree = record.tree()
    system_prompts = {prompts.system_prompt(tree.width, form) for form in protocol.ANSWER_FORMS}
    if messages[0]["content"] not in system_prompts:
        return "system_prompt_mismatch"
    return _check_turns(record, tree, config)


def _check_turns(record: TrajectoryRecord, tree: Tree, config: FilterConfig) -> str | None:
    messages = record.messages
    fetched: set[NodeId] = {n.id for n in tree.nodes(1)}
    calls: set[tuple[str, NodeId]] = set()
    assistant_turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not assistant_turns or assistant_turns[-1] != len(messages) - 1:
        return "last_turn_not_answer"
    if config.max_rounds is not None and len(assistant_turns) > config.max_rounds:
        return "too_many_rounds"
    if config.max_chars is not None and sum(len(m["content"]) for m in messages) > config.max_chars:
        return "too_long"
    for previous, message in zip(messages, messages[1:], strict=False):
        if previous["role"] == message["role"] == "user" and not config.allow_forced:
            return "forced_or_notice"
    for index in assistant_turns:
        text = messages[index]["content"]
        reply = replies.parse_reply(text, tree, record.choices, fetched)
        problem = _turn_problem(reply, text, tree, record, fetched, config)
        if problem is not None:
            return problem
        action = reply.action
        if action is None:
            return None if index == len(messages) - 1 else "answer_before_end"
        if index == len(messages) - 1:
            return "last_turn_not_answer"
        if (action.tool, action.node_id) in calls and not config.allow_repeats:
            return "repeated_call"
        calls.add((action.tool, action.node_id))
        observation = messages[index + 1]["content"]
        if not _observed(action, observation, tree):
            return "refused_call"
        if action.tool == "get_caption":
            fetched.add(action.node_id)
    return "last_turn_not_answer"


def _turn_problem(
    reply: protocol.Reply,
    text: str,
    tree: Tree,
    record: TrajectoryRecord,
    fetched: set[NodeId],
    config: FilterConfig,
) -> str | None:
    if reply.error is not None:
        loose = replies.parse_reply(text, tree, record.choices)
        if loose.action is not None and loose.action.tool == "video_qa":
            return "leaf_rule"
        return "parse_error"
    if not reply.canonical or (config.strict_format and not _exact(text, reply, record.choices)):
        return "not_canonical"
    if not reply.think or not reply.think.strip():
        return "no_reasoning"
    if config.reject_hint_mentions and _HINT_WORDS.search(reply.think):
        return "mentions_hint"
    if reply.answer is not None:
        letter = protocol.normalize_answer(reply.answer.text, record.choices)
        if letter != record.answer:
            return "wrong_final_answer"
    return None


_REPLY = re.compile(r"^<think>(.*)</think>\s*(.*?)$", re.DOTALL)


def _exact(text: str, reply: protocol.Reply, choices: Sequence[str] | None = None) -> bool:
    """Whether the reply is written exactly as :func:`protocol.render_reply` would write it.

    The parser accepts many spellings (JSON calls, ``(B)``, ids without
    spaces); a student trained on them would learn all of them. Whitespace
    around the blocks is the only freedom left, and an answer may be the
    option's letter or its text as :func:`grammar.answer_in_form` writes it.
    """
    match = _REPLY.match(text.strip())
    if match is None or reply.think is None or "<think>" in match.group(1):
        return False
    answer = reply.answer
    if answer is not None and answer.letter is not None and choices:
        return match.group(2) in {
            protocol.render_answer(grammar.answer_in_form(answer.letter, choices, form))
            for form in ("letter", "text")
        }
    result = answer.text if answer is not None else reply.action
    if result is None:
        return False
    return match.group(2) == protocol.render_reply(None, result)


def _observed(action: Action, observation: str, tree: Tree) -> bool:
    """Whether the user turn after a call is that call's real result."""
    if observation.startswith(_ERROR_PREFIX):
        return False
    if action.tool == "video_qa":
        return observation.startswith("<information>")
    node = tree.node(action.node_id)
    head = prompts.caption_observation(node, "x")[:-1]
    return observation.startswith(head)


@dataclass
class FilterReport:
    """What the filter kept, and how many it dropped for each reason (with a few ids)."""

    kept: list[TrajectoryRecord] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.kept) + sum(self.dropped.values())

    def summary(self) -> str:
        head = f"kept {len(self.kept)} of {self.total} trajectories"
        if not self.dropped:
            return head
        reasons = ", ".join(f"{reason} {n}" for reason, n in self.dropped.most_common())
        return f"{head}; dropped: {reasons}"


def filter_records(
    records: Iterable[TrajectoryRecord], config: FilterConfig | None = None
) -> FilterReport:
    """Split records into those fit for training and counts of the rest by reason."""
    report = FilterReport()
    for record in records:
        reason = check_record(record, config)
        if reason is None:
            report.kept.append(record)
            continue
        report.dropped[reason] += 1
        ids = report.examples.setdefault(reason, [])
        if len(ids) < 5:
            ids.append(record.id)
    return report
