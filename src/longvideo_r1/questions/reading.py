"""Reading a release's annotation files item by item, every failure naming where it is.

The field readers and the file readers are shared by every benchmark loader:
a field that is missing or wrong raises ``_Bad`` naming the field, and the
collector turns it into one :class:`QuestionFormatError` line naming the
file and the item (or records it under ``skip_malformed``). Kept together so
that every loader reports bad input the same way.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from longvideo_r1.questions.schema import (
    CLUE_TOLERANCE,
    LETTERS,
    Malformed,
    PathLike,
    Question,
    QuestionFormatError,
    QuestionList,
)

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
