"""lvr1 eval: resumable runs, failures counted as failures, refusals, metrics.

The agent runs over real HTTP against rule-playing servers and over the real
test video, with captions imported beforehand (no captioner runs), so every
fast test here takes seconds. The slow one of the embedded default runs every
method on the CPU defaults and requires each to answer: exit 0, status
answered, every reply constrained, no parse error.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers_eval import (
    IDENTITY,
    THINK_B,
    RuleServer,
    evaluator,
    question_of,
    settings_for,
    sigint_as_default,
)
from scripted_server import Fail, Say

from longvideo_r1.agent import protocol
from longvideo_r1.agent.trace import Cost, Evidence, Trace
from longvideo_r1.cli.main import main
from longvideo_r1.config import Settings
from longvideo_r1.errors import ConfigError
from longvideo_r1.evaluation.grounding import deepest_level
from longvideo_r1.evaluation.identity import video_qa_identity
from longvideo_r1.evaluation.jobs import Job
from longvideo_r1.evaluation.methods import METHODS, MethodOptions, make_method, resolve_walk_calls
from longvideo_r1.evaluation.metrics import Distribution, compute_metrics
from longvideo_r1.evaluation.records import (
    Attempt,
    ItemRecord,
    RunFolder,
    add_costs,
    record_from_trace,
)
from longvideo_r1.files import safe_name
from longvideo_r1.media.video import Video
from longvideo_r1.questions.schema import Question
from longvideo_r1.testing.testbench import load_testbench
from longvideo_r1.tree import Tree

ROOT = Path(__file__).resolve().parents[1]


def read_records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((folder / "results").glob("*.json"))]


def eval_argv(test_video, out: Path, testbench_store: Path, url: str, *extra: str) -> list[str]:
    return [
        "eval", "testbench", "--videos", str(test_video.path.parent), "--out", str(out),
        "--store", str(testbench_store), "--captioner", IDENTITY, "--reasoning-base-url", url,
        "--reasoning-model", "scripted-model", "--quiet", *extra,
    ]  # fmt: skip


# resuming ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_run_resumes_without_duplicates_or_losses(test_video, testbench_store, tmp_path):
    """SIGKILL midway, rerun: every question answered once, none re-asked, nothing lost."""
    out = tmp_path / "out"
    with RuleServer(lambda body: Say(THINK_B, delay=0.4)) as server:
        argv = eval_argv(test_video, out, testbench_store, server.base_url, "--workers", "2")
        child = _spawn(argv)
        results = out / "agent" / "results"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(results.glob("*.json"))) < 5:
            assert child.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
        time.sleep(1.0)  # a request the child sent just before dying may still be read
        first = {r["question_id"]: r for r in read_records(out / "agent")}
        asked_first = len(server.requests)
        assert 5 <= len(first) < 16
        assert asked_first >= len(first)

        assert main(argv) == 0
        second = server.requests[asked_first:]
    records = read_records(out / "agent")
    ids = [r["question_id"] for r in records]
    assert sorted(ids) == sorted(q.id for q in load_testbench()) and len(set(ids)) == 16
    for qid, record in first.items():  # finished results are kept as they were
        assert next(r for r in records if r["question_id"] == qid) == record
    finished_questions = {r["question_id"] for r in first.values()}
    texts = {q.id: q.question for q in load_testbench()}
    reasked = {question_of(body) for body in second} & {texts[q] for q in finished_questions}
    assert not reasked, f"finished questions asked again: {reasked}"
    assert len(second) == 16 - len(first)  # one round each, nothing else
    assert not list((out / "agent").rglob("*.tmp"))


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_keeps_what_finished(test_video, testbench_store, tmp_path):
    out = tmp_path / "out"
    with RuleServer(lambda body: Say(THINK_B, delay=0.3)) as server:
        argv = eval_argv(test_video, out, testbench_store, server.base_url)
        child = _spawn(argv)
        results = out / "agent" / "results"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(results.glob("*.json"))) < 3:
            time.sleep(0.05)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
        assert child.returncode == 130, err
        assert "finished work is kept" in err
        kept = read_records(out / "agent")
        assert 3 <= len(kept) < 16 and len(server.requests) <= len(kept) + 1
        assert main(argv) == 0
    assert len(read_records(out / "agent")) == 16


@pytest.mark.slow
def test_ctrl_c_midway_through_a_question_keeps_what_it_spent(
    test_video, testbench_store, tmp_path
):
    """A real Ctrl-C while a question's first round is out: the round finishes, the question
    stops, its cost goes to an attempt file; the rerun answers it and its record sums it."""
    out = tmp_path / "out"
    asked, go = threading.Event(), threading.Event()

    def rule(body):
        if not asked.is_set():  # the first request of the first run: held until told
            asked.set()
            go.wait(60)
        return _look_then_answer(body)

    with RuleServer(rule) as server:
        argv = eval_argv(test_video, out, testbench_store, server.base_url, "--limit", "1")
        child = _spawn(argv)
        assert asked.wait(60), "the run never asked its first question"
        child.send_signal(signal.SIGINT)
        time.sleep(1.0)  # the run sees Ctrl-C and stops the question after its round
        go.set()
        _, err = child.communicate(timeout=60)
        assert child.returncode == 130, err
        folder = RunFolder(out / "agent")
        assert folder.records() == {}
        (attempt,) = folder.attempts_of("tv-01")
        assert attempt.ended == "interrupted" and attempt.cost.reasoning_calls == 1
        assert main(argv) == 0
    (record,) = folder.records().values()
    assert record.status == "answered" and record.cost.reasoning_calls == 2
    assert record.prior_attempts == 1 and record.prior_cost == attempt.cost


def _spawn(argv: list[str]) -> subprocess.Popen:
    code = "import sys; from longvideo_r1.cli.main import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_as_default,
    )


@pytest.mark.parametrize("command", ["eval", "report"])
def test_help_explains_eval_and_report(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert f"usage: lvr1 {command}" in capsys.readouterr().out


def test_rerun_skips_finished_questions(testbench, test_video, testbench_store, tmp_path):
    with RuleServer(lambda body: Say(THINK_B)) as server:
        settings = settings_for(testbench_store, server.base_url)
        first = evaluator(testbench, test_video, tmp_path, settings, limit=4).run()
        assert (first.ran, first.skipped, len(server.requests)) == (4, 0, 4)
        again = evaluator(testbench, test_video, tmp_path, settings, limit=6).run()
        assert (again.ran, again.skipped, len(server.requests)) == (2, 4, 6)
    manifest = json.loads((tmp_path / "agent" / "run.json").read_text())
    assert [r["limit"] for r in manifest["runs"]] == [4, 6]


# failures ---------------------------------------------------------------------------------


def test_garbage_answers_are_failures_counted_wrong(
    testbench, test_video, testbench_store, tmp_path
):
    """A model that never writes a usable reply: no_answer records, never a guessed letter."""
    with RuleServer(lambda body: Say("lorem ipsum, no tags at all")) as server:
        outcome = evaluator(
            testbench, test_video, tmp_path, settings_for(testbench_store, server.base_url)
        ).run()
    assert len(outcome.records) == 16
    assert {r.status for r in outcome.records} == {"no_answer"}
    assert all(r.answer is None and not r.correct for r in outcome.records)
    metrics = compute_metrics(outcome.records)
    assert (metrics.n, metrics.scored, metrics.correct, metrics.accuracy) == (16, 16, 0, 0.0)
    assert metrics.failures == 16 and metrics.failure_kinds == {"no_answer": 16}
    assert metrics.cost["rounds"].mean == 3  # every round was played, then the run gave up


def test_endpoint_errors_are_recorded_and_retried_only_when_asked(
    testbench, test_video, testbench_store, tmp_path
):
    down = threading.Event()
    down.set()

    def rule(body):
        return Fail(400, "scripted outage") if down.is_set() else Say(THINK_B)

    with RuleServer(rule) as server:
        settings = settings_for(testbench_store, server.base_url)
        outcome = evaluator(testbench, test_video, tmp_path, settings, limit=3).run()
        assert [r.status for r in outcome.records] == ["error"] * 3
        assert all("scripted outage" in (r.reason or "") for r in outcome.records)
        assert outcome.errors == 3
        assert compute_metrics(outcome.records).accuracy == 0.0
        down.clear()
        asked = len(server.requests)
        plain = evaluator(testbench, test_video, tmp_path, settings, limit=3).run()
        assert plain.skipped == 3 and len(server.requests) == asked  # not retried
        retry = evaluator(
            testbench, test_video, tmp_path, settings, limit=3, retry_failed=True
        ).run()
        assert retry.ran == 3 and len(server.requests) == asked + 3
    assert {r.status for r in retry.records} == {"answered"}
    # what the replaced error records spent is kept and summed into the new ones
    old = {r.question_id: r for r in outcome.records}
    for record in retry.records:
        assert record.prior_attempts == 1 and record.prior_cost == old[record.question_id].cost
        assert record.prior_seconds == pytest.approx(old[record.question_id].seconds)
    (attempt,) = RunFolder(tmp_path / "agent").attempts_of(retry.records[0].question_id)
    assert attempt.ended == "replaced" and "scripted outage" in (attempt.reason or "")


def test_missing_video_is_a_failure_with_its_reason(test_video, testbench_store, tmp_path):
    real = Question("q-real", "testvideo", "What colour?", ["red", "yellow"], "B")
    lost = Question("q-lost", "nowhere", "What colour?", ["red", "yellow"], "A")
    with RuleServer(lambda body: Say(THINK_B)) as server:
        outcome = evaluator(
            [real, lost], test_video, tmp_path, settings_for(testbench_store, server.base_url)
        ).run()
    by_id = {r.question_id: r for r in outcome.records}
    assert by_id["q-real"].correct and by_id["q-real"].status == "answered"
    assert by_id["q-lost"].status == "error" and by_id["q-lost"].failure == "missing_video"
    assert "nowhere.mp4" in by_id["q-lost"].reason
    metrics = compute_metrics(outcome.records)
    assert (metrics.accuracy, metrics.failures) == (0.5, 1)
    assert metrics.cost["seconds"].n == 1  # costs only over questions that ran


# stopping on errors in a row -----------------------------------------------------------


def test_a_dead_endpoint_stops_the_run_and_a_rerun_goes_on(
    test_video, testbench_store, tmp_path, capsys
):
    """Errors in a row mean a dead endpoint: stop, say why on stderr under --quiet, exit 1,
    keep the records; a rerun with --retry-failed finishes the run."""
    down = threading.Event()
    down.set()

    def rule(body):
        return Fail(400, "scripted outage") if down.is_set() else Say(THINK_B)

    with RuleServer(rule) as server:
        argv = eval_argv(test_video, tmp_path, testbench_store, server.base_url)
        assert main([*argv, "--max-consecutive-errors", "3"]) == 1
        err = capsys.readouterr().err
        assert len(read_records(tmp_path / "agent")) == 3  # one worker: nothing in flight
        assert len(server.requests) == 3
        stop_line = next(line for line in err.splitlines() if "stopped" in line)
        assert "3 errors in a row" in stop_line and "scripted outage" in stop_line
        assert "--retry-failed" in stop_line
        manifest = json.loads((tmp_path / "agent" / "run.json").read_text())
        assert manifest["runs"][-1]["ended"] == "stopped"
        down.clear()
        assert main([*argv, "--retry-failed"]) == 0
    records = read_records(tmp_path / "agent")
    assert len(records) == 16 and {r["status"] for r in records} == {"answered"}


def test_errors_in_a_row_never_stop_a_run_with_zero(
    testbench, test_video, testbench_store, tmp_path
):
    with RuleServer(lambda body: Fail(400, "scripted outage")) as server:
        settings = settings_for(testbench_store, server.base_url)
        outcome = evaluator(
            testbench, test_video, tmp_path, settings, limit=5, max_consecutive_errors=0
        ).run()
    assert outcome.stopped is None and outcome.ran == 5


def test_a_missing_video_counts_once_in_the_errors_in_a_row(test_video, testbench_store, tmp_path):
    """One missing video with many questions is not a wrong --videos; several in a row are."""
    one_video = [Question(f"a{i}", "absent", "Colour?", ["red", "yellow"], "A") for i in range(5)]
    many = [Question(f"m{i}", f"absent-{i}", "Colour?", ["red", "yellow"], "A") for i in range(5)]
    settings = settings_for(testbench_store, "http://127.0.0.1:9/v1")
    kept = evaluator(one_video, test_video, tmp_path / "one", settings, max_consecutive_errors=2)
    assert kept.run().stopped is None
    stopped = evaluator(many, test_video, tmp_path / "many", settings, max_consecutive_errors=2)
    outcome = stopped.run()
    assert outcome.stopped is not None and "2 errors in a row" in outcome.stopped
    assert outcome.ran == 2 and "absent-1.mp4" in outcome.stopped


def test_bad_max_consecutive_errors_is_one_line(tmp_path, capsys):
    argv = ["eval", "testbench", "--out", str(tmp_path), "--max-consecutive-errors", "-1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == "lvr1 eval: error: --max-consecutive-errors must be 0 or more, got -1"


# refusals ---------------------------------------------------------------------------------


def test_another_configuration_is_refused_in_one_line(
    test_video, testbench_store, tmp_path, capsys
):
    with RuleServer(lambda body: Say(THINK_B)) as server:
        argv = eval_argv(test_video, tmp_path, testbench_store, server.base_url, "--limit", "1")
        assert main(argv) == 0
        capsys.readouterr()
        other = [a if a != "scripted-model" else "another-model" for a in argv]
        assert main(other) == 2
        err = capsys.readouterr().err.strip()
        assert main([*argv, "--max-rounds", "5"]) == 2
        err_rounds = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("lvr1 eval: error:")
    assert "reasoning model was 'openai:scripted-model', now 'openai:another-model'" in err
    assert "parameter max_rounds was 30, now 5" in err_rounds


def test_a_folder_from_before_a_new_agent_setting_resumes_while_it_keeps_its_default(
    test_video, testbench_store, tmp_path, capsys
):
    with RuleServer(lambda body: Say(THINK_B)) as server:
        argv = eval_argv(test_video, tmp_path, testbench_store, server.base_url, "--limit", "1")
        assert main(argv) == 0
        manifest_path = tmp_path / "agent" / "run.json"
        manifest = json.loads(manifest_path.read_text())
        for added in ("min_depth", "guide"):  # as a run.json written before these settings
            del manifest["params"][added]
        manifest_path.write_text(json.dumps(manifest))
        capsys.readouterr()
        assert main([*argv[:-2], "--limit", "2"]) == 0
        assert main([*argv, "--min-depth", "2"]) == 2
        err = capsys.readouterr().err.strip()
    assert len(read_records(tmp_path / "agent")) == 2
    assert "variant was 'agent', now 'agent-min-depth-2'" in err


@pytest.mark.parametrize(
    "where, says",
    [
        ("file", "is a file, not a folder"),
        ("file/sub", "is a file, not a folder"),
        ("/proc/lvr1-no-such-dir", "cannot write"),
    ],
)
def test_an_out_that_cannot_hold_a_run_is_one_line(test_video, tmp_path, capsys, where, says):
    (tmp_path / "file").write_text("a file")
    argv = ["eval", "testbench", "--videos", str(test_video.path.parent), "--quiet"]
    argv += ["--out", str(tmp_path / where), "--reasoning-base-url", "http://127.0.0.1:9/v1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("lvr1 eval: error:"), err
    assert says in err and "--out" in err


def test_one_writer_per_folder(testbench, test_video, testbench_store, tmp_path):
    settings = settings_for(testbench_store, "http://127.0.0.1:9/v1")
    folder = RunFolder(tmp_path / "agent")
    with folder.lock(), pytest.raises(ConfigError, match="another lvr1 eval is writing"):
        evaluator(testbench, test_video, tmp_path, settings).run()


def test_cli_reads_a_benchmark_file_and_records_a_missing_video(
    test_video, testbench_store, tmp_path, capsys
):
    items = [
        {"qid": "ok", "video_uid": "testvideo", "question": "Colour?",
         "choices": ["red", "yellow"], "right_answer": "B", "clue_intervals": []},
        {"qid": "gone", "video_uid": "absent", "question": "Colour?",
         "choices": ["red", "yellow"], "right_answer": "A", "clue_intervals": []},
    ]  # fmt: skip
    path = tmp_path / "cgbench_mini.json"
    path.write_text(json.dumps(items))
    with RuleServer(lambda body: Say(THINK_B)) as server:
        argv = eval_argv(test_video, tmp_path / "out", testbench_store, server.base_url)
        argv[1] = str(path)
        code = main([*argv, "--benchmark", "CG-Bench"])
    assert code == 1  # a question recorded as an error
    out = capsys.readouterr().out
    assert "accuracy 50.0% (1/2)" in out and "missing_video 1" in out
    records = {r["question_id"]: r for r in read_records(tmp_path / "out" / "agent")}
    assert records["gone"]["reason"].endswith("absent.mp4")
    manifest = json.loads((tmp_path / "out" / "agent" / "run.json").read_text())
    assert manifest["benchmark"] == "cgbench" and manifest["questions"]["count"] == 2


def test_cli_needs_a_benchmark_and_videos_for_a_file(tmp_path, capsys):
    path = tmp_path / "q.json"
    path.write_text("[]")
    assert main(["eval", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "--benchmark" in capsys.readouterr().err
    argv = ["eval", str(path), "--benchmark", "cgbench", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "--videos" in capsys.readouterr().err
    assert main(["eval", "testbench", "--out", str(tmp_path), "--workers", "0"]) == 2


def test_random_walk_budget_comes_from_the_agent_or_the_manifest(tmp_path):
    options = MethodOptions(method="random-walk")
    with pytest.raises(ConfigError, match="--walk-calls"):
        resolve_walk_calls(options, tmp_path)
    folder = RunFolder(tmp_path / "agent")
    for i, calls in enumerate([6, 8, 13]):  # width 4: 2, 4 and 9 agent calls
        folder.write_record(_record(f"q{i}", trace="t", cost=Cost(caption_calls=calls), width=4))
    assert resolve_walk_calls(options, tmp_path).walk_calls == 5
    assert make_method(resolve_walk_calls(options, tmp_path), settings_for(tmp_path)).calls == 5
    assert resolve_walk_calls(MethodOptions("random-walk", walk_calls=2), tmp_path).walk_calls == 2


# scoring and metrics ----------------------------------------------------------------------


def _record(qid: str, **fields) -> ItemRecord:
    base = {
        "question_id": qid,
        "video_id": "v",
        "benchmark": "b",
        "method": "agent",
        "variant": "agent",
        "expected": "A",
        "status": "answered",
    }
    return ItemRecord(**{**base, **fields})


def test_scoring_is_strict_after_normalisation():
    q = Question("q", "v", "Which?", ["red", "yellow", "blue"], "B")

    def trace(answer, status="answered"):
        return Trace(question="Which?", duration=10, width=4, answer=answer, status=status)

    def score(t):
        return record_from_trace(q, "agent", "agent", t, 1.0, "traces/q.json")

    assert score(trace("B")).correct
    assert score(trace("yellow")).answer == "B"  # the option's text names the letter
    assert not score(trace("C")).correct
    unparsable = score(trace("maybe the second one"))
    assert (unparsable.status, unparsable.failure, unparsable.answer) == (
        "no_answer",
        "unparsable",
        None,
    )
    assert score(trace(None, "error")).failure == "error"
    unscored = record_from_trace(
        Question("u", "v", "Which?", ["a", "b"], None), "agent", "agent", trace("A"), 1, "t"
    )
    assert not unscored.correct and not unscored.scored


def test_metrics_count_failures_apart_and_by_category():
    records = [
        _record("1", answer="A", correct=True, category="speech", trace="t", seconds=1),
        _record("2", answer="B", category="speech", trace="t", seconds=2),
        _record("3", status="no_answer", failure="no_answer", category="visual", trace="t"),
        _record("4", status="error", failure="missing_video", category="visual"),
        _record("5", expected=None, answer="A", trace="t", seconds=3),
    ]
    m = compute_metrics(records)
    assert (m.n, m.scored, m.correct, m.accuracy) == (5, 4, 1, 0.25)
    assert m.failures == 2 and m.failure_kinds == {"missing_video": 1, "no_answer": 1}
    assert m.answered_accuracy == 0.5
    assert m.categories["speech"].accuracy == 0.5 and m.categories["visual"].accuracy == 0.0
    assert m.cost["seconds"].n == 4 and m.cost["seconds"].mean == 1.5


def test_distribution_uses_nearest_rank_percentiles():
    d = Distribution.of([float(x) for x in range(1, 11)])
    assert (d.mean, d.median, d.p90, d.total) == (5.5, 5.5, 9.0, 55.0)
    assert Distribution.of([]).n == 0
    assert Distribution.of([7.0]).p90 == 7.0


def test_question_ids_make_safe_distinct_file_names():
    assert safe_name("tv-01") == "tv-01"
    odd = [safe_name("a/b"), safe_name("a_b"), safe_name("a:b"), safe_name("../x")]
    assert len(set(odd)) == 4
    assert all("/" not in n and not n.startswith(".") for n in odd)


# grounding --------------------------------------------------------------------------------


def _seen(node_id, start, end, how="get_caption") -> Evidence:
    level = ("high", "medium", "low")[len(node_id) - 1]
    return Evidence(node_id=node_id, level=level, start=start, end=end, how=how, round=1)


def _grounded(evidence, clues, method="agent", duration=160.0) -> ItemRecord:
    q = Question("q", "v", "Which?", ["a", "b"], "A", clue_intervals=clues)
    trace = Trace(question="Which?", duration=duration, width=4, answer="A", status="answered")
    trace.evidence = list(evidence)
    return record_from_trace(q, method, "v", trace, 1.0, "traces/q.json")


def test_grounding_counts_medium_and_low_visits_and_video_qa_leaves_by_hand():
    """Width 4 over 160 s: high 40 s, medium 10 s, low 2.5 s. The random walk's opening high
    caption is no visit; the leaf read and asked counts once; the medium holds the clue."""
    record = _grounded(
        [
            _seen((1,), 0.0, 40.0),  # opening: given to every method, not a choice
            _seen((1, 2), 10.0, 20.0),
            _seen((1, 2, 3), 15.0, 17.5),
            _seen((1, 2, 3), 15.0, 17.5, how="video_qa"),
        ],
        clues=[(12.0, 18.0)],
    )
    assert (record.visited_nodes, record.deepest_level, record.clue_hit) == (2, "low", True)
    # visited union [10, 20): 10 s; clue 6 s, all of it read
    assert record.grounding_precision == pytest.approx(0.6)
    assert record.grounding_recall == pytest.approx(1.0)
    assert record.grounding_f1 == pytest.approx(0.75)


def test_grounding_of_a_miss_of_nothing_and_of_no_clues():
    miss = _grounded([_seen((4, 1), 120.0, 130.0)], clues=[(12.0, 18.0)])
    assert (miss.clue_hit, miss.grounding_f1, miss.deepest_level) == (False, 0.0, "medium")
    nothing = _grounded([], clues=[(12.0, 18.0)])  # the agent chose to read nothing
    assert (nothing.visited_nodes, nothing.deepest_level) == (0, None)
    assert (nothing.clue_hit, nothing.grounding_f1) == (False, 0.0)
    unclued = _grounded([_seen((1, 2), 10.0, 20.0)], clues=[])
    assert (unclued.visited_nodes, unclued.deepest_level) == (1, "medium")
    assert unclued.clue_hit is None and unclued.grounding_f1 is None


def test_uniform_frames_has_no_grounding_at_all():
    record = _grounded([], clues=[(12.0, 18.0)], method="uniform-frames")
    assert record.visited_nodes is None and record.deepest_level is None
    assert record.clue_hit is None and record.grounding_f1 is None


def test_reading_every_leaf_scores_the_clues_share_of_the_video():
    """caption-all: recall 1, precision the clue's share; a clue running past the end (within
    the loaders' tolerance) is cut to the video first."""
    tree = Tree(duration=160.0, width=4, n_frames=4000)
    leaves = [_seen(n.id, n.start, n.end) for n in tree.nodes(3)]
    record = _grounded(leaves, clues=[(12.0, 18.0), (155.0, 161.0)], method="caption-all")
    assert record.visited_nodes == 64 and record.grounding_recall == pytest.approx(1.0)
    assert record.grounding_precision == pytest.approx(11.0 / 160.0)


def test_deepest_level_by_hand():
    assert deepest_level(["medium", "low", "medium"]) == "low"
    assert deepest_level(["high", "medium"]) == "medium"
    assert deepest_level([]) is None


def test_records_from_before_grounding_and_attempts_still_load():
    old = _record("q", trace="t").model_dump(mode="json")
    for name in ("visited_nodes", "deepest_level", "clue_hit", "grounding_precision",
                 "grounding_recall", "grounding_f1", "prior_attempts", "prior_cost",
                 "prior_seconds"):  # fmt: skip
        del old[name]
    record = ItemRecord.model_validate_json(json.dumps(old))
    assert record.clue_hit is None and record.visited_nodes is None
    assert record.prior_attempts == 0 and record.prior_cost is None


GET_3_2 = "<think>The box is in the middle.</think>\n<tool>get_caption((3, 2))</tool>"


def _look_then_answer(body) -> Say:
    """Round 1 reads the medium segment (3, 2); round 2 answers B."""
    first = sum(1 for m in body["messages"] if m["role"] == "assistant") == 0
    return Say(GET_3_2 if first else THINK_B)


def test_an_agent_run_records_its_grounding_and_the_report_shows_it(
    testbench, test_video, testbench_store, tmp_path, capsys
):
    with RuleServer(_look_then_answer) as server:
        settings = settings_for(testbench_store, server.base_url)
        outcome = evaluator(testbench, test_video, tmp_path / "run", settings, limit=2).run()
    by_id = {r.question_id: r for r in outcome.records}
    with Video.open(test_video.path) as video:
        tree = Tree.for_video(video.info.duration, video.info.n_frames)
    seg = tree.node((3, 2))
    assert seg.start < 89.48 < seg.end  # tv-01's clue [89.48, 104.64) starts inside it
    first = by_id["tv-01"]
    assert (first.visited_nodes, first.deepest_level, first.clue_hit) == (1, "medium", True)
    common = seg.end - 89.48
    assert first.grounding_precision == pytest.approx(common / (seg.end - seg.start))
    assert first.grounding_recall == pytest.approx(common / (104.64 - 89.48))
    assert by_id["tv-02"].clue_hit is False  # its clue [104.64, 108.64) lies further on
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "r.md")]) == 0
    text = (tmp_path / "r.md").read_text()
    f1 = f"{first.grounding_f1 / 2:.2f}"  # the mean over two questions, one missed
    assert f"| agent | run | 50.0% | 1/2 | {f1} |" in text
    assert text.count("| 0 / 2 / 0 |") == 1  # deepest level: low / medium / none
    assert f"| 50.0% (1/2); clue hits 1/2, F1 {f1} |" in text


# attempts ---------------------------------------------------------------------------------


def test_an_interrupted_question_keeps_what_it_spent_and_its_rerun_sums_it(
    testbench, test_video, testbench_store, tmp_path
):
    """Stopped between rounds: no result, but an attempt file with its cost; the rerun's
    record adds it (``prior_attempts``, ``prior_cost``) and the metrics count it as spent."""
    stopping: dict[str, Any] = {}

    def rule(body):
        if not stopping:  # the first round of the first question: stop the run meanwhile
            stopping["done"] = True
            first_run.stop.set()
        return _look_then_answer(body)

    with RuleServer(rule) as server:
        settings = settings_for(testbench_store, server.base_url)
        first_run = evaluator(testbench, test_video, tmp_path, settings, limit=2)
        outcome = first_run.run()
        assert outcome.ran == 0 and outcome.records == []
        folder = RunFolder(tmp_path / "agent")
        (attempt,) = folder.attempts_of("tv-01")
        assert (attempt.attempt, attempt.ended, attempt.reason) == (1, "interrupted", "interrupted")
        assert attempt.cost.reasoning_calls == 1 and attempt.cost.rounds == 1
        assert attempt.cost.caption_calls == 4 + 1  # the opening's four highs, then (3, 2)
        again = evaluator(testbench, test_video, tmp_path, settings, limit=2).run()
    by_id = {r.question_id: r for r in again.records}
    assert by_id["tv-01"].prior_attempts == 1 and by_id["tv-02"].prior_attempts == 0
    assert by_id["tv-01"].prior_cost == attempt.cost
    assert by_id["tv-01"].prior_seconds == pytest.approx(attempt.seconds)
    m = compute_metrics(again.records)
    assert (m.prior.attempts, m.prior.questions, m.prior.cost.reasoning_calls) == (1, 1, 1)
    assert m.cost["gpu_seconds_spent"].total == pytest.approx(m.cost["gpu_seconds"].total + 2.5 * 1)


def test_attempts_are_numbered_per_question_and_summed(tmp_path):
    folder = RunFolder(tmp_path)
    folder.write_attempt("q1", "interrupted", Cost(reasoning_calls=2, captions_made=1), 3.0)
    folder.write_attempt("q1.5", "interrupted", Cost(reasoning_calls=7), 1.0)  # "q1.*" too
    folder.write_attempt("q1", "replaced", Cost(reasoning_calls=1, model_seconds=0.5), 2.0)
    (folder.attempts / "q1.9.json").write_text("{ damaged")
    attempts = folder.attempts_of("q1")
    assert [(a.attempt, a.ended) for a in attempts] == [(1, "interrupted"), (2, "replaced")]
    assert isinstance(attempts[0], Attempt) and sorted(p.name for p in folder.attempts.iterdir())
    total = add_costs(a.cost for a in attempts)
    assert (total.reasoning_calls, total.captions_made, total.model_seconds) == (3, 1, 0.5)
    assert not list(folder.attempts.glob(".*.tmp"))


# the embedded default ---------------------------------------------------------------------


@pytest.mark.slow
def test_every_method_on_the_embedded_default(test_video, tmp_path, monkeypatch, capsys):
    """One shipped question per method on the CPU defaults: every reply constrained and
    usable, so every method answers (right or wrong: accuracy is not asserted)."""
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    out, testbench_store = tmp_path / "out", tmp_path / "store.sqlite"
    base = ["eval", "testbench", "--videos", str(test_video.path.parent), "--out", str(out)]
    base += ["--store", str(testbench_store), "--limit", "1", "--quiet", "--max-rounds", "4"]
    for method in METHODS:
        extra = ["--walk-calls", "3"] if method == "random-walk" else []
        assert main([*base, "--method", method, *extra]) == 0, method
    capsys.readouterr()
    variants = {}
    for method in METHODS:
        manifest = json.loads((out / method / "run.json").read_text())
        variants[method] = manifest["variant"]
        assert manifest["identities"].get("reasoning", "").startswith("embedded:")
        records = read_records(out / method)
        assert len(records) == 1
        for record in records:
            assert record["status"] == "answered", (method, record.get("reason"))
            assert record["answer"] in ("A", "B", "C", "D")
            assert record["cost"]["rounds"] >= 1 and record["cost"]["parse_errors"] == 0
            assert record["seconds"] > 0
            trace = json.loads((out / method / record["trace"]).read_text())
            assert trace["config"]["constrained"] and trace["config"]["answer_form"] == "text"
            assert all(r["constrained"] for r in trace["rounds"]), method
        assert manifest["params"]["parser_version"] == protocol.PARSER_VERSION
    assert variants["uniform-frames"] == "embedded-descriptors"
    assert read_records(out / "caption-all")[0]["cost"]["caption_calls"] == 64
    assert read_records(out / "random-walk")[0]["cost"]["caption_calls"] == 4 + 3
    assert main(["report", str(out), "--out", str(tmp_path / "r.md")]) == 0
    assert (tmp_path / "r.png").stat().st_size > 1000
    report = (tmp_path / "r.md").read_text()  # --limit 1: every method partial, and said so
    assert report.count("| 1 of 16, partial |") == len(METHODS)
    assert "Accuracy counts every question" not in report
    assert "the last run was limited to 1 (--limit)" in report


# Ray (the cluster itself is exercised in test_evaluate_ray.py) ----------------------------


def test_ray_without_ray_installed_is_one_line(test_video, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    argv = ["eval", "testbench", "--videos", str(test_video.path.parent), "--out", str(tmp_path)]
    assert main([*argv, "--ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "lvr1 eval: error: --ray needs Ray, which is not installed: "
        "pip install 'longvideo-r1[dist]'"
    )
    assert not (tmp_path / "agent").exists()


def test_bad_ray_options_are_one_line(tmp_path, capsys):
    argv = ["eval", "testbench", "--out", str(tmp_path), "--ray", "auto"]
    assert main([*argv, "--ray-cpus", "0"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "lvr1 eval: error: --ray-cpus must be more than 0, got 0.0"
    )
    argv[-1] = "head-without-port"
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--ray takes HOST:PORT" in err
    assert not (tmp_path / "agent").exists()  # refused before anything was made


def test_an_unreachable_ray_head_is_one_line_within_seconds(test_video, tmp_path, capsys):
    pytest.importorskip("ray")
    argv = ["eval", "testbench", "--videos", str(test_video.path.parent), "--out", str(tmp_path)]
    started = time.monotonic()
    assert main([*argv, "--ray", "127.0.0.1:1"]) == 2  # nothing listens on port 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("lvr1 eval: error: no Ray head answers at 127.0.0.1:1")
    assert len(err.splitlines()) == 1 and time.monotonic() - started < 30


@pytest.mark.parametrize("name", METHODS)
def test_every_method_travels_to_ray_workers(name, tmp_path):
    """What a Ray worker receives pickles and works, even after the driver used the method."""
    settings = settings_for(tmp_path / "store.sqlite")
    method = make_method(MethodOptions(method=name, walk_calls=2), settings)
    method.identities(settings, "reasoning-id")  # the driver builds the manifest first
    job = Job(settings, method, tmp_path)
    copy = pickle.loads(pickle.dumps(job))
    assert copy.method.params() == method.params() and copy.settings == settings
    assert copy.worker(0, 1).make_backend is not None or not method.needs_reasoning


def test_the_manifest_names_navigable_captions_apart():
    """A run with navigable captions never resumes one without them, nor the reverse."""
    plain = Settings.model_validate({"captioner": "embedded", "levers": "off"})
    nav = Settings.model_validate({"captioner": "embedded", "navigable_captions": True})
    agent = make_method(MethodOptions(method="agent"), plain)
    before, after = agent.identities(plain, "r")["caption"], agent.identities(nav, "r")["caption"]
    assert after == before + "-nav1"
    assert video_qa_identity(nav) == f"captions:{after}"
    default = Settings.model_validate({"captioner": "embedded"})  # levers auto: navigable
    assert agent.identities(default, "r")["caption"] == after


def test_a_guided_run_is_named_retrieval_guided_and_records_its_levers(
    test_video, testbench_store, tmp_path, capsys
):
    with RuleServer(lambda body: Say(THINK_B)) as server:
        argv = eval_argv(test_video, tmp_path, testbench_store, server.base_url, "--limit", "1")
        main([*argv, "--guide", "2", "--min-depth", "2"])
    manifest = json.loads((tmp_path / "agent" / "run.json").read_text())
    assert manifest["method"] == "agent"
    assert manifest["variant"] == "retrieval-guided-bm25-k2-min-depth-2"
    assert (manifest["params"]["guide"], manifest["params"]["min_depth"]) == (2, 2)
    (record,) = read_records(tmp_path / "agent")
    assert record["variant"] == manifest["variant"]
    trace = Trace.load(tmp_path / "agent" / record["trace"])
    assert len(trace.rounds[0].offered or ()) == 2  # the guide offered two segments
    assert "no answer is accepted before" in (trace.rounds[0].parse_error or "")
    assert make_method(MethodOptions(), settings_for(tmp_path)).variant == "agent"
