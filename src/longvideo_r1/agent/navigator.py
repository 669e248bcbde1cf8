"""The navigator: one question, answered in rounds over the caption tree.

The conversation is the protocol's (``docs/protocol.md``): the system prompt,
the first user message with the high-level captions, then one model turn and
one observation per round. This module adds what the protocol leaves to the
runner: how many rounds, what budgets, when to force an answer and how a run
ends. The rules, all visible in the trace:

* Every model turn is a round, an unusable one included: the parser's error
  goes back to the model as a user turn and nothing is retried silently.
* Before the last round the last-round instruction is added as its own user
  turn. A spent budget (video_qa calls, caption calls, reasoning tokens,
  seconds) is told to the model in our words and makes the next round the
  last one; a tool call that would overrun a budget is not run.
* The levers for small navigators hold in every round, under a grammar or
  not: with ``min_depth`` no answer before a caption that deep was read,
  with ``guide`` get_caption only on the K ids the guide offers. A round
  with no tool call left (the last one) always admits the answer, and the
  trace records whether the depth was reached (``Trace.min_depth_met``).
* A run ends ``answered``, ``no_answer`` (rounds or a budget spent without an
  answer) or ``error`` (an endpoint died, the context window overflowed, the
  captioner failed), always with a reason and always with its trace. It never
  ends in a guessed letter.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from longvideo_r1.agent import grammar, prompts, protocol, replies
from longvideo_r1.agent.config import AgentConfig
from longvideo_r1.agent.guide import (
    Guide,
    StoredTexts,
    asked_share,
    require_ranker,
)
from longvideo_r1.agent.protocol import Action, Answer, ParseError, Reply, check_question
from longvideo_r1.agent.tools import ToolBox, ToolResult
from longvideo_r1.agent.trace import Evidence, HighCaption, Round, Status, Trace
from longvideo_r1.captions.captioner import spent_by
from longvideo_r1.errors import ConfigError, LVR1Error, one_line
from longvideo_r1.llm.client import ChatReply
from longvideo_r1.tree import NodeId, Tree

if TYPE_CHECKING:
    from longvideo_r1.llm.backends import ChatBackend

log = logging.getLogger(__name__)

OnRound = Callable[[Round], None]
Clock = Callable[[], float]

_CONTEXT_OVERFLOW = re.compile(
    r"context (length|window|size)|maximum context|too many tokens|prompt is too long",
    re.IGNORECASE,
)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: still an interrupt, carrying the trace of the rounds so far."""

    def __init__(self, trace: Trace) -> None:
        super().__init__("interrupted")
        self.trace = trace


def describe_failure(exc: BaseException) -> str:
    """The trace's reason for an error: one line, a context overflow named as such."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    message = one_line(exc, 300) or type(exc).__name__
    if _CONTEXT_OVERFLOW.search(message):
        return f"context window exceeded: {message}"
    if not isinstance(exc, LVR1Error):
        return f"internal error ({type(exc).__name__}): {message}"
    return message


@dataclass
class _Episode:
    """The mutable state of one run; the Navigator itself keeps none between runs."""

    box: ToolBox
    trace: Trace
    choices: list[str] | None
    started: float
    messages: list[dict[str, Any]] = field(default_factory=list)
    forced_by: str | None = None
    """Why the coming round must be the last one."""
    told_last_round: bool = False
    seen: set[tuple[NodeId, str]] = field(default_factory=set)
    answer_form: protocol.AnswerForm = "letter"
    constrained: bool = False
    refused: set[NodeId] = field(default_factory=set)
    """Leaves whose video_qa was refused as a repeated call: not offered again."""
    guide: Guide | None = None


class Navigator:
    """Answers questions about one video with a reasoning backend and the episode's tools.

    ``toolbox`` is a template: each :meth:`run` works on ``toolbox.fresh()``,
    so one navigator can answer many questions about the same video without
    one question's fetched captions loosening the next one's leaf rule.
    """

    def __init__(
        self,
        backend: ChatBackend,
        toolbox: ToolBox,
        tree: Tree,
        config: AgentConfig | None = None,
        clock: Clock = time.perf_counter,
    ) -> None:
        if (toolbox.tree.duration, toolbox.tree.width) != (tree.duration, tree.width):
            raise ConfigError(
                f"the toolbox serves a tree of width {toolbox.tree.width} and "
                f"{toolbox.tree.duration:.1f} s, the navigator one of width {tree.width} and "
                f"{tree.duration:.1f} s"
            )
        self.backend = backend
        self.toolbox = toolbox
        self.tree = tree
        self.config = config or AgentConfig()
        self._clock = clock
        if self.config.guide or self.config.answer_on_match:
            require_ranker()

    def run(
        self,
        question: str,
        choices: Sequence[str] | None = None,
        on_round: OnRound | None = None,
    ) -> Trace:
        """Navigate until the model answers, a limit is reached or something fails.

        Raises only for a question or choices that cannot be asked
        (:class:`ConfigError`, before any model call) and on Ctrl-C
        (:class:`RunInterrupted`, which carries the trace so far); every other
        outcome is a :class:`Trace` with its status and reason.
        """
        question, items = check_question(question, choices)
        ep = self._start(question, items)
        try:
            self._open(ep)
            self._navigate(ep, on_round)
        except LVR1Error as exc:
            _charge_failed_call(ep, exc)
            self._end(ep, "error", describe_failure(exc))
        except Exception as exc:
            log.exception("navigation of %r failed", question[:60])
            _charge_failed_call(ep, exc)
            self._end(ep, "error", describe_failure(exc))
        except KeyboardInterrupt:
            self._end(ep, "error", "interrupted")
            self._close_cost(ep)
            raise RunInterrupted(ep.trace) from None
        self._close_cost(ep)
        return ep.trace

    # the run ------------------------------------------------------------------------

    def _start(self, question: str, choices: list[str] | None) -> _Episode:
        box = self.toolbox.fresh(require_fetched_leaf=self.config.require_fetched_leaf)
        trace = Trace(
            question=question,
            choices=choices,
            video=box.get_caption.video_path,
            fingerprint=box.get_caption.fingerprint,
            duration=self.tree.duration,
            width=self.tree.width,
            backends={"reasoning": self.backend.identity, **box.identities()},
            config=self.config.to_dict(),
            reason="the run did not finish",
        )
        ep = _Episode(box=box, trace=trace, choices=choices, started=self._clock())
        if self.config.guide:
            texts = StoredTexts(box.get_caption.service)
            ep.guide = Guide(self.tree, texts, question, self.config.guide)
        return ep

    def _open(self, ep: _Episode) -> None:
        """Decide the answer form and the constraint, fetch the high-level captions, and
        write the first two messages."""
        ep.answer_form = resolve_answer_form(self.config.answer_form, self.backend)
        ep.constrained = use_constraint(self.config.constrain, self.backend)
        ep.trace.config["answer_form"] = ep.answer_form
        ep.trace.config["constrained"] = ep.constrained
        ep.trace.config["parser_version"] = protocol.PARSER_VERSION
        started = self._clock()
        results = ep.box.high_captions()
        ep.trace.cost.tool_seconds += self._clock() - started
        for result in results:
            _charge(ep, result)
            ep.trace.high_captions.append(
                HighCaption(
                    node_id=result.node_id,
                    start=result.node.start if result.node else 0.0,
                    end=result.node.end if result.node else 0.0,
                    text=result.text,
                    cache_hit=result.cache_hit,
                )
            )
        highs = [(r.node, r.text) for r in results if r.node is not None]
        first = prompts.first_user_message(ep.trace.question, ep.choices, self.tree.duration, highs)
        ep.messages = [
            {"role": "system", "content": prompts.system_prompt(self.tree.width, ep.answer_form)},
            first.message(as_parts=self.config.first_message_parts),
        ]

    def _navigate(self, ep: _Episode, on_round: OnRound | None) -> None:
        last = self.config.max_rounds
        for index in range(1, last + 1):
            if index == last and ep.forced_by is None:
                ep.forced_by = f"the round limit ({last} rounds) is reached"
            if ep.forced_by is not None and not ep.told_last_round:
                ep.messages.append(_user(prompts.last_round_message(ep.answer_form)))
                ep.told_last_round = True
            if self._round(ep, index, on_round):
                return

    def _round(self, ep: _Episode, index: int, on_round: OnRound | None) -> bool:
        """Play one round; the round is in the trace whatever happens to it."""
        rnd = Round(index=index, forced=ep.forced_by is not None)
        ep.trace.rounds.append(rnd)
        try:
            return self._play(ep, rnd)
        except BaseException as exc:
            rnd.error = rnd.error or describe_failure(exc)
            raise
        finally:
            if on_round is not None:
                on_round(rnd)

    def _play(self, ep: _Episode, rnd: Round) -> bool:
        """Ask, read, act; True when the run is over."""
        rules = self._rules(ep, rnd)
        reply = self._ask(ep, rnd, rules)
        ep.messages.append({"role": "assistant", "content": reply.text})
        fetched = ep.box.fetched if self.config.require_fetched_leaf else None
        limits = rules.limits()
        parsed = replies.parse_reply(reply.text, self.tree, ep.choices, fetched, limits)
        _note_reply(ep, rnd, parsed)
        if isinstance(parsed.result, Answer):
            self._answered(ep, parsed.result)
            return True
        if ep.forced_by is not None:
            reason = f"{ep.forced_by}, and the model did not answer in its last round"
            self._end(ep, "no_answer", reason)
            return True
        action = parsed.action
        spent = self._spent(ep, action)
        if spent is not None:
            rnd.notice = prompts.budget_notice(spent, call_not_run=action is not None)
        elif isinstance(parsed.result, ParseError):
            if self._stuck(ep):
                n = self.config.max_repeated_errors
                self._end(ep, "no_answer", f"the model wrote the same unusable reply {n} times")
                return True
            rnd.observation = prompts.error_message(parsed.result)
        elif action is not None:
            result = self._act(ep, rnd, action)
            rnd.observation = result.observation
            spent = self._spent(ep, None) or self._matched(ep, rnd, result)
            if spent is not None:
                rnd.notice = prompts.budget_notice(spent, call_not_run=False)
        ep.forced_by = spent
        for text in (rnd.observation, rnd.notice):
            if text is not None:
                ep.messages.append(_user(text))
        return False

    def _stuck(self, ep: _Episode) -> bool:
        """The last ``max_repeated_errors`` rounds are one identical unparsable reply."""
        n = self.config.max_repeated_errors
        last = ep.trace.rounds[-n:] if n else []
        return (
            n is not None
            and len(last) == n
            and all(r.kind == "parse_error" for r in last)
            and len({r.output for r in last}) == 1
        )

    def _ask(self, ep: _Episode, rnd: Round, rules: grammar.ReplyRules) -> ChatReply:
        """One model call, timed and charged; the reply goes into the history verbatim.

        :class:`~longvideo_r1.llm.client.ChatReply` carries no separate reasoning
        field, so its text is the whole turn; the parser copes with a
        ``<think>`` whose opening tag a server stripped.
        """
        cost = ep.trace.cost
        constraint = None
        if ep.constrained:
            constraint = grammar.reply_constraint(rules, free_tokens=self.config.max_think_tokens)
        rnd.constrained = constraint is not None
        started = self._clock()
        try:
            reply = self.backend.chat(
                ep.messages,
                max_tokens=self.config.max_reply_tokens,
                temperature=self.config.temperature,
                constraint=constraint,
            )
        finally:
            rnd.model_seconds = self._clock() - started
            cost.model_seconds += rnd.model_seconds
        rnd.output = reply.text
        rnd.finish_reason = reply.finish_reason
        rnd.prompt_tokens = reply.usage.prompt_tokens
        rnd.completion_tokens = reply.usage.completion_tokens
        cost.reasoning_calls += 1
        cost.reasoning_prompt_tokens += reply.usage.prompt_tokens
        cost.reasoning_completion_tokens += reply.usage.completion_tokens
        return reply

    def _rules(self, ep: _Episode, rnd: Round) -> grammar.ReplyRules:
        """What this round admits: budgets, fetched ids, the form, the depth and the guide's
        offer (kept in the round). The grammar is made of it, and the parser checks it."""
        cfg, counts = self.config, ep.box.counts
        offered = None
        if ep.guide is not None and ep.forced_by is None:
            offered = ep.guide.offered(ep.box.fetched)
            rnd.offered = list(offered)
        return grammar.ReplyRules(
            width=self.tree.width,
            fetched=frozenset(ep.box.fetched),
            choices=tuple(ep.choices) if ep.choices else None,
            answer_form=ep.answer_form,
            tools=ep.forced_by is None,
            get_caption=not _over(counts.agent_caption_calls, cfg.max_caption_calls),
            video_qa=not _over(counts.video_qa_calls, cfg.max_video_qa),
            require_fetched_leaf=cfg.require_fetched_leaf,
            refused=frozenset(ep.refused),
            min_depth=cfg.min_depth,
            offered=offered,
        )

    def _act(self, ep: _Episode, rnd: Round, action: Action) -> ToolResult:
        started = self._clock()
        try:
            result = ep.box.execute(action)
        finally:
            rnd.tool_seconds = self._clock() - started
            ep.trace.cost.tool_seconds += rnd.tool_seconds
        rnd.frames_decoded = result.frames_decoded
        rnd.tool_prompt_tokens = result.prompt_tokens
        rnd.tool_completion_tokens = result.completion_tokens
        if result.tool == "get_caption" and result.ok:
            rnd.cache_hit = result.cache_hit
        if not result.ok:
            rnd.error = result.error
            ep.trace.cost.rejected_calls += 1
            return result
        _charge(ep, result)
        _add_evidence(ep, rnd, result)
        return result

    def _spent(self, ep: _Episode, action: Action | None) -> str | None:
        """The budget this action (or the run so far) has used up, worded as a cause."""
        cfg, counts, cost = self.config, ep.box.counts, ep.trace.cost
        if action is not None and _repeats(ep.trace.rounds[:-1], action, cfg.max_repeated_calls):
            if action.tool == "video_qa":
                ep.refused.add(tuple(action.node_id))
            call = protocol.format_call(action)
            return f"you already made {call} {cfg.max_repeated_calls} times in a row"
        if action is not None:
            if action.tool == "video_qa" and _over(counts.video_qa_calls, cfg.max_video_qa):
                return (
                    f"the video_qa budget for this question ({_calls(cfg.max_video_qa)}) is spent"
                )
            if action.tool == "get_caption" and _over(
                counts.agent_caption_calls, cfg.max_caption_calls
            ):
                return (
                    "the get_caption budget for this question "
                    f"({_calls(cfg.max_caption_calls)}) is spent"
                )
        if _over(cost.reasoning_tokens, cfg.max_tokens):
            return f"the token budget for this question ({cfg.max_tokens} tokens) is spent"
        if _over(self._clock() - ep.started, cfg.max_seconds):
            return f"the time budget for this question ({cfg.max_seconds:g} s) is spent"
        return None

    def _matched(self, ep: _Episode, rnd: Round, result: ToolResult) -> str | None:
        """With ``answer_on_match``: the read that holds the question's words, as a cause
        to stop; the share is kept in the round either way."""
        threshold = self.config.answer_on_match
        if not threshold or result.tool != "get_caption" or not result.ok:
            return None
        rnd.asked_share = asked_share(ep.trace.question, result.text)
        if rnd.asked_share < threshold:
            return None
        return "the caption you just read holds the question's words"

    def _answered(self, ep: _Episode, answer: Answer) -> None:
        trace = ep.trace
        if self.config.min_depth > 1:
            trace.min_depth_met = grammar.depth_reached(ep.box.fetched, self.config.min_depth)
        trace.raw_answer = answer.text
        if ep.choices:
            trace.answer = protocol.normalize_answer(answer.text, ep.choices) or answer.letter
        else:
            trace.answer = protocol.normalize_answer(answer.text)
        self._end(ep, "answered", None)

    def _end(self, ep: _Episode, status: Status, reason: str | None) -> None:
        ep.trace.status = status
        ep.trace.reason = reason

    def _close_cost(self, ep: _Episode) -> None:
        cost = ep.trace.cost
        cost.rounds = len(ep.trace.rounds)
        cost.end_to_end_seconds = self._clock() - ep.started
        cost.agent_overhead_seconds = max(
            0.0, cost.end_to_end_seconds - cost.model_seconds - cost.tool_seconds
        )


# how replies are asked for ----------------------------------------------------------


def resolve_answer_form(setting: str, backend: ChatBackend) -> protocol.AnswerForm:
    """``auto`` becomes the backend's own default: text for embedded models, either else."""
    return backend.default_answer_form if setting == "auto" else setting  # type: ignore[return-value]


def use_constraint(setting: str, backend: ChatBackend) -> bool:
    """Whether replies are constrained; ``on`` refuses a backend that cannot (one that
    cannot says so itself, once, when it finds out)."""
    if setting == "off":
        return False
    if backend.supports_constraints():
        return True
    if setting == "on":
        raise ConfigError(
            f"--constrain on, but {backend.identity} takes no grammar (the probe found no "
            "request field it obeys); use --constrain auto or off"
        )
    return False


# small helpers --------------------------------------------------------------------


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _over(used: float, limit: float | None) -> bool:
    return limit is not None and used >= limit


def _calls(n: int | None) -> str:
    return f"{n} call{'' if n == 1 else 's'}"


def _repeats(earlier: list[Round], action: Action, limit: int | None) -> bool:
    """The last ``limit`` rounds made this very call, and each got its result."""
    if limit is None or len(earlier) < limit:
        return False
    node_id = tuple(action.node_id)
    return all(
        r.kind == action.tool
        and r.node_id == node_id
        and r.query == action.query
        and r.error is None
        and r.notice is None
        for r in earlier[-limit:]
    )


def _note_reply(ep: _Episode, rnd: Round, parsed: Reply) -> None:
    rnd.think = parsed.think
    rnd.notes = list(parsed.notes)
    result = parsed.result
    if isinstance(result, Action):
        rnd.kind = result.tool
        rnd.node_id = tuple(result.node_id)
        rnd.query = result.query
    elif isinstance(result, Answer):
        rnd.kind = "answer"
        rnd.answer = result.text
    else:
        rnd.kind = "parse_error"
        rnd.parse_error = result.message
        ep.trace.cost.parse_errors += 1


def _charge(ep: _Episode, result: ToolResult) -> None:
    """Add a successful tool call to the run's totals (time is charged by the caller)."""
    cost = ep.trace.cost
    cost.frames_decoded += result.frames_decoded
    if result.tool == "get_caption":
        cost.caption_calls += 1
        cost.captions_made += result.made
        cost.captions_cached += result.cache_hit
        cost.caption_prompt_tokens += result.prompt_tokens
        cost.caption_completion_tokens += result.completion_tokens
    elif result.from_captions:
        cost.video_qa_from_captions += 1
        cost.caption_prompt_tokens += result.prompt_tokens
        cost.caption_completion_tokens += result.completion_tokens
    else:
        cost.video_qa_calls += 1
        cost.vlm_prompt_tokens += result.prompt_tokens
        cost.vlm_completion_tokens += result.completion_tokens


def _charge_failed_call(ep: _Episode, exc: BaseException) -> None:
    """A tool call that failed after decoding or a reply still paid for them: charge it.

    The run ends with the error; its cost keeps what the failed call spent
    (a caption's, or a vision model's when the failing round asked video_qa).
    """
    spent = spent_by(exc)
    if spent is not None:
        vision = bool(ep.trace.rounds) and ep.trace.rounds[-1].kind == "video_qa"
        ep.trace.cost.add_failed_call(spent, vision)


def _add_evidence(ep: _Episode, rnd: Round, result: ToolResult) -> None:
    """Each segment once per tool, in the order the agent first looked at it."""
    node = result.node
    if node is None or (node.id, result.tool) in ep.seen:
        return
    ep.seen.add((node.id, result.tool))
    ep.trace.evidence.append(
        Evidence(
            node_id=node.id,
            level=node.level,
            start=node.start,
            end=node.end,
            how="video_qa" if result.tool == "video_qa" else "get_caption",
            round=rnd.index,
            query=result.query,
        )
    )
