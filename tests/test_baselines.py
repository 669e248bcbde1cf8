"""Baselines on the shipped benchmark: the exact prompts they send and how replies are read.

Servers are scripted and captions imported, so no model or captioner runs;
frames are decoded from the real test video.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from pathlib import Path

import pytest
from helpers_eval import (
    THINK_B,
    RuleServer,
    caption_text,
    question_of,
    settings_for,
    user_text,
)
from scripted_server import Say

from longvideo_r1.agent import grammar, protocol
from longvideo_r1.captions.captioner import CallCost, charge_failure
from longvideo_r1.errors import CaptionError
from longvideo_r1.evaluation.answering import (
    IMAGE_PART_STUB,
    AnswerStep,
    answer_instruction,
    parse_answer,
)
from longvideo_r1.evaluation.baselines import (
    BaselineTrace,
    CaptionAll,
    RandomWalk,
    UniformFrames,
    _Episode,
    _run_episode,
    random_walk,
    uniform_times,
)
from longvideo_r1.evaluation.methods import MethodOptions, make_method
from longvideo_r1.evaluation.runner import EvalOptions, Evaluator
from longvideo_r1.media.video import Video
from longvideo_r1.testing.testbench import TESTBENCH_FILE
from longvideo_r1.tree import Tree, format_node_id

CHOICES = ["red", "yellow", "blue", "white"]


def run(method, testbench, test_video, out: Path, settings, limit: int = 2):
    return Evaluator(
        testbench,
        questions_file=TESTBENCH_FILE,
        benchmark="testbench",
        videos_dir=test_video.path.parent,
        out_dir=out,
        settings=settings,
        method=method,
        options=EvalOptions(progress=False, limit=limit),
    ).run()


@pytest.fixture(scope="module")
def uniform_decoded(test_video) -> int:
    """Frames the video decodes to sample the 32 uniform frames: each from its keyframe."""
    with Video.open(test_video.path) as video:
        frames = video.frames_at(uniform_times(video.info.duration, 32), 64)
    assert len(frames) == 32 and frames.decoded > 5 * 32
    return frames.decoded


def question_tail(q, form: str = "either") -> str:
    """How every baseline prompt ends: the question, its lettered options, the instruction
    (a server's answer form is ``either`` unless set)."""
    instruction = answer_instruction(form)
    return "\n".join([f"Question: {q.question}", *q.choice_lines(), instruction])


# reading replies --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "letter"),
    [
        ("<think>it is yellow</think>\n<answer>B</answer>", "B"),
        ("<answer>(C)</answer>", "C"),
        ("<answer>yellow</answer>", "B"),
        # Outside <answer> nothing is scored, as for the agent: no lone letter is fished out.
        ("B", None),
        ("The answer is D.", None),
        ("<think>hmm</think>A.", None),
        ("I think B is right", None),
        ("<answer>E</answer>", None),
        ("<tool>get_caption((1, 2))</tool>", None),
        ("", None),
    ],
)
def test_replies_are_read_by_the_protocol_parser_and_never_guessed(reply, letter):
    parsed = parse_answer(reply, CHOICES)
    assert parsed.letter == letter
    assert (parsed.problem is None) == (letter is not None)


def test_uniform_times_are_slice_centres():
    assert uniform_times(10.0, 4) == [1.25, 3.75, 6.25, 8.75]
    times = uniform_times(151.6, 32)
    assert len(times) == 32 and 0 < times[0] < times[-1] < 151.6


def test_random_walk_zooms_in_without_repeats():
    tree = Tree.for_video(151.6, 3790)
    walk = random_walk(tree, 10, random.Random(1))
    ids = [n.id for n in walk]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert all(len(i) in (2, 3) for i in ids)
    for prev, node in zip(ids, ids[1:], strict=False):
        if len(node) == 3 and len(prev) == 2:
            assert node[:2] == prev  # a leaf right after a medium is one of its children
    assert [n.id for n in random_walk(tree, 10, random.Random(1))] == ids
    everything = random_walk(tree, 1000, random.Random(2))
    assert len(everything) == 16 + 64  # every medium and low node, once


# uniform-frames ---------------------------------------------------------------------------


def test_uniform_frames_sends_32_timed_frames_and_subtitles_to_the_vlm(
    testbench, test_video, testbench_store, tmp_path, uniform_decoded
):
    settings = settings_for(testbench_store, video_qa="placeholder")
    with RuleServer(lambda body: Say(THINK_B, prompt_tokens=9000), "scripted-vlm") as vlm:
        settings.video_qa.base_url = vlm.base_url
        method = make_method(MethodOptions("uniform-frames"), settings)
        outcome = run(method, testbench, test_video, tmp_path, settings)
    assert method.variant == "vlm-frames" and not method.needs_reasoning
    assert len(vlm.requests) == 2
    body = vlm.requests[0]
    assert body["model"] == "scripted-vlm"
    (message,) = body["messages"]
    parts = message["content"]
    images = [p for p in parts if p["type"] == "image_url"]
    assert len(images) == 32
    assert all(p["image_url"]["url"].startswith("data:image/jpeg;base64,") for p in images)
    texts = [p["text"] for p in parts if p["type"] == "text"]
    stamps = [t for t in texts if t.startswith("Frame at ")]
    shown = [float(t.removeprefix("Frame at ").removesuffix("s:")) for t in stamps]
    wanted = uniform_times(151.6, 32)  # each stamp is the shown frame's time, within a frame
    assert len(shown) == 32 and all(abs(a - b) <= 0.1 for a, b in zip(shown, wanted, strict=True))
    assert parts[0]["text"].startswith("These are 32 frames sampled evenly from a video of 151.6")
    subtitles = [t for t in texts if t.startswith("Subtitle ")]
    assert any("A hand lifts a yellow box" in t for t in subtitles)
    assert parts[-1]["text"] == question_tail(testbench[0])
    first = min(outcome.records, key=lambda r: r.question_id)
    assert (first.answer, first.correct, first.status) == ("B", True, "answered")
    assert first.cost.video_qa_calls == 1 and first.cost.frames_decoded == uniform_decoded
    assert first.cost.vlm_prompt_tokens == 9000 and first.cost.reasoning_calls == 0
    trace = json.loads((tmp_path / "uniform-frames" / first.trace).read_text())
    stubbed = [p for p in trace["prompt"][0]["content"] if p.get("text") == IMAGE_PART_STUB]
    assert len(stubbed) == 32 and "base64" not in json.dumps(trace)
    manifest = json.loads((tmp_path / "uniform-frames" / "run.json").read_text())
    assert manifest["identities"] == {"video_qa": "vlm:scripted-vlm"}
    assert manifest["params"]["frames"] == 32


def test_uniform_frames_without_a_vlm_says_what_it_does_instead(
    testbench, test_video, testbench_store, tmp_path, uniform_decoded
):
    """No vision model: CPU descriptors at the 32 times, to the reasoning model, named so."""
    with RuleServer(lambda body: Say(THINK_B)) as llm:
        settings = settings_for(testbench_store, llm.base_url)
        method = UniformFrames(frames=32, use_vlm=False, detect_frames=0, ocr_frames=0)
        outcome = run(method, testbench, test_video, tmp_path, settings, limit=1)
        body = llm.requests[0]
    assert outcome.manifest.variant == "embedded-descriptors"
    system, user = body["messages"]
    assert "CPU frame analyzer" in system["content"]
    assert "no vision model" in user["content"]
    lines = user["content"].splitlines()
    frames = [line for line in lines if line.startswith("Frame at ")]
    assert len(frames) == 32 and all("colours" in line for line in frames)
    assert any(line.startswith("Subtitle ") and "yellow box" in line for line in lines)
    assert user["content"].endswith(question_tail(testbench[0]))
    record = outcome.records[0]
    assert record.cost.reasoning_calls == 1 and record.cost.frames_decoded == uniform_decoded
    assert record.variant == "embedded-descriptors"


# caption-all ------------------------------------------------------------------------------


def test_caption_all_sends_every_leaf_caption_in_time_order(
    testbench, test_video, testbench_store, tmp_path
):
    with RuleServer(lambda body: Say("<answer>yellow</answer>")) as llm:
        settings = settings_for(testbench_store, llm.base_url)
        outcome = run(CaptionAll(), testbench, test_video, tmp_path, settings)
        bodies = list(llm.requests)
    tree = Tree.for_video(151.6, 3790)
    user = bodies[0]["messages"][1]["content"]
    lines = user.splitlines()
    assert (
        lines[0]
        == "The video is 151.6 seconds long. Captions of all its 64 low-level clips, in time order:"
    )
    leaves = tree.nodes(3)
    expected = [
        f"Low-level Caption {format_node_id(n.id)} from {n.start:.1f} to {n.end:.1f}:"
        f"{caption_text(n.id)}"
        for n in leaves
    ]
    assert lines[1:65] == expected
    assert user.endswith(question_tail(testbench[0]))
    # same video, same captions: the two prompts differ only in the question at the end
    other = bodies[1]["messages"][1]["content"]
    assert other.split("Question: ")[0] == user.split("Question: ")[0]
    record = min(outcome.records, key=lambda r: r.question_id)
    assert record.answer == "B" and record.correct
    assert (record.cost.caption_calls, record.cost.captions_cached) == (64, 64)
    assert record.cost.captions_made == 0 and record.cost.rounds == 1


def test_an_unparsable_baseline_answer_is_a_failure(
    testbench, test_video, testbench_store, tmp_path
):
    with RuleServer(lambda body: Say("<think>no idea</think> probably something")) as llm:
        outcome = run(
            CaptionAll(),
            testbench,
            test_video,
            tmp_path,
            settings_for(testbench_store, llm.base_url),
        )
    assert {(r.status, r.failure, r.answer) for r in outcome.records} == {
        ("no_answer", "unparsable", None)
    }
    assert all(r.reason.startswith("unparsable answer") for r in outcome.records)


def test_a_baseline_answer_is_constrained_like_the_agents(
    testbench, test_video, testbench_store, tmp_path
):
    """The one call of a baseline gets the agent's grammar with only <answer> admitted."""
    reply = "<think>The captions say yellow.</think>\n<answer>yellow</answer>"
    with RuleServer(lambda body: Say(reply), grammar_field="ebnf") as llm:
        settings = settings_for(testbench_store, llm.base_url)
        method = CaptionAll(answer=AnswerStep(constrain="on", answer_form="text"))
        outcome = run(method, testbench, test_video, tmp_path, settings)
        grammars, bodies = list(llm.grammars), list(llm.requests)
    q = testbench[0]
    rules = grammar.ReplyRules(
        width=4, choices=tuple(q.choice_lines()), answer_form="text", tools=False
    )
    assert grammars[0] == grammar.reply_constraint(rules).grammar
    assert "tool ::=" not in grammars[0] and '"yellow"' in grammars[0]
    assert bodies[0]["messages"][1]["content"].endswith(question_tail(q, "text"))
    record = min(outcome.records, key=lambda r: r.question_id)
    assert record.answer == "B" and record.correct
    assert outcome.manifest.params["constrain"] == "on"
    assert outcome.manifest.params["answer_form"] == "text"


# random-walk ------------------------------------------------------------------------------


def test_random_walk_reads_high_captions_then_its_budget_seeded(
    testbench, test_video, testbench_store, tmp_path
):
    with RuleServer(lambda body: Say(THINK_B)) as llm:
        settings = settings_for(testbench_store, llm.base_url)
        outcome = run(RandomWalk(calls=5, seed=7), testbench, test_video, tmp_path / "a", settings)
        again = run(RandomWalk(calls=5, seed=7), testbench, test_video, tmp_path / "b", settings)
        bodies = list(llm.requests)
    by_question: dict[str, list[str]] = {}
    for body in bodies:
        by_question.setdefault(question_of(body), []).append(user_text(body))
    for prompts in by_question.values():
        assert len(prompts) == 2 and prompts[0] == prompts[1]  # same seed, same walk
    prompt = by_question[testbench[0].question][0]
    ids = re.findall(r"-level Caption (\([\d, ]+\)) from", prompt)
    assert len(ids) == 4 + 5
    assert [i for i in ids if i.count(",") == 1 and i.endswith(",)")] == [
        "(1,)",
        "(2,)",
        "(3,)",
        "(4,)",
    ]
    assert "4 high-level segments and 5 finer segments picked at random" in prompt
    record = min(outcome.records, key=lambda r: r.question_id)
    assert record.cost.caption_calls == 9 and record.cost.rounds == 1
    assert len(outcome.records) == len(again.records) == 2
    assert outcome.manifest.params["walk_calls"] == 5
    assert outcome.manifest.params["prompt_version"] == "v3"
    assert outcome.manifest.params["parser_version"] == protocol.PARSER_VERSION
    trace = json.loads((tmp_path / "a" / "random-walk" / record.trace).read_text())
    assert len(trace["evidence"]) == 9 and len(trace["high_captions"]) == 4


def test_a_failed_caption_call_is_charged_to_the_baselines_trace():
    trace = BaselineTrace(
        question="q", duration=10.0, width=4, method="caption-all", variant="leaf-captions"
    )
    ep = _Episode(trace, ["a", "b"], time.perf_counter(), threading.Event())

    def body(ep: _Episode) -> None:
        raise charge_failure(CaptionError("the captioner broke"), CallCost(9, 40, 4, 0.1))

    out = _run_episode(ep, threading.Event(), body)
    assert out.status == "error" and "the captioner broke" in (out.reason or "")
    assert out.cost.frames_decoded == 9
    assert (out.cost.caption_prompt_tokens, out.cost.caption_completion_tokens) == (40, 4)
