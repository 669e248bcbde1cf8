"""Benchmark questions: one loader per benchmark for its official annotation files.

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
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from longvideo_r1.errors import ConfigError
from longvideo_r1.questions.reading import (
    _LETTER_RE,
    _as_letter,
    _as_text,
    _Bad,
    _choices,
    _clues,
    _Collector,
    _existing,
    _extra,
    _index_letter,
    _int,
    _json_list,
    _jsonl,
    _label,
    _letter,
    _letter_of_text,
    _mapping,
    _opt_duration,
    _opt_text,
    _read_json,
    _rows,
    _show,
    _strip_letters,
    _subtitle_dir,
    _subtitle_file,
    _text,
    _value,
)
from longvideo_r1.questions.schema import (
    CLUE_TOLERANCE,
    LETTERS,
    PathLike,
    Question,
    QuestionFormatError,
    QuestionList,
)

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
