"""The one question schema every benchmark loader returns, and what a load reports.

Evaluation, baselines and training read questions only through these types,
whatever benchmark they came from: options as plain texts, the answer as a
letter. Kept apart from the loaders so that their consumers do not depend on
how each release is parsed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longvideo_r1.agent.protocol import option_lines
from longvideo_r1.errors import ConfigError

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

CLUE_TOLERANCE = 1.0
"""Seconds a clue interval may run past the stated duration (rounding in the releases)."""

PathLike = str | os.PathLike[str]


class QuestionFormatError(ConfigError, ValueError):
    """An annotation file, or one item in it, does not have the benchmark's format.

    ``file``, ``item`` and ``field`` say where, for reports; the message says
    all three on one line.
    """

    def __init__(
        self,
        message: str,
        *,
        file: Path | None = None,
        item: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.file, self.item, self.field = file, item, field


# ---------------------------------------------------------------------------------------
# the schema


@dataclass(frozen=True)
class Question:
    """One multiple-choice question about one video, whatever benchmark it came from.

    ``choices`` are the option texts without letters (``choice_lines()`` adds
    them the one way the navigator reads them); ``answer`` is a letter, or
    None where the release has no public answer. ``clue_intervals`` are
    ``(start, end)`` seconds where the answer is found, empty when the
    benchmark has none. ``extra`` keeps the release's other fields, plus
    ``video_file``: the video's path relative to the benchmark's video folder.
    """

    id: str
    video_id: str
    question: str
    choices: list[str]
    answer: str | None
    category: str | None = None
    clue_intervals: list[tuple[float, float]] = field(default_factory=list)
    subtitles: Path | None = None
    duration: float | None = None
    benchmark: str = "custom"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Normalise containers and refuse states that evaluation would misread."""
        set_ = object.__setattr__
        set_(self, "choices", [str(c) for c in self.choices])
        set_(self, "clue_intervals", [(float(s), float(e)) for s, e in self.clue_intervals])
        set_(self, "extra", dict(self.extra))
        if self.subtitles is not None:
            set_(self, "subtitles", Path(self.subtitles))
        for name in ("id", "video_id", "question"):
            if not str(getattr(self, name)).strip():
                raise ValueError(f"question {self.id!r}: {name} is empty")
        if len(self.choices) > len(LETTERS):
            raise ValueError(f"question {self.id!r}: {len(self.choices)} choices, at most 26")
        if self.answer is not None and self.answer not in tuple(LETTERS[: len(self.choices)]):
            raise ValueError(f"question {self.id!r}: answer {self.answer!r} names no choice")
        for start, end in self.clue_intervals:
            if not (0 <= start < end and math.isfinite(end)):
                raise ValueError(f"question {self.id!r}: bad clue interval [{start}, {end}]")
        if self.duration is not None and not (self.duration > 0 and math.isfinite(self.duration)):
            raise ValueError(f"question {self.id!r}: bad duration {self.duration!r}")

    def choice_lines(self) -> list[str]:
        """``A. text`` lines, exactly as the navigator is shown them."""
        return option_lines(self.choices)

    @property
    def answer_index(self) -> int | None:
        """0-based index of the right choice, or None when the answer is unknown."""
        return None if self.answer is None else LETTERS.index(self.answer)

    @property
    def answer_text(self) -> str | None:
        """The right choice's text, for reports that show what was expected."""
        index = self.answer_index
        return None if index is None else self.choices[index]

    def video_path(self, videos_dir: PathLike) -> Path:
        """Where the video is under the benchmark's video folder (absolute paths win)."""
        name = str(self.extra.get("video_file") or f"{self.video_id}.mp4")
        return Path(videos_dir).expanduser() / name

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy, for result files that must stand on their own."""
        return {
            "id": self.id,
            "video_id": self.video_id,
            "question": self.question,
            "choices": list(self.choices),
            "answer": self.answer,
            "category": self.category,
            "clue_intervals": [[s, e] for s, e in self.clue_intervals],
            "subtitles": None if self.subtitles is None else str(self.subtitles),
            "duration": self.duration,
            "benchmark": self.benchmark,
            "extra": dict(self.extra),
        }


@dataclass(frozen=True)
class Malformed:
    """An item a loader left out under ``skip_malformed``, and why."""

    file: Path
    item: str
    field: str
    reason: str

    @property
    def message(self) -> str:
        """The same line :class:`QuestionFormatError` would have raised."""
        return f"{self.file}: {self.item}: field {self.field!r}: {self.reason}"

    def __str__(self) -> str:
        return self.message


class QuestionList(list[Question]):
    """The questions one file yielded, with what was left out and why.

    A plain list of :class:`Question` for everything that iterates it;
    ``malformed`` lists the items skipped under ``skip_malformed=True`` and
    ``notes`` what was skipped on purpose (for instance MLVU's generation tasks).
    """

    def __init__(
        self,
        questions: Sequence[Question] = (),
        *,
        source: Path,
        benchmark: str,
        malformed: Sequence[Malformed] = (),
        notes: Sequence[str] = (),
    ) -> None:
        super().__init__(questions)
        self.source = source
        self.benchmark = benchmark
        self.malformed = list(malformed)
        self.notes = list(notes)

    def report(self) -> str:
        """A few lines for logs and result files: counts, then one line per skipped item."""
        head = f"{self.benchmark}: {len(self)} questions from {self.source}"
        if self.malformed:
            head += f", {len(self.malformed)} malformed items skipped"
        return "\n".join([head, *self.notes, *(m.message for m in self.malformed)])
