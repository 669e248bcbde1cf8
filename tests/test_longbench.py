"""The long benchmark: the long test video's plan, its build and its shipped questions.

Fast tests check the plan (it needs no file), the questions generated from it
and from a small manifest, the shipped asset against the plan, the check that
tells a finished build from a half-built one, and the refusals. Slow tests
build: a small recipe interrupted and rebuilt, two builders at once, and the
real half-hour video, whose leaves are captioned to show that its cards are
seen there and not above.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from longvideo_r1.captions.captioner import CaptionContext
from longvideo_r1.captions.embedded import EmbeddedCaptioner
from longvideo_r1.cli.main import main
from longvideo_r1.errors import VideoError
from longvideo_r1.media.subtitles import load_subtitles
from longvideo_r1.media.video import Video, file_fingerprint
from longvideo_r1.questions.loaders import load_cgbench
from longvideo_r1.questions.schema import LETTERS
from longvideo_r1.testing.longbench import (
    CATEGORY_COUNTS,
    LONGBENCH_FILE,
    LONGBENCH_VIDEO_UID,
    load_longbench,
    save_longbench,
    write_longbench,
)
from longvideo_r1.testing.longplan import (
    CARD_CLEARANCE,
    CARD_OVERLAP,
    CARD_WORDS,
    FOOTAGE_LABELS,
    MIN_SPOKEN,
    SPEECH_LEAD,
    LongRecipe,
    coarse_sample_times,
    plan_long_video,
)
from longvideo_r1.testing.longvideo import (
    RECIPE_VERSION,
    VIDEO_NAME,
    build_long_testvideo,
    current_manifest,
    load_long_testvideo,
    plan_digest,
)
from longvideo_r1.testing.testvideo import BuiltVideo
from longvideo_r1.tree import DEFAULT_PLANS, Tree

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = LongRecipe(segments=4, segment_seconds=12.0, sentences=2, cards=0)
"""A recipe that builds in seconds: the build's mechanics without the half hour."""


@pytest.fixture(scope="module")
def plan_manifest() -> dict[str, Any]:
    return plan_long_video().to_manifest()


def shipped() -> list[dict[str, Any]]:
    return json.loads(LONGBENCH_FILE.read_text(encoding="utf-8"))


def small_manifest(manifest: dict[str, Any], segments: int = 12) -> dict[str, Any]:
    """The first segments of a plan's manifest: a smaller video of the same shape."""
    small = copy.deepcopy(manifest)
    small["segments"] = small["segments"][:segments]
    small["duration"] = small["segments"][-1]["end"]
    small["n_frames"] = small["segments"][-1]["frame_end"]
    return small


# ---------------------------------------------------------------------------------------
# the plan


def test_plan_is_half_an_hour_of_width_five_and_the_same_every_time(plan_manifest):
    assert plan_manifest["duration"] >= 30 * 60
    assert plan_manifest["tree_width"] >= 5
    assert plan_long_video().to_manifest() == plan_manifest
    other = plan_long_video(LongRecipe(seed=13)).to_manifest()
    assert other["segments"] != plan_manifest["segments"]


def test_every_person_is_named_once_and_card_words_are_never_said(plan_manifest):
    said = [c for s in plan_manifest["segments"] for c in s["said"]]
    people = [c["fact"]["person"] for c in said]
    assert len(people) == len(set(people)) == 360
    text = " ".join(c["text"] for c in said).lower()
    assert not [w for w in CARD_WORDS if re.search(rf"\b{w.lower()}\b", text)]
    cards = [s["card"] for s in plan_manifest["segments"] if s["card"]]
    assert len(cards) == 30 and len({c["word"] for c in cards}) == 30
    assert {s["footage"] for s in plan_manifest["segments"]} == set(FOOTAGE_LABELS)


def test_cards_fall_between_the_coarse_samples_in_a_leaf_of_their_segment(plan_manifest):
    """Only a leaf caption samples a card's frames; its leaf has no change of footage."""
    tree = Tree.for_video(plan_manifest["duration"], plan_manifest["n_frames"])
    coarse = coarse_sample_times(tree, plan_manifest["coarse_frames"])
    assert plan_manifest["coarse_frames"] == {"high": 32, "medium": 24}
    for segment in plan_manifest["segments"]:
        card = segment["card"]
        if card is None:
            continue
        near = [
            t for t in coarse if card["start"] - CARD_CLEARANCE <= t < card["end"] + CARD_CLEARANCE
        ]
        assert near == [], card
        leaf = tree.leaf_at(card["start"])
        assert leaf.id == tree.leaf_at(card["end"] - 0.05).id
        assert segment["start"] <= leaf.start and leaf.end <= segment["end"]
        leaf_samples = [
            t for t in tree.sample_times(leaf.id, 16) if card["start"] <= t < card["end"]
        ]
        assert len(leaf_samples) >= 2


def test_cards_shown_while_said_overlap_that_sentence_only(plan_manifest):
    for segment in plan_manifest["segments"]:
        card = segment["card"]
        if card is None or card["during"] is None:
            continue
        overlaps = {}
        for cue in segment["said"]:
            spoken = cue["slot"][0] + SPEECH_LEAD
            longest = cue["slot"][1] - 0.1  # the build refuses longer sentences
            overlaps[cue["id"]] = (
                min(card["end"], spoken + MIN_SPOKEN) - max(card["start"], spoken),
                min(card["end"], longest) - max(card["start"], spoken),
            )
        assert overlaps[card["during"]][0] >= CARD_OVERLAP
        assert all(o[1] <= 0 for k, o in overlaps.items() if k != card["during"])


def _subtitle_words(manifest: dict[str, Any], start: float, end: float) -> int:
    """Words the embedded captioner needs for a span's subtitle lines (a time stamp each)."""
    cues = [c for s in manifest["segments"] for c in s["said"] if start <= c["slot"][0] < end]
    return sum(len(c["text"].split()) + 1 for c in cues)


def test_high_captions_cannot_hold_the_speech_but_medium_ones_can(plan_manifest):
    """Dense speech: coarse captions fall back to keywords, the facts are readable lower."""
    tree = Tree.for_video(plan_manifest["duration"], plan_manifest["n_frames"])
    for node in tree.nodes(1):
        assert (
            _subtitle_words(plan_manifest, node.start, node.end) > DEFAULT_PLANS["high"].max_words
        )
    visual_allowance = 80  # five shot lines and a cut line of a medium caption
    for node in tree.nodes(2):
        need = _subtitle_words(plan_manifest, node.start, node.end) + visual_allowance
        assert need < DEFAULT_PLANS["medium"].max_words


# ---------------------------------------------------------------------------------------
# the questions


def test_shipped_longbench_has_not_drifted_from_the_plan(plan_manifest):
    """Regenerate with save_longbench(plan_long_video().to_manifest()) when this fails."""
    assert shipped() == write_longbench(plan_manifest)


def test_the_drift_check_sees_a_changed_fact(plan_manifest):
    spoiled = copy.deepcopy(plan_manifest)
    spoiled["segments"][5]["said"][2]["fact"]["count"] += 1
    spoiled["segments"][5]["said"][2]["fact"]["place"] = "moon"
    assert write_longbench(spoiled) != write_longbench(plan_manifest)


def test_shipped_longbench_loads_with_the_cgbench_loader():
    qs = load_longbench()
    assert len(qs) >= 30 and len({q.id for q in qs}) == len(qs)
    assert Counter(q.category for q in qs) == Counter(CATEGORY_COUNTS)
    assert {q.benchmark for q in qs} == {"testbench-long"}
    assert {q.video_id for q in qs} == {LONGBENCH_VIDEO_UID}
    counts = Counter(q.answer for q in qs)
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    assert load_cgbench(LONGBENCH_FILE)[0].extra["video_file"] == f"{VIDEO_NAME}.mp4"


def assert_well_formed(items: list[dict[str, Any]], duration: float) -> None:
    for item in items:
        choices = item["choices"]
        assert len(choices) == 4 and len(set(choices)) == 4, item["qid"]
        assert choices.count(item["answer"]) == 1
        assert choices[LETTERS.index(item["right_answer"])] == item["answer"]
        assert item["clue_intervals"]
        assert all(0 <= s < e <= duration for s, e in item["clue_intervals"]), item["qid"]
        assert item["sub_category"] in CATEGORY_COUNTS


def test_questions_from_a_small_manifest(plan_manifest, tmp_path):
    small = small_manifest(plan_manifest)
    items = write_longbench(small)
    assert_well_formed(items, small["duration"])
    assert {i["sub_category"] for i in items} == set(CATEGORY_COUNTS)
    assert items == write_longbench(small)
    path = save_longbench(small, tmp_path / "bench.json")
    assert [q.answer_text for q in load_cgbench(path)] == [i["answer"] for i in items]


def test_answers_follow_from_the_manifest(plan_manifest):
    """Each right option, found again from the manifest by the question's evidence."""
    items = write_longbench(plan_manifest)
    assert_well_formed(items, plan_manifest["duration"])
    cues = {c["id"]: (c, s) for s in plan_manifest["segments"] for c in s["said"]}
    cards = {s["card"]["word"]: s["card"] for s in plan_manifest["segments"] if s["card"]}
    for item in items:
        kind, evidence, answer = item["sub_category"], item["evidence"], item["answer"]
        if kind == "spoken-needle":
            fact = cues[evidence[0]][0]["fact"]
            assert fact["person"] in item["question"]
            assert answer in (str(fact["count"]), f"at the {fact['place']}")
            assert answer.removeprefix("at the ") in cues[evidence[0]][0]["text"]
        elif kind == "visual-needle":
            card = cards[evidence[0]]
            assert answer in (card["colour"], str(card["number"]))
        elif kind == "on-screen-while-said":
            cue, segment = cues[evidence[0]]
            card = segment["card"]
            if card and card["during"] == cue["id"]:
                assert answer == card["word"] and evidence[1] == card["word"]
            else:
                assert answer == FOOTAGE_LABELS[segment["footage"]]
        elif kind == "order":
            times = [cards[e]["start"] if e in cards else cues[e][0]["slot"][0] for e in evidence]
            assert answer.startswith("before" if times[0] < times[1] else "after")
        else:
            assert int(answer) == len(evidence) == _count(plan_manifest, item["question"])


def _count(manifest: dict[str, Any], question: str) -> int:
    said = [c["text"] for s in manifest["segments"] for c in s["said"]]
    cards = [s["card"] for s in manifest["segments"] if s["card"]]
    if m := re.search(r"mention (\w+)\?", question):
        return sum(bool(re.search(rf"\b{m.group(1)}\b", t)) for t in said)
    colour = re.search(r"a (\w+) card", question)
    assert colour, question
    return sum(c["colour"] == colour.group(1) for c in cards)


# ---------------------------------------------------------------------------------------
# finished, half-built, refused


def fake_build(out: Path, recipe: LongRecipe) -> dict[str, Any]:
    """Files shaped like a finished build of ``recipe`` (no real video: the check reads none)."""
    out.mkdir(parents=True, exist_ok=True)
    video = out / f"{VIDEO_NAME}.mp4"
    video.write_bytes(b"\0" * 4096)
    (out / f"{VIDEO_NAME}.srt").write_text("", encoding="utf-8")
    manifest = {
        "recipe_version": RECIPE_VERSION,
        "plan_digest": plan_digest(plan_long_video(recipe)),
        "video": video.name,
        "subtitles": f"{VIDEO_NAME}.srt",
        "size_bytes": 4096,
        "fingerprint": file_fingerprint(video),
    }
    (out / f"{VIDEO_NAME}.json").write_text(json.dumps(manifest), encoding="utf-8")
    return manifest


def _drop_manifest(out: Path) -> None:
    (out / f"{VIDEO_NAME}.json").unlink()


def _truncate_manifest(out: Path) -> None:
    path = out / f"{VIDEO_NAME}.json"
    path.write_text(path.read_text()[:40], encoding="utf-8")


def _grow_video(out: Path) -> None:
    with (out / f"{VIDEO_NAME}.mp4").open("ab") as fh:
        fh.write(b"\1")


def _change_video(out: Path) -> None:
    (out / f"{VIDEO_NAME}.mp4").write_bytes(b"\1" * 4096)


def _drop_subtitles(out: Path) -> None:
    (out / f"{VIDEO_NAME}.srt").unlink()


def _old_recipe(out: Path) -> None:
    path = out / f"{VIDEO_NAME}.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "recipe_version": RECIPE_VERSION - 1}))


@pytest.mark.parametrize(
    "damage",
    [_drop_manifest, _truncate_manifest, _grow_video, _change_video, _drop_subtitles, _old_recipe],
)
def test_a_half_built_or_stale_video_is_not_current(tmp_path, damage):
    fake_build(tmp_path, TINY)
    plan = plan_long_video(TINY)
    assert current_manifest(tmp_path, plan) is not None
    damage(tmp_path)
    assert current_manifest(tmp_path, plan) is None


def test_another_plan_is_not_current(tmp_path):
    fake_build(tmp_path, TINY)
    other = replace(TINY, seed=TINY.seed + 1)
    assert current_manifest(tmp_path, plan_long_video(other)) is None


def test_a_finished_build_is_reused_without_espeak(tmp_path, monkeypatch):
    manifest = fake_build(tmp_path, TINY)
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    assert build_long_testvideo(tmp_path, recipe=TINY) == tmp_path / manifest["video"]


def test_missing_espeak_is_one_line_before_any_work(tmp_path, monkeypatch):
    stale = fake_build(tmp_path, replace(TINY, seed=99))
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    with pytest.raises(VideoError, match=r"apt-get install espeak-ng") as caught:
        build_long_testvideo(tmp_path, recipe=TINY)
    assert "\n" not in str(caught.value)
    assert json.loads((tmp_path / f"{VIDEO_NAME}.json").read_text()) == stale  # untouched
    assert not (tmp_path / f".{VIDEO_NAME}.build").exists()


@pytest.fixture()
def cli_env(tmp_path, monkeypatch) -> None:
    """A caption database and a config file of the test's own, as in test_cli."""
    monkeypatch.setenv("LVR1_STORE", str(tmp_path / "store.sqlite"))
    monkeypatch.setenv("LVR1_CONFIG", str(tmp_path / "none.yaml"))
    (tmp_path / "none.yaml").write_text("{}\n")
    for role in ("CAPTION", "VIDEO_QA", "REASONING"):
        monkeypatch.delenv(f"LVR1_{role}_BASE_URL", raising=False)


def test_eval_testbench_long_without_espeak_exits_2_in_one_line(
    tmp_path, monkeypatch, capsys, cli_env
):
    monkeypatch.setenv("LVR1_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    code = main(["eval", "testbench-long", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert code == 2 and "Traceback" not in err
    assert len(errors) == 1 and "apt-get install espeak-ng" in errors[0], err


def test_data_reads_testbench_long(tmp_path, capsys, cli_env):
    """The name resolves to the shipped questions; their video has no captions yet."""
    code = main(["data", "oracle", "testbench-long", "--out", str(tmp_path / "traj")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "1 of 1 videos have no usable caption tree" in err and LONGBENCH_VIDEO_UID in err


# ---------------------------------------------------------------------------------------
# building (slow)


def _builder(out: Path, seed: int = TINY.seed) -> subprocess.Popen[str]:
    """A separate process building the tiny recipe into ``out``, printing its log."""
    recipe = f"LongRecipe(segments=4, segment_seconds=12.0, sentences=2, cards=0, seed={seed})"
    code = (
        "from longvideo_r1.testing.longplan import LongRecipe\n"
        "from longvideo_r1.testing.longvideo import build_long_testvideo\n"
        f"build_long_testvideo({str(out)!r}, recipe={recipe}, workers=1, log=print)\n"
    )
    path = [str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


@pytest.mark.slow
def test_an_interrupted_build_is_rebuilt_not_used(test_video: BuiltVideo, tmp_path):
    out = tmp_path / "long"
    proc = _builder(out)
    work = out / f".{VIDEO_NAME}.build"
    deadline = time.monotonic() + 120
    while not list(work.glob("segment-*.mp4")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert work.is_dir() and not (out / f"{VIDEO_NAME}.json").exists()
    (out / f"{VIDEO_NAME}.mp4").write_bytes(b"half a video")  # as if killed while moving it
    assert current_manifest(out, plan_long_video(TINY)) is None
    logged: list[str] = []
    path = build_long_testvideo(out, recipe=TINY, log=logged.append)
    assert any("encoding" in line for line in logged) and not work.exists()
    manifest = current_manifest(out, plan_long_video(TINY))
    assert manifest is not None
    with Video.open(path) as video:
        assert video.info.n_frames == manifest["n_frames"] and video.info.has_audio
    stamp = path.stat().st_mtime_ns
    again: list[str] = []
    assert build_long_testvideo(out, recipe=TINY, log=again.append) == path
    assert again == [] and path.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_two_builders_at_once_build_once(test_video: BuiltVideo, tmp_path):
    out = tmp_path / "long"
    procs = [_builder(out), _builder(out)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert sum(log.count("wrote ") for log in logs) == 1, logs
    assert current_manifest(out, plan_long_video(TINY)) is not None


@pytest.fixture(scope="module")
def long_video() -> BuiltVideo:
    """The real long test video (about 3 minutes to build on 2 cores, then reused)."""
    try:
        return load_long_testvideo()
    except VideoError as exc:
        if os.environ.get("LVR1_REQUIRE_TESTVIDEO") == "1":
            pytest.fail(f"cannot build the long test video: {exc}")
        pytest.skip(f"cannot build the long test video here: {exc}")


@pytest.mark.slow
def test_long_video_matches_its_manifest_and_the_shipped_bench(long_video: BuiltVideo):
    manifest = long_video.manifest
    assert shipped() == write_longbench(manifest)
    plan = plan_long_video().to_manifest()
    for built, planned in zip(manifest["segments"], plan["segments"], strict=True):
        for cue in built["said"]:
            assert cue["start"] == pytest.approx(cue["slot"][0] + SPEECH_LEAD)
            assert cue["start"] + MIN_SPOKEN <= cue["end"] < cue["slot"][1]
            del cue["start"], cue["end"]
        assert built == planned
    with Video.open(long_video.path) as video:
        assert video.info.n_frames == manifest["n_frames"] == plan["n_frames"]
        assert video.info.has_audio and (video.info.width, video.info.height) == (480, 270)
    cues = load_subtitles(long_video.subtitles)
    assert [c.text for c in cues] == [c["text"] for s in plan["segments"] for c in s["said"]]


@pytest.mark.slow
def test_cards_are_seen_by_leaf_captions_only(long_video: BuiltVideo):
    """The visual needles' cards: colour and text at the leaf, not in the medium node above.

    (Only the text is checked above: the footage itself may show the card's colour.)
    """
    words = {i["evidence"][0] for i in shipped() if i["sub_category"] == "visual-needle"}
    cards = [s["card"] for s in long_video.manifest["segments"] if s["card"]]
    captioner = EmbeddedCaptioner(speech=False)
    cues = load_subtitles(long_video.subtitles)
    with Video.open(long_video.path) as video:
        tree = Tree.for_video(video.info.duration, video.info.n_frames)
        for k, card in enumerate(c for c in cards if c["word"] in words):
            leaf = tree.leaf_at(card["start"])
            text = captioner.caption(CaptionContext(video, tree, leaf, cues)).text
            assert card["text"] in text and f"mostly {card['colour']}" in text, text
            if k < 3:  # medium captions cost as much as leaves: a few show the point
                medium = tree.node(leaf.id[:2])
                above = captioner.caption(CaptionContext(video, tree, medium, cues)).text
                assert card["word"] not in above, above
        high = captioner.caption(CaptionContext(video, tree, tree.nodes(1)[0], cues)).text
    assert "Speech keywords:" in high and re.search(r"\(\+\d+ more lines\)", high), high
