"""The embedded CPU captioner: captions from measurements, speech and subtitles.

It runs anywhere the package installs (no GPU, no model hub) and is much
weaker than a VLM, so it is built to be honest and searchable instead of
fluent. A caption lists, with timestamps in seconds of the video:

* per shot (or group of shots): lighting, main colours, amount of motion,
  people and faces when the detectors saw them on enough frames
  (:mod:`longvideo_r1.captions.visual`), and where the shot changes;
* what is said: whisper-base's transcript (:mod:`longvideo_r1.captions.speech`) and
  the subtitle lines of the node, verbatim;
* text read on screen by OCR.

It never states what it did not detect, and never that something is absent
except speech ("no speech detected" is what the speech model reports).

Cost plan. The VLM plan (128/64/32 frames at 256/362/512 px) buys visual
tokens; here each frame costs detector time, so nodes sample fewer frames at
one size (:data:`EMBEDDED_PLANS`): 16 frames per leaf, 24 per medium and 32
per high node, at most 640 px on the longest side (people in a wide shot
are ~25 px tall at 384 px, and the detectors found none of them there).
Detectors run on 5-8 of those frames per node and OCR on 2-4, first frames
of shots first; colours, brightness, motion and cuts use every frame. Speech is transcribed once per leaf span and cached in the
video's artifacts (key ``speech:<model>:<settings>:<version>:<start_ms>-<end_ms>``),
so medium and high nodes and later runs reuse the leaves' transcripts; audio
is decoded in windows of whole leaves of up to ~28 s (whisper's 30 s window),
each word assigned to the leaf holding its midpoint.

Coarse levels compress: many shots are merged into at most a few lines, and
when speech or subtitles exceed the words left, the caption keeps keywords of
the whole span plus lines spread evenly over it.

Navigable captions (``navigable=True``, off by default). Quotes spread over a
coarse node do not tell a reader which child holds a fact, so high and
medium captions then also give one line per child with the distinctive words
of its speech, subtitles and on-screen text (TF-IDF,
:mod:`longvideo_r1.captions.distinctive`), e.g. ``Part (3, 2) 94.8s-104.2s:
yellow, box, table, lifts.`` The document frequencies count the words of
every leaf's transcript, so the first such caption of a video transcribes the
whole video once (each window stored as it is done, as above) and every later
caption and run reads the transcripts back; a process keeps the counts. The
identity gains ``-nav1``, so the two settings never share cached captions.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from statistics import median
from typing import Any

from longvideo_r1.captions.captioner import (
    CaptionContext,
    Captioner,
    CaptionResult,
    charge_failure,
    failure_cost,
)
from longvideo_r1.captions.distinctive import (
    DocumentFrequencies,
    Part,
    distinctive_words,
    part_lines,
    word_counts,
)
from longvideo_r1.captions.speech import SAMPLE_RATE, Segment, Transcriber, segments_in
from longvideo_r1.captions.visual import (
    DESCRIPTOR_VERSION,
    ClipDescriptor,
    Shot,
    VisualAnalyzer,
    brightness_word,
    motion_word,
)
from longvideo_r1.errors import CaptionError, VideoError
from longvideo_r1.media.subtitles import Cue, cues_between
from longvideo_r1.tree import LEVELS, Node, Tree

log = logging.getLogger(__name__)

CAPTION_VERSION = "v1"
SPEECH_VERSION = "v1"

SPEECH_WINDOW_SECONDS = 28.0
"""Leaves are transcribed together in windows up to this long (whisper reads 30 s at once)."""
SPEECH_PAD_SECONDS = 1.0
"""Audio added on both sides of a window so words at its edges are heard whole."""
NAVIGABLE_VERSION = "1"
"""Changes when the per-child lines change, so captions of the old form are not served."""
PART_WORDS = 8
"""Most distinctive words per child line; fewer when the caption's word limit is tight."""
PARTS_SHARE = 3
"""The per-child lines take at most 1/PARTS_SHARE of a caption's word limit."""


@dataclass(frozen=True)
class EmbeddedPlan:
    """Frames one node samples and how many of them the costly steps read."""

    frames: int
    max_side: int
    detect_frames: int
    ocr_frames: int
    max_lines: int
    """Most visual lines in the caption; shots beyond it are merged."""


EMBEDDED_PLANS: dict[str, EmbeddedPlan] = {
    "high": EmbeddedPlan(frames=32, max_side=640, detect_frames=8, ocr_frames=4, max_lines=6),
    "medium": EmbeddedPlan(frames=24, max_side=640, detect_frames=8, ocr_frames=3, max_lines=5),
    "low": EmbeddedPlan(frames=16, max_side=640, detect_frames=5, ocr_frames=2, max_lines=4),
}


def fmt_time(t: float) -> str:
    """Seconds of the whole video with one decimal, as the VLM captions and the agent use."""
    return f"{t:.1f}s"


def fmt_span(start: float, end: float) -> str:
    return f"{fmt_time(start)}-{fmt_time(end)}"


def word_count(text: str) -> int:
    return len(text.split())


class EmbeddedCaptioner(Captioner):
    """Captions nodes on the CPU; one instance serves all threads of a process.

    Holds the whisper model (loaded on first speech), the visual analyzer and
    a small in-memory transcript cache used when a context has no artifact
    store. ``speech=False`` or ``ocr=False`` switch those parts off, and
    ``navigable=True`` adds the per-child lines of distinctive words to high
    and medium captions (the identity says so, so such captions are cached
    apart).
    """

    name = "embedded"

    def __init__(
        self,
        transcriber: Transcriber | None = None,
        analyzer: VisualAnalyzer | None = None,
        plans: dict[str, EmbeddedPlan] | None = None,
        cpu_threads: int | None = None,
        speech: bool = True,
        ocr: bool = True,
        navigable: bool = False,
    ) -> None:
        self.transcriber = transcriber or Transcriber(cpu_threads=cpu_threads)
        self.analyzer = analyzer or VisualAnalyzer(cpu_threads=cpu_threads or 2)
        self.plans = dict(plans or EMBEDDED_PLANS)
        self.speech = speech
        self.ocr = ocr and self.analyzer.settings.ocr
        self.navigable = navigable
        self._frequencies: OrderedDict[tuple[Any, ...], DocumentFrequencies] = OrderedDict()
        self._memory: OrderedDict[str, list[Any]] = OrderedDict()
        self._memory_lock = threading.Lock()
        self._window_locks: dict[str, threading.Lock] = {}
        self._window_guard = threading.Lock()

    # identity --------------------------------------------------------------------------

    @property
    def identity(self) -> str:
        """``embedded:cpu+whisper-base:v1-auto-b1-vad-visv1``, plus what is switched on or off."""
        speech = self.transcriber.model_name if self.speech else "nospeech"
        version = f"{CAPTION_VERSION}-{self.transcriber.settings.tag()}-vis{DESCRIPTOR_VERSION}"
        if not self.ocr:
            version += "-noocr"
        if not self.analyzer.detectors_available:
            version += "-nodetect"
        if self.plans != EMBEDDED_PLANS:
            digest = hashlib.sha256(
                repr(sorted(asdict(p).items() for p in self.plans.values())).encode()
            )
            version += "-p" + digest.hexdigest()[:6]
        if self.navigable:
            version += f"-nav{NAVIGABLE_VERSION}"
        return f"{self.name}:cpu+{speech}:{version}"

    # caption ---------------------------------------------------------------------------

    def caption(self, ctx: CaptionContext) -> CaptionResult:
        started = time.perf_counter()
        node, tree = ctx.node, ctx.tree
        plan = self.plans[node.level]
        frames_n = min(plan.frames, tree.plan(node.id).frames)
        times = tree.sample_times(node.id, frames_n)
        t0 = time.perf_counter()
        frames = ctx.video.frames_at(times, plan.max_side)
        if len(frames) != len(times):
            raise CaptionError(
                f"node {node.label}: asked the video for {len(times)} frames, got {len(frames)}"
            )
        t_decode = time.perf_counter() - t0
        try:
            text = self._write(ctx, plan, frames, t_decode)
        except Exception as exc:  # the frames are decoded: the failure still cost them
            charge_failure(exc, failure_cost(frames.decoded, started))
            raise
        return CaptionResult(
            text=text,
            frame_times=[float(f.time) for f in frames],
            frame_ids=[int(f.index) for f in frames],
            frames_decoded=frames.decoded,
            seconds=time.perf_counter() - started,
        )

    def _write(
        self, ctx: CaptionContext, plan: EmbeddedPlan, frames: Sequence[Any], t_decode: float
    ) -> str:
        """The caption text of decoded frames: what they show, what is said, the subtitles."""
        node, tree = ctx.node, ctx.tree
        look = self.analyzer.describe(
            frames,
            node.start,
            node.end,
            detect_frames=plan.detect_frames,
            ocr_frames=plan.ocr_frames if self.ocr else 0,
        )
        t1 = time.perf_counter()
        speech = self.node_speech(ctx) if self.speech else None
        t_speech = time.perf_counter() - t1
        cues = cues_between(ctx.cues, node.start, node.end)
        parts = self.parts(ctx, look, speech, cues) if self.navigable else ()
        text = render_caption(
            node, look, speech, cues, tree.plan(node.id).max_words, plan.max_lines, parts
        )
        log.debug(
            "node %s: decode %.2fs, visual %s, speech %.2fs",
            node.label,
            t_decode,
            {k: round(v, 2) for k, v in look.seconds.items()},
            t_speech,
        )
        return text

    # navigable parts ---------------------------------------------------------------------

    def parts(
        self,
        ctx: CaptionContext,
        look: ClipDescriptor,
        speech: Sequence[Segment] | None,
        cues: Sequence[Cue],
    ) -> list[Part]:
        """Each child of a coarse node with the distinctive words said, subtitled or read there.

        A leaf has no children and gets none.
        """
        children = ctx.tree.children(ctx.node.id)
        if not children:
            return []
        frequencies = self.document_frequencies(ctx)
        return [
            Part(
                child.label,
                fmt_span(child.start, child.end),
                tuple(
                    distinctive_words(
                        child_texts(child, look, speech, cues), frequencies, PART_WORDS
                    )
                ),
            )
            for child in children
        ]

    def document_frequencies(self, ctx: CaptionContext) -> DocumentFrequencies:
        """Word counts over the video's leaves (a document is one leaf's transcript).

        Every leaf's transcript comes from the artifact cache, or is
        transcribed once and stored there, so the whole video is never
        transcribed twice; the counts are kept per video and tree in this
        process. Without speech (no audio, speech off) the documents are the
        subtitles of the leaves under the node: the best "elsewhere" at hand.
        """
        tree = ctx.tree
        if not (self.speech and ctx.video.info.has_audio):
            return DocumentFrequencies.of(
                [c.text for c in cues_between(ctx.cues, leaf.start, leaf.end)]
                for leaf in leaves_of(tree, ctx.node)
            )
        key = (ctx.video.fingerprint, tree.width, tree.count(len(LEVELS)), tree.duration)
        with self._memory_lock:
            known = self._frequencies.get(key)
        if known is not None:
            return known
        documents = [self.leaf_speech(ctx, leaf) for leaf in tree.nodes(len(LEVELS))]
        frequencies = DocumentFrequencies.of([s.text for s in d or ()] for d in documents)
        if all(d is not None for d in documents):  # a failed window is retried next time
            with self._memory_lock:
                self._frequencies[key] = frequencies
                while len(self._frequencies) > 16:
                    self._frequencies.popitem(last=False)
        return frequencies

    # speech ----------------------------------------------------------------------------

    def node_speech(self, ctx: CaptionContext) -> list[Segment] | None:
        """Transcript of the node from its leaves' cached transcripts; None without audio."""
        if not ctx.video.info.has_audio:
            return None
        out: list[Segment] = []
        for leaf in leaves_of(ctx.tree, ctx.node):
            segments = self.leaf_speech(ctx, leaf)
            if segments is None:
                return None
            out.extend(segments)
        return out

    def speech_key(self, leaf: Node) -> str:
        """Artifact key of one leaf's transcript; the span makes it independent of tree width."""
        span = f"{round(leaf.start * 1000)}-{round(leaf.end * 1000)}"
        return f"speech:{self.transcriber.identity}:{SPEECH_VERSION}:{span}"

    def leaf_speech(self, ctx: CaptionContext, leaf: Node) -> list[Segment] | None:
        """One leaf's transcript: cached, or transcribed with its window's other leaves."""
        key = self.speech_key(leaf)
        cached = self._get(ctx, key)
        if cached is not None:
            return [Segment.from_json(v) for v in cached]
        window = speech_window(ctx.tree, leaf)
        with self._window_lock(ctx.video.fingerprint, window):
            cached = self._get(ctx, key)  # another thread may have done the window meanwhile
            if cached is not None:
                return [Segment.from_json(v) for v in cached]
            found = self._transcribe_window(ctx, window)
        if found is None:
            return None
        return found.get(key, [])

    def _transcribe_window(
        self, ctx: CaptionContext, window: Sequence[Node]
    ) -> dict[str, list[Segment]] | None:
        """Transcribe leaves together, store each leaf's part, return them by key."""
        start = max(0.0, window[0].start - SPEECH_PAD_SECONDS)
        end = min(ctx.tree.duration, window[-1].end + SPEECH_PAD_SECONDS)
        try:
            audio = ctx.video.audio(SAMPLE_RATE, start, end)
        except VideoError as exc:
            log.warning("no speech for %s-%s: %s", fmt_time(start), fmt_time(end), exc)
            return None
        segments = self.transcriber.transcribe(audio, offset=start)
        found = {}
        for leaf in window:
            key = self.speech_key(leaf)
            part = segments_in(segments, leaf.start, leaf.end)
            self._put(ctx, key, [s.to_json() for s in part])
            found[key] = [Segment.from_json(s.to_json()) for s in part]
        return found

    def _window_lock(self, fingerprint: str, window: Sequence[Node]) -> threading.Lock:
        name = f"{fingerprint}:{window[0].id}"
        with self._window_guard:
            return self._window_locks.setdefault(name, threading.Lock())

    def _get(self, ctx: CaptionContext, key: str) -> list[Any] | None:
        if ctx.artifacts is not None:
            value = ctx.artifacts.get(key)
            return value if isinstance(value, list) else None
        with self._memory_lock:
            return self._memory.get(f"{ctx.video.fingerprint}:{key}")

    def _put(self, ctx: CaptionContext, key: str, value: list[Any]) -> None:
        if ctx.artifacts is not None:
            ctx.artifacts.put(key, value)
            return
        with self._memory_lock:
            self._memory[f"{ctx.video.fingerprint}:{key}"] = value
            while len(self._memory) > 20000:
                self._memory.popitem(last=False)


# tree helpers ----------------------------------------------------------------------------


def leaves_of(tree: Tree, node: Node) -> list[Node]:
    """The leaves under a node, in time order (a leaf is its own)."""
    if node.depth == len(LEVELS):
        return [node]
    out: list[Node] = []
    for child in tree.children(node.id):
        out.extend(leaves_of(tree, child))
    return out


def speech_window(tree: Tree, leaf: Node) -> list[Node]:
    """The run of consecutive leaves transcribed together with ``leaf``.

    Windows are fixed groups of ``floor(28 s / leaf length)`` leaves (at least
    one), so every thread and run picks the same window for a leaf.
    """
    depth = len(LEVELS)
    n = tree.count(depth)
    size = max(1, int(SPEECH_WINDOW_SECONDS // max(leaf.duration, 1e-6)))
    first = (tree.flat_index(leaf.id) // size) * size
    return [tree.node(tree.from_flat(depth, k)) for k in range(first, min(n, first + size))]


def child_texts(
    child: Node, look: ClipDescriptor, speech: Sequence[Segment] | None, cues: Sequence[Cue]
) -> list[str]:
    """What was said, subtitled or read on screen within one child of a node.

    The node's transcript is cut at leaf edges, so each segment lies in one
    child (its midpoint does); on-screen text counts for the child its frame
    falls in, and a subtitle for every child it overlaps.
    """
    texts = [s.text for s in speech or () if child.start <= (s.start + s.end) / 2 < child.end]
    texts += [c.text for c in cues_between(cues, child.start, child.end)]
    texts += [
        line for f in look.frames if child.start <= f.time < child.end for line in f.text or ()
    ]
    return texts


# rendering -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Group:
    """Consecutive shots described together."""

    start: float
    end: float
    shots: tuple[Shot, ...]


def describe_shots(shots: Sequence[Shot]) -> str:
    """One clause list for shots taken together: light, colours, motion, people, faces."""
    frames = [f for s in shots for f in s.frames]
    parts = [brightness_word(median(f.brightness for f in frames))]
    main, accents = Shot(0, 0, tuple(frames), None).colours()
    if main:
        colour = "mostly " + _and_list(main)
        if accents:
            colour += ", with " + _and_list(accents)
        parts.append(colour)
    elif accents:
        parts.append("colours " + _and_list(accents))
    motions = [s.motion for s in shots if s.motion is not None]
    if motions:
        parts.append(motion_word(median(motions)))
    merged = Shot(0, 0, tuple(frames), None)
    people, faces = merged.people(), merged.faces()
    if people:
        parts.append(_count_phrase(people, "person", "people") + " detected")
    if faces:
        parts.append(_count_phrase(faces, "face", "faces") + " detected")
    return "; ".join(parts)


def _count_phrase(counts: tuple[int, int], one: str, many: str) -> str:
    typical, most = counts
    if most <= 1:
        return f"1 {one}"
    if typical == most:
        return f"{most} {many}"
    return f"{max(1, typical)}-{most} {many}"


def _and_list(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def group_shots(shots: Sequence[Shot], max_lines: int) -> list[_Group]:
    """Merge consecutive shots that read alike, then evenly, until at most ``max_lines``."""
    groups: list[_Group] = []
    for shot in shots:
        if groups and describe_shots(groups[-1].shots) == describe_shots([shot]):
            last = groups[-1]
            groups[-1] = _Group(last.start, shot.end, (*last.shots, shot))
        else:
            groups.append(_Group(shot.start, shot.end, (shot,)))
    if len(groups) <= max_lines:
        return groups
    merged: list[_Group] = []
    per = math.ceil(len(groups) / max_lines)
    for i in range(0, len(groups), per):
        chunk = groups[i : i + per]
        merged.append(
            _Group(chunk[0].start, chunk[-1].end, tuple(s for g in chunk for s in g.shots))
        )
    return merged


def visual_lines(look: ClipDescriptor, max_lines: int) -> list[str]:
    lines = []
    for group in group_shots(look.shots, max_lines):
        count = len(group.shots)
        head = fmt_span(group.start, group.end)
        if count > 1:
            head += f" ({count} shots)"
        lines.append(f"{head}: {describe_shots(group.shots)}.")
    return lines


def cut_line(look: ClipDescriptor) -> str | None:
    cuts = look.cuts
    if not cuts:
        return None
    if len(cuts) <= 6:
        return "Shot changes at " + ", ".join(fmt_time(t) for t in cuts) + "."
    return f"{len(cuts)} shot changes between {fmt_time(cuts[0])} and {fmt_time(cuts[-1])}."


def text_line(look: ClipDescriptor, budget: int) -> str | None:
    """On-screen text in order of appearance, first time seen for each line."""
    seen: dict[str, float] = {}
    for frame in look.frames:
        for line in frame.text or ():
            seen.setdefault(line, frame.time)
    if not seen:
        return None
    items = [f'{fmt_time(t)} "{line}"' for line, t in seen.items()]
    return _fit("On-screen text: ", items, budget, "more")


def keywords(texts: Iterable[str], limit: int) -> list[str]:
    """Most frequent content words, ties in order of first use: a searchable digest."""
    counts, first = word_counts(texts)
    ranked = sorted(counts, key=lambda w: (-counts[w], first[w]))
    return ranked[:limit]


def _fit(head: str, items: Sequence[str], budget: int, what: str) -> str | None:
    """``head`` + as many items as fit in ``budget`` words, spread evenly, with a count of the rest.

    Spreading (rather than keeping the first lines) keeps the whole span of a
    coarse node searchable; the count tells the reader that lines were left out.
    """
    if budget <= word_count(head) or not items:
        return None
    sizes = [word_count(i) for i in items]
    room = budget - word_count(head)
    if sum(sizes) <= room:
        return head + " ".join(items)

    def spread(keep: int) -> list[int]:
        step = (len(items) - 1) / max(1, keep - 1)
        return sorted({round(j * step) for j in range(keep)})

    tail_words = 1 + word_count(what)  # "(+N more lines)"

    def fits(keep: int) -> bool:
        return sum(sizes[i] for i in spread(keep)) + tail_words <= room

    lo, hi = 0, len(items) - 1
    while lo < hi:  # largest keep that fits
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        if budget - tail_words <= word_count(head):
            return None
        return _truncate(head + items[0], budget - tail_words) + f" (+{len(items) - 1} {what})"
    picked = spread(lo)
    tail = f"(+{len(items) - len(picked)} {what})"
    return head + " ".join(items[i] for i in picked) + " " + tail


def _truncate(text: str, budget: int) -> str:
    words = text.split()
    if len(words) <= budget:
        return text
    return " ".join(words[: max(1, budget)]) + "…"


def _covered(speech: Sequence[Segment], cues: Sequence[Cue]) -> bool:
    """True when the subtitles already hold most words of the speech (same track twice)."""
    spoken = keywords((s.text for s in speech), 1000)
    if not spoken:
        return True
    written = set(keywords((c.text for c in cues), 100000))
    return sum(w in written for w in spoken) >= 0.6 * len(spoken)


JOIN_GAP_SECONDS = 0.6
"""Speech pieces closer than this are one utterance (leaf edges split sentences)."""
JOIN_MAX_SECONDS = 12.0


def join_segments(segments: Sequence[Segment]) -> list[Segment]:
    """Consecutive pieces of one utterance as one segment, so quotes read as sentences."""
    out: list[Segment] = []
    for seg in segments:
        if out:
            last = out[-1]
            close = seg.start - last.end <= JOIN_GAP_SECONDS
            if close and seg.end - last.start <= JOIN_MAX_SECONDS:
                out[-1] = Segment(last.start, seg.end, f"{last.text} {seg.text}")
                continue
        out.append(seg)
    return out


def speech_lines(
    speech: Sequence[Segment] | None, cues: Sequence[Cue], budget: int, coarse: bool
) -> list[str]:
    """Subtitle and speech lines within ``budget`` words (keywords first when it is tight)."""
    lines: list[str] = []
    sub_items = [f'{fmt_span(c.start, c.end)} "{c.text}"' for c in cues]
    speech_items = [f'{fmt_span(s.start, s.end)} "{s.text}"' for s in join_segments(speech or ())]
    show_speech = bool(speech_items) and not (cues and _covered(speech or (), cues))
    need = sum(word_count(i) for i in sub_items) + (
        sum(word_count(i) for i in speech_items) if show_speech else 0
    )
    if coarse and need + 4 > budget and (sub_items or speech_items):
        words = keywords([*(c.text for c in cues), *(s.text for s in speech or ())], 20)
        if words:
            line = "Speech keywords: " + ", ".join(words) + "."
            lines.append(line)
            budget -= word_count(line)
    if sub_items and show_speech:
        sub_budget = max(budget * 3 // 5, budget - sum(word_count(i) for i in speech_items) - 2)
    else:
        sub_budget = budget
    if sub_items:
        line = _fit("Subtitles: ", sub_items, sub_budget, "more lines")
        if line:
            lines.append(line)
            budget -= word_count(line)
    if show_speech:
        line = _fit("Speech: ", speech_items, budget, "more")
        if line:
            lines.append(line)
    elif speech is not None and not speech and not cues:
        lines.append("No speech detected.")
    return lines


def render_caption(
    node: Node,
    look: ClipDescriptor,
    speech: Sequence[Segment] | None,
    cues: Sequence[Cue],
    max_words: int,
    max_lines: int,
    parts: Sequence[Part] = (),
) -> str:
    """The caption text: visual lines, cuts, per-child words, speech and subtitles, screen text.

    Visual lines come first and are short; the per-child lines of a navigable
    caption get at most a third of the limit, what is said the words left,
    and on-screen text at most a fifth of the limit.
    """
    lines = visual_lines(look, max_lines)
    cut = cut_line(look)
    if cut:
        lines.append(cut)
    used = sum(word_count(line) for line in lines)
    lines.extend(part_lines(parts, min(max_words // PARTS_SHARE, max_words - used)))
    used = sum(word_count(line) for line in lines)
    screen = text_line(look, max(0, min(max_words // 5, max_words - used)))
    rest = max_words - used - (word_count(screen) if screen else 0)
    lines.extend(speech_lines(speech, cues, rest, coarse=node.depth < len(LEVELS)))
    if screen:
        lines.append(screen)
    return limit_words(lines, max_words)


def limit_words(lines: Sequence[str], max_words: int) -> str:
    """Lines joined, cut after ``max_words`` words (a last resort: budgets above avoid it)."""
    out: list[str] = []
    left = max_words
    for line in lines:
        n = word_count(line)
        if n <= left:
            out.append(line)
            left -= n
            continue
        if left > 0:
            out.append(_truncate(line, left))
        break
    return "\n".join(out)
