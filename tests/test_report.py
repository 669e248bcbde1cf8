"""lvr1 report: the markdown table and the accuracy-against-cost plot from two runs."""

from __future__ import annotations

import json
import struct
from datetime import datetime, timezone
from pathlib import Path

import pytest

from longvideo_r1.agent.trace import Cost, Evidence, HighCaption, Trace, captions_read
from longvideo_r1.cli.main import main
from longvideo_r1.errors import ConfigError
from longvideo_r1.evaluation.prices import GpuPrices, parse_prices
from longvideo_r1.evaluation.records import (
    ItemRecord,
    QuestionSource,
    RunFolder,
    RunManifest,
    RunStart,
)
from longvideo_r1.evaluation.report import _cost, collect, markdown, plotted, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_run(
    out: Path,
    method: str,
    outcomes: list[tuple[str, str | None, str]],
    count: int | None = None,
    runs: list[RunStart] | None = None,
    **cost,
) -> RunFolder:
    """A method folder with a manifest and one record per (category, answer, status);
    ``count`` questions in the question file (default: one per record, a complete run)."""
    folder = RunFolder(out / method)
    folder.write_manifest(
        RunManifest(
            method=method,
            variant="v1" if method != "uniform-frames" else "vlm-frames",
            benchmark="testbench",
            questions=QuestionSource(
                path="/x/testbench.json",
                sha256="ab" * 32,
                count=len(outcomes) if count is None else count,
            ),
            identities={"reasoning": f"openai:model-of-{out.name}"},
            runs=runs or [],
        )
    )
    for i, (category, answer, status) in enumerate(outcomes):
        folder.write_record(
            ItemRecord(
                question_id=f"q{i}",
                video_id="testvideo",
                benchmark="testbench",
                category=category,
                method=method,
                variant="v1",
                expected="A",
                answer=answer,
                correct=answer == "A",
                status=status,
                failure=None if status == "answered" else "no_answer",
                cost=Cost(**cost),
                seconds=cost.get("end_to_end_seconds", 1.0),
                trace=f"traces/q{i}.json",
            )
        )
    return folder


@pytest.fixture
def two_runs(tmp_path) -> list[Path]:
    small, large = tmp_path / "small-model", tmp_path / "large-model"
    mixed = [
        ("speech", "A", "answered"),
        ("visual", "B", "answered"),
        ("visual", None, "no_answer"),
    ]
    write_run(small, "agent", mixed, rounds=4, captions_made=2, end_to_end_seconds=20.0)
    write_run(small, "caption-all", mixed[:2], rounds=1, caption_calls=64, end_to_end_seconds=90.0)
    good = [("speech", "A", "answered"), ("visual", "A", "answered"), ("visual", "A", "answered")]
    write_run(large, "agent", good, rounds=6, reasoning_prompt_tokens=5000, end_to_end_seconds=8.0)
    write_run(large, "uniform-frames", good[:1], video_qa_calls=1, frames_decoded=32)
    return [small, large]


def test_markdown_and_plot_from_two_runs(two_runs, tmp_path):
    report = write_report(two_runs, tmp_path / "out" / "report.md")
    text = (tmp_path / "out" / "report.md").read_text()
    assert text == report.markdown
    rows = [line for line in text.splitlines() if line.startswith("| agent |")]
    assert len(rows) == 4  # main table and spread table, one row per run each
    assert "| agent | v1 | small-model | 3 of 3 | 33.3% (1/3) | 1 (no answer 1) | 4.0 |" in text
    assert "| agent | v1 | large-model | 3 of 3 | 100.0% (3/3) | 0 | 6.0 |" in text
    assert "| caption-all | v1 | small-model | 2 of 2 | 50.0% (1/2) | 0 |" in text
    assert "| uniform-frames | vlm-frames | large-model | 1 of 1 | 100.0% (1/1) |" in text
    header = next(line for line in text.splitlines() if line.startswith("| category |"))
    assert "agent (small-model)" in header and "uniform-frames (large-model)" in header
    assert "| visual | 0.0% (0/2) | 0.0% (0/1) | 100.0% (2/2) | - |" in text
    assert "reasoning `openai:model-of-large-model`" in text
    assert "![accuracy against cost](report.png)" in text
    png = (tmp_path / "out" / "report.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 600 and height >= 400


def test_a_method_whose_every_question_failed_is_tabled_not_plotted(two_runs, tmp_path):
    failed = [("speech", None, "error"), ("visual", None, "error")]
    write_run(two_runs[0], "random-walk", failed, rounds=0, end_to_end_seconds=0.0)
    results = collect(two_runs)
    assert "random-walk" in [r.manifest.method for r in results]
    assert "random-walk" not in [r.manifest.method for r in plotted(results)]
    assert len(plotted(results)) == 4
    out = tmp_path / "out" / "report.md"
    out.parent.mkdir()
    (tmp_path / "out" / "report.png").write_bytes(b"an older plot")
    write_report(two_runs, out)
    assert "| random-walk |" in out.read_text()
    assert (tmp_path / "out" / "report.png").read_bytes().startswith(PNG_SIGNATURE)
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.md", "report.png"]


def test_methods_are_ordered_and_runs_labelled_apart(two_runs, tmp_path):
    results = collect(two_runs)
    assert [(r.run, r.manifest.method) for r in results] == [
        ("small-model", "agent"),
        ("small-model", "caption-all"),
        ("large-model", "agent"),
        ("large-model", "uniform-frames"),
    ]
    same_name = [tmp_path / "a" / "run", tmp_path / "b" / "run"]
    for folder in same_name:
        write_run(folder, "agent", [("speech", "A", "answered")])
    assert [r.run for r in collect(same_name)] == ["a/run", "b/run"]
    assert "agent (a/run)" in markdown(collect(same_name))


def test_a_method_folder_can_be_given_directly(two_runs):
    results = collect([two_runs[0] / "agent"])
    assert [r.manifest.method for r in results] == ["agent"]


def test_cli_report_prints_the_table_and_writes_both_files(two_runs, tmp_path, capsys):
    assert main(["report", *map(str, two_runs), "--x", "tokens"]) == 0
    captured = capsys.readouterr()
    assert "| method | variant | run |" in captured.out
    assert (two_runs[0] / "report.md").is_file() and (two_runs[0] / "report.png").is_file()
    assert "report.png" in captured.err


def test_folders_without_results_are_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="no method folder"):
        collect([tmp_path])
    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a folder of lvr1 eval results" in err
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.txt")]) == 2


# partial runs ---------------------------------------------------------------------------


def _started(**fields) -> RunStart:
    return RunStart(started_at=datetime(2025, 1, 1, tzinfo=timezone.utc), **fields)


def test_a_partial_run_is_counted_over_its_question_file_and_says_why(tmp_path):
    """A run limited, stopped or with a damaged result file: n of the file's questions,
    marked partial with its reasons, and never the every-question sentence."""
    full = [("speech", "A", "answered")] * 4
    write_run(tmp_path / "complete", "agent", full)
    limited = tmp_path / "limited"
    write_run(limited, "agent", full[:2], count=4, runs=[_started(limit=2, planned=2)])
    stopped = tmp_path / "stopped"
    folder = write_run(
        stopped,
        "agent",
        full[:3],
        count=4,
        runs=[_started(planned=4, ended="stopped", stopped="8 errors in a row, the last: down")],
    )
    (folder.results / "q2.json").write_text("{ not json")
    text = markdown(collect([tmp_path / "complete", limited, stopped]))
    assert "| agent | v1 | complete | 4 of 4 | 100.0% (4/4) |" in text
    assert "| agent | v1 | limited | 2 of 4, partial | 100.0% (2/2) |" in text
    assert "| agent | v1 | stopped | 2 of 4, partial | 100.0% (2/2) |" in text
    assert "Accuracy counts every question" not in text
    assert (
        "- agent (limited): 2 of 4 questions have a result; the last run was limited to 2" in text
    )
    assert "stopped: 8 errors in a row, the last: down" in text
    assert "1 result file unreadable" in text
    unreadable = next(line for line in text.splitlines() if "q2.json" in line)
    assert str(folder.results / "q2.json") in unreadable and "not counted" in text


def test_a_complete_run_keeps_the_every_question_sentence(two_runs):
    assert "Accuracy counts every question" in markdown(collect(two_runs))
    assert "partial" not in markdown(collect(two_runs))


def test_a_manifest_from_before_the_run_outcome_fields_still_reports(tmp_path):
    """run.json files written before ``planned`` / ``ended`` existed load as they are."""
    folder = write_run(tmp_path / "old", "agent", [("speech", "A", "answered")], count=2)
    data = json.loads(folder.manifest_path.read_text())
    data["runs"] = [{"started_at": "2025-01-01T00:00:00Z", "limit": None, "workers": 1}]
    folder.manifest_path.write_text(json.dumps(data))
    assert folder.read_manifest().runs[0].ended is None
    text = markdown(collect([tmp_path / "old"]))
    assert "| 1 of 2, partial |" in text
    assert "- agent (old): 1 of 2 questions have a result" in text


# where the report goes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "where, says",
    [
        ("file/r.md", "is a file, not a folder"),
        ("file/sub/r.md", "is a file, not a folder"),
        ("folder.md", "is a folder"),
        ("/proc/lvr1-no-such-dir/r.md", "cannot write"),
    ],
)
def test_a_report_that_cannot_be_written_is_one_line(two_runs, tmp_path, capsys, where, says):
    (tmp_path / "file").write_text("a file")
    (tmp_path / "folder.md").mkdir()
    assert main(["report", str(two_runs[0]), "--out", str(tmp_path / where)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("lvr1 report: error:"), err
    assert says in err


# cost in the paper's units --------------------------------------------------------------


def test_gpu_seconds_price_calls_made_not_cached_nor_answered_from_captions():
    cost = Cost(
        rounds=5,
        reasoning_calls=4,
        caption_calls=7,
        captions_made=2,
        captions_cached=5,
        video_qa_calls=1,
        video_qa_from_captions=3,
    )
    assert GpuPrices().seconds(cost) == pytest.approx(4 * 2.5 + 2 * 7.0 + 1 * 2.7)
    assert GpuPrices(reasoning=1, caption=0, video_qa=10).seconds(cost) == 14.0


def test_prices_are_overridden_one_kind_at_a_time():
    assert parse_prices(None) == GpuPrices(2.5, 7.0, 2.7)
    assert parse_prices(["caption=4", "video_qa = 0"]) == GpuPrices(2.5, 4.0, 0.0)


@pytest.mark.parametrize(
    "item, says",
    [
        ("gpu=3", "KIND one of reasoning, caption, video_qa, got 'gpu=3'"),
        ("caption", "--price takes KIND=SECONDS"),
        ("caption=fast", "--price caption must be a number of seconds, 0 or more, got 'fast'"),
        ("reasoning=-1", "got '-1'"),
        ("video_qa=nan", "got 'nan'"),
    ],
)
def test_a_bad_price_is_refused_in_one_line(two_runs, capsys, item, says):
    with pytest.raises(ConfigError, match="--price"):
        parse_prices([item])
    assert main(["report", str(two_runs[0]), "--price", item]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("lvr1 report: error:"), err
    assert says in err
    assert not (two_runs[0] / "report.md").exists()


def test_the_table_shows_calls_by_kind_and_gpu_seconds_with_its_prices(tmp_path):
    calls = {
        "rounds": 3,
        "reasoning_calls": 3,
        "captions_made": 1,
        "captions_cached": 6,
        "video_qa_calls": 1,
        "video_qa_from_captions": 2,
        "end_to_end_seconds": 40.0,
    }
    write_run(tmp_path / "run", "agent", [("speech", "A", "answered")], **calls)
    text = markdown(collect([tmp_path / "run"]))
    assert "| video_qa vision / from captions |" in text and "| GPU-equiv. s / question |" in text
    # 3 x 2.5 + 1 x 7.0 + 1 x 2.7 = 17.2 GPU-equivalent s, beside the 40 s measured here
    assert "| 3.0 | 1.0 / 6.0 | 1.00 / 2.00 | 0 | 0 | 17.2 | - | 40.0 |" in text  # no trace
    assert "2.5 s per reasoning call, 7 s per caption made, 2.7 s per video_qa" in text
    assert "the paper's A800 figures" in text
    cheap = GpuPrices(reasoning=1.0)
    text = markdown(collect([tmp_path / "run"], cheap), prices=cheap)
    assert "| 12.7 | - | 40.0 |" in text and "1 s per reasoning call" in text
    assert "A800" not in text


def test_cli_plots_against_gpu_seconds_with_the_prices_given(two_runs, tmp_path, capsys):
    out = tmp_path / "r.md"
    argv = ["report", str(two_runs[0]), "--x", "gpu-seconds", "--out", str(out)]
    assert main([*argv, "--price", "reasoning=10"]) == 0
    assert (tmp_path / "r.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "10 s per reasoning call" in out.read_text()
    agent = collect([two_runs[0]], GpuPrices(reasoning=10))[0]
    # small-model's agent: 4 rounds but no reasoning call returned in its records, 2 made
    assert _cost(agent, "gpu-seconds") == pytest.approx(2 * 7.0)
    with pytest.raises(SystemExit) as info:
        main(["report", str(two_runs[0]), "--x", "dollars"])
    assert info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_only_compares_runs_on_the_same_questions(two_runs, tmp_path, capsys):
    # small-model's agent answered q0 right, q1 wrong and not q2; its caption-all has q0, q1
    results = collect(two_runs, only={"q0", "q2"})
    small = {r.manifest.method: r.metrics for r in results if r.run == "small-model"}
    assert (small["agent"].n, small["agent"].correct, small["agent"].questions) == (2, 1, 2)
    assert (small["caption-all"].n, small["caption-all"].questions) == (1, 2)
    assert not results[0].partial and results[1].partial
    out = tmp_path / "only.md"
    assert main(["report", *map(str, two_runs), "--only", "q0, q2", "--out", str(out)]) == 0
    assert "| agent | v1 | small-model | 2 of 2 | 50.0% (1/2) |" in out.read_text()
    assert main(["report", str(two_runs[0]), "--only", " , "]) != 0
    assert "--only needs at least one question id" in capsys.readouterr().err


def test_earlier_attempts_are_added_in_a_note(tmp_path):
    folder = write_run(
        tmp_path / "run", "agent", [("speech", "A", "answered")] * 2, reasoning_calls=2
    )
    record = folder.records()["q0"]
    prior = Cost(reasoning_calls=3, captions_made=2, video_qa_calls=1)
    folder.write_record(
        record.model_copy(update={"prior_attempts": 2, "prior_cost": prior, "prior_seconds": 9.0})
    )
    text = markdown(collect([tmp_path / "run"]))
    line = next(x for x in text.splitlines() if x.startswith("- agent (run): 2 earlier"))
    # prior: 3 x 2.5 + 2 x 7.0 + 1 x 2.7 = 24.2; the final records: 2 x 5.0
    assert "2 earlier attempts at 1 question spent 3 reasoning calls, 2 captions made" in line
    assert "24.2 GPU-equiv. s and 9.0 s" in line
    assert "a question cost 17.1 GPU-equiv. s and 5.5 s on average" in line
    assert "34.2 GPU-equiv. s and 11.0 s in all" in line
    write_run(tmp_path / "fresh", "agent", [("speech", "A", "answered")], reasoning_calls=2)
    assert "earlier attempt" not in markdown(collect([tmp_path / "fresh"]))


# grounding ------------------------------------------------------------------------------


def _ground(folder: RunFolder, qid: str, **fields) -> None:
    record = folder.records()[qid]
    folder.write_record(record.model_copy(update=fields))


def test_grounding_per_method_and_category_beside_accuracy(tmp_path):
    run = tmp_path / "run"
    agent = write_run(run, "agent", [("speech", "A", "answered"), ("visual", "B", "answered")] * 2)
    hit = {"visited_nodes": 3, "deepest_level": "low", "clue_hit": True}
    _ground(agent, "q0", **hit, grounding_precision=0.5, grounding_recall=1.0, grounding_f1=0.6)
    _ground(agent, "q1", **hit, grounding_precision=0.2, grounding_recall=0.5, grounding_f1=0.4)
    _ground(agent, "q2", visited_nodes=1, deepest_level="medium", clue_hit=False,
            grounding_precision=0.0, grounding_recall=0.0, grounding_f1=0.0)  # fmt: skip
    _ground(agent, "q3", visited_nodes=0, clue_hit=False, grounding_precision=0.0,
            grounding_recall=0.0, grounding_f1=0.0)  # fmt: skip
    write_run(run, "uniform-frames", [("speech", "A", "answered")])  # no grounding: "-"
    text = markdown(collect([run]))
    assert "| agent | run | 50.0% | 2/4 | 0.25 | 0.17 | 0.38 | 2 / 1 / 1 |" in text
    assert "| uniform-frames | run | 100.0% | - | - | - | - | - |" in text
    assert "Accuracy and grounding per category:" in text
    assert "| speech | 100.0% (2/2); clue hits 1/2, F1 0.30 | 100.0% (1/1) |" in text
    assert "| visual | 0.0% (0/2); clue hits 1/2, F1 0.20 | - |" in text
    assert "not the opening's high-level captions" in text


def test_runs_without_grounding_show_no_grounding_table(two_runs):
    text = markdown(collect(two_runs))
    assert "clue hits" not in text and "Accuracy per category:" in text


def _write_trace(folder: RunFolder, i: int, highs: list, reads: list, video_qa: int = 0) -> None:
    """A trace that opened on ``highs`` and read ``reads`` with get_caption (and asked
    video_qa from captions about the last of them ``video_qa`` times)."""

    def node(node_id: tuple, how: str = "get_caption") -> dict:
        return {
            "node_id": node_id,
            "level": "medium",
            "start": 0.0,
            "end": 1.0,
            "how": how,
            "round": 1,
        }

    trace = Trace(
        question="q",
        duration=100.0,
        width=4,
        high_captions=[HighCaption(node_id=h, start=0.0, end=1.0, text="t") for h in highs],
        evidence=[Evidence(**node(r)) for r in reads]
        + [Evidence(**node(reads[-1], "video_qa"))] * bool(video_qa),
        cost=Cost(reasoning_calls=2, video_qa_from_captions=video_qa),
    )
    path = folder.root / f"traces/q{i}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(trace.model_dump_json())


def test_the_empty_store_price_makes_each_caption_a_video_read_once(tmp_path):
    folder = write_run(tmp_path / "run", "agent", [("s", "A", "answered")] * 3, reasoning_calls=2)
    highs = [(1,), (2,)]
    _write_trace(folder, 0, highs, [(1, 1)])
    _write_trace(folder, 1, highs, [(1, 1), (2, 3), (2, 3, 1)], video_qa=1)
    # q2's trace is unreadable: its figures count, the empty-store price leaves it out
    (folder.root / "traces/q2.json").write_text("{not json")
    assert captions_read(Trace.model_validate_json((folder.root / "traces/q1.json").read_text()))
    [result] = collect([tmp_path / "run"])
    # 5 distinct captions (2 high, (1,1), (2,3), (2,3,1)) made once for the video, over the
    # 2 readable questions: (2 x 2.5 + 2 x 2.5 + 5 x 7.0) / 2 = 22.5; cached, each cost 5.0
    assert result.metrics.gpu_seconds_empty_store == pytest.approx(22.5)
    assert result.metrics.cost["gpu_seconds"].mean == pytest.approx(5.0)
    assert "| 5.0 | 22.5 |" in markdown([result])
