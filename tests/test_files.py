"""Atomic writes and safe file names shared by traces, records and exports."""

from __future__ import annotations

import os
import stat

import pytest

from longvideo_r1.errors import ConfigError
from longvideo_r1.files import atomic_path, atomic_writer, folder_lock, safe_name, write_atomic


def test_write_atomic_replaces_whole_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_atomic(path, "old")
    write_atomic(path, "new")
    assert path.read_text() == "new"
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.json"
    write_atomic(path, "old")
    with pytest.raises(RuntimeError), atomic_writer(path) as handle:
        handle.write("half")
        raise RuntimeError("crash mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_safe_names_keep_plain_ids_and_separate_others():
    assert safe_name("tv-01") == "tv-01"
    assert safe_name("a/b") != safe_name("a_b")
    assert "/" not in safe_name("../x/y") and not safe_name("../x").startswith(".")
    assert len(safe_name("x" * 500)) < 120


@pytest.fixture
def umask():
    """Set the process umask for one test, and put the old one back."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077], ids=lambda m: f"umask-{m:03o}")
def test_atomic_files_get_the_mode_open_would_give(tmp_path, umask, mask):
    umask(mask)
    fresh, replaced = tmp_path / "new.json", tmp_path / "old.json"
    replaced.write_text("old")
    replaced.chmod(0o600)
    write_atomic(fresh, "new")
    write_atomic(replaced, "new")
    with atomic_writer(tmp_path / "w.bin", binary=True) as handle:
        handle.write(b"\x00")
    with atomic_path(tmp_path / "p.gguf") as tmp:
        tmp.write_bytes(b"\x00")
    for path in (fresh, replaced, tmp_path / "w.bin", tmp_path / "p.gguf"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path.name


def test_the_rename_is_made_durable_by_syncing_the_folder(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_atomic(tmp_path / "a.json", "x")
    with atomic_path(tmp_path / "b.gguf") as tmp:
        tmp.write_bytes(b"x")
    assert events == ["file", "rename", "folder"] * 2


def test_atomic_path_keeps_the_suffix_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "model.gguf"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".gguf" and tmp.name.startswith(".")
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert list(tmp_path.iterdir()) == []


def test_a_second_writer_of_a_folder_is_refused_in_one_line(tmp_path):
    folder = tmp_path / "run"
    with folder_lock(folder, "lvr1 data"):
        with pytest.raises(ConfigError) as info, folder_lock(folder, "lvr1 data"):
            pass
        assert str(info.value) == (
            f"another lvr1 data is writing to {folder}; wait for it or use another --out"
        )
    with folder_lock(folder, "lvr1 data"):  # released when the first one ended
        pass


def test_a_folder_under_a_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    under_a_file = tmp_path / "file" / "run"
    with pytest.raises(ConfigError, match="cannot use .*file/run: Not a directory"):
        folder_lock(under_a_file, "lvr1 eval").__enter__()
