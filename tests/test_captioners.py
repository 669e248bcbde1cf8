"""The VLM captioner: message layout, reply parsing, cost accounting, and the real HTTP path."""

from __future__ import annotations

import base64
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from longvideo_r1.captions.captioner import (
    PROMPTS,
    CaptionContext,
    CaptionPrompts,
    VLMCaptioner,
    VLMClipQA,
    parse_tagged_reply,
)
from longvideo_r1.captions.reference import strip_caption_tags, wrap_caption_tags
from longvideo_r1.errors import CaptionError, ConfigError, EndpointError, TreeError
from longvideo_r1.llm.client import ChatClient, ChatReply, Usage
from longvideo_r1.media.subtitles import Cue
from longvideo_r1.media.video import Frames
from longvideo_r1.tree import DEFAULT_PLANS, LevelPlan, Tree

# fakes -----------------------------------------------------------------------------------


@dataclass
class FakeFrame:
    time: float
    index: int
    image: Image.Image


GOP = 50


def decoder_cost(times, fps=25.0) -> int:
    """What the fake decoder charges: every distinct frame decoded from the keyframe before it."""
    return sum(i % GOP + 1 for i in {int(t * fps) for t in times})


class FakeVideo:
    """Frames whose colour encodes their time; 16:9 at the requested size (or larger).

    Like :class:`~longvideo_r1.media.video.Video` it returns :class:`Frames` whose
    ``decoded`` (here :func:`decoder_cost`) is far more than the frames returned.
    """

    def __init__(self, fps: float = 25.0, oversize: float = 1.0, drop: int = 0):
        self.fps = fps
        self.oversize = oversize
        self.drop = drop
        self.calls: list[tuple[list[float], int]] = []
        self.decoded: list[int] = []
        self._lock = threading.Lock()

    def frames_at(self, times, max_side):
        times = list(times)
        decoded = decoder_cost(times, self.fps)
        with self._lock:
            self.calls.append((times, max_side))
            self.decoded.append(decoded)
        width = int(max_side * self.oversize)
        height = width * 9 // 16
        frames = [
            FakeFrame(t, int(t * self.fps), Image.new("RGB", (width, height), (int(t) % 256, 0, 0)))
            for t in times
        ]
        return Frames(frames[: len(frames) - self.drop], decoded)


class FakeClient:
    """Stands in for ChatClient: records requests, answers from a function of the messages."""

    def __init__(self, answer="<caption>A man walks a dog.</caption>", model="fake-vl"):
        self.model = model
        self.answer = answer
        self.requests: list[dict] = []
        self._lock = threading.Lock()

    def chat(self, messages, max_tokens=None, temperature=None, stop=None):
        with self._lock:
            self.requests.append({"messages": messages, "max_tokens": max_tokens})
        answer = self.answer(messages) if callable(self.answer) else self.answer
        if isinstance(answer, ChatReply):
            return answer
        return ChatReply(text=answer, usage=Usage(1200, 40), seconds=0.01)


def tree(width=2, duration=240.0, plans=None):
    return Tree.for_video(duration, int(duration * 25), width=width, plans=plans)


def context(t, node_id, video=None, cues=()):
    return CaptionContext(video=video or FakeVideo(), tree=t, node=t.node(node_id), cues=list(cues))


def parts_of(request):
    (message,) = request["messages"]
    assert message["role"] == "user"
    return message["content"]


def decode_data_url(url: str) -> Image.Image:
    head, _, data = url.partition(",")
    assert head == "data:image/jpeg;base64"
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    assert image.format == "JPEG"
    return image


FRAME_RE = re.compile(r"^Frame at (\d+\.\d)s:$")


# message structure -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("node_id", "level"), [((1,), "high"), ((2, 1), "medium"), ((1, 2, 2), "low")]
)
def test_message_has_a_timestamp_then_a_jpeg_for_every_planned_frame(node_id, level):
    t = tree()
    plan = t.plan(node_id)
    client = FakeClient()
    VLMCaptioner(client).caption(context(t, node_id))
    parts = parts_of(client.requests[0])
    intro, frames, reminder = parts[0], parts[1:-1], parts[-1]
    assert intro["type"] == "text" and reminder["type"] == "text"
    node = t.node(node_id)
    assert f"from {node.start:.1f}s to {node.end:.1f}s" in intro["text"]
    assert f"at most {plan.max_words} words" in reminder["text"]
    assert "<caption>" in reminder["text"]
    assert len(frames) == 2 * plan.frames
    expected_times = [f"{s:.1f}" for s in t.sample_times(node_id)]
    labels = [FRAME_RE.match(p["text"]).group(1) for p in frames[0::2]]
    assert labels == expected_times
    for part in frames[1::2]:
        assert part["type"] == "image_url"
        image = decode_data_url(part["image_url"]["url"])
        assert max(image.size) == plan.max_side
    if level == "low":
        assert all(w in intro["text"] for w in ("setting", "lighting", "wearing", "atmosphere"))
    else:
        assert "lighting" not in intro["text"]


def test_frames_larger_than_the_plan_are_downscaled():
    t = tree(plans={**DEFAULT_PLANS, "low": LevelPlan(frames=2, max_side=512, max_words=200)})
    client = FakeClient()
    VLMCaptioner(client).caption(context(t, (1, 1, 1), video=FakeVideo(oversize=3.0)))
    url = parts_of(client.requests[0])[2]["image_url"]["url"]
    assert decode_data_url(url).size == (512, 288)


def test_subtitles_follow_their_frame_and_none_is_lost():
    # High node (1,) spans [0, 120) with 4 frames at 15, 45, 75, 105.
    plans = {
        "high": LevelPlan(frames=4, max_side=64, max_words=400),
        "medium": LevelPlan(frames=2, max_side=64, max_words=400),
        "low": LevelPlan(frames=2, max_side=64, max_words=200),
    }
    t = tree(plans=plans)
    cues = [
        Cue(2.0, 3.5, "Good morning."),
        Cue(20.0, 22.0, "Between the first and second frame."),
        Cue(46.0, 47.0, "Right after the second frame."),
        Cue(119.0, 123.0, "Runs into the next node."),
        Cue(130.0, 131.0, "Belongs to the next node."),
    ]
    client = FakeClient()
    VLMCaptioner(client).caption(context(t, (1,), cues=cues))
    parts = parts_of(client.requests[0])
    texts = [p["text"] if p["type"] == "text" else "<image>" for p in parts[1:-1]]
    assert texts == [
        "Frame at 15.0s:",
        "<image>",
        "Subtitle 2.0s-3.5s: Good morning.\nSubtitle 20.0s-22.0s: Between the first and second frame.",
        "Frame at 45.0s:",
        "<image>",
        "Subtitle 46.0s-47.0s: Right after the second frame.",
        "Frame at 75.0s:",
        "<image>",
        "Frame at 105.0s:",
        "<image>",
        "Subtitle 119.0s-123.0s: Runs into the next node.",
    ]
    assert "word for word" in parts[0]["text"]


def test_no_subtitle_instruction_without_subtitles():
    client = FakeClient()
    VLMCaptioner(client).caption(context(tree(), (1, 1, 1), cues=[Cue(200, 201, "far away")]))
    parts = parts_of(client.requests[0])
    assert "word for word" not in parts[0]["text"]
    assert not any(p["type"] == "text" and p["text"].startswith("Subtitle") for p in parts)


# result, identity, errors ----------------------------------------------------------------


def test_result_records_frames_tokens_and_time():
    t = tree()
    video = FakeVideo()
    result = VLMCaptioner(FakeClient()).caption(context(t, (2, 1, 2), video=video))
    assert result.text == "A man walks a dog."
    assert result.frame_times == t.sample_times((2, 1, 2))
    assert result.frame_ids == [int(s * 25) for s in result.frame_times]
    # the decoding this call cost (the video's per-call count), not the 32 frames sent
    assert result.frames_decoded == video.decoded[0] == decoder_cost(result.frame_times) > 32
    assert (result.prompt_tokens, result.completion_tokens) == (1200, 40)
    assert result.seconds > 0
    assert video.calls == [(t.sample_times((2, 1, 2)), 512)]


def test_identity_names_model_and_prompt_version():
    client = FakeClient(model="Qwen/Qwen3-VL-8B-Instruct")
    assert VLMCaptioner(client).identity == "vlm:Qwen/Qwen3-VL-8B-Instruct:v1"
    base = PROMPTS["v1"]
    custom = CaptionPrompts(
        base.high, base.medium, base.low + " Be terse.", base.subtitles, base.reminder
    )
    other = VLMCaptioner(client, prompts=custom).identity
    assert (
        other.startswith("vlm:Qwen/Qwen3-VL-8B-Instruct:v1+")
        and other != "vlm:Qwen/Qwen3-VL-8B-Instruct:v1"
    )
    with pytest.raises(ConfigError, match="unknown caption prompt version 'v0'"):
        VLMCaptioner(client, prompt_version="v0")


def test_endpoint_errors_pass_through():
    def fail(messages):
        raise EndpointError("chat endpoint http://x/v1 (model m) answered HTTP 500")

    with pytest.raises(EndpointError):
        VLMCaptioner(FakeClient(answer=fail)).caption(context(tree(), (1,)))


def test_a_failed_caption_call_carries_what_it_spent():
    """The frames were decoded and the reply's tokens paid before the reply proved unusable:
    the error says so, for the caption service to record with the failure."""
    video = FakeVideo()
    captioner = VLMCaptioner(FakeClient(answer="no tags here"))
    with pytest.raises(CaptionError) as info:
        captioner.caption(context(tree(), (2, 1), video=video))
    spent = info.value.spent
    assert spent.frames_decoded == video.decoded[0] > 0
    assert (spent.prompt_tokens, spent.completion_tokens) == (1200, 40) and spent.seconds > 0

    def down(messages):
        raise EndpointError("chat endpoint http://x/v1 (model m) answered HTTP 500")

    with pytest.raises(EndpointError) as info:
        VLMCaptioner(FakeClient(answer=down)).caption(context(tree(), (1,), video=video))
    assert info.value.spent.frames_decoded == video.decoded[1] > 0
    assert info.value.spent.prompt_tokens == 0


def test_a_video_that_returns_too_few_frames_is_a_caption_error():
    with pytest.raises(CaptionError, match=r"node \(1, 1\): asked the video for 64 frames, got 63"):
        VLMCaptioner(FakeClient()).caption(context(tree(), (1, 1), video=FakeVideo(drop=1)))


def test_captioner_is_thread_safe():
    t = tree(width=3, duration=600)

    def answer(messages):
        intro = messages[0]["content"][0]["text"]
        span = re.search(r"from ([\d.]+s) to ([\d.]+s)", intro).groups()
        time.sleep(0.001)
        return f"<caption>span {span[0]} {span[1]}</caption>"

    captioner = VLMCaptioner(FakeClient(answer=answer))
    video = FakeVideo()
    nodes = t.nodes(3)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: captioner.caption(context(t, n.id, video)), nodes))
    for node, result in zip(nodes, results, strict=True):
        assert result.text == f"span {node.start:.1f}s {node.end:.1f}s"
        assert result.frame_times == t.sample_times(node.id)
        assert result.frames_decoded == decoder_cost(result.frame_times)  # its own call's count


# reply parsing ---------------------------------------------------------------------------

PARSE_CASES = [
    ("<caption>A man walks.</caption>", True, "A man walks."),
    ("Sure! Here it is:\n<caption>\n  A man walks.\n</caption>\n", True, "A man walks."),
    ("<CAPTION>Upper case tags.</CAPTION>", True, "Upper case tags."),
    ("<caption>first try</caption> then <caption>final</caption>", True, "final"),
    ("<caption>complete</caption><caption>cut o", True, "complete"),
    ("<think>draft <caption>draft</caption></think><caption>real</caption>", True, "real"),
    ("draft <caption>draft</caption></think><caption>real</caption>", True, "real"),
    ("A man walks.", False, "A man walks."),
    ("<caption>cut off mid sen", False, "cut off mid sen"),
    ("  plain with a stray </caption>", False, "plain with a stray"),
]


@pytest.mark.parametrize(("reply", "strict", "expected"), PARSE_CASES)
def test_reply_parsing(reply, strict, expected):
    captioner = VLMCaptioner(FakeClient(answer=reply), require_tags=strict)
    assert captioner.caption(context(tree(), (1, 2, 1))).text == expected


ERROR_CASES = [
    (
        ChatReply("A man walks a dog."),
        "reply has no <caption>...</caption> block (it starts 'A man",
    ),
    (ChatReply(""), "reply has no <caption>...</caption> block (it is empty)"),
    (
        ChatReply("<caption>A man walks a", finish_reason="length"),
        "reply was cut off before </caption> (it hit the token limit; raise max_tokens)",
    ),
    (ChatReply("<caption>A man walks a"), "reply was cut off before </caption>"),
    (
        ChatReply("<think>Let me look at frame", finish_reason="length"),
        "no <caption>...</caption> block (it starts '<think>Let me look at frame') (it hit the token limit",
    ),
    (ChatReply("<caption>  </caption>"), "returned an empty <caption>"),
    (ChatReply("<think>only <caption>a draft</caption></think>"), "no <caption>"),
]


@pytest.mark.parametrize(("reply", "expected"), ERROR_CASES)
def test_bad_replies_are_one_line_caption_errors(reply, expected):
    captioner = VLMCaptioner(FakeClient(answer=reply, model="tiny-vl"))
    with pytest.raises(CaptionError) as info:
        captioner.caption(context(tree(), (1, 2, 1)))
    message = str(info.value)
    assert message.startswith("node (1, 2, 1): tiny-vl ")
    assert expected in message
    assert "\n" not in message


def test_lenient_parsing_still_refuses_an_empty_reply():
    with pytest.raises(CaptionError, match="empty"):
        VLMCaptioner(FakeClient(answer="   "), require_tags=False).caption(context(tree(), (1,)))


@pytest.mark.parametrize(
    ("stored", "clean"),
    [
        ("<caption>A dog.</caption>", "A dog."),
        ("<caption>\nA dog.\n</caption>", "A dog."),
        ("A dog.", "A dog."),
        ("  A dog. ", "A dog."),
        ("<caption>A dog.", "A dog."),
    ],
)
def test_strip_and_wrap_caption_tags(stored, clean):
    assert strip_caption_tags(stored) == clean
    assert wrap_caption_tags(stored) == f"<caption>{clean}</caption>"
    assert wrap_caption_tags(wrap_caption_tags(stored)) == wrap_caption_tags(stored)
    assert strip_caption_tags(wrap_caption_tags(clean)) == clean


def test_parse_names_where_and_model():
    with pytest.raises(CaptionError, match=r"^video_qa on \(1, 1, 1\): m reply has no <answer>"):
        parse_tagged_reply(ChatReply("nothing"), "answer", True, "video_qa on (1, 1, 1)", "m")


# video_qa --------------------------------------------------------------------------------

QA_REPLY = (
    "The clip shows a kitchen.<reasoning>The knife is red at 12.0s.</reasoning>"
    "<answer>The knife is red (12.0s).</answer>"
)


def test_clip_qa_sends_16_frames_at_1024_and_returns_only_the_answer():
    t = tree()
    client = FakeClient(answer=QA_REPLY)
    video = FakeVideo()
    cues = [Cue(3.0, 4.0, "Pass me the knife.")]
    answer, cost = VLMClipQA(client).ask(video, t, (1, 1, 1), "What colour is the knife?", cues)
    assert answer == "The knife is red (12.0s)."
    assert cost.frames_decoded == video.decoded[0] == decoder_cost(t.qa_times((1, 1, 1))) > 16
    assert (cost.prompt_tokens, cost.completion_tokens) == (1200, 40)
    assert cost.seconds > 0
    assert video.calls == [(t.qa_times((1, 1, 1)), 1024)]
    parts = parts_of(client.requests[0])
    assert "What colour is the knife?" in parts[0]["text"]
    assert "nothing to do with the question" in parts[0]["text"]
    assert "<reasoning>" in parts[0]["text"] and "<answer>" in parts[0]["text"]
    assert "What colour is the knife?" in parts[-1]["text"]
    images = [p for p in parts if p["type"] == "image_url"]
    assert len(images) == 16
    assert max(decode_data_url(images[0]["image_url"]["url"]).size) == 1024
    assert any(p["type"] == "text" and "Pass me the knife." in p["text"] for p in parts)


def test_clip_qa_refuses_non_leaves_empty_queries_and_untagged_replies():
    t = tree()
    qa = VLMClipQA(FakeClient(answer="red"))
    with pytest.raises(TreeError):
        qa.ask(FakeVideo(), t, (1, 1), "colour?")
    with pytest.raises(CaptionError, match="query is empty"):
        qa.ask(FakeVideo(), t, (1, 1, 1), "  ")
    with pytest.raises(
        CaptionError, match=r"video_qa on \(1, 1, 1\): fake-vl reply has no <answer>"
    ):
        qa.ask(FakeVideo(), t, (1, 1, 1), "colour?")


def test_lenient_clip_qa_drops_the_reasoning():
    reply = "<reasoning>It looks red.</reasoning> Red."
    answer, _ = VLMClipQA(FakeClient(answer=reply), require_tags=False).ask(
        FakeVideo(), tree(), (2, 2, 2), "colour?"
    )
    assert answer == "Red."


# the real HTTP path: a tiny random LLaVA behind `transformers serve` ----------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, limit: float = 180.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            pytest.fail(f"transformers serve exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    pytest.fail(f"transformers serve not ready after {limit:.0f} s:\n{log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def tiny_vlm_server(tmp_path_factory):
    """Build the tiny LLaVA and serve it; yields (base_url, model name, startup seconds)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_vlm import build_tiny_llava

    root = tmp_path_factory.mktemp("tiny-vlm")
    model_dir = build_tiny_llava(root / "model")
    port = _free_port()
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_UPDATE_CHECK="1",  # the CLI otherwise asks PyPI for a newer version
        HF_HOME=str(root / "hf-home"),
    )
    command = [
        sys.executable,
        "-c",
        "import sys; from transformers.cli.transformers import main; sys.exit(main())",
        "serve",
        str(model_dir),  # pinned and preloaded: ready means the model is loaded
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
    ]
    log = root / "serve.log"
    started = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base, proc, log)
        yield f"{base}/v1", str(model_dir), time.perf_counter() - started
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.mark.slow
def test_vlm_captioner_through_transformers_serve(tiny_vlm_server):
    url, model, startup = tiny_vlm_server
    client = ChatClient(
        url, model, timeout=120, max_retries=1, max_tokens=24, extra_body={"seed": 0}
    )
    assert model in client.models()
    t = tree()
    captioner = VLMCaptioner(client, require_tags=False)
    started = time.perf_counter()
    video = FakeVideo()
    result = captioner.caption(
        context(t, (1, 2, 1), video=video, cues=[Cue(70.0, 72.0, "Hello there.")])
    )
    seconds = time.perf_counter() - started
    print(
        f"\ntransformers serve ready in {startup:.1f} s; one leaf caption in {seconds:.2f} s "
        f"({result.prompt_tokens} prompt + {result.completion_tokens} completion tokens)"
    )
    assert result.frames_decoded == video.decoded[0]
    # 32 images of 16 patch tokens each were expanded by the server's processor
    assert result.prompt_tokens > 32 * 16
    assert 0 < result.completion_tokens <= 24
    assert result.text  # noise, but something came back through the whole path
    assert result.seconds > 0


@pytest.mark.slow
def test_clip_qa_and_errors_through_transformers_serve(tiny_vlm_server):
    url, model, _ = tiny_vlm_server
    client = ChatClient(
        url, model, timeout=120, max_retries=0, max_tokens=16, extra_body={"seed": 1}
    )
    video = FakeVideo()
    answer, cost = VLMClipQA(client, require_tags=False).ask(video, tree(), (1, 1, 1), "what?")
    assert cost.frames_decoded == video.decoded[0] and cost.prompt_tokens > 16 * 16
    assert isinstance(answer, str)
    wrong = ChatClient(url, "another-model", max_retries=0)
    with pytest.raises(EndpointError, match=r"answered HTTP 400: Server is pinned to"):
        wrong.chat([{"role": "user", "content": "hi"}])
