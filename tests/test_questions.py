"""Question schema, the benchmark loaders on samples in the official formats, the test bench."""

from __future__ import annotations

import copy
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from longvideo_r1.errors import ConfigError, LVR1Error
from longvideo_r1.questions.loaders import (
    LOADERS,
    benchmark_name,
    load_cgbench,
    load_egoschema,
    load_longvideobench,
    load_lvbench,
    load_mlvu,
    load_questions,
    load_reference_questions,
    load_videomme,
)
from longvideo_r1.questions.schema import Question, QuestionFormatError
from longvideo_r1.testing.testbench import (
    TESTBENCH_FILE,
    load_testbench,
    save_testbench,
    write_testbench,
)
from longvideo_r1.testing.testvideo import BuiltVideo

DATA = Path(__file__).parent / "data" / "benchmarks"
VIDEOMME_JSON = DATA / "videomme" / "videomme" / "test.json"
VIDEOMME_PARQUET = DATA / "videomme" / "videomme" / "test-00000-of-00001.parquet"


def copy_tree(name: str, tmp_path: Path) -> Path:
    """A writable copy of one sample folder (or file), so a test can break it."""
    source = DATA / name
    target = tmp_path / name
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy(source, target)
    return target


def rewrite_json(path: Path, change: Callable[[Any], None]) -> Path:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


# ---------------------------------------------------------------------------------------
# the schema


def make(**fields: Any) -> Question:
    base: dict[str, Any] = dict(
        id="q1", video_id="v1", question="Which?", choices=["red", "blue"], answer="B"
    )
    return Question(**{**base, **fields})


def test_question_letters_choices_and_answer_text() -> None:
    q = make(clue_intervals=[[1, 2.5]])
    assert q.choice_lines() == ["A. red", "B. blue"]
    assert (q.answer_index, q.answer_text) == (1, "blue")
    assert q.clue_intervals == [(1.0, 2.5)]
    assert make(answer=None).answer_text is None


def test_question_video_path_and_json() -> None:
    q = make(extra={"video_file": "task/v1.mkv"}, subtitles="subs/v1.srt")
    assert q.video_path("/videos") == Path("/videos/task/v1.mkv")
    assert make().video_path("/videos") == Path("/videos/v1.mp4")
    assert make(extra={"video_file": "/abs/v.mp4"}).video_path("/videos") == Path("/abs/v.mp4")
    assert json.loads(json.dumps(q.to_dict()))["subtitles"] == "subs/v1.srt"


@pytest.mark.parametrize(
    "fields",
    [
        {"answer": "C"},
        {"answer": ""},
        {"answer": "b"},
        {"question": " "},
        {"clue_intervals": [(5, 5)]},
        {"clue_intervals": [(-1, 5)]},
        {"duration": 0},
    ],
)
def test_question_refuses_states_evaluation_would_misread(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make(**fields)


# ---------------------------------------------------------------------------------------
# loaders on the sample files


def test_cgbench_sample() -> None:
    qs = load_cgbench(DATA / "cgbench.json")
    assert [q.id for q in qs] == ["1201", "1202", "1310"]
    first = qs[0]
    assert first.video_id == "cg_sample_video_a"
    assert first.choices[:2] == ["garlic", "carrots"] and len(first.choices) == 5
    assert (first.answer, first.answer_text) == ("C", "a red pepper")
    assert first.category == "Event Sequence"
    assert first.duration == 1805.4
    assert qs[1].clue_intervals == [(1650.0, 1702.0), (1744.5, 1760.0)]
    assert first.extra["domain"] == "Life Record"
    assert first.extra["video_file"] == "cg_sample_video_a.mp4"
    assert all(q.benchmark == "cgbench" and q.subtitles is None for q in qs)
    assert qs.malformed == [] and "3 questions" in qs.report()


def test_cgbench_subtitles_folder(tmp_path: Path) -> None:
    (tmp_path / "cg_sample_video_b.srt").write_text("1\n00:00:01,000 --> 00:00:02,000\nhi\n")
    qs = load_cgbench(DATA / "cgbench.json", subtitles=tmp_path)
    assert [q.subtitles for q in qs] == [None, None, tmp_path / "cg_sample_video_b.srt"]


def test_lvbench_sample_splits_embedded_options() -> None:
    qs = load_lvbench(DATA / "lvbench" / "video_info.meta.jsonl")
    assert [q.id for q in qs] == ["9001", "9002", "9101"]
    first, second, third = qs
    assert first.question == "Which animal crosses the river first?"
    assert first.choices == ["a zebra", "a wildebeest", "an elephant", "a lion"]
    assert first.answer == "B"
    assert first.duration == pytest.approx(68.5 * 60)
    assert first.clue_intervals == [(725.0, 760.0)]
    assert first.category == "entity recognition"
    assert first.extra["question_types"] == ["entity recognition", "temporal grounding"]
    # "(A)" inside the question text does not start the options; "(B)" is a letter.
    assert second.question == "Why does the herd stop at the bank (A) before crossing?"
    assert (second.answer, second.clue_intervals) == ("B", [(3723.0, 3760.0)])
    # options on one line; a time reference that is not a range is kept raw.
    assert third.choices == ["2-1", "3-1", "1-1", "0-2"]
    assert third.clue_intervals == []
    assert third.extra["time_reference"] == "around the end"


def test_videomme_long_subset_is_the_default() -> None:
    qs = load_videomme(VIDEOMME_JSON)
    assert [q.id for q in qs] == ["601-1", "601-2", "602-1"]
    q = qs[0]
    assert q.video_id == "sampleLong1"
    assert q.choices[0] == "The boats return to the harbour."
    assert q.choice_lines()[0] == "A. The boats return to the harbour."
    assert (q.answer, q.category) == ("A", "Temporal Reasoning")
    assert q.extra["duration_class"] == "long" and q.extra["video_id"] == "601"
    assert q.subtitles is None
    assert "subset long, subtitles off" in qs.report()


@pytest.mark.parametrize(("subset", "count"), [("short", 2), ("medium", 1), ("all", 6)])
def test_videomme_subsets(subset: str, count: int) -> None:
    assert len(load_videomme(VIDEOMME_JSON, subset=subset)) == count


def test_videomme_bad_subset() -> None:
    with pytest.raises(ConfigError, match="subset"):
        load_videomme(VIDEOMME_JSON, subset="longest")


def test_videomme_subtitles_follow_the_release_layout(tmp_path: Path) -> None:
    qs = load_videomme(VIDEOMME_JSON, subtitles=True)
    folder = DATA / "videomme" / "subtitle"
    assert [q.subtitles for q in qs] == [folder / "sampleLong1.srt"] * 2 + [None]
    assert "subtitles on" in qs.report()
    # videos_dir moves the layout: <videos>/../subtitle
    (tmp_path / "subtitle").mkdir()
    (tmp_path / "subtitle" / "sampleLong2.srt").write_text("")
    moved = load_videomme(VIDEOMME_JSON, subtitles=True, videos_dir=tmp_path / "data")
    assert [q.subtitles for q in moved] == [None, None, tmp_path / "subtitle" / "sampleLong2.srt"]
    explicit = load_videomme(VIDEOMME_JSON, subtitles=tmp_path / "subtitle")
    assert explicit[2].subtitles == tmp_path / "subtitle" / "sampleLong2.srt"


def test_videomme_subtitles_without_the_folder(tmp_path: Path) -> None:
    with pytest.raises(QuestionFormatError, match="subtitle folder") as info:
        load_videomme(VIDEOMME_JSON, subtitles=tmp_path / "nowhere")
    assert "\n" not in str(info.value)


def test_videomme_parquet_matches_json() -> None:
    pytest.importorskip("pyarrow")
    from_parquet = load_videomme(VIDEOMME_PARQUET, subset="all")
    from_json = load_videomme(VIDEOMME_JSON, subset="all")
    assert [q.to_dict() for q in from_parquet] == [q.to_dict() for q in from_json]


def test_videomme_parquet_without_pyarrow(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("pyarrow", "pyarrow.parquet", "pandas"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(QuestionFormatError, match="pip install pyarrow") as info:
        load_videomme(VIDEOMME_PARQUET)
    assert str(VIDEOMME_PARQUET) in str(info.value) and "\n" not in str(info.value)


def test_mlvu_folder_loads_the_multiple_choice_tasks() -> None:
    qs = load_mlvu(DATA / "mlvu" / "json")
    assert [q.id for q in qs] == ["1_plotQA-0", "1_plotQA-1", "4_count-0"]
    plot, case, count = qs
    assert (plot.answer, plot.answer_text) == ("B", "She hears the phone ring.")
    assert case.answer == "C"  # "The boy" names the option "the boy"
    assert count.answer == "C" and count.choices == ["2", "3", "4", "5"]
    assert (plot.video_id, plot.extra["video_file"]) == (
        "movie_sample_01",
        "1_plotQA/movie_sample_01.mp4",
    )
    assert (plot.duration, plot.category) == (412.0, "plotQA")
    assert any("9_summary.json" in note for note in qs.notes)


def test_mlvu_single_task_file() -> None:
    assert [q.id for q in load_mlvu(DATA / "mlvu" / "json" / "4_count.json")] == ["4_count-0"]


def test_mlvu_generation_task_named_directly_is_refused() -> None:
    with pytest.raises(QuestionFormatError, match="field 'candidates': missing"):
        load_mlvu(DATA / "mlvu" / "json" / "9_summary.json")


def test_longvideobench_index_answers_and_long_split() -> None:
    every = load_longvideobench(DATA / "longvideobench" / "lvb_val.json")
    assert [q.answer for q in every] == ["C", "A", "D"]
    assert every[1].choices[-1] == "it starts raining" and len(every[1].choices) == 5
    assert (every[0].category, every[0].duration) == ("S2O", 431.2)
    assert every[0].extra["duration_group"] == 600
    long = load_longvideobench(DATA / "longvideobench" / "lvb_val.json", subset="long")
    assert [q.id for q in long] == ["lvbSample02_0", "lvbSample03_0"]
    assert len(load_longvideobench(DATA / "longvideobench" / "lvb_val.json", subset=600)) == 1
    with pytest.raises(ConfigError):
        load_longvideobench(DATA / "longvideobench" / "lvb_val.json", subset="medium")


def test_longvideobench_subtitles() -> None:
    qs = load_longvideobench(DATA / "longvideobench" / "lvb_val.json", subtitles=True)
    folder = DATA / "longvideobench" / "subtitles"
    assert [q.subtitles for q in qs] == [None, folder / "lvbSample02_en.json", None]


def test_egoschema_answered_subset_and_all() -> None:
    path = DATA / "egoschema" / "questions.json"
    answered = load_egoschema(path)
    assert [q.answer for q in answered] == ["C", "A"]
    assert answered[0].choices[2] == "c cooks a meal for guests."
    assert answered[0].video_id == answered[0].id == "aaaa1111-0000-4000-8000-000000000001"
    every = load_egoschema(path, subset="all")
    assert [q.answer for q in every] == ["C", None, "A"]


def test_egoschema_answers_file(tmp_path: Path) -> None:
    copy_tree("egoschema", tmp_path)
    questions = tmp_path / "egoschema" / "questions.json"
    (tmp_path / "egoschema" / "subset_answers.json").unlink()
    with pytest.raises(QuestionFormatError, match="subset_answers.json: no such file"):
        load_egoschema(questions)
    assert [q.answer for q in load_egoschema(questions, subset="all")] == [None] * 3
    other = tmp_path / "answers.json"
    other.write_text(json.dumps({"aaaa1111-0000-4000-8000-000000000002": 4}))
    assert [q.answer for q in load_egoschema(questions, answers=other)] == ["E"]


def test_reference_flat_files() -> None:
    qs = load_reference_questions(DATA / "reference" / "eval.json")
    assert [q.id for q in qs] == ["0", "1", "ref-3", "3"]
    letters, text, parens, unknown = qs
    assert (letters.video_id, letters.choices[0], letters.answer) == ("ref_sample_01", "red", "B")
    assert (text.answer, text.category, text.duration) == ("B", "speech", 1200.0)
    assert text.clue_intervals == [(10.0, 25.0)]
    assert (parens.choices[3], parens.answer) == ("four", "D")
    assert parens.extra["video_file"] == "clips/ref_sample_03.mp4"
    assert parens.subtitles == DATA / "reference" / "subs" / "ref_sample_03.srt"
    # only one option carries a prefix, so none is stripped
    assert unknown.choices[0] == "A: at a port" and unknown.answer is None
    assert unknown.video_id == "ref_sample_04" and "video_file" not in unknown.extra


def test_reference_json_lines_and_objects(tmp_path: Path) -> None:
    item = {"video": "a.mp4", "question": "Q?", "options": ["x", "y"], "answer": "y"}
    lines = tmp_path / "eval.jsonl"
    lines.write_text(json.dumps(item) + "\n\n" + json.dumps({**item, "id": "k"}) + "\n")
    assert [(q.id, q.answer) for q in load_reference_questions(lines)] == [("1", "B"), ("k", "B")]
    keyed = tmp_path / "eval.json"
    keyed.write_text(json.dumps({"first": item}))
    assert [q.id for q in load_reference_questions(keyed)] == ["first"]


@pytest.mark.parametrize(
    ("options", "answer", "expected"),
    [
        (["A", "B", "C"], "B", "B"),  # letter and text agree
        (["B", "A", "C"], "B", "reads as a letter and as an option"),
        (["x", "y"], "C", "'C' is not one of the 2 choices"),
        (["x", "y"], "zz", "'zz' is not among the 2 choices"),
        (["x", "y"], "(d)", "'D' is not one of the 2 choices"),
    ],
)
def test_reference_answers_that_read_two_ways(
    tmp_path: Path, options: list[str], answer: str, expected: str
) -> None:
    path = tmp_path / "eval.json"
    item = {"video": "a.mp4", "question": "Q?", "options": options, "answer": answer}
    path.write_text(json.dumps([item]))
    if len(expected) == 1:
        assert load_reference_questions(path)[0].answer == expected
        return
    with pytest.raises(QuestionFormatError, match=f"item 0: field 'answer': .*{expected}"):
        load_reference_questions(path)


def test_load_questions_by_name() -> None:
    assert set(LOADERS) == {
        "cgbench", "lvbench", "videomme", "mlvu", "longvideobench", "egoschema", "reference",
    }  # fmt: skip
    assert benchmark_name("Video-MME") == "videomme" and benchmark_name("CG_Bench") == "cgbench"
    qs = load_questions(VIDEOMME_JSON, "Video-MME", subset="all")
    assert len(qs) == 6 and qs.benchmark == "videomme"
    with pytest.raises(ConfigError, match="unknown benchmark 'nextqa'"):
        load_questions(VIDEOMME_JSON, "nextqa")
    with pytest.raises(ConfigError, match="has no option 'subset'"):
        load_questions(DATA / "cgbench.json", "cgbench", subset="long")


# ---------------------------------------------------------------------------------------
# malformed files and items: one line naming the file, the item and the field


def cg_item(index: int) -> Callable[[Any], Any]:
    return lambda data: data[index]


MALFORMED = [
    # (sample, file inside it, loader, change, item label, field)
    ("cgbench.json", "", load_cgbench,
     lambda d: d[1].pop("question"), "item 1 (qid 1202)", "question"),
    ("cgbench.json", "", load_cgbench,
     lambda d: d[0].update(right_answer="F"), "item 0 (qid 1201)", "right_answer"),
    ("cgbench.json", "", load_cgbench,
     lambda d: d[2].update(right_answer="1"), "item 2 (qid 1310)", "right_answer"),
    ("cgbench.json", "", load_cgbench,
     lambda d: d[2].update(right_answer="E"), "item 2 (qid 1310)", "right_answer"),
    ("cgbench.json", "", load_cgbench,
     lambda d: d[0].update(choices=[]), "item 0 (qid 1201)", "choices"),
    ("cgbench.json", "", load_cgbench,
     lambda d: d[0].update(choices=["a", " "]), "item 0 (qid 1201)", "choices[1]"),
    ("cgbench.json", "", load_cgbench,
     lambda d: d[0].update(clue_intervals=[[1, 2], [50, 20]]), "item 0 (qid 1201)",
     "clue_intervals[1]"),
    ("cgbench.json", "", load_cgbench,
     lambda d: d[0].update(clue_intervals=[[-3, 2]]), "item 0 (qid 1201)", "clue_intervals[0]"),
    ("cgbench.json", "", load_cgbench,
     lambda d: d[0].update(clue_intervals=[[1, 2, 3]]), "item 0 (qid 1201)", "clue_intervals[0]"),
    ("cgbench.json", "", load_cgbench,
     lambda d: d[0].update(clue_intervals=[["start", 3]]), "item 0 (qid 1201)",
     "clue_intervals[0]"),
    ("cgbench.json", "", load_cgbench,
     lambda d: d[0].update(clue_intervals=[[1800, 1900]]), "item 0 (qid 1201)",
     "clue_intervals[0]"),
    ("cgbench.json", "", load_cgbench,
     lambda d: d[1].update(qid=1201), "item 1 (qid 1201)", "qid"),
    ("cgbench.json", "", load_cgbench, lambda d: d.append("text"), "item 3", "(item)"),
    ("mlvu", "json/1_plotQA.json", load_mlvu,
     lambda d: d[0].update(answer="She walks away."), "item 0", "answer"),
    ("mlvu", "json/4_count.json", load_mlvu,
     lambda d: d[0].update(candidates=["3", "3", "4"], answer="3"), "item 0", "answer"),
    ("videomme", "videomme/test.json", load_videomme,
     lambda d: d[4]["options"].__setitem__(1, "Mountain climbing."), "row 4 (question_id 601-2)",
     "options[1]"),
    ("videomme", "videomme/test.json", load_videomme,
     lambda d: d[3].update(duration="extra long"), "row 3 (question_id 601-1)", "duration"),
    ("longvideobench", "lvb_val.json", load_longvideobench,
     lambda d: d[2].update(correct_choice=4), "item 2 (id lvbSample03_0)", "correct_choice"),
    ("egoschema", "questions.json", load_egoschema,
     lambda d: d[0].pop("option 3"), "item 0 (q_uid aaaa1111-0000-4000-8000-000000000001)",
     "option 3"),
    ("reference", "eval.json", load_reference_questions,
     lambda d: d[1].pop("choices"), "item 1", "options"),
    ("reference", "eval.json", load_reference_questions,
     lambda d: d[0].pop("answer"), "item 0", "answer"),
]  # fmt: skip


@pytest.mark.parametrize(("sample", "inner", "loader", "change", "label", "field"), MALFORMED)
def test_malformed_item_is_one_line_naming_file_item_field(
    tmp_path: Path,
    sample: str,
    inner: str,
    loader: Callable[..., Any],
    change: Callable[[Any], None],
    label: str,
    field: str,
) -> None:
    root = copy_tree(sample, tmp_path)
    broken = rewrite_json(root / inner if inner else root, change)
    with pytest.raises(QuestionFormatError) as info:
        loader(broken.parent if loader is load_mlvu else broken)  # MLVU: the task folder
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{broken}: {label}: field {field!r}: "), message
    assert (info.value.file, info.value.item, info.value.field) == (broken, label, field)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, LVR1Error)


def test_malformed_json_lines(tmp_path: Path) -> None:
    path = copy_tree("lvbench", tmp_path) / "video_info.meta.jsonl"
    lines = path.read_text().splitlines()
    qa = json.loads(lines[0])
    del qa["qa"][1]["answer"]
    path.write_text("\n".join([json.dumps(qa), "{not json", lines[2]]) + "\n")
    with pytest.raises(QuestionFormatError) as info:
        load_lvbench(path)
    assert str(info.value).startswith(
        f"{path}: line 1 (key lvb_sample_01) qa 1 (uid 9002): field 'answer': missing"
    )
    skipped = load_lvbench(path, skip_malformed=True)
    assert [q.id for q in skipped] == ["9001", "9101"]
    assert [(m.item, m.field) for m in skipped.malformed] == [
        ("line 1 (key lvb_sample_01) qa 1 (uid 9002)", "answer"),
        ("line 2", "(line)"),
    ]


def test_lvbench_question_without_options(tmp_path: Path) -> None:
    path = tmp_path / "meta.jsonl"
    record = {"key": "v", "qa": [{"uid": 1, "question": "What happens?", "answer": "A"}]}
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(QuestionFormatError, match="field 'question': has no embedded options"):
        load_lvbench(path)


def test_egoschema_bad_answer_names_the_answers_file(tmp_path: Path) -> None:
    root = copy_tree("egoschema", tmp_path)
    answers = rewrite_json(
        root / "subset_answers.json",
        lambda d: d.update({"aaaa1111-0000-4000-8000-000000000003": 9, "zzzz": 1}),
    )
    with pytest.raises(QuestionFormatError) as info:
        load_egoschema(root / "questions.json")
    assert str(info.value).startswith(
        f"{answers}: q_uid aaaa1111-0000-4000-8000-000000000003: field 'answer': index 9"
    )
    skipped = load_egoschema(root / "questions.json", skip_malformed=True)
    assert [q.answer for q in skipped] == ["C"]
    assert [(m.file, m.field) for m in skipped.malformed] == [
        (answers, "answer"),
        (answers, "q_uid"),
    ]


def test_skip_malformed_collects_a_report(tmp_path: Path) -> None:
    def spoil(data: list[dict[str, Any]]) -> None:
        data[0]["right_answer"] = "Z"
        del data[2]["video_uid"]

    path = rewrite_json(copy_tree("cgbench.json", tmp_path), spoil)
    qs = load_cgbench(path, skip_malformed=True)
    assert [q.id for q in qs] == ["1202"]
    assert [(m.item, m.field) for m in qs.malformed] == [
        ("item 0 (qid 1201)", "right_answer"),
        ("item 2 (qid 1310)", "video_uid"),
    ]
    report = qs.report().splitlines()
    assert report[0] == f"cgbench: 1 questions from {path}, 2 malformed items skipped"
    assert report[1:] == [m.message for m in qs.malformed]
    assert report[1].startswith(f"{path}: item 0 (qid 1201): field 'right_answer': 'Z' is not")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[{", "not valid JSON (line 1 column 3"),
        (
            '{"questions": []}',
            "expected a list of CG-Bench questions (a JSON list), got a JSON dict",
        ),
        (b"\xff\xfe[]", "not UTF-8 text"),
    ],
)
def test_malformed_files(tmp_path: Path, content: str | bytes, expected: str) -> None:
    path = tmp_path / "cg.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(QuestionFormatError) as info:
        load_cgbench(path, skip_malformed=True)
    assert str(info.value).startswith(f"{path}: {expected}")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(QuestionFormatError, match="no such file"):
        load_questions(tmp_path / "absent.json", "cgbench")
    with pytest.raises(QuestionFormatError, match="is a directory"):
        load_questions(tmp_path, "longvideobench")
    with pytest.raises(QuestionFormatError, match="no MLVU task files"):
        load_mlvu(tmp_path)


# ---------------------------------------------------------------------------------------
# the shipped test bench


def shipped() -> list[dict[str, Any]]:
    return json.loads(TESTBENCH_FILE.read_text(encoding="utf-8"))


def test_shipped_testbench_loads_with_the_cgbench_loader() -> None:
    qs = load_cgbench(TESTBENCH_FILE)
    assert 12 <= len(qs) <= 16
    assert len({q.id for q in qs}) == len(qs)
    for q in qs:
        assert q.video_id == "testvideo"
        assert q.answer in "ABCD" and len(q.choices) == 4
        assert q.answer_text == q.extra["answer"]
        assert q.clue_intervals and q.duration
        assert all(0 <= s < e <= q.duration for s, e in q.clue_intervals)
    categories = {q.category for q in qs}
    assert {"speech", "visual", "temporal", "counting"} <= categories
    assert [q.benchmark for q in load_testbench()] == ["testbench"] * len(qs)


def test_testbench_subtitles(test_video: BuiltVideo) -> None:
    qs = load_testbench(subtitles=test_video.subtitles.parent)
    assert {q.subtitles for q in qs} == {test_video.subtitles}


def test_shipped_testbench_has_not_drifted(test_video: BuiltVideo) -> None:
    """Regenerate with save_testbench(load_test_video().manifest) when this fails."""
    assert shipped() == write_testbench(test_video.manifest)


def test_testbench_is_aligned_with_the_manifest(test_video: BuiltVideo) -> None:
    manifest = test_video.manifest
    spans = {s["key"]: [s["start"], s["end"]] for s in manifest["segments"]}
    items = {item["qid"]: item for item in shipped()}
    for q in manifest["questions"]:
        item = items[q["id"]]
        assert (item["choices"], item["right_answer"]) == (q["choices"], q["answer"])
        assert item["clue_intervals"] == q["clue_intervals"]
    for item in items.values():
        assert item["duration"] == manifest["duration"]
        assert item["clue_intervals"] == [spans[k] for k in item["clips"]]


def test_testbench_answers_are_in_the_manifest_text(test_video: BuiltVideo) -> None:
    """Questions about one clip: the right option is what the clip shows or says."""
    segments = {s["key"]: s for s in test_video.manifest["segments"]}
    for item in shipped():
        if item["sub_category"] in ("temporal", "counting"):
            continue
        (clip,) = item["clips"]
        said = " ".join(cue["text"] for cue in segments[clip]["said"]).lower()
        source = said if item["sub_category"] == "speech" else said + segments[clip]["shown"]
        answer = item["answer"].lower().removeprefix("a ").removeprefix("the ")
        assert answer in source.lower(), item["qid"]


@pytest.mark.parametrize(
    "spoil",
    [
        lambda m: m["segments"][2].update(shown="A hand lifts a yellow box."),
        lambda m: m["segments"][0]["said"][0].update(text="Clip one. A cyclist rides by."),
        lambda m: m["segments"].insert(3, {**m["segments"][4], "key": "extra"}),
        lambda m: m["segments"][4]["said"][0].update(text="Clip five. A tree."),
    ],
)
def test_testbench_refuses_a_manifest_that_contradicts_an_answer(
    test_video: BuiltVideo, spoil: Callable[[dict[str, Any]], None]
) -> None:
    manifest = copy.deepcopy(test_video.manifest)
    spoil(manifest)
    with pytest.raises(ValueError, match="the manifest contradicts"):
        write_testbench(manifest)


def test_save_testbench_round_trip(test_video: BuiltVideo, tmp_path: Path) -> None:
    path = save_testbench(test_video.manifest, tmp_path / "bench.json")
    assert path.read_text(encoding="utf-8") == TESTBENCH_FILE.read_text(encoding="utf-8")
