"""One model served by one or more OpenAI-compatible servers, with failover.

Several base URLs for one role share the load round robin; a server that
cannot be reached is skipped for a cool-down that doubles while it stays
down. With several servers, ``sticky=True`` sends every round of a
conversation to the same server, so server-side prefix caches (vLLM,
llama.cpp) keep hitting. Which request field the servers take a grammar in
is probed once (:data:`GRAMMAR_DIALECTS`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import openai

from longvideo_r1.errors import ConfigError, EndpointError
from longvideo_r1.llm.backends import CallFailed, ChatBackend, Served
from longvideo_r1.llm.client import ChatClient, ChatEndpointError, Message
from longvideo_r1.llm.gbnf import Constraint

if TYPE_CHECKING:
    from longvideo_r1.config import EndpointSettings

log = logging.getLogger(__name__)


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
                    raise CallFailed(exc, url) from None
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
        raise CallFailed(error, ",".join(self.base_urls))

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
