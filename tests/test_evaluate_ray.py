"""lvr1 eval --ray: a local Ray cluster answers like threads, resumes, and records crashes.

One Ray instance (2 CPUs, no dashboard) serves the whole module. Its worker
processes inherit PYTHONPATH from this process at start, so they import the
package under test and these helpers (``helpers_eval``) as the driver does.
The agent talks over real HTTP to rule servers, as in test_evaluate.py; the
crash tests use a stub method that needs no model.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_eval import (
    THINK_B,
    RuleServer,
    StubMethod,
    evaluator,
    question_of,
    settings_for,
)
from scripted_server import Say

from longvideo_r1.cli.main import main
from longvideo_r1.errors import ConfigError
from longvideo_r1.evaluation.metrics import compute_metrics
from longvideo_r1.questions.schema import Question
from longvideo_r1.testing.testbench import load_testbench

# CI installs the test extra, which holds Ray: there a missing Ray is a failure, not a skip.
ray = __import__("ray") if os.environ.get("CI") else pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # a Ray start is seconds on its own


@pytest.fixture(scope="module")
def cluster():
    """A local Ray of 2 CPUs whose workers import what this process imports."""
    paths = [str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = old
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def records_of(folder: Path) -> dict[str, dict]:
    return {
        r["question_id"]: r
        for r in (json.loads(p.read_text()) for p in (folder / "results").glob("*.json"))
    }


def comparable(record: dict) -> dict:
    """A record without what differs between two honest runs: clocks, worker and node."""
    drop = {"seconds", "started_at", "worker", "node"}
    out = {k: v for k, v in record.items() if k not in drop}
    out["cost"] = {k: v for k, v in record["cost"].items() if "seconds" not in k}
    return out


def letter_by_question(body) -> Say:
    """A different letter per question, so a result filed under the wrong question shows."""
    letter = "ABCD"[sum(map(ord, question_of(body))) % 4]
    return Say(f"<think>From the captions.</think>\n<answer>{letter}</answer>")


def test_ray_records_equal_thread_records(cluster, test_video, testbench_store, tmp_path):
    lost = Question("q-lost", "nowhere", "What colour?", ["red", "yellow"], "A")
    questions = [*load_testbench(subtitles=test_video.path.parent)[:7], lost]
    with RuleServer(letter_by_question) as server:
        settings = settings_for(testbench_store, server.base_url)
        threads = evaluator(questions, test_video, tmp_path / "threads", settings, workers=2).run()
        on_ray = evaluator(
            questions, test_video, tmp_path / "ray", settings, workers=2, ray="local"
        ).run()
    assert (threads.ran, on_ray.ran) == (8, 8)
    a, b = records_of(tmp_path / "threads" / "agent"), records_of(tmp_path / "ray" / "agent")
    assert sorted(a) == sorted(b) == sorted(q.id for q in questions)
    assert {k: comparable(v) for k, v in a.items()} == {k: comparable(v) for k, v in b.items()}
    assert len({r["answer"] for r in b.values()}) > 1  # the rule really varied the letter
    assert b["q-lost"]["failure"] == "missing_video"
    assert {r["node"] for r in b.values()} == {socket.gethostname()}
    assert {r["node"] for r in a.values()} == {None}
    for record in b.values():  # the driver wrote every trace a record points to
        if record["trace"]:
            trace = json.loads((tmp_path / "ray" / "agent" / record["trace"]).read_text())
            assert trace["question"] in {q.question for q in questions}
    assert compute_metrics(on_ray.records).accuracy == compute_metrics(threads.records).accuracy
    run = json.loads((tmp_path / "ray" / "agent" / "run.json").read_text())["runs"][-1]
    assert (run["engine"], run["workers"], run["nodes"]) == ("ray", 2, 1)


def test_interrupted_driver_keeps_records_and_resumes(
    cluster, test_video, testbench_store, tmp_path
):
    """Ctrl-C in the driver after 3 results: what finished is kept, the rerun does the rest."""
    bench = load_testbench(subtitles=test_video.path.parent)
    with RuleServer(lambda body: Say(THINK_B, delay=0.3)) as server:
        settings = settings_for(testbench_store, server.base_url)
        first = evaluator(bench, test_video, tmp_path, settings, workers=2, ray="local")
        write, written = first._write, []

        def write_then_interrupt(answered):
            write(answered)
            written.append(answered.record.question_id)
            if len(written) == 3:
                raise KeyboardInterrupt

        first._write = write_then_interrupt
        outcome = first.run()
        kept = records_of(tmp_path / "agent")
        asked = len(server.requests)
        assert outcome.interrupted and 3 <= len(kept) <= 5  # 3, and the 2 that were in flight
        # The one being written when Ctrl-C came is written again, whole, by the drain.
        assert sorted(kept) == sorted(set(written)) and outcome.ran == len(kept)

        again = evaluator(bench, test_video, tmp_path, settings, workers=2, ray="local").run()
        second = server.requests[asked:]
    assert not again.interrupted and (again.ran, again.skipped) == (16 - len(kept), len(kept))
    records = records_of(tmp_path / "agent")
    assert sorted(records) == sorted(q.id for q in bench)
    assert all(records[qid] == record for qid, record in kept.items())  # untouched
    texts = {q.id: q.question for q in bench}
    assert not {question_of(b) for b in second} & {texts[qid] for qid in kept}
    assert len(second) == 16 - len(kept)
    assert {r["status"] for r in records.values()} == {"answered"}


def test_a_killed_driver_keeps_every_record(cluster, test_video, testbench_store, tmp_path):
    """SIGKILL an ``lvr1 eval --ray ADDRESS`` process midway; the rerun loses and repeats nothing."""
    out = tmp_path / "out"
    with RuleServer(lambda body: Say(THINK_B, delay=0.4)) as server:
        argv = [
            "eval", "testbench", "--videos", str(test_video.path.parent), "--out", str(out),
            "--store", str(testbench_store), "--captioner", "imported:test", "--reasoning-base-url",
            server.base_url, "--reasoning-model", "scripted-model", "--quiet",
            "--ray", cluster, "--workers", "2", "--max-rounds", "3",
        ]  # fmt: skip
        code = "import sys; from longvideo_r1.cli.main import main; sys.exit(main(sys.argv[1:]))"
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        child = subprocess.Popen([sys.executable, "-c", code, *argv], env=env)
        results = out / "agent" / "results"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(results.glob("*.json"))) < 4:
            assert child.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
        time.sleep(1.0)  # a request sent just before the kill may still be read
        first = records_of(out / "agent")
        asked = len(server.requests)
        assert 4 <= len(first) < 16

        assert main(argv) == 0
        second = server.requests[asked:]
    records = records_of(out / "agent")
    assert sorted(records) == sorted(q.id for q in load_testbench())
    assert all(records[qid] == record for qid, record in first.items())
    texts = {q.id: q.question for q in load_testbench()}
    assert not {question_of(b) for b in second} & {texts[qid] for qid in first}
    assert not list((out / "agent").rglob("*.tmp"))


def test_a_dying_or_raising_worker_costs_one_question(
    cluster, test_video, testbench_store, tmp_path
):
    """A worker process that exits and a call that raises past the harness: failed records."""
    bench = load_testbench(subtitles=test_video.path.parent)[:6]
    method = StubMethod(exit_on=(bench[1].id,), escape_on=(bench[3].id,))
    settings = settings_for(testbench_store)
    outcome = evaluator(
        bench, test_video, tmp_path, settings, method=method, workers=2, ray="local"
    ).run()
    records = {r.question_id: r for r in outcome.records}
    assert sorted(records) == sorted(q.id for q in bench) and not outcome.interrupted
    died, escaped = records[bench[1].id], records[bench[3].id]
    assert (died.status, died.failure) == ("error", "error")
    assert died.reason.startswith("Ray worker ") and "died while answering it" in died.reason
    assert (escaped.status, escaped.failure) == ("error", "error")
    assert "escaped on" in escaped.reason
    others = [r for qid, r in records.items() if qid not in (bench[1].id, bench[3].id)]
    assert len(others) == 4 and all(r.status == "answered" for r in others)
    # The failures are rerun on request, by the restarted workers.
    retried = evaluator(
        bench, test_video, tmp_path, settings, method=StubMethod(), workers=2, ray="local",
        retry_failed=True,
    ).run()  # fmt: skip
    assert retried.ran == 2 and {r.status for r in retried.records} == {"answered"}


def test_more_workers_than_the_cluster_has_cpus_is_refused(
    cluster, test_video, testbench_store, tmp_path
):
    bench = load_testbench()[:1]
    ev = evaluator(bench, test_video, tmp_path, settings_for(testbench_store), method=StubMethod(),
                   workers=3, ray="local")  # fmt: skip
    with pytest.raises(ConfigError, match="3 Ray workers of 1 CPUs each need 3 CPUs"):
        ev.run()
    assert not (tmp_path / "stub" / "results").exists()


def test_cli_fills_the_cluster_by_default(cluster, test_video, testbench_store, tmp_path, capsys):
    """Without --workers, one worker per CPU of the cluster (2 here)."""
    with RuleServer(lambda body: Say(THINK_B)) as server:
        argv = [
            "eval", "testbench", "--videos", str(test_video.path.parent), "--out", str(tmp_path),
            "--store", str(testbench_store), "--captioner", "imported:test", "--quiet", "--limit", "3",
            "--reasoning-base-url", server.base_url, "--reasoning-model", "scripted-model",
            "--ray", cluster,
        ]  # fmt: skip
        assert main(argv) == 0
    assert "agent [agent] done: ran 3, skipped 0" in capsys.readouterr().out
    run = json.loads((tmp_path / "agent" / "run.json").read_text())["runs"][-1]
    assert (run["engine"], run["workers"]) == ("ray", 2)


def test_errors_in_a_row_stop_the_ray_workers_too(cluster, test_video, testbench_store, tmp_path):
    """A wrong --videos on Ray: the run stops as on threads, the question in flight drained."""
    many = [Question(f"m{i}", f"absent-{i}", "Colour?", ["red", "yellow"], "A") for i in range(12)]
    outcome = evaluator(
        many, test_video, tmp_path, settings_for(testbench_store), method=StubMethod(),
        workers=2, ray="local", max_consecutive_errors=3,
    ).run()  # fmt: skip
    assert outcome.stopped is not None and "3 errors in a row" in outcome.stopped
    assert 3 <= outcome.ran <= 4  # the other worker's question at most
    run = json.loads((tmp_path / "stub" / "run.json").read_text())["runs"][-1]
    assert (run["ended"], run["planned"]) == ("stopped", 12)
