"""Captioners: the interface, the VLM captioner over a chat endpoint, and video_qa on a leaf.

A caption is made from the node's frame plan (:meth:`Tree.sample_times` at the
level's ``max_side``) and the subtitle lines inside the node, sent as one
chat request whose user message reads like a storyboard::

    <instructions for this level, with its word limit>
    Frame at 12.3s:  <image>
    Subtitle 12.0s-14.6s: Where were you last night?
    Frame at 16.1s:  <image>
    ...
    <reminder: at most N words, inside <caption></caption>>

Timestamps are seconds of the whole video with one decimal, written
``Frame at {t}s:`` before each image and ``Subtitle {start}s-{end}s: {text}``
for each subtitle line, placed after the last frame at or before the line's
start (see :func:`longvideo_r1.media.subtitles.weave`), so no line between two
sampled frames is lost. Images are JPEG ``data:`` URLs, which vLLM,
``transformers serve`` and hosted APIs all accept.

The reply must hold ``<caption>...</caption>``; the last complete block is the
caption. :class:`VLMClipQA` reuses the same frame layout for the agent's
video_qa tool and returns only the ``<answer>`` text.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

from longvideo_r1.errors import CaptionError, ConfigError, one_line
from longvideo_r1.llm.client import ChatClient, ChatReply
from longvideo_r1.media.subtitles import Cue, cues_between, weave
from longvideo_r1.tree import Node, NodeId, Tree, format_node_id

if TYPE_CHECKING:
    from longvideo_r1.captions.store import ArtifactCache
    from longvideo_r1.media.video import Frames, Video

PROMPT_VERSION = "v1"
DEFAULT_JPEG_QUALITY = 90


# results and context --------------------------------------------------------------------


@dataclass
class CaptionResult:
    """One node's caption and what making it cost."""

    text: str
    """Without ``<caption>`` tags."""
    frame_times: list[float]
    frame_ids: list[int]
    frames_decoded: int
    """Frames the decoder decoded for this caption (the sampling call's ``Frames.decoded``),
    which for sparse samples is many times the frames sent to the model."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


@dataclass
class CaptionContext:
    """What a captioner may use to caption one node.

    ``cues`` may be the whole video's subtitles: captioners keep the lines
    overlapping the node themselves. ``artifacts`` is the store-backed cache
    for per-video intermediate results (e.g. a speech transcript); the VLM
    captioner does not need it.
    """

    video: Video
    tree: Tree
    node: Node
    cues: list[Cue] = field(default_factory=list)
    artifacts: ArtifactCache | None = None


@dataclass(frozen=True)
class CallCost:
    """Cost of one call that is not a stored caption: a video_qa answer, or a failed caption."""

    frames_decoded: int
    """Frames decoded for this call, not just the frames sent (see ``CaptionResult``)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


def charge_failure(exc: BaseException, cost: CallCost) -> BaseException:
    """Attach what a failed call spent to its error (as ``exc.spent``); return the error.

    A call that fails after decoding frames or getting a reply has still paid
    for them: the caption service records this with the failure, and whoever
    catches the error can charge it.
    """
    exc.spent = cost  # type: ignore[attr-defined]
    return exc


def spent_by(exc: BaseException) -> CallCost | None:
    """What a failed call reported spending (see :func:`charge_failure`), if it did."""
    spent = getattr(exc, "spent", None)
    return spent if isinstance(spent, CallCost) else None


def failure_cost(frames_decoded: int, started: float, reply: ChatReply | None = None) -> CallCost:
    """The cost of a call that failed after decoding (and maybe after a reply came back)."""
    return CallCost(
        frames_decoded=frames_decoded,
        prompt_tokens=reply.usage.prompt_tokens if reply is not None else 0,
        completion_tokens=reply.usage.completion_tokens if reply is not None else 0,
        seconds=time.perf_counter() - started,
    )


class Captioner(ABC):
    """Makes the caption of one node. Implementations must be safe to call from many threads."""

    @property
    @abstractmethod
    def identity(self) -> str:
        """``name:model:prompt-version``; part of the cache key, so captions from
        another model or prompt are never served as this captioner's."""

    @abstractmethod
    def caption(self, ctx: CaptionContext) -> CaptionResult:
        """Caption ``ctx.node``; raise :class:`CaptionError` / :class:`EndpointError` on failure."""


class _Frame(Protocol):
    time: float
    index: int
    image: Image.Image


# prompts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptionPrompts:
    """Instruction text per level; ``{start}``, ``{end}`` and ``{max_words}`` are filled in."""

    high: str
    medium: str
    low: str
    subtitles: str
    reminder: str

    def for_level(self, level: str) -> str:
        return {"high": self.high, "medium": self.medium, "low": self.low}[level]

    def digest(self) -> str:
        text = "\x00".join((self.high, self.medium, self.low, self.subtitles, self.reminder))
        return hashlib.sha256(text.encode()).hexdigest()[:8]


_COMMON = (
    "You will see frames sampled evenly from this part of the video, in time order. "
    "Each frame is preceded by its timestamp in seconds from the start of the whole video.\n\n"
    "Describe what happens in detail and in chronological order, and give the timestamps "
    "(in seconds, as shown) of the events you describe. When consecutive frames show one "
    "continuous action or an unchanged scene, describe it once for the time span it covers "
    "instead of frame by frame. Mention people, objects, places and on-screen text when they "
    "matter to what happens. Describe only what the frames and subtitles show; do not guess "
    "beyond them."
)
_SCOPE = (
    "This is the {level} caption of one segment of a long video, from {start} to {end}. "
    "It will be read by someone deciding which part of the video to look at more closely, "
    "so cover the whole segment. "
)

PROMPTS: dict[str, CaptionPrompts] = {
    "v1": CaptionPrompts(
        high=_SCOPE.format(level="high-level", start="{start}", end="{end}") + _COMMON,
        medium=_SCOPE.format(level="medium-level", start="{start}", end="{end}") + _COMMON,
        low=(
            "This is the caption of one short clip of a long video, from {start} to {end}, at "
            "the finest level, so describe it closely. "
            + _COMMON
            + " Besides the actions, describe the setting, the lighting, what people are "
            "wearing and the overall atmosphere."
        ),
        subtitles=(
            "Subtitle lines spoken in this part follow the frame they belong to, each with its "
            "own start and end time. Keep every subtitle line in your caption faithfully, word "
            "for word, in the same order and with its timestamps; do not translate, summarise "
            "or invent dialogue."
        ),
        reminder=(
            "Now write the caption in at most {max_words} words. Put the whole caption between "
            "<caption> and </caption>, with nothing after the closing tag."
        ),
    ),
}

QA_PROMPT_V1 = (
    "You are shown a short clip of a long video, from {start} to {end}: {n} frames in time "
    "order, each preceded by its timestamp in seconds from the start of the whole video. "
    "Someone searching the video for an answer asks about this clip:\n{query}\n\n"
    "First find everything in the clip that bears on the question and summarise it. Think "
    "it through between <reasoning> and </reasoning>. Then give your answer between <answer> "
    "and </answer>: a short, self-contained statement of what the clip shows about the "
    "question, with timestamps where they help. If the clip has nothing to do with the "
    "question, say so in the answer instead of guessing."
)
QA_SUBTITLES = (
    "Subtitle lines spoken in the clip follow the frame they belong to, with their own "
    "start and end times; use them as evidence too."
)
QA_REMINDER = (
    "Question: {query}\nReply with <reasoning>...</reasoning> and then <answer>...</answer>."
)


# tags ----------------------------------------------------------------------------------

_THINK_RE = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)


def _block_re(tag: str) -> re.Pattern[str]:
    return re.compile(rf"<{tag}\s*>(.*?)</{tag}\s*>", re.IGNORECASE | re.DOTALL)


def _stray_re(tag: str) -> re.Pattern[str]:
    return re.compile(rf"</?{tag}\s*>", re.IGNORECASE)


def drop_thinking(text: str) -> str:
    """Reply without a reasoning model's ``<think>`` part, whose drafts are not the answer.

    Handles a closing tag alone too, for templates that open ``<think>`` in the prompt.
    """
    text = _THINK_RE.sub("", text)
    _, sep, tail = text.rpartition("</think>")
    return tail if sep else text


def extract_tagged(text: str, tag: str) -> str | None:
    """Inside of the last complete ``<tag>...</tag>`` block, stripped; None if there is none."""
    blocks = _block_re(tag).findall(text)
    return blocks[-1].strip() if blocks else None


def parse_tagged_reply(
    reply: ChatReply,
    tag: str,
    require_tags: bool,
    where: str,
    model: str,
    drop: Sequence[str] = (),
) -> str:
    """Text of the last ``<tag>`` block of a reply, or a one-line :class:`CaptionError`.

    Strict parsing catches replies that were cut off or ignored the format,
    which would otherwise be stored as captions. ``require_tags=False`` accepts
    the reply without stray tags instead, for models that do not follow it;
    blocks named in ``drop`` (e.g. ``reasoning``) are left out of that text.
    """
    text = drop_thinking(reply.text)
    inner = extract_tagged(text, tag)
    if inner is None and not require_tags:
        for other in drop:
            text = _stray_re(other).sub("", _block_re(other).sub("", text))
        inner = _stray_re(tag).sub("", text).strip()
    if inner is None:
        opened = re.search(rf"<{tag}\s*>", text, re.IGNORECASE) is not None
        if opened:
            why = f"reply was cut off before </{tag}>"
        else:
            start = one_line(text, 60)
            why = f"reply has no <{tag}>...</{tag}> block" + (
                f" (it starts {start!r})" if start else " (it is empty)"
            )
        if reply.truncated:
            why += " (it hit the token limit; raise max_tokens)"
        raise CaptionError(f"{where}: {model} {why}")
    if not inner:
        raise CaptionError(f"{where}: {model} returned an empty <{tag}>")
    return inner


# frames -> message parts ---------------------------------------------------------------


def format_seconds(t: float) -> str:
    """Timestamp as the prompts write it: seconds of the whole video, one decimal."""
    return f"{t:.1f}s"


def jpeg_data_url(image: Image.Image, max_side: int, quality: int = DEFAULT_JPEG_QUALITY) -> str:
    """Base64 JPEG ``data:`` URL, downscaled if the decoder returned a larger frame."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def subtitle_text(cues: Sequence[Cue]) -> str:
    return "\n".join(
        f"Subtitle {format_seconds(c.start)}-{format_seconds(c.end)}: {c.text}" for c in cues
    )


def frame_parts(
    frames: Sequence[_Frame],
    cues: Sequence[Cue],
    start: float,
    end: float,
    max_side: int,
    quality: int = DEFAULT_JPEG_QUALITY,
) -> list[dict[str, Any]]:
    """Timestamp, image and woven subtitle lines for each frame, in time order."""
    if not frames:
        return []
    slots = weave([f.time for f in frames], cues, start, end)
    parts: list[dict[str, Any]] = []
    for frame, slot in zip(frames, slots, strict=True):
        parts.append(text_part(f"Frame at {format_seconds(frame.time)}:"))
        parts.append(image_part(jpeg_data_url(frame.image, max_side, quality)))
        if slot:
            parts.append(text_part(subtitle_text(slot)))
    return parts


def _decode_frames(video: Video, times: list[float], max_side: int, where: str) -> Frames:
    """The frames at ``times``; their ``decoded`` is what this call cost the decoder."""
    frames = video.frames_at(times, max_side)
    if len(frames) != len(times):
        raise CaptionError(f"{where}: asked the video for {len(times)} frames, got {len(frames)}")
    return frames


# the VLM captioner ---------------------------------------------------------------------


class VLMCaptioner(Captioner):
    """Captions with a vision-language model behind an OpenAI-compatible chat endpoint.

    Holds no per-call state, so one instance serves many threads. Custom
    ``prompts`` get their digest appended to the version so their captions
    are cached apart from the built-in prompts'.
    """

    name = "vlm"

    def __init__(
        self,
        client: ChatClient,
        prompt_version: str = PROMPT_VERSION,
        prompts: CaptionPrompts | None = None,
        require_tags: bool = True,
        max_tokens: int | None = None,
        jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    ) -> None:
        if prompts is None:
            if prompt_version not in PROMPTS:
                known = ", ".join(sorted(PROMPTS))
                raise ConfigError(f"unknown caption prompt version {prompt_version!r} ({known})")
            prompts = PROMPTS[prompt_version]
            version = prompt_version
        else:
            version = f"{prompt_version}+{prompts.digest()}"
        self.client = client
        self.prompts = prompts
        self.prompt_version = version
        self.require_tags = require_tags
        self.max_tokens = max_tokens
        self.jpeg_quality = jpeg_quality

    @property
    def identity(self) -> str:
        return f"{self.name}:{self.client.model}:{self.prompt_version}"

    def messages(
        self, tree: Tree, node: Node, frames: Sequence[_Frame], cues: Sequence[Cue]
    ) -> list[dict[str, Any]]:
        """The chat request for one node (separate from :meth:`caption` so tests can read it)."""
        plan = tree.plan(node.id)
        span = {"start": format_seconds(node.start), "end": format_seconds(node.end)}
        parts = frame_parts(frames, cues, node.start, node.end, plan.max_side, self.jpeg_quality)
        intro = self.prompts.for_level(node.level).format(**span)
        if cues_between(cues, node.start, node.end):
            intro += "\n\n" + self.prompts.subtitles
        reminder = self.prompts.reminder.format(max_words=plan.max_words, **span)
        content = [text_part(intro), *parts, text_part(reminder)]
        return [{"role": "user", "content": content}]

    def caption(self, ctx: CaptionContext) -> CaptionResult:
        started = time.perf_counter()
        node = ctx.node
        where = f"node {node.label}"
        plan = ctx.tree.plan(node.id)
        frames = _decode_frames(ctx.video, ctx.tree.sample_times(node.id), plan.max_side, where)
        reply: ChatReply | None = None
        try:
            messages = self.messages(ctx.tree, node, frames, ctx.cues)
            reply = self.client.chat(messages, max_tokens=self.max_tokens)
            text = parse_tagged_reply(reply, "caption", self.require_tags, where, self.client.model)
        except Exception as exc:
            charge_failure(exc, failure_cost(frames.decoded, started, reply))
            raise
        return CaptionResult(
            text=text,
            frame_times=[float(f.time) for f in frames],
            frame_ids=[int(f.index) for f in frames],
            frames_decoded=frames.decoded,
            prompt_tokens=reply.usage.prompt_tokens,
            completion_tokens=reply.usage.completion_tokens,
            seconds=time.perf_counter() - started,
        )


# video_qa ------------------------------------------------------------------------------


class VLMClipQA:
    """The agent's video_qa tool: one question about one leaf clip, answered by a VLM.

    Only the text of ``<answer>`` is returned; the model's summary and
    reasoning stay out of the agent's context.
    """

    def __init__(
        self,
        client: ChatClient,
        require_tags: bool = True,
        max_tokens: int | None = None,
        jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    ) -> None:
        self.client = client
        self.require_tags = require_tags
        self.max_tokens = max_tokens
        self.jpeg_quality = jpeg_quality

    def messages(
        self, tree: Tree, leaf: Node, frames: Sequence[_Frame], query: str, cues: Sequence[Cue]
    ) -> list[dict[str, Any]]:
        span = {"start": format_seconds(leaf.start), "end": format_seconds(leaf.end)}
        intro = QA_PROMPT_V1.format(n=len(frames), query=query, **span)
        if cues_between(cues, leaf.start, leaf.end):
            intro += "\n\n" + QA_SUBTITLES
        parts = frame_parts(
            frames, cues, leaf.start, leaf.end, tree.qa_plan.max_side, self.jpeg_quality
        )
        content = [text_part(intro), *parts, text_part(QA_REMINDER.format(query=query))]
        return [{"role": "user", "content": content}]

    def ask(
        self,
        video: Video,
        tree: Tree,
        leaf_id: NodeId,
        query: str,
        cues: Sequence[Cue] = (),
    ) -> tuple[str, CallCost]:
        """Answer ``query`` from the 16 frames of one leaf (plus its subtitle lines, if given)."""
        started = time.perf_counter()
        times = tree.qa_times(leaf_id)  # TreeError for a non-leaf id
        leaf = tree.node(leaf_id)
        where = f"video_qa on {format_node_id(leaf.id)}"
        if not query.strip():
            raise CaptionError(f"{where}: the query is empty")
        frames = _decode_frames(video, times, tree.qa_plan.max_side, where)
        reply = self.client.chat(
            self.messages(tree, leaf, frames, query.strip(), cues), max_tokens=self.max_tokens
        )
        answer = parse_tagged_reply(
            reply, "answer", self.require_tags, where, self.client.model, drop=("reasoning",)
        )
        cost = CallCost(
            frames_decoded=frames.decoded,
            prompt_tokens=reply.usage.prompt_tokens,
            completion_tokens=reply.usage.completion_tokens,
            seconds=time.perf_counter() - started,
        )
        return answer, cost
