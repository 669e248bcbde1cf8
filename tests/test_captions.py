"""CaptionService: lazy get-or-make, eager resumable builds, failures, interrupts, kills."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers_captions import (
    FAILED_CALL_FRAMES,
    HELPER,
    IDENTITY,
    FakeContext,
    FakeCue,
    FakeVideo,
    ScriptedCaptioner,
    expected_text,
    expected_times,
    read_log,
    tree_for,
)
from helpers_eval import sigint_as_default

from longvideo_r1.captions.records import CaptionRecord, ClaimOwner
from longvideo_r1.captions.service import BuildReport, CaptionService, describe_error
from longvideo_r1.captions.store import CaptionStore
from longvideo_r1.errors import CaptionError, StoreError, TreeError


def service_for(
    store: CaptionStore, captioner: ScriptedCaptioner, width: int = 3, **kwargs
) -> CaptionService:
    video = kwargs.pop("video", FakeVideo())
    return CaptionService(
        video, tree_for(video, width), captioner, store, context_factory=FakeContext, **kwargs
    )


def all_nodes(width: int) -> list[tuple[int, ...]]:
    return [n.id for n in tree_for(FakeVideo(), width).walk()]


# lazy ------------------------------------------------------------------------------


def test_get_makes_then_serves_from_store(store: CaptionStore) -> None:
    captioner = ScriptedCaptioner(wrap_tags=True)
    service = service_for(store, captioner)
    first = service.fetch((2, 1))
    assert first.made is True
    record = first.record
    assert record.text == expected_text((2, 1))  # <caption> tags stripped
    assert list(record.frame_times) == expected_times(service.tree, (2, 1))
    assert record.identity == IDENTITY and record.width == 3
    assert record.frames_decoded == 4 and record.prompt_tokens == 100 and record.seconds == 0.5
    second = service.fetch((2, 1))
    assert second.made is False and second.record == record
    assert service.get((2, 1)) == record
    assert captioner.calls == [(2, 1)]
    assert (service.cost.made, service.cost.hits, service.cost.frames_decoded) == (1, 2, 4)
    # a second service (another run) finds it in the store too
    again = service_for(store, ScriptedCaptioner())
    assert again.fetch((2, 1)).made is False


def test_video_registered_and_context_complete(store: CaptionStore) -> None:
    cues = [
        FakeCue(0.0, 5.0, "before"),
        FakeCue(28.0, 31.0, "straddles the start"),
        FakeCue(40.0, 40.0, "instant inside"),
        FakeCue(59.0, 61.0, "straddles the end"),
        FakeCue(60.0, 62.0, "starts at the end"),
    ]
    captioner = ScriptedCaptioner()
    service = service_for(store, captioner, cues=cues)
    video = store.get_video(service.video.fingerprint)
    assert (video.path, video.duration, video.n_frames, video.width) == (
        "/videos/demo.mp4",
        90.0,
        900,
        3,
    )
    service.get((2,))  # spans [30, 60)
    ctx = captioner.contexts[0]
    assert ctx.node.id == (2,) and ctx.tree is service.tree and ctx.video is service.video
    assert [c.text for c in ctx.cues] == [
        "straddles the start",
        "instant inside",
        "straddles the end",
    ]
    ctx.artifacts.put("speech:test", {"words": 3})
    assert store.artifacts(service.video.fingerprint).get("speech:test") == {"words": 3}


def test_eight_threads_asking_for_one_node_make_it_once(store: CaptionStore) -> None:
    captioner = ScriptedCaptioner(delay=0.2)
    service = service_for(store, captioner)
    barrier = threading.Barrier(8)
    results = []

    def ask() -> None:
        barrier.wait()
        results.append(service.fetch((1, 2, 3)))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert captioner.calls == [(1, 2, 3)]
    assert len(results) == 8 and len({r.record for r in results}) == 1
    assert sum(r.made for r in results) == 1
    assert service.cost.made == 1 and service.cost.hits == 7


def test_different_nodes_are_made_concurrently(store: CaptionStore) -> None:
    captioner = ScriptedCaptioner(delay=0.2)
    service = service_for(store, captioner)
    threads = [threading.Thread(target=service.get, args=((i,),)) for i in (1, 2, 3)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert captioner.max_active == 3
    assert time.monotonic() - started < 0.55


def test_failed_get_is_recorded_and_a_later_success_clears_it(store: CaptionStore) -> None:
    service = service_for(store, ScriptedCaptioner(fail={(3,)}))
    with pytest.raises(CaptionError, match=r"scripted failure for node \(3,\)"):
        service.get((3,))
    [failure] = store.list_failures()
    assert failure.node_id == (3,) and failure.attempts == 1 and "scripted failure" in failure.error
    assert service.cost.failed == 1
    healthy = service_for(store, ScriptedCaptioner())
    assert healthy.get((3,)).text == expected_text((3,))
    assert store.list_failures() == []


def test_captioner_bug_keeps_its_traceback_but_is_recorded(store: CaptionStore) -> None:
    service = service_for(store, ScriptedCaptioner(crash={(1,)}))
    with pytest.raises(ValueError, match="scripted bug"):
        service.get((1,))
    assert store.list_failures()[0].error == "ValueError: scripted bug spanning two lines"


def test_empty_caption_is_a_failure_not_a_cache_entry(store: CaptionStore) -> None:
    captioner = ScriptedCaptioner()
    captioner.caption = lambda ctx: type(  # type: ignore[method-assign]
        "R", (), {"text": "<caption> </caption>", "frame_times": [], "frame_ids": []}
    )()
    service = service_for(store, captioner)
    with pytest.raises(CaptionError, match=r"empty caption for node \(1, 1\)"):
        service.get((1, 1))
    assert store.stats().captions == 0 and len(store.list_failures()) == 1


def test_invalid_node_is_refused_before_any_call(store: CaptionStore) -> None:
    captioner = ScriptedCaptioner()
    service = service_for(store, captioner)
    with pytest.raises(TreeError, match="out of range"):
        service.get((4,))
    with pytest.raises(TreeError):
        service.get((1, 1, 1, 1))
    assert captioner.calls == []


def test_default_context_is_the_contract_caption_context(store: CaptionStore) -> None:
    captioners = pytest.importorskip("longvideo_r1.captions.captioner")
    captioner = ScriptedCaptioner()
    video = FakeVideo()
    service = CaptionService(video, tree_for(video, 3), captioner, store)
    service.get((1,))
    assert isinstance(captioner.contexts[0], captioners.CaptionContext)


def test_a_failed_call_keeps_what_it_spent(store: CaptionStore) -> None:
    service = service_for(store, ScriptedCaptioner(fail={(3,)}))
    for _ in range(2):
        with pytest.raises(CaptionError) as info:
            service.get((3,))
    # the error carries the spend for whoever accounts per question (the agent's trace)
    assert info.value.spent.frames_decoded == FAILED_CALL_FRAMES
    assert service.cost.failed == 2 and service.cost.made == 0
    assert service.cost.frames_decoded == service.cost.failed_frames_decoded == 2 * 7
    assert service.cost.seconds == pytest.approx(0.5) and service.cost.prompt_tokens == 60
    [failure] = store.list_failures()
    assert (failure.attempts, failure.frames_decoded, failure.prompt_tokens) == (2, 14, 60)
    assert failure.seconds == pytest.approx(0.5)
    service_for(store, ScriptedCaptioner()).get((3,))  # made at last: the attempts stay counted
    assert store.list_failures() == []
    [resolved] = store.list_failures(resolved=True)
    assert resolved.resolved_at is not None and resolved.frames_decoded == 14
    stats = store.stats()
    assert (stats.failures, stats.failed_attempts, stats.failed_frames_decoded) == (0, 2, 14)
    assert stats.frames_decoded == 4  # the caption's own cost apart


def test_a_bug_is_charged_its_time_at_least(store: CaptionStore) -> None:
    service = service_for(store, ScriptedCaptioner(crash={(1,)}, delay=0.05))
    with pytest.raises(ValueError) as info:
        service.get((1,))
    assert info.value.spent.frames_decoded == 0 and info.value.spent.seconds >= 0.05
    assert store.list_failures()[0].seconds >= 0.05


def test_a_lost_race_is_charged_this_call_not_the_winner(store: CaptionStore) -> None:
    """Should another process store the node first (a lapsed claim), this call serves its
    text but is charged what it spent itself, not the winner's record."""
    captioner = ScriptedCaptioner()
    service = service_for(store, captioner)
    winner = CaptionRecord(
        service.video.fingerprint, 3, (2, 2), IDENTITY, "the other process's caption",
        frames_decoded=99, prompt_tokens=999, seconds=9.0,
    )  # fmt: skip
    plain = captioner.caption

    def racing(ctx):
        store.put_caption(winner)
        return plain(ctx)

    captioner.caption = racing  # type: ignore[method-assign]
    fetched = service.fetch((2, 2))
    assert fetched.made is True and fetched.record.text == "the other process's caption"
    assert (fetched.record.frames_decoded, fetched.record.prompt_tokens) == (4, 100)
    assert fetched.record.seconds == 0.5


def test_a_node_claimed_elsewhere_is_waited_for_and_served_as_a_hit(store: CaptionStore) -> None:
    captioner = ScriptedCaptioner()
    service = service_for(store, captioner, poll=0.02)
    key = service.key((1, 1))
    other = ClaimOwner.current("another-service")
    assert store.claim(key, other, lease=60).ours

    def finish_elsewhere() -> None:
        time.sleep(0.2)
        store.put_caption(
            CaptionRecord(key.fingerprint, key.width, key.node_id, key.identity, "made elsewhere")
        )
        store.release_claim(key, other)

    thread = threading.Thread(target=finish_elsewhere)
    thread.start()
    fetched = service.fetch((1, 1))
    thread.join()
    assert (fetched.made, fetched.record.text) == (False, "made elsewhere")
    assert captioner.calls == [] and service.cost.hits == 1 and service.cost.frames_decoded == 0


def test_a_lapsed_claim_is_taken_over(store: CaptionStore) -> None:
    captioner = ScriptedCaptioner()
    service = service_for(store, captioner, poll=0.02)
    assert store.claim(service.key((2,)), ClaimOwner.current("stalled"), lease=0.1).ours
    fetched = service.fetch((2,))  # waits out the lease, then makes it
    assert fetched.made is True and captioner.calls == [(2,)]


def test_describe_error_is_one_line() -> None:
    assert describe_error(CaptionError("node (1,) failed")) == "node (1,) failed"
    assert describe_error(RuntimeError("a\n  b")) == "RuntimeError: a b"
    assert describe_error(TimeoutError()) == "TimeoutError"


# eager -----------------------------------------------------------------------------


def test_build_makes_everything_then_is_a_no_op(store: CaptionStore) -> None:
    captioner = ScriptedCaptioner()
    service = service_for(store, captioner)
    report = service.build(workers=4, progress=False)
    assert isinstance(report, BuildReport)
    assert (report.total, report.made, report.cached, report.failed) == (39, 39, 0, [])
    assert report.ok and not report.interrupted
    assert report.cost.made == 39 and report.cost.frames_decoded == 39 * 4
    assert report.cost.prompt_tokens == 3900 and report.cost.seconds == pytest.approx(19.5)
    assert sorted(captioner.calls) == sorted(all_nodes(3))
    assert "39 made" in report.summary()
    again = service_for(store, ScriptedCaptioner())
    second = again.build(workers=4, progress=False)
    assert (second.made, second.cached) == (0, 39) and again.captioner.calls == []


def test_build_selected_depths_and_force(store: CaptionStore) -> None:
    captioner = ScriptedCaptioner()
    service = service_for(store, captioner)
    report = service.build(depths=(1, 2), workers=2, progress=False)
    assert (report.total, report.made) == (12, 12)
    assert all(len(n) <= 2 for n in captioner.calls)
    before = store.get_caption(service.key((1, 1)))
    forced = service.build(depths=(2,), workers=2, progress=False, force=True)
    assert (forced.total, forced.made, forced.cached) == (9, 9, 0)
    assert store.get_caption(service.key((1, 1))).created_at > before.created_at
    assert store.get_caption(service.key((1,))).created_at <= before.created_at


def test_build_keeps_going_past_failures_and_retries_only_them(store: CaptionStore) -> None:
    bad = {(2,), (1, 3), (3, 3, 3)}
    flaky = ScriptedCaptioner(fail=bad, crash={(2, 2, 2)})
    report = service_for(store, flaky).build(workers=4, progress=False)
    failed = dict(report.failed)
    assert set(failed) == bad | {(2, 2, 2)}
    assert failed[(1, 3)] == "scripted failure for node (1, 3)"
    assert failed[(2, 2, 2)].startswith("ValueError: scripted bug")
    assert report.made == 35 and not report.ok
    assert {f.node_id for f in store.list_failures()} == set(failed)

    skipping = ScriptedCaptioner()
    skipped = service_for(store, skipping).build(progress=False, retry_failed=False)
    assert set(skipped.skipped) == set(failed) and skipping.calls == []

    healthy = ScriptedCaptioner()
    retry = service_for(store, healthy).build(workers=4, progress=False)
    assert sorted(healthy.calls) == sorted(failed)
    assert (retry.made, retry.cached, retry.failed) == (4, 35, []) and retry.ok
    assert store.list_failures() == []


def test_failures_count_attempts_across_runs(store: CaptionStore) -> None:
    for _ in range(3):
        service_for(store, ScriptedCaptioner(fail={(1,)})).build(depths=(1,), progress=False)
    [failure] = store.list_failures()
    assert failure.attempts == 3


def test_interrupted_force_rebuild_keeps_every_old_caption(store: CaptionStore) -> None:
    service_for(store, ScriptedCaptioner()).build(progress=False)

    class Interrupting(ScriptedCaptioner):
        def caption(self, ctx):
            if len(self.calls) >= 5:
                raise KeyboardInterrupt
            return super().caption(ctx)

    stopped = service_for(store, Interrupting(prefix="v2 ")).build(
        workers=1, progress=False, force=True
    )
    assert stopped.interrupted
    service = service_for(store, ScriptedCaptioner())
    for node_id in all_nodes(3):  # every old caption still served, none half replaced
        assert service.cached(node_id).text == expected_text(node_id)
    assert stopped.swapped == 0 and "stay in use" in stopped.summary()

    resumed_captioner = ScriptedCaptioner(prefix="v2 ")
    resumed = service_for(store, resumed_captioner).build(progress=False, force=True)
    assert (resumed.made, resumed.cached, resumed.swapped) == (34, 5, 39) and resumed.ok
    assert len(resumed_captioner.calls) == 34  # the five staged before are not remade
    for node_id in all_nodes(3):
        assert service.cached(node_id).text == "v2 " + expected_text(node_id)
    assert store.staged_nodes(service.video.fingerprint, IDENTITY, 3) == set()


def test_force_remakes_a_damaged_caption(store: CaptionStore) -> None:
    service = service_for(store, ScriptedCaptioner())
    service.build(depths=(1,), progress=False)
    conn = sqlite3.connect(store.path)
    conn.execute("UPDATE captions SET frame_times = '[0.5, oops' WHERE node = '(2,)'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=r"node \(2,\) is damaged .*--force --levels high"):
        service.build(depths=(1,), progress=False)
    report = service.build(depths=(1,), progress=False, force=True)
    assert report.ok and report.swapped == 3
    assert service.cached((2,)).text == expected_text((2,))


def test_build_accounts_for_failed_calls(store: CaptionStore) -> None:
    report = service_for(store, ScriptedCaptioner(fail={(1,), (2,)})).build(
        depths=(1,), progress=False
    )
    cost = report.cost
    assert (report.made, cost.failed, cost.failed_frames_decoded) == (1, 2, 14)
    assert cost.frames_decoded == 4 + 14 and cost.failed_seconds == pytest.approx(0.5)
    assert "failed calls 0.5 s, 14 frames" in report.summary()


def test_build_shows_a_progress_bar(store: CaptionStore, capsys: pytest.CaptureFixture) -> None:
    report = service_for(store, ScriptedCaptioner(fail={(1,)})).build(depths=(1, 2))
    assert report.made == 11
    err = capsys.readouterr().err
    assert "12/12" in err and "1 failed" in err


def test_workers_must_be_positive(store: CaptionStore) -> None:
    with pytest.raises(CaptionError, match="workers"):
        service_for(store, ScriptedCaptioner()).build(workers=0, progress=False)


def test_interrupt_stops_promptly_and_keeps_finished(store: CaptionStore) -> None:
    class Interrupting(ScriptedCaptioner):
        def caption(self, ctx):
            if len(self.calls) >= 5:
                raise KeyboardInterrupt
            return super().caption(ctx)

    captioner = Interrupting(delay=0.05)
    service = service_for(store, captioner)
    started = time.monotonic()
    report = service.build(workers=1, progress=False)
    assert time.monotonic() - started < 2
    assert report.interrupted and not report.ok
    assert report.made == 5 and report.remaining > 0
    assert report.made + report.remaining == 39
    assert len(store.list_captions(service.video.fingerprint, IDENTITY, 3)) == 5
    resumed = service_for(store, ScriptedCaptioner()).build(progress=False)
    assert (resumed.made, resumed.cached) == (34, 5)


# real processes --------------------------------------------------------------------


def _start_build(
    store_path: Path, log: Path, delay: float, workers: int, go: Path | None = None
) -> subprocess.Popen:
    command = [sys.executable, str(HELPER), "build", "--store", str(store_path)]
    command += ["--log", str(log), "--delay", str(delay), "--workers", str(workers)]
    command += ["--go", str(go)] if go is not None else []
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=sigint_as_default
    )


def raw_claims(store_path: Path) -> list[tuple]:
    conn = sqlite3.connect(store_path)
    try:
        return conn.execute("SELECT node, owner FROM claims").fetchall()
    finally:
        conn.close()


def _wait_for_captions(store_path: Path, at_least: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        if store_path.exists():
            conn = sqlite3.connect(store_path, timeout=10)
            try:
                count = conn.execute("SELECT COUNT(*) FROM captions").fetchone()[0]
            except sqlite3.OperationalError:
                count = 0  # schema not created yet
            finally:
                conn.close()
            if count >= at_least:
                return
        time.sleep(0.01)
    raise AssertionError("the child build made no progress")


def _check_rows(store_path: Path) -> set[tuple[int, ...]]:
    """Every stored caption is whole and correct; return their nodes."""
    video = FakeVideo(fingerprint="k" * 64)
    tree = tree_for(video, 3)
    with CaptionStore(store_path) as store:
        records = store.list_captions(video.fingerprint, IDENTITY, 3)
        for record in records:
            assert record.text == expected_text(record.node_id)
            assert list(record.frame_times) == expected_times(tree, record.node_id)
            assert len(record.frame_ids) == 4
    conn = sqlite3.connect(store_path)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    dupes = conn.execute(
        "SELECT node FROM captions GROUP BY fingerprint, width, node, identity HAVING COUNT(*) > 1"
    ).fetchall()
    conn.close()
    assert dupes == []
    return {r.node_id for r in records}


def test_sigkilled_build_resumes_asking_only_for_missing_nodes(tmp_path: Path) -> None:
    store_path, first_log, second_log = (
        tmp_path / "store.sqlite",
        tmp_path / "first.log",
        tmp_path / "second.log",
    )
    proc = _start_build(store_path, first_log, delay=0.1, workers=3)
    _wait_for_captions(store_path, 6, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    survived = _check_rows(store_path)
    everything = set(all_nodes(3))
    assert 6 <= len(survived) < len(everything), "kill did not land mid-build"
    first_asked = read_log(first_log)
    assert survived <= set(first_asked)

    proc = _start_build(store_path, second_log, delay=0.0, workers=3)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    summary = json.loads(out)
    second_asked = read_log(second_log)
    assert Counter(second_asked) == Counter(everything - survived)  # each missing one, once
    assert summary["made"] == len(everything - survived)
    assert summary["cached"] == len(survived)
    assert _check_rows(store_path) == everything


def test_two_processes_make_each_node_once(tmp_path: Path) -> None:
    """Two builds of one video at once: every node is made by one of them, and the other
    waits for it and reads it as cached, charged nothing for it."""
    store_path, go = tmp_path / "store.sqlite", tmp_path / "go"
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    procs = [_start_build(store_path, log, delay=0.05, workers=3, go=go) for log in logs]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("go-ready-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
    summaries = [json.loads(out) for out, _ in outputs]
    asked = read_log(logs[0]) + read_log(logs[1])
    assert Counter(asked) == Counter(all_nodes(3))  # each node made exactly once
    assert sum(s["made"] for s in summaries) == 39
    for summary in summaries:
        assert summary["made"] + summary["cached"] == 39 and summary["failed"] == 0
        assert summary["frames_decoded"] == summary["made"] * 4  # only its own calls
        assert summary["service_frames_decoded"] == summary["service_made"] * 4
    assert _check_rows(store_path) == set(all_nodes(3))
    assert raw_claims(store_path) == []  # every claim given back


def test_ctrl_c_stops_a_build_promptly_and_keeps_what_was_made(tmp_path: Path) -> None:
    store_path, log = tmp_path / "store.sqlite", tmp_path / "calls.log"
    proc = _start_build(store_path, log, delay=0.3, workers=2)
    _wait_for_captions(store_path, 2, proc)
    interrupted_at = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - interrupted_at < 3, "build did not stop promptly"
    assert proc.returncode == 0, err.decode()
    summary = json.loads(out)
    assert summary["interrupted"] is True and summary["remaining"] > 0
    stored = _check_rows(store_path)
    asked = read_log(log)
    # every call that started was let finish and was kept; nothing new started
    assert len(stored) == len(asked) < 39
    assert summary["made"] <= len(stored)  # equal unless the signal split a tally
    assert os.path.getsize(store_path) > 0
