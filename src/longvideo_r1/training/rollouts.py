"""Rollouts for reinforcement learning: ``lvr1 ask``'s own loop, recorded as token ids.

A policy-gradient trainer needs, per episode, the token ids the model was
conditioned on and the ones it produced, a mask telling the two apart, and
the log-probabilities the tokens were sampled with. :func:`rollout` gets them
by running the unchanged :class:`~longvideo_r1.agent.navigator.Navigator`
with the same tools over a cached caption tree, behind a
:class:`TokenBackend`: a chat backend that keeps the episode as token ids.

The ids are concatenated turn by turn and never re-tokenized from the
conversation's text. Re-tokenizing drifts: a reply the model produced token
by token rarely tokenizes back to the same ids, and templates rewrite
earlier turns (Qwen3 drops the thinking of past turns), so the trainer would
score tokens the model never sampled. Instead, each new observation is
rendered by the chat template *on its own* (the delta of a fixed two-message
conversation with and without it), and the text the template puts after an
assistant turn (``<|im_end|>\\n`` for ChatML) is appended as glue, minus the
end token the model already sampled.

Where the tokens come from is a :class:`TokenGenerator`: a transformers
model here (:class:`TransformersGenerator`, what TRL trains on one machine),
verl's server manager or vLLM elsewhere. A generator that takes a grammar
(``takes_grammar``) lets the navigator constrain each reply to the round's
GBNF, as it does with llama.cpp: a small policy then writes only valid
calls and answers, and the reward teaches where to look, not how to write.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from longvideo_r1.agent.config import AgentConfig
from longvideo_r1.agent.navigator import Navigator
from longvideo_r1.agent.tools import ToolBox
from longvideo_r1.agent.trace import Trace
from longvideo_r1.errors import EndpointError, one_line
from longvideo_r1.llm.backends import CallFailed, ChatBackend, Served
from longvideo_r1.llm.client import ChatReply, Message, Usage
from longvideo_r1.llm.gbnf import Constraint
from longvideo_r1.questions.schema import Question
from longvideo_r1.tree import Tree

_BASE: list[dict[str, str]] = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "U"},
]
"""A fixed conversation whose render, with and without new turns, gives those turns' delta."""

_MARK = "\x00assistant-turn\x00"
"""Stands for an assistant reply when asking the template what it writes after one."""


@dataclass(frozen=True)
class Generated:
    """New tokens only: their ids, each one's log-probability when sampled, why it stopped.

    ``finish_reason`` is ``"stop"`` when the last id is an end-of-turn token
    (kept in ``ids``: stopping is something the policy learns) and
    ``"length"`` when ``max_tokens`` ran out.
    """

    ids: list[int]
    logprobs: list[float]
    finish_reason: str


class TokenGenerator(Protocol):
    """Continues a sequence of token ids by sampling; returns only the new tokens.

    ``grammar`` (GBNF text, see :mod:`longvideo_r1.llm.gbnf`) is given only
    to a generator whose ``takes_grammar`` attribute is true; the new tokens
    then spell a text the grammar admits, followed by an end-of-turn token.
    """

    def generate(
        self, ids: list[int], max_tokens: int, temperature: float, grammar: str | None = None
    ) -> Generated: ...


class GrammarMasks:
    """Turns GBNF text into logits processors that mask what the grammar forbids (xgrammar).

    xgrammar is what vLLM and SGLang constrain with; it reads the same GBNF
    subset llama.cpp does and precomputes, per grammar state, which
    vocabulary entries may follow, so a mask costs microseconds rather than
    a pass over the vocabulary. Compiled grammars are cached by text: a
    rollout's rounds differ only in the ids still offered.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: Sequence[int]) -> None:
        xgr = import_xgrammar()
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_ids)
        )
        self._compiler = xgr.GrammarCompiler(info, cache_enabled=True)

    def processor(self, grammar: str) -> Any:
        """A fresh transformers logits processor for one ``generate`` call under ``grammar``."""
        from xgrammar.contrib.hf import LogitsProcessor

        try:
            compiled = self._compiler.compile_grammar(grammar)
        except (RuntimeError, ValueError) as exc:
            raise EndpointError(f"xgrammar refused the reply grammar: {one_line(exc)}") from None
        return LogitsProcessor(compiled)


def import_xgrammar() -> Any:
    """xgrammar, or one line saying how to install it (constrained rollouts need it)."""
    try:
        import xgrammar
    except ImportError:
        raise EndpointError(
            "constrained rollouts need xgrammar: pip install 'longvideo-r1[train]' "
            "(or pip install --no-deps xgrammar==0.2.9 apache-tvm-ffi on a CPU-only machine)"
        ) from None
    return xgrammar


class TransformersGenerator:
    """A :class:`TokenGenerator` over a transformers causal LM, on whatever device it sits.

    Logprobs are those of the distribution the token was drawn from: the
    logits divided by the temperature, with no top-k or top-p (the model's
    own generation config is not consulted, so a hub default such as
    ``top_k=50`` cannot make the recorded logprobs lie). Temperature 0 is
    greedy, with the logprobs of the plain logits.

    The key/value cache of the last call is kept and reused for the ids the
    next call shares with it: each turn of an episode extends the previous
    context, so only the observation and the new reply are computed, not the
    whole conversation again (on a CPU a 135M model's 2,000-token prefill is
    most of a turn's time). The cache holds the weights it was made with, so
    :meth:`forget` must be called once the weights change; the rollout
    functions make a generator per rollout, which does not outlive a step.

    Given ``masks``, it takes a grammar: the logprobs are then those of the
    masked distribution the token was drawn from, while the trainer scores
    the same tokens under the unmasked policy, so tokens the grammar forced
    are still pushed up (the policy learns the format it was held to).
    """

    def __init__(
        self,
        model: Any,
        stop_ids: Sequence[int],
        pad_id: int | None = None,
        masks: GrammarMasks | None = None,
    ) -> None:
        if not stop_ids:
            raise EndpointError("a token generator needs at least one end-of-turn token id")
        self.model = model
        self.stop_ids = list(dict.fromkeys(int(i) for i in stop_ids))
        self.pad_id = self.stop_ids[0] if pad_id is None else pad_id
        self.masks = masks
        self._cache: Any = None
        self._cached: list[int] = []

    @property
    def takes_grammar(self) -> bool:
        return self.masks is not None

    def forget(self) -> None:
        """Drop the kept cache (the weights changed, or memory is wanted back)."""
        self._cache, self._cached = None, []

    def _reusable(self, ids: list[int]) -> Any:
        """The kept cache cut to the longest prefix it shares with ``ids``, leaving at least
        one id to compute (generation needs a fresh position to take logits from)."""
        if self._cache is None:
            return None
        shared = 0
        for kept, new in zip(self._cached, ids[:-1], strict=False):
            if kept != new:
                break
            shared += 1
        if shared == 0:
            self.forget()
            return None
        surplus = self._cache.get_seq_length() - shared
        if surplus > 0:
            self._cache.crop(-surplus)  # a negative count removes tokens in every version
        return self._cache

    def generate(
        self, ids: list[int], max_tokens: int, temperature: float, grammar: str | None = None
    ) -> Generated:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        processors = LogitsProcessorList()
        if grammar is not None:
            if self.masks is None:
                raise EndpointError("this generator was made without grammar masks")
            processors.append(self.masks.processor(grammar))

        sample = temperature > 0
        config = GenerationConfig(
            max_new_tokens=max_tokens,
            do_sample=sample,
            temperature=temperature if sample else None,
            top_k=0 if sample else None,
            top_p=1.0 if sample else None,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            output_scores=True,
            return_dict_in_generate=True,
            use_cache=True,
        )
        device = next(self.model.parameters()).device
        inputs = torch.tensor([ids], dtype=torch.long, device=device)
        cache = self._reusable(ids)
        name = _cache_name()
        extra = {} if cache is None else {name: cache}
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=inputs,
                    attention_mask=torch.ones_like(inputs),
                    generation_config=config,
                    logits_processor=processors,
                    **extra,
                )
        finally:
            self.model.train(was_training)
        seen = out.sequences[0].tolist()
        self._cache = getattr(out, name, None)
        self._cached = seen[: self._cache.get_seq_length()] if self._cache is not None else []
        new = out.sequences[0, len(ids) :].tolist()
        logprobs = [
            float(torch.log_softmax(step[0].float(), dim=-1)[token])
            for step, token in zip(out.scores, new, strict=False)
        ]
        new = new[: len(logprobs)]
        stopped = bool(new) and new[-1] in self.stop_ids
        return Generated(new, logprobs, "stop" if stopped else "length")


def _cache_name() -> str:
    """What ``generate`` calls its cache, in and out: ``cache`` from transformers 5.2x (which
    warns on the old name), ``past_key_values`` before."""
    from transformers.generation import utils

    fields = getattr(utils.GenerateDecoderOnlyOutput, "__dataclass_fields__", {})
    return "cache" if "cache" in fields else "past_key_values"


@dataclass
class Episode:
    """The token record of one conversation, as :class:`TokenBackend` builds it."""

    prompt_ids: list[int] = field(default_factory=list)
    completion_ids: list[int] = field(default_factory=list)
    completion_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)

    def add(self, ids: Sequence[int], mask: int, logprobs: Sequence[float] | None = None) -> None:
        self.completion_ids.extend(ids)
        self.completion_mask.extend([mask] * len(ids))
        self.logprobs.extend(logprobs if logprobs is not None else [0.0] * len(ids))

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


class TokenBackend(ChatBackend):
    """A chat backend for one episode that keeps the conversation as token ids.

    :meth:`chat` expects the conversation to grow as the navigator grows it:
    the same messages as last time, the reply it returned, then new user
    turns. It renders only those new turns (see the module's docstring),
    appends them with mask 0, generates, and appends the generated ids with
    mask 1 and their logprobs. ``max_episode_tokens`` bounds prompt plus
    completion: once reached, the call fails as a context overflow and the
    run ends ``error`` like any run whose context is full.
    """

    default_answer_form: str = "either"

    def __init__(
        self,
        tokenizer: Any,
        generator: TokenGenerator,
        identity: str = "policy",
        max_episode_tokens: int | None = None,
        default_temperature: float = 1.0,
    ) -> None:
        super().__init__(identity)
        self.tokenizer = tokenizer
        self.generator = generator
        self.max_episode_tokens = max_episode_tokens
        self.default_temperature = default_temperature
        self.episode = Episode()
        self._seen = 0
        self._last_reply: str | None = None
        self._finished = Generated([], [], "length")
        self._glue = turn_suffix(tokenizer)

    def supports_constraints(self) -> bool:
        return bool(getattr(self.generator, "takes_grammar", False))

    def _serve(
        self,
        messages: list[Message],
        max_tokens: int | None,
        temperature: float | None,
        stop: Sequence[str] | None,
        constraint: Constraint | None = None,
    ) -> Served:
        started = time.perf_counter()
        try:
            self._extend(messages)
        except EndpointError as exc:
            raise CallFailed(exc, self.identity) from None
        limit = max_tokens or 1024
        grammar = None
        if constraint is not None:  # ChatBackend.chat passes one only where supported
            # The whole reply is constrained, its think capped in characters; like the
            # embedded backend, give it the tokens to finish that, the episode's room allowing.
            grammar = constraint.bounded or constraint.grammar
            limit = max(limit, constraint.whole_tokens)
        if self.max_episode_tokens is not None:
            room = self.max_episode_tokens - self.episode.length
            if room <= 0:
                error = EndpointError(
                    f"context window exceeded: the episode holds {self.episode.length} tokens "
                    f"of {self.max_episode_tokens}"
                )
                raise CallFailed(error, self.identity)
            limit = min(limit, room)
        context = self.episode.prompt_ids + self.episode.completion_ids
        temp = self.default_temperature if temperature is None else temperature
        try:
            out = self.generator.generate(context, limit, temp, grammar=grammar)
        except EndpointError as exc:
            raise CallFailed(exc, self.identity) from None
        if len(out.logprobs) != len(out.ids):
            raise CallFailed(
                EndpointError(
                    f"the generator gave {len(out.ids)} ids, {len(out.logprobs)} logprobs"
                ),
                self.identity,
            )
        self.episode.add(out.ids, 1, out.logprobs)
        self._finished = out
        text = self._reply_text(out)
        self._last_reply = text
        self._seen = len(messages) + 1
        reply = ChatReply(
            text=text,
            usage=Usage(prompt_tokens=len(context), completion_tokens=len(out.ids)),
            seconds=time.perf_counter() - started,
            finish_reason=out.finish_reason,
            model=self.identity,
        )
        return Served(reply, self.identity)

    def _extend(self, messages: list[Message]) -> None:
        """Append the turns added since the last call: the whole prompt the first time."""
        if self._last_reply is None:
            text = render(self.tokenizer, messages, generation_prompt=True)
            self.episode.prompt_ids = encode(self.tokenizer, text)
            return
        mine = self._seen - 1
        if len(messages) <= self._seen or messages[mine].get("role") != "assistant":
            raise EndpointError("the conversation did not grow from the last reply")
        if messages[mine].get("content") != self._last_reply:
            raise EndpointError("the last assistant turn is not the reply this backend gave")
        new = list(messages[self._seen :])
        if any(m.get("role") == "assistant" for m in new):
            raise EndpointError("an assistant turn the model did not write cannot be added")
        glue = self._glue_after(self._finished)
        self.episode.add(encode(self.tokenizer, glue + delta(self.tokenizer, new)), 0)

    def _glue_after(self, out: Generated) -> str:
        """What the template writes after the reply, less the end token the model sampled."""
        if out.finish_reason == "stop" and out.ids:
            last = self.tokenizer.decode([out.ids[-1]], skip_special_tokens=False)
            if last and self._glue.startswith(last):
                return self._glue[len(last) :]
        return self._glue

    def _reply_text(self, out: Generated) -> str:
        ids = out.ids[:-1] if out.finish_reason == "stop" else out.ids
        return self.tokenizer.decode(ids, skip_special_tokens=True)


# the template's deltas ------------------------------------------------------------------------


def render(tokenizer: Any, messages: Sequence[Message], generation_prompt: bool) -> str:
    """The chat template's text for ``messages`` (never tokenized by the template itself)."""
    return tokenizer.apply_chat_template(
        [dict(m) for m in messages], tokenize=False, add_generation_prompt=generation_prompt
    )


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of template text; its special markers are in it already."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def delta(tokenizer: Any, new: Sequence[Message]) -> str:
    """The template's text for ``new`` user turns plus the next assistant header.

    Rendered after a fixed system and user turn, so templates that treat
    the first message specially (a default system prompt) do it to that
    base, not to the observation.
    """
    before = render(tokenizer, _BASE, generation_prompt=False)
    after = render(tokenizer, [*_BASE, *new], generation_prompt=True)
    if not after.startswith(before):
        raise EndpointError("the chat template rewrites earlier turns when a user turn is added")
    return after[len(before) :]


def turn_suffix(tokenizer: Any) -> str:
    """What the template writes right after an assistant turn's text (``<|im_end|>\\n``)."""
    text = render(tokenizer, [*_BASE, {"role": "assistant", "content": _MARK}], False)
    at = text.rfind(_MARK)
    if at < 0:
        raise EndpointError("the chat template does not render an assistant turn's text")
    return text[at + len(_MARK) :]


# rollouts ---------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """One episode as a trainer needs it, with the trace it was read from.

    ``completion_ids`` run from the first generated token to the last one:
    the model's turns (mask 1) and, between them, the observations and the
    template's glue (mask 0). ``logprobs`` has one entry per completion id,
    0.0 where the mask is 0. ``rewards`` is filled by the reward
    (:mod:`longvideo_r1.training.reward`), one entry per term and ``total``.
    """

    prompt_ids: list[int]
    completion_ids: list[int]
    completion_mask: list[int]
    logprobs: list[float]
    trace: Trace
    question: Question
    rewards: dict[str, float] = field(default_factory=dict)

    @property
    def generated_tokens(self) -> int:
        return sum(self.completion_mask)


def rollout(
    generator: TokenGenerator,
    tokenizer: Any,
    toolbox: ToolBox,
    tree: Tree,
    question: Question,
    config: AgentConfig,
    *,
    max_episode_tokens: int | None = None,
    end_id: int | None = None,
) -> Rollout:
    """Run the navigator on one question and return its tokens, mask, logprobs and trace.

    An episode that ended before the model wrote a token (its prompt alone
    overflowed the context) gets one ``end_id`` token with mask 0, so a
    trainer's batch never holds an empty completion; nothing is learned
    from it.
    """
    backend = TokenBackend(
        tokenizer,
        generator,
        max_episode_tokens=max_episode_tokens,
        default_temperature=config.temperature if config.temperature is not None else 1.0,
    )
    trace = Navigator(backend, toolbox, tree, config).run(question.question, question.choices)
    episode = backend.episode
    if not episode.prompt_ids:
        episode.prompt_ids = encode(tokenizer, render(tokenizer, _BASE, generation_prompt=True))
    if not episode.completion_ids:
        pad = end_id if end_id is not None else (tokenizer.eos_token_id or 0)
        episode.add([pad], 0)
    return Rollout(
        prompt_ids=episode.prompt_ids,
        completion_ids=episode.completion_ids,
        completion_mask=episode.completion_mask,
        logprobs=episode.logprobs,
        trace=trace,
        question=question,
    )


def rollout_group(
    generator: TokenGenerator,
    tokenizer: Any,
    toolbox: ToolBox,
    tree: Tree,
    question: Question,
    config: AgentConfig,
    n: int,
    *,
    max_episode_tokens: int | None = None,
    end_id: int | None = None,
    on_rollout: Callable[[Rollout], None] | None = None,
) -> list[Rollout]:
    """``n`` independent rollouts of one question: a GRPO group (16 in the paper).

    The toolbox is a template; every rollout works on a fresh copy of its
    state (the Navigator does that), so no rollout sees another's reads.
    """
    if n < 1:
        raise EndpointError(f"a rollout group needs at least one rollout, got {n}")
    out = []
    for _ in range(n):
        one = rollout(
            generator,
            tokenizer,
            toolbox,
            tree,
            question,
            config,
            max_episode_tokens=max_episode_tokens,
            end_id=end_id,
        )
        if on_rollout is not None:
            on_rollout(one)
        out.append(one)
    return out
