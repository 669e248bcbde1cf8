"""The shipped test bench: the project's own small benchmark over the test video.

Built from the test video's manifest (:func:`write_testbench`), every answer
checked against what the video shows and says, and shipped as
``assets/testbench.json`` in the CG-Bench format, so that ``lvr1 eval
testbench`` runs the same loader path as a real benchmark.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from longvideo_r1.questions.loaders import load_cgbench
from longvideo_r1.questions.schema import LETTERS, PathLike, QuestionList

TESTBENCH_VIDEO_UID = "testvideo"
TESTBENCH_FILE = Path(__file__).resolve().parent / "assets" / "testbench.json"
"""The shipped benchmark: CG-Bench format, regenerated with :func:`save_testbench`."""

_Check = tuple[Any, ...]

TESTBENCH_EXTRA: tuple[dict[str, Any], ...] = (
    {
        "id": "tb-01",
        "question": "According to the narrator, what does the cyclist ride past?",
        "choices": ["a taxi", "a bus", "a horse", "a tram"],
        "answer": "A",
        "clips": ["bikes"],
        "category": "speech",
        "checks": [("said", "bikes", "taxi")],
    },
    {
        "id": "tb-02",
        "question": "Which clip number does the narrator give to the man in the red bow tie?",
        "choices": ["two", "six", "one", "four"],
        "answer": "D",
        "clips": ["carphone"],
        "category": "speech",
        "checks": [("said", "carphone", "clip four"), ("said", "carphone", "red bow tie")],
    },
    {
        "id": "tb-03",
        "question": "What lies on the white table below the yellow box?",
        "choices": ["a red cup", "a blue pen", "a phone", "a book"],
        "answer": "B",
        "clips": ["box"],
        "category": "visual",
        "checks": [("shown", "box", "blue pen"), ("unsaid", "box", "pen")],
    },
    {
        "id": "tb-04",
        "question": "What stands on the grass beside the path where people walk?",
        "choices": ["a bench", "a bicycle", "a camera tripod", "a lamp post"],
        "answer": "C",
        "clips": ["pedestrians"],
        "category": "visual",
        "checks": [("shown", "pedestrians", "camera tripod"), ("unsaid", "pedestrians", "tripod")],
    },
    {
        "id": "tb-05",
        "question": "Which clip comes right after the clip of the yellow box?",
        "choices": [
            "the man in the red bow tie",
            "the green tree",
            "the black cup",
            "the grey rabbit",
        ],
        "answer": "A",
        "clips": ["box", "carphone"],
        "category": "temporal",
        "checks": [("next", "box", "carphone"), ("shown", "carphone", "red bow tie")],
    },
    {
        "id": "tb-06",
        "question": "What is shown at the very end of the video?",
        "choices": [
            "a hand tilting a black cup",
            "a cyclist in city traffic",
            "people walking beside a lawn",
            "a grey rabbit climbing out of his burrow",
        ],
        "answer": "D",
        "clips": ["rabbit"],
        "category": "temporal",
        "checks": [("last", "rabbit"), ("shown", "rabbit", "climbs out of his burrow")],
    },
    {
        "id": "tb-07",
        "question": "How many clips does the narrator announce by number?",
        "choices": ["five", "six", "seven", "eight"],
        "answer": "C",
        "clips": ["bikes", "pedestrians", "box", "carphone", "tree", "cup", "rabbit"],
        "category": "counting",
        "checks": [("count_said", r"\bclip (one|two|three|four|five|six|seven)\b", 7)],
    },
    {
        "id": "tb-08",
        "question": "In how many clips does the narrator mention a hand?",
        "choices": ["three", "one", "two", "four"],
        "answer": "A",
        "clips": ["box", "tree", "cup"],
        "category": "counting",
        "checks": [("count_said", r"\bhand\b", 3)],
    },
)
"""Questions beyond the manifest's own, each with the manifest facts that make its answer right."""


def write_testbench(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The test bench in CG-Bench format, from the test video's manifest.

    The manifest's questions come first (ids ``tv-NN``), then
    :data:`TESTBENCH_EXTRA` (ids ``tb-NN``). Clue intervals are the spans of
    the segments each question is about. Every extra question's checks are
    verified against the manifest's ``shown`` / ``said`` text and segment
    order, so a change to the video that would make an answer wrong fails
    here instead of silently mis-scoring runs.
    """
    segments = {s["key"]: s for s in manifest["segments"]}
    items = []
    for q in manifest["questions"]:
        category = "temporal" if len(q["clips"]) > 1 else q["modality"]
        items.append(_bench_item(manifest, segments, q["id"], q, category, "manifest"))
    for q in TESTBENCH_EXTRA:
        for check in q["checks"]:
            _verify(manifest, segments, q, check)
        items.append(_bench_item(manifest, segments, q["id"], q, q["category"], "testbench"))
    return items


def _bench_item(
    manifest: Mapping[str, Any],
    segments: Mapping[str, Any],
    qid: str,
    q: Mapping[str, Any],
    category: str,
    source: str,
) -> dict[str, Any]:
    """One CG-Bench item; ``answer`` (the right text) is there as in CG-Bench's own files."""
    missing = [k for k in q["clips"] if k not in segments]
    if missing:
        raise ValueError(f"test bench question {qid}: no segment {missing[0]!r} in the manifest")
    return {
        "qid": qid,
        "video_uid": TESTBENCH_VIDEO_UID,
        "duration": manifest["duration"],
        "question": q["question"],
        "choices": list(q["choices"]),
        "right_answer": q["answer"],
        "answer": q["choices"][LETTERS.index(q["answer"])],
        "clue_intervals": [[segments[k]["start"], segments[k]["end"]] for k in q["clips"]],
        "sub_category": category,
        "clips": list(q["clips"]),
        "source": source,
    }


def _said(segment: Mapping[str, Any]) -> str:
    return " ".join(cue["text"] for cue in segment["said"])


def _verify(
    manifest: Mapping[str, Any], segments: Mapping[str, Any], q: Mapping[str, Any], check: _Check
) -> None:
    """Raise when the manifest no longer supports one fact an answer depends on."""
    kind, *args = check
    order = [s["key"] for s in manifest["segments"]]
    if kind in ("said", "shown", "unsaid"):
        key, needle = args
        text = _said(segments[key]) if kind != "shown" else segments[key]["shown"]
        ok = (needle.lower() in text.lower()) == (kind != "unsaid")
    elif kind == "next":
        ok = order.index(args[0]) + 1 < len(order) and order[order.index(args[0]) + 1] == args[1]
    elif kind == "last":
        ok = order[-1] == args[0]
    elif kind == "count_said":
        pattern, count = args
        hits = [k for k in order if re.search(pattern, _said(segments[k]), re.IGNORECASE)]
        ok = len(hits) == count and sorted(hits) == sorted(q["clips"])
    else:
        raise ValueError(f"test bench question {q['id']}: unknown check {kind!r}")
    if not ok:
        raise ValueError(f"test bench question {q['id']}: the manifest contradicts {check!r}")


def save_testbench(manifest: Mapping[str, Any], path: PathLike | None = None) -> Path:
    """Write the test bench JSON (default: the shipped asset) and return its path."""
    target = Path(path) if path is not None else TESTBENCH_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(write_testbench(manifest), indent=2, ensure_ascii=False) + "\n"
    target.write_text(text, encoding="utf-8")
    return target


def load_testbench(*, subtitles: PathLike | None = None) -> QuestionList:
    """The shipped test bench as questions (benchmark ``testbench``).

    ``subtitles``: the folder holding ``testvideo.srt`` (the test video's own
    folder), to attach the narration's subtitles to every question.
    """
    loaded = load_cgbench(TESTBENCH_FILE, subtitles=subtitles or False)
    renamed = [replace(q, benchmark="testbench") for q in loaded]
    return QuestionList(renamed, source=loaded.source, benchmark="testbench")
