"""A run is a value: the Trace of one question, what happened and what it cost.

The CLI, the evaluator, the report and the web page render traces; they never
re-run logic. A trace is plain JSON (pydantic models that round-trip through
``model_validate_json``), written atomically, and complete enough to rebuild
the exact conversation the model saw (:meth:`Trace.messages`), which is what
trajectory exports and RL replay need.

Every run ends with a status: ``answered``; ``no_answer`` when the rounds or a
budget ran out before the model answered; ``error`` when an endpoint, the
captioner or anything else failed. ``reason`` says why in one line. A run
never turns a failure into a guessed letter.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from longvideo_r1 import __version__
from longvideo_r1.agent import prompts, protocol
from longvideo_r1.captions.captioner import CallCost
from longvideo_r1.errors import LVR1Error, validation_line
from longvideo_r1.files import write_atomic
from longvideo_r1.tree import LEVELS, Node, format_node_id

TRACE_FORMAT = 1
"""Bumped when a field changes meaning; readers can refuse formats they do not know."""

Status = Literal["answered", "no_answer", "error"]
RoundKind = Literal["get_caption", "video_qa", "answer", "parse_error"]
How = Literal["get_caption", "video_qa"]


class TraceError(LVR1Error):
    """A trace file could not be read or written."""


class Round(BaseModel):
    """One model turn: what it wrote, how it was read, what came back, and the cost."""

    index: int = Field(description="1-based round number.")
    output: str | None = Field(
        default=None, description="The reply verbatim; None when the model call failed."
    )
    think: str | None = None
    kind: RoundKind | None = Field(
        default=None, description="How the reply was read; None when there was no reply."
    )
    node_id: tuple[int, ...] | None = Field(default=None, description="The tool call's id.")
    query: str | None = Field(default=None, description="The video_qa query.")
    answer: str | None = Field(default=None, description="The <answer> text as written.")
    parse_error: str | None = None
    notes: list[str] = Field(
        default_factory=list, description="Format deviations the parser tolerated."
    )
    observation: str | None = Field(
        default=None, description="The user turn sent back: tool result or error message."
    )
    notice: str | None = Field(
        default=None, description="The budget notice sent after the observation, if any."
    )
    forced: bool = Field(
        default=False, description="The last-round instruction preceded this round."
    )
    constrained: bool = Field(
        default=False, description="The reply was decoded under the protocol's grammar."
    )
    finish_reason: str | None = None
    model_seconds: float = 0.0
    tool_seconds: float = 0.0
    prompt_tokens: int = Field(default=0, description="Reasoning-model prompt tokens.")
    completion_tokens: int = Field(default=0, description="Reasoning-model completion tokens.")
    tool_prompt_tokens: int = Field(default=0, description="Captioner or VLM prompt tokens.")
    tool_completion_tokens: int = 0
    frames_decoded: int = 0
    cache_hit: bool | None = Field(
        default=None, description="get_caption served from the store; None for other rounds."
    )
    error: str | None = Field(
        default=None,
        description="Why the tool did not run (refused call) or the round failed.",
    )
    offered: list[tuple[int, ...]] | None = Field(
        default=None,
        description="With --guide: the only ids get_caption was offered, best first.",
    )
    asked_share: float | None = Field(
        default=None,
        description="With --answer-on-match: the share of the question's words that this "
        "round's caption held.",
    )


class HighCaption(BaseModel):
    """A high-level caption of the opening message, kept to rebuild the conversation."""

    node_id: tuple[int, ...]
    start: float
    end: float
    text: str
    cache_hit: bool = False


class Evidence(BaseModel):
    """A segment the agent looked at, with its span from the tree."""

    node_id: tuple[int, ...]
    level: str
    start: float
    end: float
    how: How
    round: int
    query: str | None = None


def counted_visits(evidence: Iterable[Evidence]) -> list[Evidence]:
    """The visits that were navigation choices: medium and low nodes read, leaves asked about.

    The opening's high-level captions are given to every run before it
    chooses anything, so they say nothing about navigation; the grounding
    the evaluation reports and the one the RL reward pays both leave them out.
    """
    return [e for e in evidence if e.how == "video_qa" or e.level != LEVELS[0]]


def captions_read(trace: Trace) -> set[tuple[int, ...]]:
    """Every node whose caption the run read: the opening's high-level ones, get_caption's,
    and the leaves a video_qa answered from their captions.

    What a run would have had to caption from an empty store, so a report can
    price a method whose captions were all cached as if they were not.
    """
    nodes = {tuple(h.node_id) for h in trace.high_captions}
    nodes |= {tuple(e.node_id) for e in trace.evidence if e.how == "get_caption"}
    if trace.cost.video_qa_from_captions:
        nodes |= {tuple(e.node_id) for e in trace.evidence if e.how == "video_qa"}
    return nodes


def visited_spans(visits: Iterable[Evidence]) -> list[tuple[float, float]]:
    """The spans of the counted visits, each node once (the union would count it once anyway)."""
    return list(dict.fromkeys((e.start, e.end) for e in visits))


class Cost(BaseModel):
    """Totals of one run. Caption calls include the opening's high-level captions."""

    rounds: int = 0
    reasoning_calls: int = Field(default=0, description="Model calls that returned a reply.")
    caption_calls: int = 0
    captions_made: int = Field(default=0, description="Caption calls a captioner ran for.")
    captions_cached: int = Field(default=0, description="Caption calls served from the store.")
    video_qa_calls: int = Field(default=0, description="video_qa calls a vision model answered.")
    video_qa_from_captions: int = Field(
        default=0,
        description="video_qa calls answered with the clip's caption notes (no vision model); "
        "what they decoded or generated counts with the captions.",
    )
    rejected_calls: int = Field(default=0, description="Tool calls refused with an error.")
    parse_errors: int = 0
    frames_decoded: int = 0
    reasoning_prompt_tokens: int = 0
    reasoning_completion_tokens: int = 0
    caption_prompt_tokens: int = 0
    caption_completion_tokens: int = 0
    vlm_prompt_tokens: int = 0
    vlm_completion_tokens: int = 0
    model_seconds: float = 0.0
    tool_seconds: float = 0.0
    end_to_end_seconds: float = 0.0
    agent_overhead_seconds: float = Field(
        default=0.0, description="End to end minus model and tool time: our own overhead."
    )

    @property
    def reasoning_tokens(self) -> int:
        return self.reasoning_prompt_tokens + self.reasoning_completion_tokens

    def add_failed_call(self, spent: CallCost, vision: bool = False) -> None:
        """What a tool call that failed had already spent: its frames, a vision model's
        tokens when ``vision``, else a captioner's."""
        self.frames_decoded += spent.frames_decoded
        if vision:
            self.vlm_prompt_tokens += spent.prompt_tokens
            self.vlm_completion_tokens += spent.completion_tokens
        else:
            self.caption_prompt_tokens += spent.prompt_tokens
            self.caption_completion_tokens += spent.completion_tokens


class Trace(BaseModel):
    """One question, one run."""

    version: str = __version__
    trace_format: int = TRACE_FORMAT
    question: str
    choices: list[str] | None = None
    video: str | None = None
    fingerprint: str | None = None
    duration: float
    width: int
    backends: dict[str, str] = Field(
        default_factory=dict, description="Identity per role: reasoning, caption, video_qa."
    )
    config: dict[str, Any] = Field(default_factory=dict)
    high_captions: list[HighCaption] = Field(default_factory=list)
    rounds: list[Round] = Field(default_factory=list)
    answer: str | None = Field(
        default=None, description="The option letter, or the answer text without choices."
    )
    raw_answer: str | None = Field(default=None, description="The <answer> text as written.")
    status: Status = "error"
    reason: str | None = None
    min_depth_met: bool | None = Field(
        default=None,
        description="With --min-depth: whether a caption that deep was read before the "
        "answer; False when a round with no tool call left admitted the answer anyway.",
    )
    evidence: list[Evidence] = Field(default_factory=list)
    cost: Cost = Field(default_factory=Cost)
    started_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))

    # rendering ----------------------------------------------------------------------

    def messages(self) -> list[dict[str, Any]]:
        """The conversation as the model saw it, its last reply included.

        Built from the protocol's own strings, so an export of a trace is
        byte-identical to what was sent.
        """
        highs = [(Node(c.node_id, c.start, c.end, 0, 0), c.text) for c in self.high_captions]
        first = prompts.first_user_message(self.question, self.choices, self.duration, highs)
        parts = bool(self.config.get("first_message_parts", False))
        form = self.answer_form
        out: list[dict[str, Any]] = [
            {"role": "system", "content": prompts.system_prompt(self.width, form)},
            first.message(as_parts=parts),
        ]
        told = False
        for rnd in self.rounds:
            if rnd.forced and not told:
                out.append({"role": "user", "content": prompts.last_round_message(form)})
                told = True
            if rnd.output is None:
                break
            out.append({"role": "assistant", "content": rnd.output})
            for text in (rnd.observation, rnd.notice):
                if text is not None:
                    out.append({"role": "user", "content": text})
        return out

    @property
    def answer_form(self) -> protocol.AnswerForm:
        """The answer form the prompts asked for (traces from before it existed: letter)."""
        form = self.config.get("answer_form")
        return form if form in protocol.ANSWER_FORMS else "letter"

    def summary(self) -> str:
        """A few readable lines: the question, each round, the outcome and the cost."""
        lines = [f"Q: {self.question.strip()}"]
        lines += [f"   {line}" for line in protocol.option_lines(self.choices or [])]
        where = self.video or "(video)"
        lines.append(f"video: {where} ({self.duration:.1f} s, width {self.width})")
        lines += [_round_line(r) for r in self.rounds]
        lines.append(_outcome_line(self))
        lines.append(_cost_line(self.cost))
        return "\n".join(lines)

    # files --------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the JSON atomically: readers see the old file or the new one, never half."""
        path = Path(path)
        try:
            write_atomic(path, self.model_dump_json(indent=2))
        except OSError as exc:
            raise TraceError(f"cannot write trace {path}: {exc.strerror or exc}") from None
        return path

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        path = Path(path)
        try:
            return cls.model_validate_json(path.read_bytes())
        except OSError as exc:
            raise TraceError(f"cannot read trace {path}: {exc.strerror or exc}") from None
        except ValidationError as exc:
            raise TraceError(f"{path} is not a trace: {validation_line(exc)}") from None


def default_trace_dir(store: Path) -> Path:
    """The folder of the traces ``lvr1 ask`` and ``lvr1 serve`` keep: beside the caption cache."""
    return store.parent / "traces"


def trace_file_name(fingerprint: str) -> str:
    """A new trace's file name: when it ran, then which video; they sort by time."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return f"{stamp}-{fingerprint[:12]}.json"


def default_trace_path(fingerprint: str, store: Path) -> Path:
    """Where a run's trace goes when --trace is not given: in :func:`default_trace_dir`."""
    return default_trace_dir(store) / trace_file_name(fingerprint)


# summary lines ------------------------------------------------------------------------


def _round_line(rnd: Round) -> str:
    head = f"{rnd.index:>3}{'!' if rnd.forced else ' '} "
    if rnd.kind in ("get_caption", "video_qa") and rnd.node_id is not None:
        body = f"{rnd.kind} {format_node_id(rnd.node_id)}"
        if rnd.query:
            body += f" {rnd.query!r}"
        if rnd.error:
            body += f"  refused: {rnd.error}"
        elif rnd.notice:
            body += "  not run (budget)"
        elif rnd.kind == "get_caption":
            body += "  cached" if rnd.cache_hit else "  made"
    elif rnd.kind == "answer":
        body = f"answer {rnd.answer!r}"
    elif rnd.kind == "parse_error":
        body = f"unusable reply: {rnd.parse_error}"
    else:
        body = f"failed: {rnd.error}"
    timing = f"  [model {rnd.model_seconds:.1f} s, tool {rnd.tool_seconds:.1f} s]"
    return head + body + timing


def _outcome_line(trace: Trace) -> str:
    if trace.status == "answered":
        raw = f" (wrote {trace.raw_answer!r})" if trace.raw_answer != trace.answer else ""
        return f"answered: {trace.answer}{raw}"
    return f"{trace.status.replace('_', ' ')}: {trace.reason}"


def from_captions_note(cost: Cost) -> str:
    """The video_qa calls no vision model answered, named apart when there were any."""
    n = cost.video_qa_from_captions
    return f" (+{n} answered from captions)" if n else ""


def _cost_line(cost: Cost) -> str:
    return (
        f"cost: {cost.rounds} rounds, {cost.reasoning_calls} reasoning calls "
        f"({cost.reasoning_prompt_tokens} + {cost.reasoning_completion_tokens} tokens), "
        f"{cost.caption_calls} captions ({cost.captions_made} made, "
        f"{cost.captions_cached} cached), {cost.video_qa_calls} video_qa"
        f"{from_captions_note(cost)}, "
        f"{cost.frames_decoded} frames; {cost.end_to_end_seconds:.1f} s end to end = "
        f"model {cost.model_seconds:.1f} + tools {cost.tool_seconds:.1f} "
        f"+ agent {cost.agent_overhead_seconds:.1f}"
    )
