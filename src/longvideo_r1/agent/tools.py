"""The agent's tools: get_caption and video_qa as plain objects over the tree and the store.

``lvr1 ask``, evaluation, trajectory generation and RL rollouts all call the
same objects, so what is trained is what is run. A tool takes an id (and a
query), and returns a :class:`ToolResult` whose ``observation`` is exactly
the user turn the model reads next, rendered by :mod:`longvideo_r1.agent.prompts`.

Two kinds of failure are kept apart on purpose:

* a mistake of the model (an id out of range, a high-level id, video_qa on a
  clip it has not read) is not an exception: it comes back as an error
  observation, worded by the protocol's parser, for the model to fix;
* a failure of the system (the captioner or the VLM endpoint is down, the
  store is unreadable) raises the :class:`~longvideo_r1.errors.LVR1Error` it
  is, so a run ends with status ``error`` instead of feeding the model noise.

:class:`ToolBox` holds one episode's state (which nodes the model has read,
how many calls it made) and enforces the rule that video_qa runs only on a
leaf whose caption was fetched, a rule the reference only stated in its
prompt.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from longvideo_r1.agent import prompts, toolcalls
from longvideo_r1.agent.protocol import Action
from longvideo_r1.captions.captioner import CallCost, VLMClipQA
from longvideo_r1.errors import ConfigError
from longvideo_r1.tree import Node, NodeId, Tree

CAPTION_ONLY_NOTE = (
    "[No vision model is configured: these are the CPU captioner's notes on this clip, "
    "not an answer to the query.]"
)
"""Prefix of every video_qa answer made from captions, so the model (and whoever reads
the trace) never mistakes the clip's caption for a vision model's answer."""

Clock = Callable[[], float]


# what the tools rely on -------------------------------------------------------------


class _RecordLike(Protocol):
    text: str
    seconds: float
    frames_decoded: int
    prompt_tokens: int
    completion_tokens: int


class _FetchedLike(Protocol):
    record: _RecordLike
    made: bool


class _VideoInfoLike(Protocol):
    path: Path


class _VideoLike(Protocol):
    fingerprint: str
    info: _VideoInfoLike


class CaptionSource(Protocol):
    """What :class:`GetCaption` needs of :class:`~longvideo_r1.captions.service.CaptionService`."""

    video: _VideoLike
    tree: Tree

    @property
    def identity(self) -> str: ...

    def fetch(self, node_id: NodeId) -> _FetchedLike: ...


class ClipAnswerer(Protocol):
    """Answers one question about one leaf clip; ``identity`` names the model behind it.

    ``looks`` says whether a vision model looks at the clip for the answer; an
    answerer without the attribute is taken to be one. Records count the two
    kinds apart, so notes read back from captions never pass for a vision call.
    """

    @property
    def identity(self) -> str: ...

    looks: bool

    def ask(self, leaf_id: NodeId, query: str) -> tuple[str, CallCost]: ...


# results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolResult:
    """One tool call as the model saw it and as it was paid for.

    ``observation`` is the user turn to send next: a caption or
    ``<information>`` observation, or, when ``error`` is set, the protocol's
    error message. It is empty for high-level captions, which the first user
    message carries instead. ``made`` means a captioner or VLM ran for this
    call; ``cache_hit`` means the caption came from the store at no model cost.
    """

    tool: str
    node_id: NodeId
    observation: str
    node: Node | None = None
    query: str | None = None
    text: str = ""
    """The caption or answer text without protocol framing (empty on error)."""
    made: bool = False
    cache_hit: bool = False
    seconds: float = 0.0
    """Wall time of the call, store lookups and frame decoding included."""
    frames_decoded: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    from_captions: bool = False
    """A video_qa answered with the clip's caption notes: no vision model looked."""

    @property
    def ok(self) -> bool:
        return self.error is None


def rejection(tree: Tree, action: Action, fetched: Collection[NodeId] | None = None) -> str | None:
    """Why ``action`` may not run, in the parser's words; ``None`` when it may.

    Actions reach the tools from callers other than the parser (RL
    environments, scripts, tests), so the tools check again, with the
    parser's own :func:`toolcalls.check_action`. ``fetched`` turns on the leaf rule.
    """
    return toolcalls.check_action(action, tree, fetched)


def refused(action: Action, problem: str, tree: Tree | None = None) -> ToolResult:
    """The result of a call that did not run: the error observation and no cost."""
    node = None
    if tree is not None:
        try:
            node = tree.node(action.node_id)
        except (ValueError, TypeError):
            node = None
    return ToolResult(
        tool=action.tool,
        node_id=tuple(action.node_id),
        observation=prompts.error_message(problem),
        node=node,
        query=action.query,
        error=problem,
    )


# get_caption ------------------------------------------------------------------------


class GetCaption:
    """``get_caption`` over a caption service: stored captions are served, missing ones made.

    High-level ids are refused: their captions open the conversation, and
    asking again is a wasted round the model should be told about.
    """

    def __init__(self, service: CaptionSource, clock: Clock = time.perf_counter) -> None:
        self.service = service
        self.tree = service.tree
        self._clock = clock

    @property
    def identity(self) -> str:
        return self.service.identity

    @property
    def fingerprint(self) -> str:
        return self.service.video.fingerprint

    @property
    def video_path(self) -> str:
        return str(self.service.video.info.path)

    def __call__(self, node_id: NodeId) -> ToolResult:
        """The caption observation of a medium or low node, or an error observation."""
        action = Action("get_caption", tuple(node_id))
        problem = rejection(self.tree, action)
        if problem is not None:
            return refused(action, problem, self.tree)
        return self._fetch(self.tree.node(node_id), observe=True)

    def high_captions(self) -> list[ToolResult]:
        """Every high-level caption, in time order, for the first user message."""
        return [self._fetch(node, observe=False) for node in self.tree.nodes(1)]

    def _fetch(self, node: Node, observe: bool) -> ToolResult:
        started = self._clock()
        fetched = self.service.fetch(node.id)
        seconds = self._clock() - started
        record = fetched.record
        made = bool(fetched.made)
        return ToolResult(
            tool="get_caption",
            node_id=node.id,
            observation=prompts.caption_observation(node, record.text) if observe else "",
            node=node,
            text=record.text,
            made=made,
            cache_hit=not made,
            seconds=seconds,
            frames_decoded=record.frames_decoded if made else 0,
            prompt_tokens=record.prompt_tokens if made else 0,
            completion_tokens=record.completion_tokens if made else 0,
        )


# video_qa ---------------------------------------------------------------------------


class VLMClipAnswerer:
    """A vision model looks at the leaf's 16 frames (and its subtitle lines) and answers."""

    looks = True

    def __init__(self, clip_qa: VLMClipQA, video: Any, tree: Tree, cues: Sequence[Any] = ()):
        self.clip_qa = clip_qa
        self.video = video
        self.tree = tree
        self.cues = tuple(cues)

    @property
    def identity(self) -> str:
        return f"vlm:{self.clip_qa.client.model}"

    def ask(self, leaf_id: NodeId, query: str) -> tuple[str, CallCost]:
        return self.clip_qa.ask(self.video, self.tree, leaf_id, query, self.cues)


class CaptionClipAnswerer:
    """Without a vision model, video_qa returns what the captioner wrote about the clip.

    The embedded CPU default has no model that can look at frames on demand,
    but its leaf caption already holds what its detectors, OCR and the
    transcript found in that clip. Returning it, clearly marked as notes and
    not an answer, keeps the protocol whole (checkpoints call video_qa)
    without pretending to have looked.
    """

    looks = False

    def __init__(self, service: CaptionSource, note: str = CAPTION_ONLY_NOTE):
        self.service = service
        self.note = note

    @property
    def identity(self) -> str:
        return f"captions:{self.service.identity}"

    def ask(self, leaf_id: NodeId, query: str) -> tuple[str, CallCost]:
        fetched = self.service.fetch(leaf_id)
        record = fetched.record
        if fetched.made:
            cost = CallCost(
                record.frames_decoded,
                record.prompt_tokens,
                record.completion_tokens,
                record.seconds,
            )
        else:
            cost = CallCost(frames_decoded=0)
        return f"{self.note} {record.text.strip()}", cost


class VideoQA:
    """``video_qa``: one query about one leaf clip, answered by any :class:`ClipAnswerer`."""

    def __init__(self, answerer: ClipAnswerer, tree: Tree, clock: Clock = time.perf_counter):
        self.answerer = answerer
        self.tree = tree
        self._clock = clock

    @property
    def identity(self) -> str:
        return str(getattr(self.answerer, "identity", type(self.answerer).__name__))

    def __call__(self, leaf_id: NodeId, query: str) -> ToolResult:
        """The ``<information>`` observation, or an error observation for a bad id or query."""
        action = Action("video_qa", tuple(leaf_id), query)
        problem = rejection(self.tree, action)
        if problem is not None:
            return refused(action, problem, self.tree)
        node = self.tree.node(leaf_id)
        query = query.strip()
        started = self._clock()
        answer, cost = self.answerer.ask(node.id, query)
        seconds = self._clock() - started
        return ToolResult(
            tool="video_qa",
            node_id=node.id,
            observation=prompts.qa_observation(answer),
            node=node,
            query=query,
            text=answer.strip(),
            made=True,
            seconds=seconds,
            frames_decoded=cost.frames_decoded,
            prompt_tokens=cost.prompt_tokens,
            completion_tokens=cost.completion_tokens,
            from_captions=not getattr(self.answerer, "looks", True),
        )


# one episode ------------------------------------------------------------------------


@dataclass
class ToolCounts:
    """Calls of one episode; high-level captions count as caption calls."""

    caption_calls: int = 0
    captions_made: int = 0
    captions_cached: int = 0
    high_captions: int = 0
    video_qa_calls: int = 0
    rejected: int = 0

    @property
    def agent_caption_calls(self) -> int:
        """get_caption calls the model made (the opening's high captions excluded)."""
        return self.caption_calls - self.high_captions


@dataclass
class ToolBox:
    """The tools of one episode and what the model has done with them so far.

    ``fetched`` holds every node whose caption the model has read (the high
    ones from the start); with ``require_fetched_leaf`` a video_qa on any
    other leaf is refused with an observation that says to fetch the caption
    first. Use :meth:`fresh` for the next question: the tools are shared,
    the state is not.
    """

    tree: Tree
    get_caption: GetCaption
    video_qa: VideoQA
    require_fetched_leaf: bool = True
    fetched: set[NodeId] = field(default_factory=set)
    counts: ToolCounts = field(default_factory=ToolCounts)

    def __post_init__(self) -> None:
        for name, tool in (("get_caption", self.get_caption), ("video_qa", self.video_qa)):
            if (tool.tree.duration, tool.tree.width) != (self.tree.duration, self.tree.width):
                raise ConfigError(
                    f"the {name} tool serves a different tree (width {tool.tree.width}, "
                    f"{tool.tree.duration:.1f} s) than the episode (width {self.tree.width}, "
                    f"{self.tree.duration:.1f} s)"
                )

    def fresh(self, require_fetched_leaf: bool | None = None) -> ToolBox:
        """The same tools with no episode state, for the next question."""
        rule = self.require_fetched_leaf if require_fetched_leaf is None else require_fetched_leaf
        return replace(self, require_fetched_leaf=rule, fetched=set(), counts=ToolCounts())

    def identities(self) -> dict[str, str]:
        """Which captioner and video_qa model serve this episode (for the trace)."""
        return {"caption": self.get_caption.identity, "video_qa": self.video_qa.identity}

    def high_captions(self) -> list[ToolResult]:
        """The opening's high-level captions, counted as caption calls."""
        results = self.get_caption.high_captions()
        for result in results:
            self._count_caption(result)
            self.counts.high_captions += 1
        return results

    def execute(self, action: Action) -> ToolResult:
        """Run one parsed tool call; model mistakes come back as error observations."""
        if action.tool == "video_qa" and self.require_fetched_leaf:
            problem = rejection(self.tree, action, self.fetched)
            if problem is not None:
                self.counts.rejected += 1
                return refused(action, problem, self.tree)
        if action.tool == "get_caption":
            result = self.get_caption(action.node_id)
        elif action.tool == "video_qa":
            result = self.video_qa(action.node_id, action.query or "")
        else:
            problem = rejection(self.tree, action) or f"unknown tool {action.tool!r}"
            result = refused(action, problem, self.tree)
        if not result.ok:
            self.counts.rejected += 1
        elif result.tool == "get_caption":
            self._count_caption(result)
        else:
            self.counts.video_qa_calls += 1
        return result

    def _count_caption(self, result: ToolResult) -> None:
        self.fetched.add(result.node_id)
        self.counts.caption_calls += 1
        if result.made:
            self.counts.captions_made += 1
        else:
            self.counts.captions_cached += 1
