"""Shared pieces of the evaluation tests: imported captions and a server that answers by rule.

Captions are imported under ``imported:test`` for every node of the test
video's tree, so evaluation tests never run a captioner and take seconds.
The rule server is the scripted server with a function in place of the
script, for runs whose request order depends on threads or on resumption.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scripted_server import ScriptedChatServer, Step

from longvideo_r1.agent.config import AgentConfig
from longvideo_r1.agent.trace import Trace
from longvideo_r1.captions.records import CaptionRecord, VideoRecord
from longvideo_r1.captions.store import CaptionStore
from longvideo_r1.config import Settings
from longvideo_r1.evaluation.methods import AgentMethod
from longvideo_r1.evaluation.runner import EvalOptions, Evaluator
from longvideo_r1.media.video import Video
from longvideo_r1.questions.schema import Question
from longvideo_r1.testing.testbench import TESTBENCH_FILE
from longvideo_r1.tree import Tree, format_node_id

if TYPE_CHECKING:
    from longvideo_r1.evaluation.methods import Method
    from longvideo_r1.testing.testvideo import BuiltVideo

IDENTITY = "imported:test"
THINK_B = "<think>The captions say so.</think>\n<answer>B</answer>"


def caption_text(node_id: tuple[int, ...]) -> str:
    return f"caption of node {format_node_id(node_id)}"


def import_captions(video_path: Path, store_path: Path) -> Tree:
    """Every node's caption under :data:`IDENTITY`, as ``lvr1 caption --import-reference``
    would store it (the video registered, so trees are found without opening it)."""
    with Video.open(video_path) as video:
        tree = Tree.for_video(video.info.duration, video.info.n_frames)
        registered = VideoRecord(
            fingerprint=video.fingerprint,
            path=str(video.info.path),
            duration=float(video.info.duration),
            n_frames=int(video.info.n_frames),
            width=tree.width,
        )
        records = [
            CaptionRecord(
                fingerprint=video.fingerprint,
                width=tree.width,
                node_id=node.id,
                identity=IDENTITY,
                text=caption_text(node.id),
            )
            for node in tree.walk()
        ]
    with CaptionStore(store_path) as store:
        store.register_video(registered)
        store.put_captions(records, replace=True)
    return tree


def settings_for(
    store: Path, reasoning: str | None = None, video_qa: str | None = None
) -> Settings:
    """Settings as the CLI would build them: imported captions, scripted endpoints."""
    data: dict[str, Any] = {"store": store, "captioner": IDENTITY}
    if reasoning:
        data["reasoning"] = {"base_url": reasoning, "model": "scripted-model", "max_retries": 0}
    if video_qa:
        data["video_qa"] = {"base_url": video_qa, "model": "scripted-vlm", "max_retries": 0}
    return Settings.model_validate(data)


def evaluator(
    questions: Sequence[Question],
    test_video: BuiltVideo,
    out: Path,
    settings: Settings,
    method: Method | None = None,
    **options: Any,
) -> Evaluator:
    """An evaluator of the test bench over the test video, quiet, with the 3-round agent
    unless told another method; ``options`` go to :class:`EvalOptions`."""
    return Evaluator(
        questions,
        questions_file=TESTBENCH_FILE,
        benchmark="testbench",
        videos_dir=test_video.path.parent,
        out_dir=out,
        settings=settings,
        method=method or AgentMethod(AgentConfig(max_rounds=3)),
        options=EvalOptions(progress=False, **options),
    )


class RuleServer(ScriptedChatServer):
    """Answers each request with ``rule(body)``; records every request like the scripted one."""

    def __init__(
        self,
        rule: Callable[[dict[str, Any]], Step],
        model: str = "scripted-model",
        grammar_field: str | None = None,
    ):
        super().__init__([], model, grammar_field)
        self.rule = rule
        self.count_lock = threading.Lock()

    def _next(self, body: dict[str, Any]) -> Step | None:
        with self._lock:
            probe = self._intercept(body)
        return probe if probe is not None else self.rule(body)


def user_text(body: dict[str, Any]) -> str:
    """Every text of the request's user messages, joined (images left out)."""
    texts = []
    for message in body["messages"]:
        if message["role"] == "user":
            content = message["content"]
            if isinstance(content, list):
                content = "\n".join(p.get("text", "") for p in content)
            texts.append(content)
    return "\n".join(texts)


def question_of(body: dict[str, Any]) -> str:
    """The question a request is about: the baselines' ``Question:`` line, else the agent's
    first line."""
    text = user_text(body)
    for line in text.splitlines():
        if line.startswith("Question: "):
            return line.removeprefix("Question: ").strip()
    return text.strip().splitlines()[0] if text.strip() else ""


class Escape(BaseException):
    """Raised past the harness's ``except Exception``, as a bug in native glue might."""


@dataclass
class StubMethod:
    """A method that answers B without a model, and crashes on the questions it is told to.

    ``exit_on`` ends the worker's process (what an out-of-memory kill or a
    segfault does); ``escape_on`` raises :class:`Escape`, which the harness
    does not catch. Everything else is a one-round answered trace.
    """

    exit_on: tuple[str, ...] = ()
    escape_on: tuple[str, ...] = ()
    name: str = "stub"
    variant: str = "stub"
    needs_reasoning: bool = False

    def params(self) -> dict[str, Any]:
        return {}

    def identities(self, settings: Settings, reasoning: str | None) -> dict[str, str]:
        return {"stub": "answers B"}

    def run(self, question, session, backend, stop) -> Trace:
        if question.id in self.exit_on:
            os._exit(3)
        if question.id in self.escape_on:
            raise Escape(f"escaped on {question.id}")
        return Trace(
            question=question.question,
            duration=session.video.info.duration,
            width=session.tree.width,
            answer="B",
            raw_answer="B",
            status="answered",
        )


def sigint_as_default() -> None:
    """A child's Ctrl-C as a terminal gives it, whatever the test run inherited.

    A shell starts a background job (``make test &``) with SIGINT ignored,
    children inherit that, and Python then installs no KeyboardInterrupt
    handler, so a Ctrl-C test would see its child ignore the signal. Passed as
    ``preexec_fn`` to the children those tests interrupt.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
