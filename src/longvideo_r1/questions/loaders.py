"""Benchmark questions: one schema, loaders for the official annotation files, the test bench.

Every long-video benchmark ships its questions in its own shape (letters
embedded in the question text, answers as option text, as an index, in a
second file ...). Evaluation should not care: each loader here reads one
benchmark's released file as it is published and returns :class:`Question`
objects with the options as plain texts and the answer as a letter.

Loaders are strict about what a question needs (video, question, options,
a valid answer) and liberal about the rest (extra fields land in
``Question.extra``). A malformed item raises :class:`QuestionFormatError`,
one line naming the file, the item and the field; with
``skip_malformed=True`` it is left out and recorded in
:attr:`QuestionList.malformed` instead, so that a handful of bad rows in a
release does not block a run but still shows up in its report.

Formats and their traps are described in ``docs/benchmarks-data.md``.
Where a detail of a format could not be confirmed, the loader's docstring
says what it assumes.

The module also builds the project's own small benchmark over the test
video (:func:`write_testbench`), shipped as ``assets/testbench.json`` in the
CG-Bench format.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
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


# ---------------------------------------------------------------------------------------
# field readers: each failure names the field it is about


class _Bad(Exception):
    """A field of one item is missing or wrong; turned into a one-line report by the caller."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field, self.reason = field, reason


def _show(value: Any, limit: int = 60) -> str:
    """A value quoted on one line, cut short, for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _mapping(raw: Any) -> Mapping[str, Any]:
    """The item as an object; a JSON-lines row that did not parse is reported here."""
    if isinstance(raw, _Bad):
        raise raw
    if not isinstance(raw, Mapping):
        raise _Bad("(item)", f"expected an object, got {type(raw).__name__}")
    return raw


def _value(raw: Mapping[str, Any], *names: str) -> tuple[str, Any]:
    """The first of ``names`` present (the release's spellings), as (name, value)."""
    for name in names:
        if name in raw:
            if raw[name] is None:
                raise _Bad(name, "is null")
            return name, raw[name]
    raise _Bad(names[0], "missing")


def _text(raw: Mapping[str, Any], *names: str) -> str:
    """A required, non-empty string (numbers are accepted as ids are sometimes ints)."""
    name, value = _value(raw, *names)
    return _as_text(value, name)


def _as_text(value: Any, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Bad(name, f"expected text, got {type(value).__name__} {_show(value)}")
    text = str(value).strip()
    if not text:
        raise _Bad(name, "is empty")
    return text


def _opt_text(raw: Mapping[str, Any], *names: str) -> str | None:
    """An optional string: absent, null or empty mean None."""
    for name in names:
        if raw.get(name) is not None:
            value = raw[name]
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise _Bad(name, f"expected text, got {type(value).__name__} {_show(value)}")
            text = str(value).strip()
            if text:
                return text
    return None


def _number(value: Any, name: str) -> float:
    """A finite number; numeric strings pass because some releases quote them."""
    if isinstance(value, bool):
        raise _Bad(name, f"expected a number, got {_show(value)}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _Bad(name, f"expected a number, got {_show(value)}") from None
    if not math.isfinite(number):
        raise _Bad(name, f"expected a finite number, got {_show(value)}")
    return number


def _opt_duration(raw: Mapping[str, Any], name: str, scale: float = 1.0) -> float | None:
    """A positive duration in seconds, or None when the release does not give one."""
    if raw.get(name) is None:
        return None
    seconds = _number(raw[name], name) * scale
    if seconds <= 0:
        raise _Bad(name, f"must be positive, got {_show(raw[name])}")
    return seconds


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _Bad(name, f"expected an integer, got {_show(value)}")
    try:
        return int(value)
    except ValueError:
        raise _Bad(name, f"expected an integer, got {_show(value)}") from None


def _choices(raw: Mapping[str, Any], *names: str) -> list[str]:
    """The options as non-empty texts; two at least, since one option is no question."""
    name, value = _value(raw, *names)
    if not isinstance(value, list):
        raise _Bad(name, f"expected a list of options, got {type(value).__name__}")
    if not value:
        raise _Bad(name, "is empty")
    if len(value) < 2:
        raise _Bad(name, "has a single option")
    if len(value) > len(LETTERS):
        raise _Bad(name, f"has {len(value)} options, more than 26 letters")
    texts = []
    for k, option in enumerate(value):
        if isinstance(option, bool) or not isinstance(option, (str, int, float)):
            raise _Bad(f"{name}[{k}]", f"expected text, got {type(option).__name__}")
        text = str(option).strip()
        if not text:
            raise _Bad(f"{name}[{k}]", "is empty")
        texts.append(text)
    return texts


def _span(n: int) -> str:
    return f"the {n} choices (A-{LETTERS[n - 1]})"


_LETTER_RE = re.compile(r"^\(?\s*([A-Za-z])\s*\)?\s*[.:]?$")


def _letter(raw: Mapping[str, Any], name: str, n: int) -> str:
    """An answer given as a letter (``B``, ``(B)``, ``B.``) that names one of ``n`` choices."""
    _, value = _value(raw, name)
    return _as_letter(value, name, n)


def _as_letter(value: Any, name: str, n: int) -> str:
    match = _LETTER_RE.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise _Bad(name, f"expected an option letter, got {_show(value)}")
    letter = match.group(1).upper()
    if LETTERS.index(letter) >= n:
        raise _Bad(name, f"{letter!r} is not one of {_span(n)}")
    return letter


def _plain(text: str) -> str:
    """Case- and whitespace-insensitive form, for matching answer texts to options."""
    return " ".join(text.split()).casefold()


def _letter_of_text(value: Any, name: str, choices: Sequence[str]) -> str:
    """The letter of the option whose text the answer repeats; exact match preferred."""
    text = _as_text(value, name)
    for key in (lambda s: s.strip(), _plain):
        hits = [k for k, choice in enumerate(choices) if key(choice) == key(text)]
        if len(hits) == 1:
            return LETTERS[hits[0]]
        if len(hits) > 1:
            raise _Bad(name, f"{_show(text)} matches several choices ({_letters(hits)})")
    raise _Bad(name, f"{_show(text)} is not among {_span(len(choices))}")


def _letters(indices: Sequence[int]) -> str:
    return ", ".join(LETTERS[k] for k in indices)


def _index_letter(value: Any, name: str, n: int) -> str:
    """An answer given as a 0-based option index."""
    index = _int(value, name)
    if not 0 <= index < n:
        raise _Bad(name, f"index {index} names none of the {n} choices (0-{n - 1})")
    return LETTERS[index]


_OWN_LETTER_RE = re.compile(r"^\s*\(?([A-Z])[.):]\s*")


def _strip_letters(options: list[str], name: str, *, required: bool) -> list[str]:
    """Options without their own ``A.`` prefixes.

    ``required``: every option must carry its letter, in order (Video-MME);
    otherwise prefixes are removed only when all options carry them in order,
    so that an option that merely starts like "A: ..." keeps its text.
    """
    found = [_OWN_LETTER_RE.match(o) for o in options]
    in_order = all(m and m.group(1) == LETTERS[k] for k, m in enumerate(found))
    if not in_order:
        if required:
            k = next(k for k, m in enumerate(found) if not (m and m.group(1) == LETTERS[k]))
            raise _Bad(f"{name}[{k}]", f"expected '{LETTERS[k]}. ...', got {_show(options[k])}")
        return options
    texts = [o[m.end() :].strip() for o, m in zip(options, found, strict=True) if m]
    for k, text in enumerate(texts):
        if not text:
            raise _Bad(f"{name}[{k}]", "has a letter but no text")
    return texts


def _clues(value: Any, name: str, duration: float | None) -> list[tuple[float, float]]:
    """``[[start, end], ...]`` seconds: ordered, non-empty, within the video when known."""
    if not isinstance(value, list):
        raise _Bad(name, f"expected a list of [start, end] pairs, got {type(value).__name__}")
    clues = []
    for k, pair in enumerate(value):
        where = f"{name}[{k}]"
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise _Bad(where, f"expected [start, end], got {_show(pair)}")
        start, end = _number(pair[0], where), _number(pair[1], where)
        if start < 0 or end <= start:
            raise _Bad(where, f"[{start:g}, {end:g}] is not an interval with 0 <= start < end")
        if duration is not None and end > duration + CLUE_TOLERANCE:
            raise _Bad(where, f"ends at {end:g} s, after the video's {duration:g} s")
        clues.append((start, end))
    return clues


def _extra(raw: Mapping[str, Any], used: Sequence[str], **more: Any) -> dict[str, Any]:
    """The release's fields a Question has no slot for, kept for reports and analysis."""
    kept = {k: v for k, v in raw.items() if k not in used}
    kept.update({k: v for k, v in more.items() if v is not None})
    return kept


# ---------------------------------------------------------------------------------------
# files


def _existing(path: PathLike, *, directory: bool = False) -> Path:
    file = Path(path).expanduser()
    if not file.exists():
        raise QuestionFormatError(f"{file}: no such file", file=file)
    if file.is_dir() and not directory:
        raise QuestionFormatError(f"{file}: is a directory, expected an annotation file", file=file)
    return file


def _read_json(file: Path) -> Any:
    """Parsed JSON; any failure is one line naming the file."""
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise QuestionFormatError(f"{file}: not UTF-8 text", file=file) from None
    except json.JSONDecodeError as exc:
        raise QuestionFormatError(
            f"{file}: not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})", file=file
        ) from None
    except OSError as exc:
        raise QuestionFormatError(
            f"{file}: cannot read: {exc.strerror or exc}", file=file
        ) from None


def _json_list(file: Path, what: str) -> list[Any]:
    data = _read_json(file)
    if not isinstance(data, list):
        raise QuestionFormatError(
            f"{file}: expected {what} (a JSON list), got a JSON {type(data).__name__}", file=file
        )
    return data


def _jsonl(file: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value or the _Bad for that line) for each non-blank line."""
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise QuestionFormatError(f"{file}: not UTF-8 text", file=file) from None
    except OSError as exc:
        raise QuestionFormatError(
            f"{file}: cannot read: {exc.strerror or exc}", file=file
        ) from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, _Bad("(line)", f"not valid JSON (column {exc.colno}: {exc.msg})")


def _parquet_rows(file: Path) -> list[dict[str, Any]]:
    """Rows of a Parquet file as plain Python values; pyarrow (or pandas) is imported only here."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        pq = None
    if pq is not None:
        try:
            return [dict(r) for r in pq.read_table(file).to_pylist()]
        except Exception as exc:  # pyarrow raises many types for a damaged file
            raise QuestionFormatError(
                f"{file}: not a readable Parquet file: {exc}", file=file
            ) from None
    try:
        import pandas as pd

        frame = pd.read_parquet(file)
    except ImportError:
        raise QuestionFormatError(
            f"{file}: reading Parquet needs pyarrow (pip install pyarrow), "
            "or convert the file to JSON rows",
            file=file,
        ) from None
    except Exception as exc:
        raise QuestionFormatError(
            f"{file}: not a readable Parquet file: {exc}", file=file
        ) from None
    return [{k: _plain_value(v) for k, v in row.items()} for row in frame.to_dict("records")]


def _plain_value(value: Any) -> Any:
    """numpy arrays and scalars that pandas hands back, as lists and Python numbers."""
    return value.tolist() if hasattr(value, "tolist") else value


def _rows(file: Path, what: str) -> list[Any]:
    """Table rows from Parquet, JSON lines or a JSON list, chosen by the file's suffix."""
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        return _parquet_rows(file)
    if suffix == ".jsonl":
        return [value for _, value in _jsonl(file)]
    return _json_list(file, what)


def _subtitle_dir(option: bool | PathLike | None, default: Path, file: Path) -> Path | None:
    """The folder subtitles are looked up in: None (off), the release's layout, or the caller's."""
    if option is None or option is False:
        return None
    folder = default if option is True else Path(option).expanduser()
    if not folder.is_dir():
        raise QuestionFormatError(
            f"{file}: subtitles asked for, but the subtitle folder {folder} does not exist "
            "(pass subtitles=FOLDER)",
            file=file,
        )
    return folder


def _subtitle_file(folder: Path | None, name: str | None) -> Path | None:
    """The subtitle file when it exists; some videos of every benchmark have none."""
    if folder is None or not name:
        return None
    path = folder / name
    return path if path.is_file() else None


class _Collector:
    """Gathers one file's questions; a malformed item raises or is recorded, as asked."""

    def __init__(self, file: Path, benchmark: str, skip_malformed: bool) -> None:
        self.file, self.benchmark, self.skip = file, benchmark, skip_malformed
        self.questions: list[Question] = []
        self.malformed: list[Malformed] = []
        self.notes: list[str] = []
        self._ids: set[str] = set()

    @contextlib.contextmanager
    def item(self, label: str, file: Path | None = None) -> Iterator[None]:
        """Run the block that builds one item; a :class:`_Bad` inside it is reported here."""
        try:
            yield
        except _Bad as bad:
            where = Malformed(file or self.file, label, bad.field, bad.reason)
            if not self.skip:
                raise QuestionFormatError(
                    where.message, file=where.file, item=label, field=bad.field
                ) from None
            self.malformed.append(where)

    def keep(self, question: Question, id_field: str) -> None:
        """Add a question; a repeated id would let results of two questions overwrite each other."""
        if question.id in self._ids:
            raise _Bad(id_field, f"duplicate id {question.id!r}")
        self._ids.add(question.id)
        self.questions.append(question)

    def result(self) -> QuestionList:
        return QuestionList(
            self.questions,
            source=self.file,
            benchmark=self.benchmark,
            malformed=self.malformed,
            notes=self.notes,
        )


def _label(kind: str, index: int, raw: Any, *id_fields: str) -> str:
    """``item 3 (qid 17)``: the position always, the release's id when it has one."""
    label = f"{kind} {index}"
    if isinstance(raw, Mapping):
        for name in id_fields:
            value = raw.get(name)
            if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
                return f"{label} ({name} {value})"
    return label


# ---------------------------------------------------------------------------------------
# CG-Bench


def load_cgbench(
    path: PathLike, *, subtitles: bool | PathLike = False, skip_malformed: bool = False
) -> QuestionList:
    """CG-Bench's ``cgbench.json`` / ``cgbench_mini.json``: a JSON list of questions.

    Fields used: ``video_uid``, ``question``, ``choices`` (texts), ``right_answer``
    (letter), ``clue_intervals`` (``[[start, end], ...]`` seconds), ``qid``,
    ``duration`` (optional), category from ``sub_category`` (else
    ``question_type``, ``domain``). Videos are ``<video_uid>.mp4``;
    ``subtitles=True`` looks for ``cg_subtitles/<video_uid>.srt`` beside the
    file (the layout of the CG-Bench tools; an assumption), a path names the folder.
    """
    file = _existing(path)
    rows = _json_list(file, "a list of CG-Bench questions")
    folder = _subtitle_dir(subtitles, file.parent / "cg_subtitles", file)
    out = _Collector(file, "cgbench", skip_malformed)
    for index, raw in enumerate(rows):
        with out.item(_label("item", index, raw, "qid")):
            out.keep(_cgbench_question(_mapping(raw), index, folder), "qid")
    return out.result()


def _cgbench_question(raw: Mapping[str, Any], index: int, folder: Path | None) -> Question:
    video = _text(raw, "video_uid")
    choices = _choices(raw, "choices")
    duration = _opt_duration(raw, "duration")
    used = ("qid", "video_uid", "question", "choices", "right_answer", "clue_intervals")
    return Question(
        id=_opt_text(raw, "qid") or f"{video}-{index}",
        video_id=video,
        question=_text(raw, "question"),
        choices=choices,
        answer=_letter(raw, "right_answer", len(choices)),
        category=_opt_text(raw, "sub_category", "question_type", "domain"),
        clue_intervals=_clues(_value(raw, "clue_intervals")[1], "clue_intervals", duration),
        subtitles=_subtitle_file(folder, f"{video}.srt"),
        duration=duration,
        benchmark="cgbench",
        extra=_extra(raw, used, video_file=f"{video}.mp4"),
    )


# ---------------------------------------------------------------------------------------
# LVBench


def load_lvbench(path: PathLike, *, skip_malformed: bool = False) -> QuestionList:
    """LVBench's ``video_info.meta.jsonl``: one JSON object per video, questions under ``qa``.

    Per video: ``key`` (the YouTube id; videos are ``<key>.mp4``), ``qa``,
    and ``video_info.duration_minutes`` when present. Per question: ``uid``,
    ``question`` with the options embedded as ``(A) ...`` lines, ``answer``
    (letter), ``question_type`` (a list: ``category`` is its first entry,
    ``extra['question_types']`` all of them), ``time_reference``
    (``MM:SS-MM:SS``, kept as one clue interval when it parses; it is a hint,
    not a graded field, so one that does not parse is kept raw in ``extra``).
    """
    file = _existing(path)
    out = _Collector(file, "lvbench", skip_malformed)
    for number, record in _jsonl(file):
        with out.item(_label("line", number, record, "key")):
            if isinstance(record, _Bad):
                raise record
            _lvbench_video(_mapping(record), number, out)
    return out.result()


def _lvbench_video(record: Mapping[str, Any], number: int, out: _Collector) -> None:
    video = _text(record, "key")
    duration = _lvbench_duration(record)
    _, qa = _value(record, "qa")
    if not isinstance(qa, list):
        raise _Bad("qa", f"expected a list of questions, got {type(qa).__name__}")
    for k, raw in enumerate(qa):
        label = _label(f"line {number} (key {video}) qa", k, raw, "uid")
        with out.item(label):
            out.keep(_lvbench_question(_mapping(raw), video, duration), "uid")


def _lvbench_duration(record: Mapping[str, Any]) -> float | None:
    info = record.get("video_info")
    if info is None:
        return None
    if not isinstance(info, Mapping):
        raise _Bad("video_info", f"expected an object, got {type(info).__name__}")
    try:
        return _opt_duration(info, "duration_minutes", scale=60.0)
    except _Bad as bad:
        raise _Bad(f"video_info.{bad.field}", bad.reason) from None


def _lvbench_question(raw: Mapping[str, Any], video: str, duration: float | None) -> Question:
    text, choices = _embedded_options(_text(raw, "question"), "question")
    types = _type_list(raw.get("question_type"))
    reference = raw.get("time_reference")
    clues = _time_reference(reference, duration) if isinstance(reference, str) else []
    return Question(
        id=_text(raw, "uid"),
        video_id=video,
        question=text,
        choices=choices,
        answer=_letter(raw, "answer", len(choices)),
        category=types[0] if types else None,
        clue_intervals=clues,
        duration=duration,
        benchmark="lvbench",
        extra=_extra(
            raw, ("uid", "question", "answer"), question_types=types, video_file=f"{video}.mp4"
        ),
    )


def _type_list(value: Any) -> list[str]:
    """LVBench's ``question_type``: a list of categories (a lone string is taken as one)."""
    if isinstance(value, list):
        return [str(t) for t in value if str(t).strip()]
    return [str(value)] if isinstance(value, str) and value.strip() else []


_OPTION_MARK = re.compile(r"(?:^|(?<=\s))\(([A-Z])\)\s*")


def _embedded_options(text: str, name: str) -> tuple[str, list[str]]:
    """Split ``"Q?\\n(A) x\\n(B) y"`` into the question and its options.

    The options are the last run of markers ``(A)``, ``(B)``, ... in order, so
    a question that itself mentions "(A)" earlier still splits right.
    """
    marks = list(_OPTION_MARK.finditer(text))
    starts = [i for i, m in enumerate(marks) if m.group(1) == "A"]
    for first in reversed(starts):
        run = [marks[first]]
        for mark in marks[first + 1 :]:
            if len(run) < len(LETTERS) and mark.group(1) == LETTERS[len(run)]:
                run.append(mark)
        if len(run) >= 2:
            bounds = [m.start() for m in run[1:]] + [len(text)]
            options = [text[m.end() : b].strip() for m, b in zip(run, bounds, strict=True)]
            question = text[: run[0].start()].strip()
            if not question:
                raise _Bad(name, "has options but no question text before them")
            for k, option in enumerate(options):
                if not option:
                    raise _Bad(name, f"option ({LETTERS[k]}) is empty")
            return question, options
    raise _Bad(name, "has no embedded options '(A) ...', '(B) ...'")


_CLOCK = r"(\d+(?::\d{1,2}){1,2}(?:\.\d+)?)"
_TIME_RANGE = re.compile(rf"^\s*{_CLOCK}\s*-\s*{_CLOCK}\s*$")


def _clock(text: str) -> float:
    seconds = 0.0
    for part in text.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def _time_reference(text: str, duration: float | None) -> list[tuple[float, float]]:
    match = _TIME_RANGE.match(text)
    if match is None:
        return []
    start, end = _clock(match.group(1)), _clock(match.group(2))
    if end <= start or (duration is not None and end > duration + CLUE_TOLERANCE):
        return []
    return [(start, end)]


# ---------------------------------------------------------------------------------------
# Video-MME

VIDEOMME_SUBSETS = ("short", "medium", "long")


def load_videomme(
    path: PathLike,
    *,
    subset: str = "long",
    subtitles: bool | PathLike = False,
    videos_dir: PathLike | None = None,
    skip_malformed: bool = False,
) -> QuestionList:
    """Video-MME's ``videomme/test-00000-of-00001.parquet`` (or the same rows as JSON / JSONL).

    Fields used: ``videoID`` (YouTube id; the video is ``<videoID>.mp4``),
    ``video_id`` (the release's 3-digit video number), ``question_id``,
    ``duration`` (``short`` / ``medium`` / ``long``), ``domain``,
    ``sub_category``, ``task_type`` (the category), ``question``, ``options``
    (``["A. ...", ...]``), ``answer`` (letter). ``subset`` keeps one duration
    class (default ``long``, the paper's setting) or ``all``.

    Subtitles are reported both ways in the paper, so they are an option:
    ``subtitles=True`` looks for ``<videos_dir>/../subtitle/<videoID>.srt``,
    where ``videos_dir`` defaults to ``data/`` beside the ``videomme/`` folder
    (the unpacked release: ``data/*.mp4``, ``subtitle/*.srt``); a path names
    the subtitle folder. Videos without an ``.srt`` get ``subtitles=None``.
    """
    file = _existing(path)
    if subset not in (*VIDEOMME_SUBSETS, "all"):
        raise ConfigError(f"Video-MME subset must be short, medium, long or all, got {subset!r}")
    videos = Path(videos_dir).expanduser() if videos_dir else file.parent.parent / "data"
    folder = _subtitle_dir(subtitles, videos.parent / "subtitle", file)
    out = _Collector(file, "videomme", skip_malformed)
    out.notes.append(f"subset {subset}, subtitles {'on' if folder else 'off'}")
    for index, raw in enumerate(_rows(file, "Video-MME rows")):
        with out.item(_label("row", index, raw, "question_id")):
            row = _mapping(raw)
            length = _text(row, "duration").lower()
            if length not in VIDEOMME_SUBSETS:
                raise _Bad("duration", f"expected short, medium or long, got {_show(length)}")
            if subset in ("all", length):
                out.keep(_videomme_question(row, length, folder), "question_id")
    return out.result()


def _videomme_question(row: Mapping[str, Any], length: str, folder: Path | None) -> Question:
    video = _text(row, "videoID", "video_id")
    choices = _strip_letters(_choices(row, "options"), "options", required=True)
    used = ("question_id", "videoID", "question", "options", "answer", "task_type", "duration")
    return Question(
        id=_text(row, "question_id"),
        video_id=video,
        question=_text(row, "question"),
        choices=choices,
        answer=_letter(row, "answer", len(choices)),
        category=_opt_text(row, "task_type"),
        subtitles=_subtitle_file(folder, f"{video}.srt"),
        benchmark="videomme",
        extra=_extra(row, used, duration_class=length, video_file=f"{video}.mp4"),
    )


# ---------------------------------------------------------------------------------------
# MLVU

MLVU_GENERATION_TASKS = ("sub_scene", "summary")
"""MLVU dev tasks answered in free text: no candidates, so not loaded as questions."""


def load_mlvu(path: PathLike, *, skip_malformed: bool = False) -> QuestionList:
    """MLVU dev: one JSON list per task (``MLVU/json/1_plotQA.json`` ...), or the folder of them.

    Fields used: ``video`` (file name), ``duration`` (seconds), ``question``,
    ``candidates`` (texts), ``answer`` (the right candidate's *text*, turned
    into its letter), ``question_type`` (the category). Items carry no id, so
    ids are ``<file stem>-<index>`` (``question_id`` wins where present).
    Given the folder, the multiple-choice tasks are loaded and the generation
    tasks (``8_sub_scene``, ``9_summary``) skipped with a note. Videos are
    assumed to be under ``MLVU/video/<file stem>/<video>``, as released.
    """
    root = _existing(path, directory=True)
    files = sorted(root.glob("*.json")) if root.is_dir() else [root]
    if root.is_dir() and not files:
        raise QuestionFormatError(f"{root}: no MLVU task files (*.json) in this folder", file=root)
    out = _Collector(root, "mlvu", skip_malformed)
    for file in files:
        if root.is_dir() and file.stem.endswith(MLVU_GENERATION_TASKS):
            out.notes.append(f"skipped {file.name}: a generation task, not multiple choice")
            continue
        for index, raw in enumerate(_json_list(file, "a list of MLVU questions")):
            with out.item(_label("item", index, raw, "question_id"), file=file):
                out.keep(_mlvu_question(_mapping(raw), file.stem, index), "question_id")
    return out.result()


def _mlvu_question(raw: Mapping[str, Any], task: str, index: int) -> Question:
    video_file = _text(raw, "video")
    choices = _choices(raw, "candidates")
    used = ("question_id", "video", "question", "candidates", "answer", "duration")
    return Question(
        id=_opt_text(raw, "question_id") or f"{task}-{index}",
        video_id=Path(video_file).stem,
        question=_text(raw, "question"),
        choices=choices,
        answer=_letter_of_text(_value(raw, "answer")[1], "answer", choices),
        category=_opt_text(raw, "question_type"),
        duration=_opt_duration(raw, "duration"),
        benchmark="mlvu",
        extra=_extra(
            raw, used, task=task, answer_text=raw["answer"], video_file=f"{task}/{video_file}"
        ),
    )


# ---------------------------------------------------------------------------------------
# LongVideoBench

LONGVIDEOBENCH_GROUPS = (15, 60, 600, 3600)
"""``duration_group`` values: upper bounds in seconds of the four length groups."""


def load_longvideobench(
    path: PathLike,
    *,
    subset: str | int = "all",
    subtitles: bool | PathLike = False,
    skip_malformed: bool = False,
) -> QuestionList:
    """LongVideoBench's ``lvb_val.json``: a JSON list of questions.

    Fields used: ``id``, ``video_id``, ``question``, ``candidates`` (texts),
    ``correct_choice`` (0-based index), ``duration`` (seconds),
    ``duration_group`` (15 / 60 / 600 / 3600), ``question_category`` (the
    category), ``video_path``, ``subtitle_path``. ``subset`` is ``all``
    (default), ``long`` (the 900-3600 s group, 3600) or one duration group.
    ``subtitles=True`` points at ``subtitles/<subtitle_path>`` beside the
    file; these are LongVideoBench's own JSON subtitle files, not SRT.
    """
    file = _existing(path)
    group = _lvb_group(subset)
    folder = _subtitle_dir(subtitles, file.parent / "subtitles", file)
    out = _Collector(file, "longvideobench", skip_malformed)
    out.notes.append(f"subset {subset}, subtitles {'on' if folder else 'off'}")
    for index, raw in enumerate(_json_list(file, "a list of LongVideoBench questions")):
        with out.item(_label("item", index, raw, "id")):
            row = _mapping(raw)
            row_group = _int(_value(row, "duration_group")[1], "duration_group")
            if group is None or row_group == group:
                out.keep(_lvb_question(row, folder), "id")
    return out.result()


def _lvb_group(subset: str | int) -> int | None:
    """The duration group a subset keeps (None: all)."""
    if subset == "all":
        return None
    if subset == "long":
        return LONGVIDEOBENCH_GROUPS[-1]
    with contextlib.suppress(TypeError, ValueError):
        if int(subset) in LONGVIDEOBENCH_GROUPS:
            return int(subset)
    raise ConfigError(
        f"LongVideoBench subset must be all, long, 15, 60, 600 or 3600, got {subset!r}"
    )


def _lvb_question(row: Mapping[str, Any], folder: Path | None) -> Question:
    video = _text(row, "video_id")
    choices = _choices(row, "candidates")
    used = ("id", "video_id", "question", "candidates", "correct_choice", "duration")
    return Question(
        id=_text(row, "id"),
        video_id=video,
        question=_text(row, "question"),
        choices=choices,
        answer=_index_letter(_value(row, "correct_choice")[1], "correct_choice", len(choices)),
        category=_opt_text(row, "question_category"),
        subtitles=_subtitle_file(folder, _opt_text(row, "subtitle_path")),
        duration=_opt_duration(row, "duration"),
        benchmark="longvideobench",
        extra=_extra(row, used, video_file=_opt_text(row, "video_path") or f"{video}.mp4"),
    )


# ---------------------------------------------------------------------------------------
# EgoSchema

EGOSCHEMA_OPTIONS = 5


def load_egoschema(
    path: PathLike,
    *,
    answers: PathLike | None = None,
    subset: str = "answered",
    skip_malformed: bool = False,
) -> QuestionList:
    """EgoSchema's ``questions.json`` with the public answers of ``subset_answers.json``.

    ``questions.json`` is a JSON list of ``q_uid``, ``question``,
    ``option 0`` ... ``option 4`` (and ``google_drive_id``); the answers file
    maps ``q_uid`` to the 0-based right option, for the 500-question subset
    only (the full set is graded by the authors' server). ``answers``
    defaults to ``subset_answers.json`` beside the questions. ``subset``:
    ``answered`` (default, the 500) or ``all`` (unanswered ones get
    ``answer=None``). Videos are ``<q_uid>.mp4``, three minutes each.
    """
    file = _existing(path)
    if subset not in ("answered", "all"):
        raise ConfigError(f"EgoSchema subset must be answered or all, got {subset!r}")
    answers_file = Path(answers).expanduser() if answers else file.parent / "subset_answers.json"
    rows = _json_list(file, "a list of EgoSchema questions")
    out = _Collector(file, "egoschema", skip_malformed)
    key = _egoschema_answers(
        answers_file, rows, out, required=subset == "answered" or answers is not None
    )
    for index, raw in enumerate(rows):
        with out.item(_label("item", index, raw, "q_uid")):
            row = _mapping(raw)
            uid = _text(row, "q_uid")
            if subset == "all" or uid in key:
                out.keep(_egoschema_question(row, uid, key.get(uid)), "q_uid")
    return out.result()


def _egoschema_answers(
    file: Path, rows: Sequence[Any], out: _Collector, *, required: bool
) -> dict[str, str]:
    """q_uid -> letter from the answers file; its bad entries are reported against that file."""
    if not file.exists():
        if required:
            raise QuestionFormatError(
                f"{file}: no such file (EgoSchema's public answers; pass answers=FILE "
                "or subset='all')",
                file=file,
            )
        return {}
    data = _read_json(_existing(file))
    if not isinstance(data, dict):
        raise QuestionFormatError(
            f"{file}: expected an object of q_uid: answer index, got a JSON {type(data).__name__}",
            file=file,
        )
    uids = {str(r.get("q_uid")) for r in rows if isinstance(r, Mapping)}
    letters = {}
    for uid, value in data.items():
        with out.item(f"q_uid {uid}", file=file):
            if uid not in uids:
                raise _Bad("q_uid", "has an answer but no question in the questions file")
            letters[uid] = _index_letter(value, "answer", EGOSCHEMA_OPTIONS)
    return letters


def _egoschema_question(row: Mapping[str, Any], uid: str, answer: str | None) -> Question:
    names = [f"option {k}" for k in range(EGOSCHEMA_OPTIONS)]
    return Question(
        id=uid,
        video_id=uid,
        question=_text(row, "question"),
        choices=[_text(row, name) for name in names],
        answer=answer,
        benchmark="egoschema",
        extra=_extra(row, ("q_uid", "question", *names), video_file=f"{uid}.mp4"),
    )


# ---------------------------------------------------------------------------------------
# the reference's flat evaluation files

_REF_VIDEO = ("video", "video_name", "video_path", "video_id", "video_uid")
_REF_CHOICES = ("options", "choices", "candidates")
_REF_ANSWER = ("answer", "right_answer")
_REF_ID = ("id", "qid", "question_id", "uid")
_REF_CATEGORY = ("category", "question_type", "task_type", "sub_category")


def load_reference_questions(path: PathLike, *, skip_malformed: bool = False) -> QuestionList:
    """The flat evaluation files of the reference implementation (JSON list or JSON lines).

    Each item needs a video (``video``, ``video_name``, ``video_path``,
    ``video_id`` or ``video_uid``), ``question``, options (``options``,
    ``choices`` or ``candidates``; ``"A. ..."`` prefixes are removed when every
    option carries its letter) and an ``answer`` (or ``right_answer``) key:
    a letter, or the text of one option, or null for unknown. Optional:
    an id (``id``, ``qid``, ``question_id``, ``uid``; else the item's
    position), ``duration``, ``clue_intervals``, a category and ``subtitles``
    (a path, relative to the file's folder). A JSON object of id -> item is
    accepted too.
    """
    file = _existing(path)
    out = _Collector(file, "reference", skip_malformed)
    for label, default_id, raw in _reference_items(file):
        with out.item(label):
            out.keep(_reference_question(_mapping(raw), default_id, file.parent), _REF_ID[0])
    return out.result()


def _reference_items(file: Path) -> Iterator[tuple[str, str, Any]]:
    """(label, default id, raw item) for each item, whatever the container."""
    if file.suffix.lower() == ".jsonl":
        for number, value in _jsonl(file):
            yield _label("line", number, value, *_REF_ID), str(number), value
        return
    data = _read_json(file)
    if isinstance(data, Mapping):
        for key, value in data.items():
            yield f"item {key}", str(key), value
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield _label("item", index, value, *_REF_ID), str(index), value
    else:
        raise QuestionFormatError(
            f"{file}: expected a JSON list of questions, got a JSON {type(data).__name__}",
            file=file,
        )


def _reference_question(raw: Mapping[str, Any], default_id: str, folder: Path) -> Question:
    name, video_ref = _value(raw, *_REF_VIDEO)
    video = _as_text(video_ref, name)
    is_file = name in ("video", "video_name", "video_path")
    choice_name = next((n for n in _REF_CHOICES if n in raw), _REF_CHOICES[0])
    choices = _strip_letters(_choices(raw, *_REF_CHOICES), choice_name, required=False)
    duration = _opt_duration(raw, "duration")
    subtitles = _opt_text(raw, "subtitles", "subtitle", "subtitle_path")
    used = (*_REF_ID, name, "question", choice_name, *_REF_ANSWER, "duration", "clue_intervals")
    return Question(
        id=_opt_text(raw, *_REF_ID) or default_id,
        video_id=Path(video).stem if is_file else video,
        question=_text(raw, "question"),
        choices=choices,
        answer=_reference_answer(raw, choices),
        category=_opt_text(raw, *_REF_CATEGORY),
        clue_intervals=_clues(raw.get("clue_intervals") or [], "clue_intervals", duration),
        subtitles=folder / subtitles if subtitles else None,
        duration=duration,
        benchmark="reference",
        extra=_extra(raw, used, video_file=video if is_file else None),
    )


def _reference_answer(raw: Mapping[str, Any], choices: Sequence[str]) -> str | None:
    """A letter, or the text of one option; an explicit null means the answer is unknown.

    An answer that reads both ways ("B" among options that are letters) must
    agree with itself, else it is refused rather than guessed.
    """
    name = next((n for n in _REF_ANSWER if n in raw), None)
    if name is None:
        raise _Bad(_REF_ANSWER[0], "missing (use null when the answer is unknown)")
    value = raw[name]
    if value is None:
        return None
    readings = set()
    with contextlib.suppress(_Bad):
        readings.add(_as_letter(value, name, len(choices)))
    with contextlib.suppress(_Bad):
        readings.add(_letter_of_text(value, name, choices))
    if len(readings) > 1:
        found = ", ".join(sorted(readings))
        raise _Bad(name, f"{_show(value)} reads as a letter and as an option's text ({found})")
    if readings:
        return readings.pop()
    if isinstance(value, str) and _LETTER_RE.match(value.strip()):
        return _as_letter(value, name, len(choices))  # raises: the letter names no option
    return _letter_of_text(value, name, choices)


# ---------------------------------------------------------------------------------------
# the entry point

Loader = Callable[..., QuestionList]

LOADERS: dict[str, Loader] = {
    "cgbench": load_cgbench,
    "lvbench": load_lvbench,
    "videomme": load_videomme,
    "mlvu": load_mlvu,
    "longvideobench": load_longvideobench,
    "egoschema": load_egoschema,
    "reference": load_reference_questions,
}
"""Loader by benchmark name; :func:`load_questions` also accepts ``CG-Bench``, ``Video-MME`` ..."""


def benchmark_name(name: str) -> str:
    """The registry key for a benchmark as people write it (``Video-MME`` -> ``videomme``)."""
    key = re.sub(r"[\s_\-]", "", name).lower()
    if key not in LOADERS:
        raise ConfigError(f"unknown benchmark {name!r}: choose one of {', '.join(LOADERS)}")
    return key


def load_questions(path: PathLike, benchmark: str, **options: Any) -> QuestionList:
    """Questions of one benchmark's annotation file, through that benchmark's loader.

    ``options`` are the loader's keyword options (``subset``, ``subtitles``,
    ``skip_malformed`` ...); an option the loader does not take is a
    :class:`ConfigError` naming the ones it does.
    """
    key = benchmark_name(benchmark)
    loader = LOADERS[key]
    accepted = [p for p in inspect.signature(loader).parameters if p != "path"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"the {key} loader has no option {unknown[0]!r} (it takes: {', '.join(accepted)})"
        )
    return loader(path, **options)


# ---------------------------------------------------------------------------------------
# the shipped test bench

TESTBENCH_VIDEO_UID = "testvideo"
TESTBENCH_FILE = Path(__file__).resolve().parents[1] / "assets" / "testbench.json"
"""The shipped benchmark: CG-Bench format, regenerated with :func:`save_testbench`."""

_Check = tuple[Any, ...]

TESTBENCH_EXTRA: tuple[dict[str, Any], ...] = (
    {
        "id": "tb-01",
        "question": "According to the narrator, what does the cyclist ride past?",
        "choices": ["a taxi", "a bus", "a horse", "a tram"],
        "answer": "A",
        "clips": ["bikes"],
        "category": "speech",
        "checks": [("said", "bikes", "taxi")],
    },
    {
        "id": "tb-02",
        "question": "Which clip number does the narrator give to the man in the red bow tie?",
        "choices": ["two", "six", "one", "four"],
        "answer": "D",
        "clips": ["carphone"],
        "category": "speech",
        "checks": [("said", "carphone", "clip four"), ("said", "carphone", "red bow tie")],
    },
    {
        "id": "tb-03",
        "question": "What lies on the white table below the yellow box?",
        "choices": ["a red cup", "a blue pen", "a phone", "a book"],
        "answer": "B",
        "clips": ["box"],
        "category": "visual",
        "checks": [("shown", "box", "blue pen"), ("unsaid", "box", "pen")],
    },
    {
        "id": "tb-04",
        "question": "What stands on the grass beside the path where people walk?",
        "choices": ["a bench", "a bicycle", "a camera tripod", "a lamp post"],
        "answer": "C",
        "clips": ["pedestrians"],
        "category": "visual",
        "checks": [("shown", "pedestrians", "camera tripod"), ("unsaid", "pedestrians", "tripod")],
    },
    {
        "id": "tb-05",
        "question": "Which clip comes right after the clip of the yellow box?",
        "choices": [
            "the man in the red bow tie",
            "the green tree",
            "the black cup",
            "the grey rabbit",
        ],
        "answer": "A",
        "clips": ["box", "carphone"],
        "category": "temporal",
        "checks": [("next", "box", "carphone"), ("shown", "carphone", "red bow tie")],
    },
    {
        "id": "tb-06",
        "question": "What is shown at the very end of the video?",
        "choices": [
            "a hand tilting a black cup",
            "a cyclist in city traffic",
            "people walking beside a lawn",
            "a grey rabbit climbing out of his burrow",
        ],
        "answer": "D",
        "clips": ["rabbit"],
        "category": "temporal",
        "checks": [("last", "rabbit"), ("shown", "rabbit", "climbs out of his burrow")],
    },
    {
        "id": "tb-07",
        "question": "How many clips does the narrator announce by number?",
        "choices": ["five", "six", "seven", "eight"],
        "answer": "C",
        "clips": ["bikes", "pedestrians", "box", "carphone", "tree", "cup", "rabbit"],
        "category": "counting",
        "checks": [("count_said", r"\bclip (one|two|three|four|five|six|seven)\b", 7)],
    },
    {
        "id": "tb-08",
        "question": "In how many clips does the narrator mention a hand?",
        "choices": ["three", "one", "two", "four"],
        "answer": "A",
        "clips": ["box", "tree", "cup"],
        "category": "counting",
        "checks": [("count_said", r"\bhand\b", 3)],
    },
)
"""Questions beyond the manifest's own, each with the manifest facts that make its answer right."""


def write_testbench(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The test bench in CG-Bench format, from the test video's manifest.

    The manifest's questions come first (ids ``tv-NN``), then
    :data:`TESTBENCH_EXTRA` (ids ``tb-NN``). Clue intervals are the spans of
    the segments each question is about. Every extra question's checks are
    verified against the manifest's ``shown`` / ``said`` text and segment
    order, so a change to the video that would make an answer wrong fails
    here instead of silently mis-scoring runs.
    """
    segments = {s["key"]: s for s in manifest["segments"]}
    items = []
    for q in manifest["questions"]:
        category = "temporal" if len(q["clips"]) > 1 else q["modality"]
        items.append(_bench_item(manifest, segments, q["id"], q, category, "manifest"))
    for q in TESTBENCH_EXTRA:
        for check in q["checks"]:
            _verify(manifest, segments, q, check)
        items.append(_bench_item(manifest, segments, q["id"], q, q["category"], "testbench"))
    return items


def _bench_item(
    manifest: Mapping[str, Any],
    segments: Mapping[str, Any],
    qid: str,
    q: Mapping[str, Any],
    category: str,
    source: str,
) -> dict[str, Any]:
    """One CG-Bench item; ``answer`` (the right text) is there as in CG-Bench's own files."""
    missing = [k for k in q["clips"] if k not in segments]
    if missing:
        raise ValueError(f"test bench question {qid}: no segment {missing[0]!r} in the manifest")
    return {
        "qid": qid,
        "video_uid": TESTBENCH_VIDEO_UID,
        "duration": manifest["duration"],
        "question": q["question"],
        "choices": list(q["choices"]),
        "right_answer": q["answer"],
        "answer": q["choices"][LETTERS.index(q["answer"])],
        "clue_intervals": [[segments[k]["start"], segments[k]["end"]] for k in q["clips"]],
        "sub_category": category,
        "clips": list(q["clips"]),
        "source": source,
    }


def _said(segment: Mapping[str, Any]) -> str:
    return " ".join(cue["text"] for cue in segment["said"])


def _verify(
    manifest: Mapping[str, Any], segments: Mapping[str, Any], q: Mapping[str, Any], check: _Check
) -> None:
    """Raise when the manifest no longer supports one fact an answer depends on."""
    kind, *args = check
    order = [s["key"] for s in manifest["segments"]]
    if kind in ("said", "shown", "unsaid"):
        key, needle = args
        text = _said(segments[key]) if kind != "shown" else segments[key]["shown"]
        ok = (needle.lower() in text.lower()) == (kind != "unsaid")
    elif kind == "next":
        ok = order.index(args[0]) + 1 < len(order) and order[order.index(args[0]) + 1] == args[1]
    elif kind == "last":
        ok = order[-1] == args[0]
    elif kind == "count_said":
        pattern, count = args
        hits = [k for k in order if re.search(pattern, _said(segments[k]), re.IGNORECASE)]
        ok = len(hits) == count and sorted(hits) == sorted(q["clips"])
    else:
        raise ValueError(f"test bench question {q['id']}: unknown check {kind!r}")
    if not ok:
        raise ValueError(f"test bench question {q['id']}: the manifest contradicts {check!r}")


def save_testbench(manifest: Mapping[str, Any], path: PathLike | None = None) -> Path:
    """Write the test bench JSON (default: the shipped asset) and return its path."""
    target = Path(path) if path is not None else TESTBENCH_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(write_testbench(manifest), indent=2, ensure_ascii=False) + "\n"
    target.write_text(text, encoding="utf-8")
    return target


def load_testbench(*, subtitles: PathLike | None = None) -> QuestionList:
    """The shipped test bench as questions (benchmark ``testbench``).

    ``subtitles``: the folder holding ``testvideo.srt`` (the test video's own
    folder), to attach the narration's subtitles to every question.
    """
    loaded = load_cgbench(TESTBENCH_FILE, subtitles=subtitles or False)
    renamed = [replace(q, benchmark="testbench") for q in loaded]
    return QuestionList(renamed, source=loaded.source, benchmark="testbench")
