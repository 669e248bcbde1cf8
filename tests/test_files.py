"""Atomic writes and safe file names shared by traces, records and exports."""

from __future__ import annotations

import pytest

from longvideo_r1.files import atomic_writer, safe_name, write_atomic


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
