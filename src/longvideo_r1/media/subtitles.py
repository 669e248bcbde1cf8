"""Subtitle cues: load SRT / WebVTT files and weave their lines between sampled frames.

A caption call sees a few dozen frames of a node that may last minutes, so
most subtitle lines fall between two sampled frames. :func:`weave` gives every
line that overlaps the node to exactly one frame slot, so sparse levels keep
every line (attaching only lines that cover a sampled instant would drop most
of the dialogue at the high level).

Cue text is cleaned to one plain line: markup (``<i>``, ``<font>``, WebVTT
classes and inline timestamps, ``{\\an8}`` positioning) is removed, a WebVTT
voice span becomes a ``Speaker: `` prefix and HTML entities are unescaped.
"""

from __future__ import annotations

import bisect
import html
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pysrt
import webvtt
from webvtt.errors import MalformedCaptionError, MalformedFileError

from longvideo_r1.errors import VideoError

log = logging.getLogger(__name__)

SUBTITLE_SUFFIXES = (".srt", ".vtt")
_LANG_RE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")
_VOICE_RE = re.compile(r"<v(?:\.[^\s>]+)*\s+([^>]+)>", re.IGNORECASE)
_RUBY_TEXT_RE = re.compile(r"<rt>.*?</rt>", re.IGNORECASE | re.DOTALL)
_TAG_RE = re.compile(r"</?[A-Za-z][^<>]*>|<\d{1,2}:\d{2}(?::\d{2})?[.,]\d{1,3}>")
_ASS_OVERRIDE_RE = re.compile(r"\{\\[^{}]*\}")
_SPACE_RE = re.compile(r"\s+")


@dataclass(frozen=True)
class Cue:
    """One subtitle line: ``[start, end)`` in seconds of the video and its plain text."""

    start: float
    end: float
    text: str


def clean_cue_text(raw: str) -> str:
    """Plain one-line text of a cue, so the VLM sees words and not markup."""
    text = _VOICE_RE.sub(lambda m: f"{m.group(1).strip()}: ", raw)
    text = _RUBY_TEXT_RE.sub("", text)
    text = _TAG_RE.sub("", text)
    text = _ASS_OVERRIDE_RE.sub("", text)
    text = html.unescape(text).replace("\u00a0", " ")
    return _SPACE_RE.sub(" ", text).strip()


def load_subtitles(path: str | Path) -> list[Cue]:
    """Cues of an ``.srt`` or ``.vtt`` file in time order, text cleaned.

    Raises :class:`VideoError` (one line naming the file) when the file is
    missing, has another extension, or holds text but no readable cue. A file
    with a few broken blocks keeps its good cues and logs a warning, since one
    bad block in a two-hour film should not cost the whole track.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUBTITLE_SUFFIXES:
        raise VideoError(
            f"unsupported subtitle format {path.suffix or '(no extension)'!r} for {path} "
            "(expected .srt or .vtt)"
        )
    if not path.exists():
        raise VideoError(f"subtitle file not found: {path}")
    if not path.is_file():
        raise VideoError(f"subtitle path is not a file: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VideoError(f"cannot read subtitle file {path}: {exc.strerror or exc}") from None
    text = _decode(data)
    if not text.strip():
        return []
    raw = _parse_srt(text, path) if suffix == ".srt" else _parse_vtt(text, path)
    cues = [_make_cue(start, end, body) for start, end, body in raw]
    cues = sorted((c for c in cues if c.text), key=lambda c: (c.start, c.end))
    if not raw and _has_content(text, suffix):
        kind = "SRT" if suffix == ".srt" else "WebVTT"
        raise VideoError(f"cannot parse subtitle file {path}: no valid {kind} cue found")
    return cues


def _decode(data: bytes) -> str:
    """Text of a subtitle file; old SRTs are often Windows-1252, not UTF-8."""
    for bom, codec in (
        (b"\xef\xbb\xbf", "utf-8-sig"),
        (b"\xff\xfe", "utf-16"),
        (b"\xfe\xff", "utf-16"),
    ):
        if data.startswith(bom):
            return data.decode(codec, errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _has_content(text: str, suffix: str) -> bool:
    """Whether a file with no cues had something in it (so it was not meant empty)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if suffix == ".vtt" and lines and lines[0].startswith("WEBVTT"):
        lines = [line for line in lines[1:] if not line.startswith("NOTE")]
    return bool(lines)


def _parse_srt(text: str, path: Path) -> list[tuple[float, float, str]]:
    try:
        items = pysrt.from_string(text, error_handling=pysrt.SubRipFile.ERROR_RAISE)
    except pysrt.Error:
        items = pysrt.from_string(text, error_handling=pysrt.SubRipFile.ERROR_PASS)
        if items:
            log.warning("%s: skipped malformed SRT blocks, kept %d cues", path, len(items))
    return [(i.start.ordinal / 1000, i.end.ordinal / 1000, i.text) for i in items]


def _parse_vtt(text: str, path: Path) -> list[tuple[float, float, str]]:
    try:
        track = webvtt.WebVTT.from_string(text, strict=True)
    except MalformedFileError:
        raise VideoError(
            f"cannot parse subtitle file {path}: not WebVTT (the first line must be WEBVTT)"
        ) from None
    except MalformedCaptionError:
        try:
            track = webvtt.WebVTT.from_string(text, strict=False)
        except (MalformedFileError, MalformedCaptionError) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else "malformed cue"
            raise VideoError(f"cannot parse subtitle file {path}: {detail}") from None
        if track.captions:
            log.warning("%s: skipped malformed WebVTT cues, kept %d", path, len(track.captions))
    return [
        (c.start_time.in_milliseconds() / 1000, c.end_time.in_milliseconds() / 1000, c.raw_text)
        for c in track.captions
    ]


def _make_cue(start: float, end: float, raw: str) -> Cue:
    return Cue(start=start, end=max(start, end), text=clean_cue_text(raw))


def find_subtitles(video_path: str | Path) -> Path | None:
    """The subtitle file beside a video: ``stem.srt``, ``stem.vtt``, else ``stem.<lang>.srt|vtt``.

    An exact stem match wins over language-tagged files; among those the
    choice is alphabetical so repeated runs pick the same track.
    """
    video_path = Path(video_path)
    folder = video_path.parent
    try:
        entries = sorted(p for p in folder.iterdir() if p.is_file())
    except OSError:
        return None
    stem = video_path.stem
    exact = {p.suffix.lower(): p for p in entries if p.stem == stem}
    for suffix in SUBTITLE_SUFFIXES:
        if suffix in exact:
            return exact[suffix]
    for suffix in SUBTITLE_SUFFIXES:
        for p in entries:
            if p.suffix.lower() != suffix or not p.stem.startswith(stem + "."):
                continue
            if _LANG_RE.match(p.stem[len(stem) + 1 :]):
                return p
    return None


def overlaps(cue: Cue, start: float, end: float) -> bool:
    """Whether a cue shares time with ``[start, end)``; an instant cue counts inside it."""
    return cue.start < end and (cue.end > start or cue.start >= start)


def cues_between(cues: Iterable[Cue], start: float, end: float) -> list[Cue]:
    """Cues overlapping ``[start, end)``, in time order."""
    return sorted((c for c in cues if overlaps(c, start, end)), key=lambda c: c.start)


def weave(
    frame_times: Sequence[float], cues: Iterable[Cue], start: float, end: float
) -> list[list[Cue]]:
    """One list of cues per frame slot, so the prompt can put each line after its frame.

    Every cue overlapping ``[start, end)`` lands in exactly one slot: that of
    the last frame at or before the cue's start, or the first slot when the
    cue began before the first frame. Slots read in order give the cues in
    time order.
    """
    times = list(frame_times)
    if not times:
        raise ValueError("weave needs at least one frame time")
    if any(b < a for a, b in zip(times, times[1:], strict=False)):
        raise ValueError("frame times must be in increasing order")
    slots: list[list[Cue]] = [[] for _ in times]
    for cue in cues_between(cues, start, end):
        slot = max(0, bisect.bisect_right(times, cue.start) - 1)
        slots[slot].append(cue)
    return slots
