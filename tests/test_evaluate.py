"""lvr1 eval: resumable runs, failures counted as failures, refusals, metrics.

The agent runs over real HTTP against rule-playing servers and over the real
test video, with captions imported beforehand (no captioner runs), so every
test here but the last takes seconds. The last one runs every method with the
embedded CPU defaults and checks only the structure of what it wrote.
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

import pytest
from helpers_eval import (
    IDENTITY,
    THINK_B,
    RuleServer,
    evaluator,
    question_of,
    settings_for,
)
from scripted_server import Fail, Say

from longvideo_r1.agent import protocol
from longvideo_r1.agent.trace import Cost, Trace
from longvideo_r1.cli.main import main
from longvideo_r1.errors import ConfigError
from longvideo_r1.evaluation.jobs import Job
from longvideo_r1.evaluation.methods import METHODS, MethodOptions, make_method, resolve_walk_calls
from longvideo_r1.evaluation.metrics import Distribution, compute_metrics
from longvideo_r1.evaluation.records import ItemRecord, RunFolder, record_from_trace
from longvideo_r1.files import safe_name
from longvideo_r1.questions.schema import Question
from longvideo_r1.testing.testbench import load_testbench

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


def _spawn(argv: list[str]) -> subprocess.Popen:
    code = "import sys; from longvideo_r1.cli.main import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen(
        [sys.executable, "-c", code, *argv], env=env, stderr=subprocess.PIPE, text=True
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
