"""Baselines: the same questions, videos, caption cache and backends, without navigation.

Each baseline makes one model call and returns a :class:`BaselineTrace` (a
:class:`~longvideo_r1.agent.trace.Trace` plus the prompt it sent), so the
evaluator records and scores it exactly like the agent:

* ``uniform-frames``: N frames spread evenly over the whole video (centres
  of N equal slices), each with its timestamp and the subtitle lines woven
  after it, sent with the question to the video_qa vision model in one call
  (variant ``vlm-frames``). Without a vision model (the embedded CPU
  default) it cannot show anyone the frames, so variant
  ``embedded-descriptors`` does the nearest honest thing: the embedded
  captioner's per-frame measurements at those N times (brightness, colours,
  cuts, people and faces and on-screen text where checked) and the subtitle
  lines, or else the speech transcribed around those times, go to the
  reasoning model in one call.
* ``caption-all``: every leaf caption, through the same caption service and
  cache (made on demand when missing, and paid for), with timestamps, sent at
  once to the reasoning model with the question, as dense-caption agents do.
  The question comes last, so a server's (or llama.cpp's) prefix cache reuses
  the captions across questions of one video.
* ``random-walk``: the agent's budget spent at random. The opening's
  high-level captions, then ``calls`` get_caption calls on random nodes
  (seeded per question): a random medium segment, then a random leaf under
  it, again and again, never twice the same node. The reasoning model then
  answers from what was visited, in one call.

The answer step (:mod:`longvideo_r1.evaluation.answering`) is the agent's: the
prompt asks for the same answer form (``--answer-form``), the reply is decoded
under the protocol's grammar with only ``<answer>`` admitted (``--constrain``),
and it is read by the same strict parser. Nothing outside ``<answer>`` is
scored. A reply that names no option is a failure (status ``no_answer``, reason
``unparsable ...``), never a guess.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from longvideo_r1.agent import grammar, prompts, protocol
from longvideo_r1.agent.navigator import RunInterrupted, describe_failure, use_constraint
from longvideo_r1.agent.protocol import check_question
from longvideo_r1.agent.trace import Evidence, HighCaption, Round, Trace
from longvideo_r1.captions.captioner import CaptionContext, frame_parts, spent_by, text_part
from longvideo_r1.captions.embedded import EmbeddedCaptioner, fmt_span, fmt_time
from longvideo_r1.captions.visual import brightness_word
from longvideo_r1.config import Settings
from longvideo_r1.errors import ConfigError, VideoError
from longvideo_r1.evaluation.answering import (
    PROMPT_VERSION,
    AnswerStep,
    parse_answer,
    question_block,
    stub_images,
    text_prompt,
)
from longvideo_r1.evaluation.identity import caption_identity
from longvideo_r1.llm.client import ChatReply
from longvideo_r1.llm.server import OpenAIBackend
from longvideo_r1.media.subtitles import weave
from longvideo_r1.questions.schema import Question
from longvideo_r1.tree import LEVELS, Node, Tree, format_node_id


class BaselineTrace(Trace):
    """A baseline's trace: the agent's fields plus the prompt it sent, images stubbed."""

    method: str
    variant: str
    prompt: list[dict[str, Any]] = Field(default_factory=list)

    def messages(self) -> list[dict[str, Any]]:
        """The one exchange: the prompt as sent (images stubbed) and the reply."""
        out = list(self.prompt)
        for rnd in self.rounds:
            if rnd.output is not None:
                out.append({"role": "assistant", "content": rnd.output})
        return out


def caption_lines(items: Sequence[tuple[Node, str]]) -> list[str]:
    """Captions in time order (coarse before fine at equal starts), with ids and spans."""
    ordered = sorted(items, key=lambda item: (item[0].start, item[0].depth))
    return [
        f"{node.level.capitalize()}-level Caption {format_node_id(node.id)} from "
        f"{prompts.format_seconds(node.start)} to {prompts.format_seconds(node.end)}:"
        f"{text.strip()}"
        for node, text in ordered
    ]


def uniform_times(duration: float, n: int) -> list[float]:
    """Centres of ``n`` equal slices of the whole video: no frame sits on an edge."""
    step = duration / n
    return [(i + 0.5) * step for i in range(n)]


# one episode ----------------------------------------------------------------------------


@dataclass
class _Episode:
    """A baseline's run in progress: the trace it fills and the clock it charges."""

    trace: BaselineTrace
    choices: list[str]
    started: float
    stop: threading.Event

    def check(self) -> None:
        """Stop between steps on Ctrl-C; the unfinished question is not recorded."""
        if self.stop.is_set():
            self.trace.status, self.trace.reason = "error", "interrupted"
            self.close()
            raise RunInterrupted(self.trace)

    def fetch(self, service: Any, node: Node) -> str:
        """One get_caption through the shared service and cache, charged like the agent's."""
        self.check()
        cost = self.trace.cost
        started = time.perf_counter()
        fetched = service.fetch(node.id)
        cost.tool_seconds += time.perf_counter() - started
        record = fetched.record
        cost.caption_calls += 1
        if fetched.made:
            cost.captions_made += 1
            cost.frames_decoded += record.frames_decoded
            cost.caption_prompt_tokens += record.prompt_tokens
            cost.caption_completion_tokens += record.completion_tokens
        else:
            cost.captions_cached += 1
        self.trace.evidence.append(
            Evidence(
                node_id=node.id,
                level=node.level,
                start=node.start,
                end=node.end,
                how="get_caption",
                round=0,
            )
        )
        return record.text

    def ask(
        self,
        backend: Any,
        messages: list[dict[str, Any]],
        max_tokens: int,
        step: AnswerStep,
        vlm: bool,
    ) -> None:
        """The one model call, constrained to an answer, then the verdict: answered, or
        unparsable (never a guess)."""
        self.check()
        cost = self.trace.cost
        form = step.form(backend)
        constraint = None
        if use_constraint(step.constrain, backend):
            rules = grammar.ReplyRules(
                width=self.trace.width, choices=tuple(self.choices), answer_form=form, tools=False
            )
            constraint = grammar.reply_constraint(rules)
        self.trace.config.update(
            answer_form=form,
            constrained=constraint is not None,
            parser_version=protocol.PARSER_VERSION,
        )
        rnd = Round(index=1, constrained=constraint is not None)
        self.trace.rounds.append(rnd)
        started = time.perf_counter()
        try:
            reply: ChatReply = backend.chat(messages, max_tokens=max_tokens, constraint=constraint)
        finally:
            rnd.model_seconds = time.perf_counter() - started
            cost.model_seconds += rnd.model_seconds
            cost.rounds = 1
        rnd.output, rnd.finish_reason = reply.text, reply.finish_reason
        rnd.prompt_tokens = reply.usage.prompt_tokens
        rnd.completion_tokens = reply.usage.completion_tokens
        if vlm:
            cost.video_qa_calls += 1
            cost.vlm_prompt_tokens += reply.usage.prompt_tokens
            cost.vlm_completion_tokens += reply.usage.completion_tokens
        else:
            cost.reasoning_calls += 1
            cost.reasoning_prompt_tokens += reply.usage.prompt_tokens
            cost.reasoning_completion_tokens += reply.usage.completion_tokens
        parsed = parse_answer(reply.text, self.choices)
        rnd.notes = list(parsed.notes)
        self.trace.raw_answer = parsed.text
        if parsed.letter is None:
            rnd.kind, rnd.parse_error = "parse_error", parsed.problem
            cost.parse_errors += 1
            self.trace.status = "no_answer"
            self.trace.reason = f"unparsable answer: {parsed.problem}"
            if reply.truncated:
                self.trace.reason += " (the reply hit the token limit)"
        else:
            rnd.kind, rnd.answer = "answer", parsed.text
            self.trace.answer, self.trace.status, self.trace.reason = (
                parsed.letter,
                "answered",
                None,
            )

    def close(self) -> None:
        cost = self.trace.cost
        cost.end_to_end_seconds = time.perf_counter() - self.started
        cost.agent_overhead_seconds = max(
            0.0, cost.end_to_end_seconds - cost.model_seconds - cost.tool_seconds
        )


def _start(
    method: str,
    variant: str,
    question: Question,
    session: Any,
    backends: dict[str, str],
    config: dict[str, Any],
) -> _Episode:
    _, choices = check_question(question.question, question.choice_lines() or None)
    if not choices:
        raise ConfigError(f"question {question.id!r}: baselines need multiple-choice options")
    tree: Tree = session.tree
    trace = BaselineTrace(
        method=method,
        variant=variant,
        question=question.question,
        choices=choices,
        video=str(session.video.info.path),
        fingerprint=session.video.fingerprint,
        duration=tree.duration,
        width=tree.width,
        backends=backends,
        config=config,
        reason="the run did not finish",
    )
    return _Episode(trace, choices, time.perf_counter(), threading.Event())


def _run_episode(ep: _Episode, stop: threading.Event, body: Callable[[_Episode], None]) -> Trace:
    """Run ``body``; failures end the trace with status error and a reason, as the agent's do."""
    ep.stop = stop
    try:
        body(ep)
    except RunInterrupted:
        raise
    except Exception as exc:  # an LVR1Error, or a bug: one question must not end the evaluation
        ep.trace.status, ep.trace.reason = "error", describe_failure(exc)
        spent = spent_by(exc)  # a caption call that failed after decoding still paid for it
        if spent is not None:
            ep.trace.cost.add_failed_call(spent)
    ep.close()
    return ep.trace


# the baselines --------------------------------------------------------------------------


@dataclass
class UniformFrames:
    """N evenly spread frames in one call: to the VLM, or as CPU descriptors to the LLM."""

    frames: int = 32
    frame_side: int = 448
    use_vlm: bool = True
    max_reply_tokens: int = 1024
    detect_frames: int = 8
    ocr_frames: int = 4
    descriptor_side: int = 640
    answer: AnswerStep = field(default_factory=AnswerStep)
    name: str = "uniform-frames"
    _captioner: Any = field(default=None, repr=False)
    _vlm: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for Ray workers without this process's captioner, VLM client and lock: each
        makes its own."""
        state = {**self.__dict__, "_captioner": None, "_vlm": None}
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def variant(self) -> str:
        return "vlm-frames" if self.use_vlm else "embedded-descriptors"

    @property
    def needs_reasoning(self) -> bool:
        return not self.use_vlm

    def params(self) -> dict[str, Any]:
        if self.use_vlm:
            return {
                "frames": self.frames,
                "frame_side": self.frame_side,
                "max_reply_tokens": self.max_reply_tokens,
                "prompt_version": PROMPT_VERSION,
                **self.answer.params(),
            }
        return {
            "frames": self.frames,
            "max_reply_tokens": self.max_reply_tokens,
            "prompt_version": PROMPT_VERSION,
            "descriptor_side": self.descriptor_side,
            "detect_frames": self.detect_frames,
            "ocr_frames": self.ocr_frames,
            **self.answer.params(),
        }

    def identities(self, settings: Settings, reasoning: str | None) -> dict[str, str]:
        if self.use_vlm:
            return {"video_qa": f"vlm:{settings.video_qa.model}"}
        return {"reasoning": reasoning or "", "descriptors": self.descriptor_captioner().identity}

    def descriptor_captioner(self, session: Any = None) -> Any:
        """The embedded captioner whose analyzer and transcriber describe the frames."""
        if session is not None and isinstance(session.captioner, EmbeddedCaptioner):
            return session.captioner
        with self._lock:
            if self._captioner is None:
                self._captioner = EmbeddedCaptioner()
            return self._captioner

    def run(self, question: Question, session: Any, backend: Any, stop: threading.Event) -> Trace:
        settings: Settings = session.settings
        if self.use_vlm:
            backends = {"video_qa": f"vlm:{settings.video_qa.model}"}
        else:
            backends = {
                "reasoning": backend.identity,
                "descriptors": self.descriptor_captioner(session).identity,
            }
        config = {"method": self.name, "variant": self.variant, **self.params()}
        ep = _start(self.name, self.variant, question, session, backends, config)
        body = self._vlm_body if self.use_vlm else self._descriptor_body
        return _run_episode(ep, stop, lambda e: body(e, question, session, backend))

    def _decode(self, ep: _Episode, session: Any, side: int) -> list[Any]:
        """The uniform frames; the trace is charged what the video decoded for them."""
        ep.check()
        times = uniform_times(session.tree.duration, self.frames)
        started = time.perf_counter()
        frames = session.video.frames_at(times, side)
        ep.trace.cost.tool_seconds += time.perf_counter() - started
        ep.trace.cost.frames_decoded += frames.decoded
        if len(frames) != len(times):
            raise VideoError(f"asked the video for {len(times)} frames, got {len(frames)}")
        return frames

    def vlm_messages(
        self,
        question: Question,
        frames: Sequence[Any],
        cues: Sequence[Any],
        duration: float,
        answer_form: protocol.AnswerForm = "letter",
    ) -> list[dict[str, Any]]:
        """Frames with timestamps and woven subtitles, then the question (one user turn)."""
        intro = (
            f"These are {len(frames)} frames sampled evenly from a video of "
            f"{prompts.format_seconds(duration)} seconds, each preceded by its timestamp"
            + (", with the subtitle lines spoken after it." if cues else ".")
            + " Answer the multiple-choice question after them."
        )
        parts = frame_parts(frames, cues, 0.0, duration, self.frame_side)
        content = [text_part(intro), *parts, text_part(question_block(question, answer_form))]
        return [{"role": "user", "content": content}]

    def _vlm_body(self, ep: _Episode, question: Question, session: Any, backend: Any) -> None:
        frames = self._decode(ep, session, self.frame_side)
        vlm = self.vlm_backend(session.settings)
        form = self.answer.form(vlm)
        messages = self.vlm_messages(question, frames, session.cues, session.tree.duration, form)
        ep.trace.prompt = stub_images(messages)
        ep.ask(vlm, messages, self.max_reply_tokens, self.answer, vlm=True)

    def vlm_backend(self, settings: Settings) -> Any:
        """One backend for the video_qa model per run, so its grammar probe runs once."""
        with self._lock:
            if self._vlm is None:
                self._vlm = OpenAIBackend.from_settings(settings.video_qa, "video_qa")
            return self._vlm

    def descriptor_text(self, session: Any, frames: Sequence[Any], captioner: Any) -> str:
        """One line per frame with what the CPU captioner measured, speech or subtitles after."""
        duration = session.tree.duration
        look = captioner.analyzer.describe(
            frames, 0.0, duration, detect_frames=self.detect_frames, ocr_frames=self.ocr_frames
        )
        spoken, label = self._spoken(session, captioner, [f.time for f in frames])
        slots = weave([f.time for f in frames], spoken, 0.0, duration)
        lines = []
        for i, (desc, slot) in enumerate(zip(look.frames, slots, strict=True)):
            cut = i > 0 and look.changes[i - 1].cut
            lines.append(f"Frame at {fmt_time(desc.time)}: {_describe_frame(desc, cut)}")
            lines += [f"{label} {fmt_span(s.start, s.end)}: {s.text.strip()}" for s in slot]
        head = (
            f"The video is {prompts.format_seconds(duration)} seconds long. A CPU frame "
            f"analyzer looked at {len(frames)} frames spread evenly over it (no vision model): "
            f"what it measured on each, and the {label.lower()} lines "
            + ("of the whole video" if label == "Subtitle" else "heard around those frames")
            + ", in time order:"
        )
        return head + "\n" + "\n".join(lines)

    def _spoken(self, session: Any, captioner: Any, times: Sequence[float]) -> tuple[list, str]:
        """Subtitles when the video has them; else the speech of the leaves at those times."""
        if session.cues:
            return list(session.cues), "Subtitle"
        if not session.video.info.has_audio or not captioner.speech:
            return [], "Speech"
        tree: Tree = session.tree
        artifacts = session.store.artifacts(session.video.fingerprint)
        seen: dict[tuple[float, float, str], Any] = {}
        for leaf in dict.fromkeys(tree.leaf_at(t).id for t in times):
            node = tree.node(leaf)
            ctx = CaptionContext(session.video, tree, node, [], artifacts)
            for seg in captioner.leaf_speech(ctx, node) or []:
                seen.setdefault((seg.start, seg.end, seg.text), seg)
        return sorted(seen.values(), key=lambda s: s.start), "Speech"

    def _descriptor_body(
        self, ep: _Episode, question: Question, session: Any, backend: Any
    ) -> None:
        captioner = self.descriptor_captioner(session)
        frames = self._decode(ep, session, self.descriptor_side)
        started = time.perf_counter()
        context = self.descriptor_text(session, frames, captioner)
        ep.trace.cost.tool_seconds += time.perf_counter() - started
        what = (
            f"measurements of {self.frames} evenly spread frames by a CPU frame analyzer, "
            "with subtitles or transcribed speech"
        )
        _ask_about_text(ep, backend, question, what, context, self.answer, self.max_reply_tokens)


def _describe_frame(desc: Any, cut: bool) -> str:
    """A frame's descriptors in words; what was not checked is not mentioned."""
    colours = ", ".join(f"{name} {share:.0%}" for name, share in desc.colours[:4])
    parts = [("shot cut just before; " if cut else "") + brightness_word(desc.brightness)]
    if colours:
        parts.append(f"colours {colours}")
    if desc.people is not None:
        parts.append(f"people detected: {desc.people}, faces: {desc.faces or 0}")
    if desc.text:
        parts.append("on-screen text: " + " | ".join(f'"{t}"' for t in desc.text[:4]))
    return "; ".join(parts)


def _ask_about_text(
    ep: _Episode,
    backend: Any,
    question: Question,
    what: str,
    context: str,
    step: AnswerStep,
    max_tokens: int,
) -> None:
    """The text-only baselines' one call: what the text is, the text, the question."""
    messages = text_prompt(what, context, question, step.form(backend))
    ep.trace.prompt = messages
    ep.ask(backend, messages, max_tokens, step, vlm=False)


class _ReadsCaptions:
    """What the baselines that read captions share: their identities and their one episode.

    A subclass says which captions it reads (:meth:`_read`); the answer step is common.
    """

    name: str
    variant: str
    max_reply_tokens: int
    answer: AnswerStep

    def identities(self, settings: Settings, reasoning: str | None) -> dict[str, str]:
        return {"reasoning": reasoning or "", "caption": caption_identity(settings)}

    def run(self, question: Question, session: Any, backend: Any, stop: threading.Event) -> Trace:
        backends = {"reasoning": backend.identity, "caption": session.captioner.identity}
        config = {"method": self.name, "variant": self.variant, **self.params()}
        ep = _start(self.name, self.variant, question, session, backends, config)

        def body(ep: _Episode) -> None:
            what, context = self._read(ep, question, session)
            _ask_about_text(
                ep, backend, question, what, context, self.answer, self.max_reply_tokens
            )

        return _run_episode(ep, stop, body)

    def params(self) -> dict[str, Any]:
        raise NotImplementedError

    def _read(self, ep: _Episode, question: Question, session: Any) -> tuple[str, str]:
        """(what the text is, the text) for the prompt; captions fetched through ``ep``."""
        raise NotImplementedError


@dataclass
class CaptionAll(_ReadsCaptions):
    """Every leaf caption at once, as dense-caption agents read a video."""

    max_reply_tokens: int = 1024
    answer: AnswerStep = field(default_factory=AnswerStep)
    name: str = "caption-all"
    variant: str = "leaf-captions"
    needs_reasoning: bool = True

    def params(self) -> dict[str, Any]:
        return {
            "max_reply_tokens": self.max_reply_tokens,
            "prompt_version": PROMPT_VERSION,
            **self.answer.params(),
        }

    def _read(self, ep: _Episode, question: Question, session: Any) -> tuple[str, str]:
        tree: Tree = session.tree
        leaves = tree.nodes(len(LEVELS))
        items = [(leaf, ep.fetch(session.service, leaf)) for leaf in leaves]
        context = (
            f"The video is {prompts.format_seconds(tree.duration)} seconds long. Captions of "
            f"all its {len(leaves)} low-level clips, in time order:\n"
            + "\n".join(caption_lines(items))
        )
        return "captions of every short clip of the video", context


def random_walk(tree: Tree, calls: int, rng: random.Random) -> list[Node]:
    """Zoom in at random: a random medium segment, then a random leaf under it; no repeats.

    Medium segments whose whole subtree was visited drop out, so the walk
    ends early only when every medium and low node has been read.
    """
    visited: list[Node] = []
    seen: set[tuple[int, ...]] = set()
    while len(visited) < calls:
        open_mediums = [
            m
            for m in tree.nodes(2)
            if m.id not in seen or any(c.id not in seen for c in tree.children(m.id))
        ]
        if not open_mediums:
            break
        medium = rng.choice(open_mediums)
        if medium.id not in seen:
            seen.add(medium.id)
            visited.append(medium)
        leaves = [c for c in tree.children(medium.id) if c.id not in seen]
        if leaves and len(visited) < calls:
            leaf = rng.choice(leaves)
            seen.add(leaf.id)
            visited.append(leaf)
    return visited


@dataclass
class RandomWalk(_ReadsCaptions):
    """The agent's caption budget spent on random nodes, then one answer from what was seen."""

    calls: int
    seed: int = 0
    max_reply_tokens: int = 1024
    answer: AnswerStep = field(default_factory=AnswerStep)
    name: str = "random-walk"
    variant: str = "random-descent"
    needs_reasoning: bool = True

    def params(self) -> dict[str, Any]:
        return {
            "walk_calls": self.calls,
            "seed": self.seed,
            "max_reply_tokens": self.max_reply_tokens,
            "prompt_version": PROMPT_VERSION,
            **self.answer.params(),
        }

    def rng(self, question: Question) -> random.Random:
        """Seeded per question, so the walk does not depend on worker order or earlier questions."""
        return random.Random(f"{self.seed}:{question.benchmark}:{question.id}")

    def _read(self, ep: _Episode, question: Question, session: Any) -> tuple[str, str]:
        tree: Tree = session.tree
        items: list[tuple[Node, str]] = []
        for high in tree.nodes(1):
            text = ep.fetch(session.service, high)
            ep.trace.high_captions.append(
                HighCaption(node_id=high.id, start=high.start, end=high.end, text=text)
            )
            items.append((high, text))
        for node in random_walk(tree, self.calls, self.rng(question)):
            items.append((node, ep.fetch(session.service, node)))
        context = (
            f"The video is {prompts.format_seconds(tree.duration)} seconds long. Captions of "
            f"the parts of it that were read: its {tree.width} high-level segments and "
            f"{len(items) - tree.width} finer segments picked at random, in time order:\n"
            + "\n".join(caption_lines(items))
        )
        return "captions of some segments of the video", context
