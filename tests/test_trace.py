"""Traces are JSON values: they round-trip, save atomically, summarise and rebuild the chat."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from longvideo_r1 import __version__
from longvideo_r1.agent import prompts
from longvideo_r1.agent.trace import (
    TRACE_FORMAT,
    Cost,
    Evidence,
    HighCaption,
    Round,
    Trace,
    TraceError,
)
from longvideo_r1.tree import Tree


def sample_trace() -> Trace:
    """A small finished run: one caption, one refused call, a forced answer."""
    tree = Tree.for_video(150.0, 1500, width=4)
    highs = [
        HighCaption(node_id=n.id, start=n.start, end=n.end, text=f"High {n.id[0]}.")
        for n in tree.nodes(1)
    ]
    leaf = tree.node((3, 2, 4))
    observation = prompts.caption_observation(leaf, "A bus pulls away.")
    notice = "The video_qa budget for this question (0 calls) is spent, so that call was not run."
    rounds = [
        Round(
            index=1,
            output="<think>Segment 3.</think><tool>get_caption((3, 2, 4))</tool>",
            think="Segment 3.",
            kind="get_caption",
            node_id=(3, 2, 4),
            observation=observation,
            model_seconds=1.5,
            tool_seconds=0.5,
            prompt_tokens=900,
            completion_tokens=30,
            tool_prompt_tokens=100,
            tool_completion_tokens=20,
            frames_decoded=32,
            cache_hit=False,
        ),
        Round(
            index=2,
            output='<tool>video_qa((3, 2, 4), "What is written?")</tool>',
            kind="video_qa",
            node_id=(3, 2, 4),
            query="What is written?",
            notes=["no <think>"],
            notice=notice,
            model_seconds=1.0,
        ),
        Round(
            index=3,
            output="<answer>(B)</answer>",
            kind="answer",
            answer="(B)",
            forced=True,
            model_seconds=0.5,
        ),
    ]
    return Trace(
        question="What vehicle passes the bakery?",
        choices=["a red car", "a blue bus"],
        video="/videos/bakery.mp4",
        fingerprint="f" * 64,
        duration=150.0,
        width=4,
        backends={"reasoning": "openai:m", "caption": "c", "video_qa": "v"},
        config={"max_rounds": 30, "max_video_qa": 0, "first_message_parts": False},
        high_captions=highs,
        rounds=rounds,
        answer="B",
        raw_answer="(B)",
        status="answered",
        evidence=[
            Evidence(
                node_id=leaf.id,
                level="low",
                start=leaf.start,
                end=leaf.end,
                how="get_caption",
                round=1,
            )
        ],
        cost=Cost(
            rounds=3,
            reasoning_calls=3,
            caption_calls=5,
            captions_made=1,
            captions_cached=4,
            frames_decoded=32,
            reasoning_prompt_tokens=2700,
            reasoning_completion_tokens=60,
            model_seconds=3.0,
            tool_seconds=0.5,
            end_to_end_seconds=3.75,
            agent_overhead_seconds=0.25,
        ),
        started_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
    )


def test_json_round_trip_is_exact():
    trace = sample_trace()
    text = trace.model_dump_json()
    back = Trace.model_validate_json(text)
    assert back == trace
    assert back.rounds[0].node_id == (3, 2, 4)
    assert back.started_at == trace.started_at
    data = json.loads(text)
    assert data["version"] == __version__ and data["trace_format"] == TRACE_FORMAT
    assert data["status"] == "answered" and data["evidence"][0]["node_id"] == [3, 2, 4]


def test_save_is_atomic_and_load_reads_it_back(tmp_path: Path):
    trace = sample_trace()
    path = trace.save(tmp_path / "runs" / "q1.json")
    assert Trace.load(path) == trace
    trace.status, trace.reason, trace.answer = "no_answer", "rounds spent", None
    trace.save(path)
    assert Trace.load(path).status == "no_answer"
    assert sorted(os.listdir(path.parent)) == ["q1.json"]  # no temporary files left behind


def test_a_failed_save_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    trace = sample_trace()
    path = trace.save(tmp_path / "q1.json")
    before = path.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    trace.status = "error"
    with pytest.raises(TraceError, match="cannot write trace .*No space left"):
        trace.save(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["q1.json"]


def test_bad_files_are_one_line_errors(tmp_path: Path):
    with pytest.raises(TraceError, match="cannot read trace"):
        Trace.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"question": "q"}')
    with pytest.raises(TraceError, match="is not a trace: duration") as info:
        Trace.load(bad)
    assert "\n" not in str(info.value)


def test_summary_reads_like_the_run():
    text = sample_trace().summary()
    lines = text.splitlines()
    assert lines[0] == "Q: What vehicle passes the bakery?"
    assert lines[1:3] == ["   A. a red car", "   B. a blue bus"]
    assert "/videos/bakery.mp4 (150.0 s, width 4)" in lines[3]
    assert "get_caption (3, 2, 4)  made" in lines[4]
    assert "video_qa (3, 2, 4) 'What is written?'  not run (budget)" in lines[5]
    assert lines[6].startswith("  3! answer '(B)'")
    assert lines[7] == "answered: B (wrote '(B)')"
    assert lines[8].startswith("cost: 3 rounds, 3 reasoning calls (2700 + 60 tokens), 5 captions")
    assert "3.8 s end to end = model 3.0 + tools 0.5 + agent 0.2" in lines[8]


def test_summary_of_a_failed_run_gives_the_reason():
    trace = Trace(question="Q?", duration=10.0, width=4, status="error", reason="endpoint down")
    trace.rounds.append(Round(index=1, error="endpoint down"))
    lines = trace.summary().splitlines()
    assert "failed: endpoint down" in lines[2]
    assert lines[3] == "error: endpoint down"


def test_messages_rebuild_the_conversation():
    trace = sample_trace()
    messages = trace.messages()
    highs = [(Tree.for_video(150.0, 1500, width=4).node((i,)), f"High {i}.") for i in range(1, 5)]
    first = prompts.first_user_text(trace.question, trace.choices, 150.0, highs)
    assert messages == [
        {"role": "system", "content": prompts.system_prompt(4)},
        {"role": "user", "content": first},
        {"role": "assistant", "content": trace.rounds[0].output},
        {"role": "user", "content": trace.rounds[0].observation},
        {"role": "assistant", "content": trace.rounds[1].output},
        {"role": "user", "content": trace.rounds[1].notice},
        {"role": "user", "content": prompts.last_round_message()},
        {"role": "assistant", "content": "<answer>(B)</answer>"},
    ]


def test_messages_stop_at_a_failed_model_call():
    trace = sample_trace()
    trace.rounds = [trace.rounds[0], Round(index=2, error="HTTP 500")]
    assert trace.messages()[-1] == {"role": "user", "content": trace.rounds[0].observation}
