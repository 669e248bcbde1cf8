"""CaptionStore: records, failures, artifacts, atomicity, concurrency, bad paths."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers_captions import HELPER, IDENTITY, make_record

from longvideo_r1.captions.records import (
    SCHEMA_VERSION,
    CaptionKey,
    CaptionRecord,
    ClaimOwner,
    VideoRecord,
)
from longvideo_r1.captions.store import ArtifactCache, CaptionStore
from longvideo_r1.cli.main import main
from longvideo_r1.config import default_store_path
from longvideo_r1.errors import LVR1Error, StoreError
from longvideo_r1.media.video import file_fingerprint

FP = "a" * 64


def key(node, width=4, identity=IDENTITY, fp=FP) -> CaptionKey:
    return CaptionKey(fp, width, node, identity)


def raw_rows(path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


# captions --------------------------------------------------------------------------


def test_put_get_round_trip(store: CaptionStore) -> None:
    record = make_record(FP, 4, (1, 2, 3), text="Über ein Café\nzweite Zeile")
    stored = store.put_caption(record)
    assert stored.text == record.text
    assert stored.frame_times == (0.5, 1.5) and stored.frame_ids == (5, 15)
    assert stored.created_at > 0
    assert store.get_caption(key((1, 2, 3))) == stored
    assert store.get_caption(key((1, 2, 4))) is None
    assert stored.key == key((1, 2, 3)) and stored.label == "(1, 2, 3)"


def test_key_includes_width_and_identity(store: CaptionStore) -> None:
    store.put_caption(make_record(FP, 4, (1, 2), text="w4"))
    store.put_caption(make_record(FP, 3, (1, 2), text="w3"))
    store.put_caption(make_record(FP, 4, (1, 2), identity="other:id", text="other"))
    assert store.get_caption(key((1, 2))).text == "w4"
    assert store.get_caption(key((1, 2), width=3)).text == "w3"
    assert store.get_caption(key((1, 2), identity="other:id")).text == "other"


def test_first_caption_wins_unless_replace(store: CaptionStore) -> None:
    first = store.put_caption(make_record(FP, 4, (2,), text="first"))
    again = store.put_caption(make_record(FP, 4, (2,), text="second"))
    assert again.text == "first" and again == first
    replaced = store.put_caption(make_record(FP, 4, (2,), text="third"), replace=True)
    assert replaced.text == "third"
    assert raw_rows(store.path, "SELECT COUNT(*) FROM captions") == [(1,)]


def test_list_orders_coarse_first_in_time(store: CaptionStore) -> None:
    nodes = [(2, 1, 1), (1,), (1, 2), (1, 1, 2), (2,), (1, 1)]
    store.put_captions(make_record(FP, 4, n) for n in nodes)
    listed = [r.node_id for r in store.list_captions(FP, IDENTITY, 4)]
    assert listed == [(1,), (2,), (1, 1), (1, 2), (1, 1, 2), (2, 1, 1)]
    assert [r.node_id for r in store.list_captions(FP, IDENTITY, 4, depth=2)] == [(1, 1), (1, 2)]
    assert store.list_captions(FP, IDENTITY, 3) == []
    store.put_caption(make_record(FP, 3, (1,)))
    every_width = [(r.width, r.node_id) for r in store.list_captions(FP, IDENTITY)]
    assert every_width[:2] == [(3, (1,)), (4, (1,))] and len(every_width) == 7


def test_delete_some_or_all(store: CaptionStore) -> None:
    store.put_captions(make_record(FP, 4, (i,)) for i in range(1, 5))
    store.put_caption(make_record(FP, 4, (1,), identity="keep:me"))
    assert store.delete_captions(FP, IDENTITY, 4, [(1,), (3,)]) == 2
    assert [r.node_id for r in store.list_captions(FP, IDENTITY, 4)] == [(2,), (4,)]
    assert store.delete_captions(FP, IDENTITY, 4) == 2
    assert store.list_captions(FP, IDENTITY, 4) == []
    assert store.get_caption(key((1,), identity="keep:me")) is not None


# failures --------------------------------------------------------------------------


def test_failures_recorded_counted_and_cleared_by_caption(store: CaptionStore) -> None:
    first = store.record_failure(key((1, 1)), "endpoint down\n  traceback line")
    assert first.attempts == 1 and first.error == "endpoint down traceback line"
    second = store.record_failure(key((1, 1)), "timeout")
    assert second.attempts == 2 and second.error == "timeout"
    store.record_failure(key((2,)), "boom")
    store.record_failure(key((2,), fp="b" * 64), "other video")
    assert [f.node_id for f in store.list_failures(FP, IDENTITY, 4)] == [(2,), (1, 1)]
    assert len(store.list_failures()) == 3
    store.put_caption(make_record(FP, 4, (1, 1)))
    assert [f.node_id for f in store.list_failures(FP, IDENTITY, 4)] == [(2,)]
    assert store.clear_failure(key((2,))) is True
    assert store.clear_failure(key((2,))) is False
    assert store.list_failures(FP) == []


def test_failure_cleared_even_when_caption_already_there(store: CaptionStore) -> None:
    store.put_caption(make_record(FP, 4, (3,)))
    store.record_failure(key((3,)), "late failure from another process")
    store.put_caption(make_record(FP, 4, (3,), text="ignored"))
    assert store.list_failures(FP) == []


def test_failures_keep_what_every_attempt_spent(store: CaptionStore) -> None:
    store.record_failure(key((1,)), "timeout", seconds=2.0, frames_decoded=120, prompt_tokens=7)
    second = store.record_failure(key((1,)), "bad reply", seconds=3.0, frames_decoded=80)
    assert (second.attempts, second.seconds, second.frames_decoded) == (2, 5.0, 200)
    assert (second.prompt_tokens, second.resolved_at) == (7, None)
    store.put_caption(make_record(FP, 4, (1,)))  # made at last
    assert store.list_failures() == []
    [resolved] = store.list_failures(resolved=True)
    assert resolved.frames_decoded == 200 and resolved.resolved_at is not None
    stats = store.stats()
    assert (stats.failures, stats.failed_attempts, stats.failed_frames_decoded) == (0, 2, 200)
    assert stats.failed_seconds == 5.0 and stats.frames_decoded == 2  # the caption's own
    again = store.record_failure(key((1,)), "failed again")  # e.g. a forced rebuild
    assert again.attempts == 3 and again.resolved_at is None and again.frames_decoded == 200


def test_long_error_is_bounded(store: CaptionStore) -> None:
    failure = store.record_failure(key((1,)), "x" * 5000)
    assert len(failure.error) <= 500 and failure.error.endswith("...")


# videos, artifacts, stats ----------------------------------------------------------


def test_videos_register_and_refresh(store: CaptionStore) -> None:
    store.register_video(VideoRecord(FP, "/a/demo.mp4", 120.5, 3615, 4))
    store.register_video(VideoRecord(FP, "/b/moved.mp4", 120.5, 3615, 3))
    video = store.get_video(FP)
    assert video.path == "/b/moved.mp4" and video.width == 3 and video.registered_at > 0
    assert store.get_video("nope") is None
    assert [v.fingerprint for v in store.list_videos()] == [FP]


def test_artifacts_json_values(store: CaptionStore) -> None:
    cache = store.artifacts(FP)
    assert isinstance(cache, ArtifactCache)
    assert cache.get("speech:v1") is None
    cache.put("speech:v1", {"segments": [[0.0, 1.5, "hallo"]], "lang": "de"})
    assert cache.get("speech:v1") == {"segments": [[0.0, 1.5, "hallo"]], "lang": "de"}
    cache.put("speech:v1", [1, 2])
    assert cache.get("speech:v1") == [1, 2]
    assert store.get_artifact("b" * 64, "speech:v1") is None
    with pytest.raises(ValueError):
        cache.put("bad", math.nan)


def test_stats_count_and_sum(store: CaptionStore) -> None:
    store.register_video(VideoRecord(FP, "/a.mp4", 10.0, 100, 4))
    store.put_captions(make_record(FP, 4, (i,)) for i in range(1, 4))
    store.put_caption(make_record("b" * 64, 4, (1,), identity="x:y"))
    store.record_failure(key((4,)), "e")
    store.put_artifact(FP, "k", 1)
    everything = store.stats()
    assert everything.captions == 4 and everything.failures == 1 and everything.artifacts == 1
    assert everything.videos == 1
    assert everything.seconds == 4.0 and everything.frames_decoded == 8
    assert everything.prompt_tokens == 40 and everything.completion_tokens == 12
    assert everything.captions_by_identity == {IDENTITY: 3, "x:y": 1}
    mine = store.stats(fingerprint=FP, identity=IDENTITY)
    assert mine.captions == 3 and mine.failures == 1 and mine.seconds == 3.0


# atomicity -------------------------------------------------------------------------


def test_batch_is_all_or_nothing(store: CaptionStore) -> None:
    store.put_caption(make_record(FP, 4, (1,), text="old"))

    def records():
        yield make_record(FP, 4, (1,), text="new")
        yield make_record(FP, 4, (2,))
        yield CaptionRecord(FP, 4, (3,), IDENTITY, "bad", frame_times=(math.nan,))

    with pytest.raises(ValueError):
        store.put_captions(records(), replace=True)
    assert [(r.node_id, r.text) for r in store.list_captions(FP, IDENTITY, 4)] == [((1,), "old")]
    store.put_caption(make_record(FP, 4, (2,)))  # still usable
    assert len(store.list_captions(FP, IDENTITY, 4)) == 2


def test_process_killed_mid_transaction_leaves_old_state(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    with CaptionStore(path) as store:
        store.put_caption(make_record(FP, 4, (1,), text="old"))
    script = f"""
import os, signal
from helpers_captions import make_record
from longvideo_r1.captions.store import CaptionStore
store = CaptionStore({str(path)!r})
def records():
    yield make_record({FP!r}, 4, (1,), text="new")
    for i in range(2, 5):
        yield make_record({FP!r}, 4, (i,))
    os.kill(os.getpid(), signal.SIGKILL)
store.put_captions(records(), replace=True)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=HELPER.parent, capture_output=True, timeout=60
    )
    assert result.returncode == -9, result.stderr.decode()
    with CaptionStore(path) as store:
        assert [(r.node_id, r.text) for r in store.list_captions(FP, IDENTITY, 4)] == [
            ((1,), "old")
        ]
    assert raw_rows(path, "PRAGMA integrity_check") == [("ok",)]


# concurrency -----------------------------------------------------------------------


def test_many_threads_no_lost_or_duplicate_rows(store: CaptionStore) -> None:
    errors: list[BaseException] = []
    n_threads, per_thread = 16, 30

    def work(t: int) -> None:
        try:
            for i in range(per_thread):
                node = (t % 8 + 1, i // 8 + 1, i % 8 + 1)
                fp = f"thread-{t // 8}"
                store.put_caption(make_record(fp, 8, node))
                store.put_caption(make_record("contested", 8, (i % 8 + 1,), text=f"t{t}"))
                store.record_failure(CaptionKey("fails", 8, (t % 8 + 1,), IDENTITY), "e")
                assert store.get_caption(CaptionKey(fp, 8, node, IDENTITY)) is not None
                store.list_captions("contested", IDENTITY, 8)
                store.put_artifact(fp, f"{t}-{i}", i)
        except BaseException as exc:  # collected and re-raised on the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store.list_captions("thread-0", IDENTITY, 8)) == 8 * per_thread
    assert len(store.list_captions("thread-1", IDENTITY, 8)) == 8 * per_thread
    assert len(store.list_captions("contested", IDENTITY, 8)) == 8
    failures = store.list_failures("fails")
    assert len(failures) == 8 and sum(f.attempts for f in failures) == n_threads * per_thread
    assert store.stats().artifacts == n_threads * per_thread


def test_several_processes_write_and_read_at_once(tmp_path: Path) -> None:
    path, go = tmp_path / "shared.sqlite", tmp_path / "go"
    n_procs, per_proc, contested = 4, 100, 10
    procs = [
        subprocess.Popen(
            [sys.executable, str(HELPER), "write", "--store", str(path), "--worker", str(w)]
            + ["--n", str(per_proc), "--contested", str(contested), "--go", str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for w in range(n_procs)
    ]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready-*"))) < n_procs and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
        assert b"locked" not in err
        assert json.loads(out)["written"] == per_proc
    spans = [(json.loads(out)["start"], json.loads(out)["end"]) for out, _ in outputs]
    assert max(s for s, _ in spans) < min(e for _, e in spans), "writers did not overlap"
    with CaptionStore(path) as store:
        assert len(store.list_captions("fp-proc", IDENTITY, 8)) == n_procs * per_proc
        assert len(store.list_captions("fp-shared", IDENTITY, 8)) == contested
        assert len(store.list_failures("fp-proc-fail")) == n_procs * per_proc
        assert store.stats().artifacts == n_procs * per_proc
    dupes = raw_rows(
        path,
        "SELECT fingerprint, node, COUNT(*) FROM captions GROUP BY fingerprint, width, node, "
        "identity HAVING COUNT(*) > 1",
    )
    assert dupes == []


# claims and staged captions --------------------------------------------------------


def test_claim_is_one_owners_until_released_or_lapsed(store: CaptionStore) -> None:
    mine, theirs = ClaimOwner.current("mine"), ClaimOwner.current("theirs")
    first = store.claim(key((1, 1)), mine, lease=60)
    assert first.ours and first.record is None
    held = store.claim(key((1, 1)), theirs, lease=60)
    assert not held.ours and held.holder == mine.name and held.record is None
    assert store.claim(key((1, 1)), mine, lease=60).ours  # claiming again renews
    assert store.renew_claims([key((1, 1)), key((1, 2))], mine, lease=60) == 1
    assert store.claim(key((1, 1), width=3), theirs, lease=60).ours  # another key
    assert store.release_claim(key((1, 1)), theirs) is False  # not theirs to give up
    assert store.release_claim(key((1, 1)), mine) is True
    assert store.claim(key((1, 1)), theirs, lease=0.05).ours
    time.sleep(0.1)
    assert store.claim(key((1, 1)), mine, lease=60).ours  # their lease lapsed
    store.put_caption(make_record(FP, 4, (1, 1)))
    done = store.claim(key((1, 1)), theirs, lease=60)
    assert not done.ours and done.record.text == make_record(FP, 4, (1, 1)).text


def test_claim_of_a_process_that_died_is_taken_over_at_once(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    script = f"""
from longvideo_r1.captions.store import CaptionKey, CaptionStore, ClaimOwner
with CaptionStore({str(path)!r}) as store:
    assert store.claim(CaptionKey({FP!r}, 4, (2,), "x:y"), ClaimOwner.current("gone"), 3600).ours
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    with CaptionStore(path) as store:
        assert store.claim(CaptionKey(FP, 4, (2,), "x:y"), ClaimOwner.current("me"), 60).ours


def test_staged_captions_are_served_only_once_swapped(store: CaptionStore) -> None:
    store.put_captions(make_record(FP, 4, (i,), text=f"old {i}") for i in (1, 2, 3))
    store.stage_caption(make_record(FP, 4, (1,), text="new 1"))
    store.stage_caption(make_record(FP, 4, (2,), text="new 2"))
    store.stage_caption(make_record(FP, 4, (1,), identity="other:id", text="not ours"))
    assert store.get_caption(key((1,))).text == "old 1"
    assert store.get_staged(key((1,))).text == "new 1"
    assert store.staged_nodes(FP, IDENTITY, 4) == {(1,), (2,)}
    assert store.swap_staged(FP, IDENTITY, 4, [(1,), (2,), (3,)]) == 2
    assert [r.text for r in store.list_captions(FP, IDENTITY, 4)] == ["new 1", "new 2", "old 3"]
    assert store.staged_nodes(FP, IDENTITY, 4) == set()
    assert store.get_caption(key((1,), identity="other:id")) is None


# damaged rows ----------------------------------------------------------------------


def _damage(path: Path, sql: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute(sql)
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("column", "value"),
    [("frame_times", "not json"), ("frame_times", '{"a": 1}'), ("frame_ids", '["x"]')],
)
def test_damaged_caption_row_is_one_line_naming_it(
    store: CaptionStore, column: str, value: str
) -> None:
    store.put_caption(make_record(FP, 4, (1, 2)))
    _damage(store.path, f"UPDATE captions SET {column} = '{value}'")
    for read in (
        lambda: store.get_caption(key((1, 2))),
        lambda: store.list_captions(FP, IDENTITY, 4),
    ):
        with pytest.raises(StoreError) as info:
            read()
        message = str(info.value)
        assert "\n" not in message and info.value.exit_code == 1
        assert f"video {FP}, captioner {IDENTITY}, width 4, node (1, 2) is damaged" in message
        assert f"({column}:" in message and "--force --levels medium" in message
        assert "DELETE FROM captions WHERE" in message and str(store.path) in message
    _damage(store.path, message.rsplit(' "', 1)[1].rstrip('"'))  # the repair it prints
    assert store.list_captions(FP, IDENTITY, 4) == []


def test_damaged_artifact_is_one_line(store: CaptionStore) -> None:
    store.put_artifact(FP, "speech:v1", [1, 2])
    _damage(store.path, "UPDATE artifacts SET value = '[1, 2'")
    with pytest.raises(StoreError, match=r"artifact 'speech:v1' of video a+ is damaged"):
        store.get_artifact(FP, "speech:v1")


def test_cli_names_a_damaged_row_and_exits_1(
    test_video, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "store.sqlite"
    argv = [str(test_video.path), "--captioner", "imported:reference", "--store", str(path)]
    assert main(["tree", *argv, "--json"]) == 0
    width = json.loads(capsys.readouterr().out)["width"]
    fingerprint = file_fingerprint(test_video.path)
    with CaptionStore(path) as store:
        store.put_caption(make_record(fingerprint, width, (1,), identity="imported:reference"))
    _damage(path, "UPDATE captions SET frame_times = 'oops'")
    for command in (["tree", *argv], ["caption", *argv, "--levels", "high", "--quiet"]):
        assert main(command) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert f"video {fingerprint}, captioner imported:reference" in err
        assert "node (1,) is damaged" in err and "import the reference file again" in err


# opening ---------------------------------------------------------------------------


def test_reopen_keeps_data_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "store.sqlite"
    with CaptionStore(path) as store:
        store.put_caption(make_record(FP, 4, (1,)))
    with CaptionStore(path) as store:
        assert store.get_caption(key((1,))) is not None
    assert raw_rows(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert raw_rows(path, "PRAGMA journal_mode") == [("wal",)]


V1_SCHEMA = [
    "CREATE TABLE videos (fingerprint TEXT PRIMARY KEY, path TEXT NOT NULL, duration REAL NOT "
    "NULL, n_frames INTEGER NOT NULL, width INTEGER NOT NULL, registered_at REAL NOT NULL)",
    "CREATE TABLE captions (fingerprint TEXT NOT NULL, width INTEGER NOT NULL, node TEXT NOT "
    "NULL, identity TEXT NOT NULL, text TEXT NOT NULL, frame_times TEXT NOT NULL, frame_ids TEXT "
    "NOT NULL, seconds REAL NOT NULL, frames_decoded INTEGER NOT NULL, prompt_tokens INTEGER NOT "
    "NULL, completion_tokens INTEGER NOT NULL, created_at REAL NOT NULL, "
    "PRIMARY KEY (fingerprint, width, node, identity))",
    "CREATE TABLE failures (fingerprint TEXT NOT NULL, width INTEGER NOT NULL, node TEXT NOT "
    "NULL, identity TEXT NOT NULL, error TEXT NOT NULL, attempts INTEGER NOT NULL, last_at REAL "
    "NOT NULL, PRIMARY KEY (fingerprint, width, node, identity))",
    "CREATE TABLE artifacts (fingerprint TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, "
    "created_at REAL NOT NULL, PRIMARY KEY (fingerprint, key))",
    "INSERT INTO captions VALUES ('" + FP + "', 4, '(1,)', '" + IDENTITY + "', 'kept', '[0.5]', "
    "'[5]', 1.0, 2, 10, 3, 1700000000.0)",
    "INSERT INTO failures VALUES ('" + FP + "', 4, '(2,)', '" + IDENTITY + "', 'old error', 3, "
    "1700000000.0)",
    "PRAGMA application_id = 1280725553",
    "PRAGMA user_version = 1",
]
"""A store as longvideo-r1 wrote it before claims, staging and failure costs (version 1)."""


def test_a_version_1_store_opens_and_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    for statement in V1_SCHEMA:
        conn.execute(statement)
    conn.commit()
    conn.close()
    with CaptionStore(path) as store:
        assert store.get_caption(key((1,))).text == "kept"
        [failure] = store.list_failures()
        assert (failure.error, failure.attempts, failure.frames_decoded) == ("old error", 3, 0)
        assert store.claim(key((2,)), ClaimOwner.current("me"), 60).ours
        store.stage_caption(make_record(FP, 4, (1,), text="new"))
        assert store.swap_staged(FP, IDENTITY, 4, [(1,)]) == 1
    assert raw_rows(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)] == [(2,)]
    with CaptionStore(path) as store:  # and opens again as a current store
        assert store.get_caption(key((1,))).text == "new"


def test_default_path_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_store_path() == tmp_path / "longvideo-r1" / "store.sqlite"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_store_path() == Path.home() / ".cache" / "longvideo-r1" / "store.sqlite"


def _open_error(path: Path) -> str:
    with pytest.raises(StoreError) as info:
        CaptionStore(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert isinstance(info.value, LVR1Error)
    return message


def test_directory_is_refused(tmp_path: Path) -> None:
    assert "directory" in _open_error(tmp_path)


def test_text_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are not the captions you are looking for\n" * 100)
    assert "not a SQLite database" in _open_error(path)
    assert path.read_text().startswith("these are not")  # untouched


def test_corrupt_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    with CaptionStore(path) as store:
        store.put_captions(make_record(FP, 8, (1, 1, i)) for i in range(1, 9))
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # keep the header, wreck the schema page
    path.write_bytes(bytes(data))
    assert "corrupt" in _open_error(path)


def test_corruption_found_later_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    with CaptionStore(path) as store:
        store.put_captions(make_record(FP, 8, (1, 1, i)) for i in range(1, 9))
    data = bytearray(path.read_bytes())
    data[2 * 4096 :] = b"\xfe" * (len(data) - 2 * 4096)  # schema intact, caption pages not
    path.write_bytes(bytes(data))
    with CaptionStore(path) as store, pytest.raises(StoreError, match="corrupt"):
        store.list_captions(FP, IDENTITY, 8)


def test_path_below_a_file_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert "is a file" in _open_error(blocker / "sub" / "store.sqlite")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write read-only files")
def test_read_only_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    CaptionStore(path).close()
    path.chmod(0o444)
    assert "read-only" in _open_error(path)


def test_other_applications_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    assert "another application" in _open_error(path)
    assert raw_rows(path, "SELECT name FROM sqlite_master") == [("users",)]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    CaptionStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    assert "newer" in _open_error(path)


def test_closed_store_says_so(tmp_path: Path) -> None:
    store = CaptionStore(tmp_path / "s.sqlite")
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get_caption(key((1,)))
