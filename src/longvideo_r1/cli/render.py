"""What the commands print: a tree, an answer with its path, a caption report.

Apart from the commands so that ``lvr1 tree`` and ``lvr1 demo`` show a tree, and
``lvr1 ask`` and ``lvr1 demo`` an answer, the same way; each JSON payload sits
beside the text it mirrors, so the two forms change together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from longvideo_r1.agent.trace import from_captions_note


def _fmt_time(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:05.2f}"
    return f"{minutes}:{secs:05.2f}"


def print_tree(payload: dict[str, Any], console=None) -> None:
    """Readable tree: one line per node, indented by level, caption preview when cached."""
    console = console or Console()
    console.print(
        f"[bold]{escape(payload['video'])}[/]  duration {_fmt_time(payload['duration'])} "
        f"({payload['duration']:.2f} s, {payload['n_frames']} frames, {payload['fps']:.3f} fps)  "
        f"width {payload['width']}"
    )
    made = sum(1 for n in payload["nodes"] if n["caption"] is not None)
    console.print(f"{len(payload['nodes'])} nodes, {made} with a cached caption")
    for node in sorted(payload["nodes"], key=lambda n: (n["start"], len(n["id"]))):
        depth = len(node["id"])
        label = "(" + ", ".join(map(str, node["id"])) + ("," if depth == 1 else "") + ")"
        span = f"{_fmt_time(node['start'])}-{_fmt_time(node['end'])}"
        line = f"{'  ' * (depth - 1)}{label:<12} {node['level']:<6} {span}"
        caption = node["caption"]
        if caption:
            preview = " ".join(caption.split())
            preview = preview[:100] + ("…" if len(preview) > 100 else "")
            line += f"  [dim]{escape(preview)}[/]"
        console.print(line, highlight=False)


def _print_report(report, console) -> None:
    console.print(report.summary(), highlight=False)
    for node_id, error in report.failed:
        console.print(f"[red]failed[/] {node_id}: {error}", highlight=False)


def _round_progress(status):
    """on_round callback: a live status line while the agent works."""

    def show(rnd) -> None:
        what = rnd.kind or "error"
        if rnd.kind in ("get_caption", "video_qa") and rnd.node_id:
            what = f"{rnd.kind}({tuple(rnd.node_id)})"
        elif rnd.kind == "answer":
            what = f"answer {rnd.answer!r}"
        status.update(f"round {rnd.index + 1}: thinking… (last: {what}, {rnd.model_seconds:.1f} s)")

    return show


def ask_payload(trace, trace_path: Path | None) -> dict[str, Any]:
    """The JSON form of ``lvr1 ask``."""
    return {
        "answer": trace.answer,
        "status": trace.status,
        "reason": trace.reason,
        "rounds": len(trace.rounds),
        "evidence": [e.model_dump(mode="json") for e in trace.evidence],
        "cost": trace.cost.model_dump(mode="json"),
        "trace": str(trace_path) if trace_path else None,
        # what the run resolved (levers, budgets, who answered), so a script need not open the trace
        "config": trace.config,
        "backends": trace.backends,
    }


def _span_of(trace, node_id) -> str:
    for item in trace.evidence:
        if tuple(item.node_id) == tuple(node_id):
            return f"{_fmt_time(item.start)}-{_fmt_time(item.end)}"
    return ""


def _round_text(trace, rnd) -> str | None:
    if rnd.kind in ("get_caption", "video_qa") and rnd.node_id:
        label = "(" + ", ".join(map(str, rnd.node_id)) + ")"
        query = escape(f" {rnd.query!r}") if rnd.query else ""
        flag = f"  [red]{escape(rnd.error)}[/]" if rnd.error else ""
        return f"{rnd.kind} {label} {_span_of(trace, rnd.node_id)}{query}{flag}"
    if rnd.kind == "parse_error":
        return f"[yellow]unparsable reply[/]: {escape(rnd.parse_error or '')}"
    if rnd.kind == "answer":
        return f"answer {escape(repr(rnd.answer))}"
    if rnd.error:
        return f"[red]{escape(rnd.error)}[/]"
    return None


def print_answer(trace, trace_path: Path | None, console) -> None:
    """Readable account: the answer, the path through the tree, the cost."""
    colour = {"answered": "green", "no_answer": "yellow"}.get(trace.status, "red")
    answer = trace.answer if trace.answer is not None else "-"
    console.print(f"[bold {colour}]{trace.status}[/]: [bold]{escape(str(answer))}[/]")
    if trace.raw_answer and trace.raw_answer.strip() != str(trace.answer):
        console.print(f"  as written: {escape(trace.raw_answer.strip())}", highlight=False)
    if trace.reason:
        console.print(f"  reason: {escape(trace.reason)}", highlight=False)
    if trace.config.get("guide"):
        console.print(
            f"  retrieval-guided: get_caption offered the {trace.config['guide']} "
            "unread segments BM25 ranked highest for the question (--guide)"
        )
    if trace.min_depth_met is False:
        console.print(
            f"  answered in a last round before any caption at depth "
            f"{trace.config.get('min_depth')} was read (--min-depth)"
        )
    console.print("path through the tree:")
    for rnd in trace.rounds:
        text = _round_text(trace, rnd)
        if text:
            console.print(f"  {rnd.index:>2}. {text}", highlight=False)
    cost = trace.cost
    console.print(
        f"cost: {cost.rounds} rounds, {cost.caption_calls} caption calls "
        f"({cost.captions_made} made, {cost.captions_cached} cached), "
        f"{cost.video_qa_calls} video_qa{from_captions_note(cost)}, "
        f"{cost.frames_decoded} frames decoded, "
        f"{cost.reasoning_prompt_tokens + cost.reasoning_completion_tokens} reasoning tokens, "
        f"model {cost.model_seconds:.1f} s, tools {cost.tool_seconds:.1f} s, "
        f"end to end {cost.end_to_end_seconds:.1f} s",
        highlight=False,
    )
    if trace_path:
        console.print(f"trace: {trace_path}", highlight=False)
