"""The navigator as a verl agent loop, and its ``<tool>`` calls in verl's parser registry.

verl (0.9.1) drives multi-turn rollouts through agent loops: an
``AgentLoopBase`` subclass whose ``run()`` receives one dataset row and the
sampling parameters, generates through an async server manager (vLLM or
SGLang replicas holding the policy's current weights) and returns an
``AgentLoopOutput``: prompt ids, response ids, a response mask that is 0 on
what the model did not write, the sampling logprobs, the number of turns and,
optionally, the reward. :class:`NavigatorAgentLoop` is that loop for our
agent: it runs the shared :func:`~longvideo_r1.training.rollouts.rollout`, so
verl trains exactly the navigator, tools and token bookkeeping that ``lvr1
ask`` and ``lvr1 train grpo`` use, and it pays the reward of
:mod:`longvideo_r1.training.reward` itself (each term goes to verl's
``reward_extra_info``, so every term is logged beside the score).

The navigator is synchronous and verl's loop is asyncio: each rollout runs
in a thread of its own, and :class:`ServerGenerator` hands every generation
back to the event loop (``run_coroutine_threadsafe``), so the loop keeps
serving the other rollouts while one waits for tokens.

:class:`NavigatorToolParser` (registered as ``lvr1``) reads a reply's
``<tool>...</tool>`` block with our one parser
(:func:`~longvideo_r1.agent.replies.parse_reply`), for verl components that
read tool calls themselves (``multi_turn.format: lvr1``).

This module imports verl at its top: it is loaded only by verl's workers
(``actor_rollout_ref.model.external_lib`` and the agent-loop YAML's
``_target_``) and by tests; nothing else in the package imports it, so the
package and ``lvr1`` never need verl. Rows come from
:mod:`longvideo_r1.training.verl_data` (``lvr1 data verl``).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Mapping
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, fields
from typing import Any
from uuid import uuid4

from omegaconf import DictConfig, ListConfig, OmegaConf
from verl.experimental.agent_loop.agent_loop import (
    AgentLoopBase,
    AgentLoopMetrics,
    AgentLoopOutput,
    register,
)
from verl.experimental.agent_loop.tool_parser import FunctionCall, ToolParser

from longvideo_r1.agent.config import AgentConfig
from longvideo_r1.agent.protocol import Action
from longvideo_r1.agent.replies import parse_reply
from longvideo_r1.captions.store import CaptionStore
from longvideo_r1.config import Settings, load_settings
from longvideo_r1.errors import ConfigError, EndpointError
from longvideo_r1.options import option
from longvideo_r1.training.reward import TERMS, RewardWeights, reward_terms
from longvideo_r1.training.rollouts import Generated, Rollout, rollout
from longvideo_r1.training.trees import make_toolbox
from longvideo_r1.training.verl_data import AGENT_NAME, ANSWERERS, episode_from_row

PARSER_NAME = "lvr1"
"""Our tool-call format's name in verl's parser registry (``multi_turn.format``)."""

PAPER_AGENT: dict[str, Any] = {"max_rounds": 15, "answer_form": "letter", "constrain": "off"}
"""The paper's rollouts: at most 15 turns, answers as letters, replies sampled freely."""

_END_TOKENS = ("<|im_end|>", "<|endoftext|>")


@dataclass(frozen=True)
class NavigatorLoopOptions:
    """The agent loop's own settings: the ``navigator:`` mapping of the agent-loop YAML."""

    agent: dict = option(
        PAPER_AGENT,
        "AgentConfig fields for every rollout, as lvr1 ask's flags name them (max_rounds, "
        "max_video_qa, require_fetched_leaf, ...). The temperature is verl's "
        "(actor_rollout_ref.rollout.temperature; greedy for validation).",
    )
    reward: dict = option(
        {},
        "RewardWeights fields (accuracy, grounding_f1, repeat, video_qa, format, "
        "f1_only_if_right); empty: the paper's 1.0 accuracy + 1.0 F1 - 0.2 repeat.",
    )
    video_qa: str = option(
        "row",
        "How video_qa is answered: 'row' (as the row says: lvr1 data verl --answerer), 'vlm' "
        "(the settings' video_qa endpoint, e.g. a VLM served by vLLM, on the video file), "
        "'captions' (the leaf's caption) or 'synthetic' (synthetic trees' right option).",
    )
    settings: str | None = option(
        None,
        "An lvr1 config file for the endpoints and the caption store (None: LVR1_CONFIG, the "
        "LVR1_* environment, ~/.config/longvideo-r1/config.yaml).",
    )
    videos_dir: str | None = option(
        None,
        "With video_qa on a VLM: the folder the questions' videos are in (None: the path "
        "the caption store recorded for each video).",
    )

    def agent_config(self, temperature: float | None) -> AgentConfig:
        """The navigator's config for one rollout at verl's sampling temperature."""
        try:
            return AgentConfig(**{**self.agent, "temperature": temperature})
        except TypeError as exc:
            raise ConfigError(f"navigator.agent: {exc}") from None

    def weights(self) -> RewardWeights:
        """The reward's weights: the paper's, with this loop's ``reward:`` keys over them."""
        try:
            return RewardWeights(**self.reward)
        except TypeError as exc:
            raise ConfigError(f"navigator.reward: {exc}") from None


def loop_options(values: Mapping[str, Any] | None) -> NavigatorLoopOptions:
    """Options from the agent-loop YAML; unknown keys and bad values fail in one line."""
    data = _container(values or {})
    known = {f.name for f in fields(NavigatorLoopOptions)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"navigator: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})"
        )
    agent = {**PAPER_AGENT, **(data.pop("agent", None) or {})}
    options = NavigatorLoopOptions(agent=agent, **data)
    if options.video_qa not in ("row", *ANSWERERS):
        raise ConfigError(
            f"navigator.video_qa: {options.video_qa!r} is not one of row, {', '.join(ANSWERERS)}"
        )
    options.agent_config(1.0)  # checked now, not in the first rollout
    options.weights()
    return options


def _container(value: Any) -> Any:
    """OmegaConf nodes (what hydra hands the loop) as plain dicts and lists."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return dict(value) if isinstance(value, Mapping) else value


# generation through verl's server manager ----------------------------------------------------


class ServerGenerator:
    """A :class:`~longvideo_r1.training.rollouts.TokenGenerator` over verl's server manager.

    Called from the rollout's thread; each call is scheduled on verl's event
    loop and waited for. verl's ``sampling_params`` (top-p, top-k, ...) are
    kept; the temperature and token limit are the navigator's per call.
    The response is bounded by ``response_length`` (verl's
    ``rollout.response_length``): generations are cut to what is left, and
    once nothing is left the call fails as a full context, so the run ends
    ``error`` with its tokens all inside verl's tensors.
    """

    def __init__(
        self,
        server_manager: Any,
        loop: asyncio.AbstractEventLoop,
        sampling_params: Mapping[str, Any],
        stop_ids: set[int],
        response_length: int,
        request_id: str | None = None,
    ) -> None:
        self.server_manager = server_manager
        self.loop = loop
        self.sampling_params = dict(sampling_params)
        self.stop_ids = stop_ids
        self.response_length = response_length
        self.request_id = request_id or uuid4().hex
        self.prompt_length: int | None = None
        self.seconds = 0.0
        self.calls = 0
        self.closed = False
        self._pending: Future[Any] | None = None

    def close(self) -> None:
        """Refuse further generations and drop the one in flight (the trajectory is gone)."""
        self.closed = True
        pending = self._pending
        if pending is not None:
            pending.cancel()

    def generate(
        self, ids: list[int], max_tokens: int, temperature: float, grammar: str | None = None
    ) -> Generated:
        if grammar is not None:
            raise EndpointError("verl's rollouts take no grammar (pass it to vLLM's sampling)")
        if self.closed:
            raise EndpointError("the trajectory was cancelled by the trainer")
        if self.prompt_length is None:
            self.prompt_length = len(ids)
        room = self.response_length - (len(ids) - self.prompt_length)
        if room <= 0:
            raise EndpointError(
                f"context window exceeded: the rollout's {self.response_length} response "
                "tokens are spent"
            )
        params = {
            **self.sampling_params,
            "temperature": temperature,
            "max_tokens": min(max_tokens, room),
            "logprobs": True,
        }
        started = time.perf_counter()
        call = self.server_manager.generate(
            request_id=self.request_id, prompt_ids=list(ids), sampling_params=params
        )
        self._pending = asyncio.run_coroutine_threadsafe(call, self.loop)
        try:
            out = self._pending.result()
        except CancelledError:
            raise EndpointError("the trajectory was cancelled by the trainer") from None
        except Exception as exc:  # the server is a boundary: its refusal ends this run only
            # vLLM refuses an over-long prompt with a ValueError; say so, not "internal error".
            raise EndpointError(f"the rollout server failed: {type(exc).__name__}: {exc}") from exc
        finally:
            self._pending = None
        self.seconds += time.perf_counter() - started
        self.calls += 1
        if getattr(out, "stop_reason", None) == "aborted":
            raise EndpointError("the rollout server aborted the generation")
        tokens = [int(t) for t in out.token_ids]
        logprobs = [float(p) for p in (out.log_probs or [])]
        if len(logprobs) != len(tokens):
            raise EndpointError(
                f"the rollout server returned {len(tokens)} tokens with {len(logprobs)} "
                "logprobs; set actor_rollout_ref.rollout.calculate_log_probs=True"
            )
        stopped = bool(tokens) and tokens[-1] in self.stop_ids
        return Generated(tokens, logprobs, "stop" if stopped else "length")


def stop_ids(tokenizer: Any) -> set[int]:
    """The ids that end a turn: the tokenizer's EOS and ChatML's end markers it knows."""
    found = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    unknown = getattr(tokenizer, "unk_token_id", None)
    for token in _END_TOKENS:
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid >= 0 and tid != unknown:
            found.add(tid)
    return found


# the agent loop ---------------------------------------------------------------------------


@register(AGENT_NAME)
class NavigatorAgentLoop(AgentLoopBase):
    """One verl trajectory: one row's question navigated by the shared rollout code.

    verl instantiates the loop once per trajectory with the trainer's
    config, the server manager and the tokenizer; ``navigator`` carries
    :class:`NavigatorLoopOptions` from the agent-loop YAML.
    """

    def __init__(self, *args: Any, navigator: Any = None, name: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.options = loop_options(navigator)
        self.prompt_length = int(self.rollout_config.prompt_length)
        self.response_length = int(self.rollout_config.response_length)

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        loop = asyncio.get_running_loop()
        extra_info = _container(kwargs.get("extra_info") or {})
        generator = ServerGenerator(
            self.server_manager,
            loop,
            sampling_params,
            stop_ids(self.tokenizer),
            self.response_length,
        )
        config = self.options.agent_config(sampling_params.get("temperature"))
        started = time.perf_counter()
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lvr1-rollout")
        try:
            result = await loop.run_in_executor(pool, self._rollout, extra_info, generator, config)
        except BaseException:
            generator.close()  # cancelled: the navigator's thread ends its run at once
            raise
        finally:
            # Never wait here: the thread may be waiting for this very loop to serve it.
            pool.shutdown(wait=False)
        seconds = time.perf_counter() - started
        return loop_output(
            result,
            self.prompt_length,
            self.response_length,
            AgentLoopMetrics(
                generate_sequences=generator.seconds,
                tool_calls=max(0.0, seconds - generator.seconds),
            ),
        )

    def _rollout(
        self, extra_info: Mapping[str, Any], generator: ServerGenerator, config: AgentConfig
    ) -> Rollout:
        """The episode of one row, its reward filled in (runs in the rollout's thread)."""
        settings = self._settings()
        with ExitStack() as stack:

            def store() -> CaptionStore:
                return stack.enter_context(CaptionStore(settings.store_path()))

            episode = episode_from_row(
                extra_info, settings, self.options.video_qa, self.options.videos_dir, store
            )
            stack.callback(episode.close)
            toolbox = make_toolbox(episode.ctree, episode.answerer)
            done = rollout(
                generator,
                self.tokenizer,
                toolbox,
                episode.ctree.tree,
                episode.question,
                config,
                end_id=self.tokenizer.pad_token_id,
            )
        done.rewards = reward_terms(done.trace, done.question, self.options.weights())
        return done

    def _settings(self) -> Settings:
        return load_settings(self.options.settings)


def loop_output(
    done: Rollout, prompt_length: int, response_length: int, metrics: AgentLoopMetrics
) -> AgentLoopOutput:
    """verl's record of one rollout: ids, mask and logprobs cut to its tensor sizes, the reward.

    The response never outgrows ``response_length`` by generated tokens (the
    generator refuses first); what can stick out is the observation appended
    after the last reply, masked 0, so cutting it loses nothing learned. A
    prompt longer than ``prompt_length`` (nothing was generated from it) is
    cut from the left as verl cuts its own.
    """
    prompt = done.prompt_ids[-prompt_length:]
    cut = slice(0, response_length)
    trace = done.trace
    info = {name: float(done.rewards.get(name, 0.0)) for name in (*TERMS, "total")}
    info.update(
        rounds=float(len(trace.rounds)),
        tool_calls=float(sum(r.kind in ("get_caption", "video_qa") for r in trace.rounds)),
        answered=float(trace.status == "answered"),
    )
    return AgentLoopOutput(
        prompt_ids=prompt,
        response_ids=done.completion_ids[cut],
        response_mask=done.completion_mask[cut],
        response_logprobs=done.logprobs[cut],
        reward_score=info["total"],
        num_turns=len(trace.messages()) - 1,
        metrics=metrics,
        extra_fields={"reward_extra_info": info, "turn_scores": [], "tool_rewards": []},
    )


# the tool-call parser -----------------------------------------------------------------------

_TOOL_BLOCK = re.compile(r"<(tool|tool_call)\s*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)


def function_call(action: Action) -> dict[str, Any]:
    """A tool call as verl's ``FunctionCall`` fields: the tool's name, JSON arguments."""
    arguments: dict[str, Any] = {"node_id": list(action.node_id)}
    if action.tool == "video_qa":
        arguments["query"] = action.query or ""
    return {"name": action.tool, "arguments": json.dumps(arguments, ensure_ascii=False)}


def read_tool_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """(the reply without its tool block, the calls): none unless our parser reads a call.

    An answer, an unreadable call or two calls in one reply give no call,
    exactly as the navigator would not run one.
    """
    reply = parse_reply(text)
    if reply.action is None:
        return text, []
    return _TOOL_BLOCK.sub("", text).strip(), [function_call(reply.action)]


@ToolParser.register(PARSER_NAME)
class NavigatorToolParser(ToolParser):
    """``<tool>get_caption((1, 2))</tool>`` for verl, read by the navigator's own parser."""

    async def extract_tool_calls(
        self, responses_ids: list[int], tools: Any = None
    ) -> tuple[str, list[FunctionCall]]:
        text = self.tokenizer.decode(responses_ids, skip_special_tokens=True)
        content, calls = read_tool_calls(text)
        return content, [FunctionCall(**call) for call in calls]
