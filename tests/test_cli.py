"""The ``lvr1`` command line: real files, real store, one-line errors, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from scripted_server import ScriptedChatServer

from longvideo_r1.cli import main


@pytest.fixture()
def store(tmp_path, monkeypatch):
    """Every CLI test gets its own caption database and config-free environment."""
    path = tmp_path / "store.sqlite"
    monkeypatch.setenv("LVR1_STORE", str(path))
    monkeypatch.setenv("LVR1_CONFIG", str(tmp_path / "none.yaml"))
    (tmp_path / "none.yaml").write_text("{}\n")
    for role in ("CAPTION", "VIDEO_QA", "REASONING"):
        monkeypatch.delenv(f"LVR1_{role}_BASE_URL", raising=False)
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "command", [[], ["tree"], ["caption"], ["ask"], ["demo"], ["eval"], ["report"], ["train"]]
)
def test_help_explains_every_command(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: lvr1" in out


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("missing", "not found"),
        ("directory", "directory"),
        ("empty", "empty"),
        ("text", ""),
        ("truncated", ""),
        ("audio_only", "video stream"),
    ],
)
def test_bad_videos_get_one_line_and_exit_2(name, fragment, bad_inputs, store, capsys):
    code, out, err = run(capsys, "tree", str(bad_inputs[name]))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lvr1 tree: error: ")
    assert fragment in lines[0].lower()
    assert "Traceback" not in err


def test_tree_json_partitions_the_test_video(test_video, store, capsys):
    code, out, err = run(capsys, "tree", str(test_video.path), "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert payload["width"] == 4
    assert payload["duration"] == pytest.approx(test_video.manifest["duration"], abs=0.05)
    nodes = payload["nodes"]
    assert len(nodes) == 4 + 16 + 64
    leaves = [n for n in nodes if len(n["id"]) == 3]
    assert leaves[0]["start"] == 0 and leaves[-1]["end"] == payload["duration"]
    assert all(a["end"] == b["start"] for a, b in zip(leaves, leaves[1:], strict=False))
    assert all(n["caption"] is None for n in nodes)


def test_vlm_captioner_needs_an_endpoint(test_video, store, capsys):
    code, _, err = run(capsys, "caption", str(test_video.path), "--captioner", "vlm")
    assert code == 2
    assert "--caption-base-url" in err and len(err.strip().splitlines()) == 1


def test_unknown_level_is_a_clear_error(test_video, store, capsys):
    code, _, err = run(capsys, "caption", str(test_video.path), "--levels", "top")
    assert code == 2 and "high,medium,low" in err


def test_unreachable_endpoint_fails_nodes_keeps_going_and_retries(test_video, store, capsys):
    args = [
        "caption",
        str(test_video.path),
        "--captioner",
        "vlm",
        "--caption-base-url",
        "http://127.0.0.1:9/v1",
        "--caption-model",
        "nobody",
        "--levels",
        "high",
        "--quiet",
    ]
    code, _, err = run(capsys, *args)
    assert code == 1
    assert "4 failed" in err and "Traceback" not in err
    code, _, err = run(capsys, *args)
    assert code == 1 and "4 failed" in err  # retried, not skipped


def test_caption_with_a_scripted_vlm_then_tree_shows_captions(test_video, store, capsys):
    replies = [f"<caption>Segment {i} shows things.</caption>" for i in range(4)]
    with ScriptedChatServer(replies) as server:
        code, _, err = run(
            capsys,
            "caption",
            str(test_video.path),
            "--captioner",
            "vlm",
            "--caption-base-url",
            server.base_url,
            "--caption-model",
            server.model,
            "--levels",
            "high",
            "--workers",
            "1",
            "--quiet",
            "--export-reference",
            str(store.parent / "ref.json"),
        )
        assert len(server.requests) == 4
    # The reference format holds all three levels: exporting a partial tree is refused,
    # and the captions just made are kept.
    assert code == 2, err
    assert "4 made" in err and "80 of 84 captions are missing" in err
    assert not (store.parent / "ref.json").exists()
    code, out, _ = run(
        capsys, "tree", str(test_video.path), "--json", "--captioner", "vlm",
        "--caption-base-url", "http://unused/v1", "--caption-model", "scripted-model",
    )  # fmt: skip
    captions = [n["caption"] for n in json.loads(out)["nodes"] if len(n["id"]) == 1]
    assert sorted(captions) == sorted(f"Segment {i} shows things." for i in range(4))


def test_ask_refuses_an_empty_question_before_any_work(test_video, store, capsys):
    code, _, err = run(capsys, "ask", str(test_video.path), "  ")
    assert code == 2 and "question is empty" in err


def test_ask_against_a_scripted_reasoning_server(test_video, store, capsys, tmp_path):
    """The whole ask path over HTTP: high captions, a tool call, an answer, a trace file."""
    captions = [f"<caption>High segment {i}.</caption>" for i in range(4)]
    medium = ["<caption>A hand lifts a yellow box.</caption>"]
    reasoning = [
        "<think>The box clip is in the third quarter.</think><tool>get_caption((3, 2))</tool>",
        "<think>It says yellow.</think><answer>B. yellow</answer>",
    ]
    trace_path = tmp_path / "trace.json"
    with ScriptedChatServer(captions + medium) as vlm, ScriptedChatServer(reasoning) as llm:
        code, out, err = run(
            capsys,
            "ask",
            str(test_video.path),
            "What colour is the box?",
            "--choice", "A. red", "--choice", "B. yellow",
            "--captioner", "vlm",
            "--caption-base-url", vlm.base_url, "--caption-model", vlm.model,
            "--reasoning-base-url", llm.base_url, "--reasoning-model", llm.model,
            "--json", "--trace", str(trace_path),
        )  # fmt: skip
        first_user = llm.messages(0)[1]["content"]
    assert code == 0, err
    payload = json.loads(out)
    assert {"answer", "status", "rounds", "evidence", "cost", "trace"} <= set(payload)
    assert payload["answer"] == "B" and payload["status"] == "answered"
    assert payload["rounds"] == 2
    assert [e["node_id"] for e in payload["evidence"]] == [[3, 2]]
    assert payload["cost"]["captions_made"] == 5
    assert "The total duration of the video is 151.6 seconds." in str(first_user)
    saved = json.loads(trace_path.read_text())
    assert saved["answer"] == "B" and len(saved["rounds"]) == 2


def test_console_script_reports_errors_without_traceback(tmp_path):
    """The installed entry point, as a user runs it."""
    exe = [sys.executable, "-m", "longvideo_r1.cli", "tree", str(tmp_path / "nope.mp4")]
    proc = subprocess.run(exe, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_ask_end_to_end_with_the_embedded_default(test_video, store, capsys, monkeypatch):
    """The product's main job on CPU: embedded captioner + embedded navigator."""
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    item = test_video.manifest["questions"][0]
    choices = [f"{chr(65 + i)}. {c}" for i, c in enumerate(item["choices"])]
    argv = ["ask", str(test_video.path), item["question"], "--json", "--max-rounds", "6"]
    for choice in choices:
        argv += ["--choice", choice]
    code, out, err = run(capsys, *argv)
    payload = json.loads(out)
    assert payload["status"] in {"answered", "no_answer", "error"}
    assert code == {"answered": 0, "no_answer": 1, "error": 3}[payload["status"]]
    assert payload["status"] != "error", payload["reason"]
    assert payload["rounds"] >= 1
    assert payload["cost"]["caption_calls"] >= 4  # the high captions, made on demand
    trace = json.loads(Path(payload["trace"]).read_text())
    assert len(trace["high_captions"]) == 4
    assert trace["rounds"][0]["output"]


def test_train_reports_a_missing_config_in_one_line(tmp_path, capsys):
    code = main(["train", "sft", str(tmp_path / "nope.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "nope.yaml" in err
