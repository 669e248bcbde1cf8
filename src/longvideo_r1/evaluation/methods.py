"""Methods: the one interface the agent and the baselines answer through, and its choice.

A method is what varies between runs of one harness; which one a run uses, with
which parameters, is settled here from the command line before any question is
read, including the random walk's budget, which comes from the agent's own run.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from longvideo_r1.agent.config import AgentConfig
from longvideo_r1.agent.trace import Trace
from longvideo_r1.config import Settings
from longvideo_r1.errors import ConfigError
from longvideo_r1.evaluation import baselines
from longvideo_r1.evaluation.answering import AnswerStep
from longvideo_r1.evaluation.identity import caption_identity, video_qa_identity
from longvideo_r1.evaluation.records import RunFolder
from longvideo_r1.questions.schema import Question

METHODS = ("agent", "uniform-frames", "caption-all", "random-walk")


class Method(Protocol):
    """One way of answering a question; the agent and each baseline implement it."""

    name: str
    variant: str
    needs_reasoning: bool

    def params(self) -> dict[str, Any]:
        """Parameters that change results (they go into the manifest)."""
        ...

    def identities(self, settings: Settings, reasoning: str | None) -> dict[str, str]:
        """The identity of every model whose output the method uses."""
        ...

    def run(self, question: Question, session: Any, backend: Any, stop: threading.Event) -> Trace:
        """Answer one question; raise RunInterrupted when ``stop`` is set midway."""
        ...


@dataclass
class AgentMethod:
    """The navigator itself, exactly as ``lvr1 ask`` runs it."""

    config: AgentConfig = field(default_factory=AgentConfig)
    name: str = "agent"
    variant: str = "agent"
    needs_reasoning: bool = True

    def __post_init__(self) -> None:
        if self.variant == "agent":  # a retrieval-guided run is never shown as unguided
            self.variant = self.config.variant

    def params(self) -> dict[str, Any]:
        return self.config.to_dict()

    def identities(self, settings: Settings, reasoning: str | None) -> dict[str, str]:
        return {
            "reasoning": reasoning or "",
            "caption": caption_identity(settings),
            "video_qa": video_qa_identity(settings),
        }

    def run(self, question: Question, session: Any, backend: Any, stop: threading.Event) -> Trace:
        def check(rnd: Any) -> None:
            # Stop between rounds on Ctrl-C; a round that just answered is kept.
            if stop.is_set() and rnd.kind != "answer":
                raise KeyboardInterrupt  # the navigator turns it into RunInterrupted

        navigator = session.navigator(backend, self.config)
        return navigator.run(question.question, question.choice_lines() or None, on_round=check)


@dataclass(frozen=True)
class MethodOptions:
    """Everything that picks and shapes a method, from the command line or a script."""

    method: str = "agent"
    agent: AgentConfig = field(default_factory=AgentConfig)
    frames: int = 32
    frame_side: int = 448
    walk_calls: int | None = None
    seed: int = 0
    max_reply_tokens: int = 1024

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.frames < 1:
            raise ConfigError(f"--frames must be at least 1, got {self.frames}")
        if self.frame_side < 32:
            raise ConfigError(f"--frame-side must be at least 32 pixels, got {self.frame_side}")
        if self.walk_calls is not None and self.walk_calls < 1:
            raise ConfigError(f"--walk-calls must be at least 1, got {self.walk_calls}")


def make_method(options: MethodOptions, settings: Settings) -> Method:
    """The method object for a name; baselines pick their variant from the settings."""
    if options.method == "agent":
        return AgentMethod(options.agent)
    answer = AnswerStep(options.agent.constrain, options.agent.answer_form)
    if options.method == "uniform-frames":
        return baselines.UniformFrames(
            frames=options.frames,
            frame_side=options.frame_side,
            use_vlm=bool(settings.video_qa.base_url),
            max_reply_tokens=options.max_reply_tokens,
            answer=answer,
        )
    if options.method == "caption-all":
        return baselines.CaptionAll(max_reply_tokens=options.max_reply_tokens, answer=answer)
    if options.walk_calls is None:
        raise ConfigError("random-walk needs a number of get_caption calls (--walk-calls N)")
    return baselines.RandomWalk(
        calls=options.walk_calls,
        seed=options.seed,
        max_reply_tokens=options.max_reply_tokens,
        answer=answer,
    )


def agent_mean_caption_calls(out_dir: Path) -> float | None:
    """The agent's mean get_caption calls per question in ``out_dir/agent`` (opening excluded).

    The random walk spends the same budget, so the comparison is navigation
    against chance at equal cost.
    """
    records = [r for r in RunFolder(out_dir / "agent").records().values() if r.ran]
    if not records:
        return None
    calls = [max(0, r.cost.caption_calls - (r.width or 0)) for r in records]
    return sum(calls) / len(calls)


def resolve_walk_calls(options: MethodOptions, out_dir: Path) -> MethodOptions:
    """Fix the random walk's budget once: given, recorded by an earlier run, or the agent's mean."""
    if options.method != "random-walk" or options.walk_calls is not None:
        return options
    earlier = RunFolder(out_dir / "random-walk").read_manifest()
    if earlier is not None and isinstance(earlier.params.get("walk_calls"), int):
        calls = int(earlier.params["walk_calls"])
    else:
        mean = agent_mean_caption_calls(out_dir)
        if mean is None:
            raise ConfigError(
                f"random-walk spends the agent's mean number of get_caption calls, but "
                f"{out_dir / 'agent'} has no results: run --method agent first or give "
                "--walk-calls N"
            )
        calls = max(1, round(mean))
    return MethodOptions(**{**options.__dict__, "walk_calls": calls})
