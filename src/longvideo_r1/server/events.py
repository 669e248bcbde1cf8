"""What the page is told about a run, live or replayed: one event per step, one shape.

A live question streams these events as the navigator plays its rounds; a
stored trace is turned into the same events, each stamped with the second it
happened at (rebuilt from the trace's model and tool times), so the page draws
a replay with the code that draws a live run and can play it at its own speed.

Events: ``status`` (what the server is doing before the first round),
``opening`` (the high-level captions read before round 1), ``round`` (the
reasoning, the tool call, the node it touched with its span, the observation
and the cost so far), ``answer`` (status, answer, evidence spans, the trace's
cost) and ``error`` (the run could not start or finish).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from longvideo_r1.agent.trace import Round, Trace
from longvideo_r1.errors import TreeError
from longvideo_r1.tree import NodeId, Tree


@dataclass
class RunningCost:
    """The cost so far that the page shows while a run goes on (the trace has the total)."""

    rounds: int = 0
    captions_made: int = 0
    captions_cached: int = 0
    video_qa_calls: int = 0
    reasoning_tokens: int = 0
    seconds: float = 0.0

    def opening(self, made: int, cached: int) -> None:
        self.captions_made += made
        self.captions_cached += cached

    def add(self, rnd: Round) -> None:
        self.rounds += 1
        self.reasoning_tokens += rnd.prompt_tokens + rnd.completion_tokens
        ran = not rnd.error and not rnd.notice
        if rnd.kind == "get_caption" and ran:
            if rnd.cache_hit:
                self.captions_cached += 1
            else:
                self.captions_made += 1
        elif rnd.kind == "video_qa" and ran:
            self.video_qa_calls += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "captions_made": self.captions_made,
            "captions_cached": self.captions_cached,
            "video_qa_calls": self.video_qa_calls,
            "reasoning_tokens": self.reasoning_tokens,
            "seconds": round(self.seconds, 3),
        }


def node_info(tree: Tree, node_id: NodeId | None) -> dict[str, Any] | None:
    """A node's id, level and span, or None for a call on no valid node."""
    if node_id is None:
        return None
    try:
        node = tree.node(tree.validate(tuple(node_id)))
    except TreeError:
        return {"id": list(node_id), "level": None, "start": None, "end": None}
    return {"id": list(node.id), "level": node.level, "start": node.start, "end": node.end}


def opening_event(
    tree: Tree, captions: dict[NodeId, str], cached: set[NodeId], cost: RunningCost, at: float
) -> dict[str, Any]:
    """The high-level captions the first message held: level-1 nodes lit before round 1."""
    nodes = []
    for node in tree.nodes(1):
        info = node_info(tree, node.id) or {}
        nodes.append({**info, "caption": captions.get(node.id), "cache_hit": node.id in cached})
    made = sum(1 for n in nodes if not n["cache_hit"])
    cost.opening(made, len(nodes) - made)
    cost.seconds = at
    return {"kind": "opening", "at": at, "nodes": nodes, "cost": cost.to_dict()}


def round_event(tree: Tree, rnd: Round, cost: RunningCost, at: float) -> dict[str, Any]:
    """One round as the page draws it; adds the round to ``cost``."""
    cost.add(rnd)
    cost.seconds = at
    return {
        "kind": "round",
        "at": at,
        "index": rnd.index,
        "action": rnd.kind,
        "think": rnd.think,
        "output": rnd.output,
        "node": node_info(tree, rnd.node_id),
        "query": rnd.query,
        "answer": rnd.answer,
        "observation": rnd.observation,
        "notice": rnd.notice,
        "error": rnd.error or rnd.parse_error,
        "cache_hit": rnd.cache_hit,
        "forced": rnd.forced,
        "cost": cost.to_dict(),
    }


def answer_event(trace: Trace, trace_id: str | None, at: float) -> dict[str, Any]:
    """The end of a run: answer, evidence spans, the trace's own cost."""
    return {
        "kind": "answer",
        "at": at,
        "status": trace.status,
        "answer": trace.answer,
        "raw_answer": trace.raw_answer,
        "reason": trace.reason,
        "evidence": [e.model_dump(mode="json") for e in trace.evidence],
        "cost": trace.cost.model_dump(mode="json"),
        "trace": trace_id,
    }


def trace_events(trace: Trace, trace_id: str | None = None) -> list[dict[str, Any]]:
    """A stored trace as the events of its run, each at the second it happened."""
    tree = Tree(trace.duration, 1, trace.width)  # spans in seconds need no frame count
    cost = RunningCost()
    opening = max(0.0, trace.cost.tool_seconds - sum(r.tool_seconds for r in trace.rounds))
    captions = {tuple(c.node_id): c.text for c in trace.high_captions}
    cached = {tuple(c.node_id) for c in trace.high_captions if c.cache_hit}
    events = [opening_event(tree, captions, cached, cost, round(opening, 3))]
    at = opening
    for rnd in trace.rounds:
        at += rnd.model_seconds + rnd.tool_seconds
        events.append(round_event(tree, rnd, cost, round(at, 3)))
    end = max(at, trace.cost.end_to_end_seconds)
    events.append(answer_event(trace, trace_id, round(end, 3)))
    return events
