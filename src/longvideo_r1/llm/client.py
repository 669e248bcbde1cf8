"""A small client for one OpenAI-compatible chat endpoint (vLLM, ``transformers serve``, hosted APIs).

The captioner, video_qa and the reasoning agent all talk to chat endpoints
and need the same three things: the reply text, what it cost (tokens and
seconds) and, when it fails, one line that tells the user which endpoint
failed and why. This wrapper gives exactly that and hides the SDK.

Retries are ours, not the SDK's (its own retry is switched off), so the
backoff and the error message agree on how many attempts were made. Only
failures that can pass by themselves are retried: HTTP 408, 409, 429 and
5xx, timeouts and dropped connections. A 4xx such as a wrong key or an unknown
model fails at once. A ``Retry-After`` header is honoured up to
``max_backoff`` seconds.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import openai

from longvideo_r1.errors import ConfigError, EndpointError, one_line

if TYPE_CHECKING:
    from longvideo_r1.config import EndpointSettings

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
_HINTS = {
    401: "check the API key",
    403: "check the API key and its permissions",
    404: "check the base URL, which usually ends in /v1, and the model name",
    413: "the request is too large; send fewer or smaller frames",
}
_HTML_TAG_RE = re.compile(r"<[^<>]+>")

Message = Mapping[str, Any]


class ChatEndpointError(EndpointError):
    """An :class:`EndpointError` that also says which HTTP status, if any, caused it.

    Callers such as a caption run use ``status`` to tell a failure of one
    request (retry later) from a failure of the whole endpoint (stop now).
    """

    def __init__(self, message: str, status: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.status = status
        self.retryable = retryable


@dataclass(frozen=True)
class Usage:
    """Tokens a request consumed, as the server reported them (0 when it did not)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class ChatReply:
    """The text of one chat completion and what it cost."""

    text: str
    usage: Usage = field(default_factory=Usage)
    seconds: float = 0.0
    """Wall time of the call, retries and backoff included."""
    attempts: int = 1
    finish_reason: str | None = None
    model: str = ""

    @property
    def truncated(self) -> bool:
        """Whether the server stopped at the token limit (the reply may be cut off)."""
        return self.finish_reason == "length"


class ChatClient:
    """Chat completions against one endpoint and one model; safe to share between threads.

    ``extra_body`` is merged into every request: server-specific options such
    as vLLM's ``chat_template_kwargs`` or a ``seed``.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 3,
        max_tokens: int | None = 1024,
        temperature: float | None = None,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        extra_body: Mapping[str, Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not base_url:
            raise ConfigError("chat endpoint needs a base URL, e.g. http://localhost:8000/v1")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"chat endpoint base URL must start with http:// or https://, got {base_url!r}"
            )
        if not model:
            raise ConfigError(f"chat endpoint {base_url} needs a model name")
        if timeout <= 0 or max_retries < 0:
            raise ConfigError(f"chat endpoint {base_url}: need timeout > 0 and max_retries >= 0")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.extra_body = dict(extra_body or {})
        self._sleep = sleep
        self._sdk = openai.OpenAI(
            base_url=self.base_url,
            api_key=api_key or "EMPTY",
            timeout=self.timeout,
            max_retries=0,
        )

    @classmethod
    def from_settings(cls, settings: EndpointSettings, role: str = "endpoint") -> ChatClient:
        """Client for one role of :class:`~longvideo_r1.config.Settings`."""
        settings.require(role)
        return cls(base_url=settings.base_url, **settings.client_options())

    @property
    def endpoint(self) -> str:
        """How error messages name this endpoint."""
        return f"{self.base_url} (model {self.model})"

    def close(self) -> None:
        self._sdk.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def chat(
        self,
        messages: Sequence[Message],
        max_tokens: int | None = None,
        temperature: float | None = None,
        stop: Sequence[str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> ChatReply:
        """Send one conversation; retry what may pass; raise :class:`ChatEndpointError` otherwise.

        ``extra_body`` is merged over the client's own for this call only (a
        grammar differs from round to round).
        """
        request = self._request(messages, max_tokens, temperature, stop, extra_body)
        started = time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            try:
                completion = self._sdk.chat.completions.create(**request)
            except openai.OpenAIError as exc:
                error = self._map_error(exc, attempt)
                if not error.retryable or attempt > self.max_retries:
                    raise error from None
                self._sleep(self._delay(exc, attempt))
                continue
            return self._reply(completion, attempt, time.perf_counter() - started)

    def models(self) -> list[str]:
        """Model ids the server lists; also a cheap reachability check."""
        try:
            return [m.id for m in self._sdk.models.list()]
        except openai.OpenAIError as exc:
            raise self._map_error(exc, 1) from None

    # internals -----------------------------------------------------------------------

    def _request(
        self,
        messages: Sequence[Message],
        max_tokens: int | None,
        temperature: float | None,
        stop: Sequence[str] | None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        request: dict[str, Any] = {"model": self.model, "messages": list(messages)}
        tokens = max_tokens if max_tokens is not None else self.max_tokens
        if tokens is not None:
            request["max_tokens"] = int(tokens)
        temp = temperature if temperature is not None else self.temperature
        if temp is not None:
            request["temperature"] = float(temp)
        if stop:
            request["stop"] = list(stop)
        body = {**self.extra_body, **(extra_body or {})}
        if body:
            request["extra_body"] = body
        return request

    def _reply(self, completion: Any, attempts: int, seconds: float) -> ChatReply:
        choices = getattr(completion, "choices", None)
        if not choices:
            raise ChatEndpointError(
                f"chat endpoint {self.endpoint} answered without a choice "
                "(not an OpenAI-compatible chat completion?)"
            )
        choice = choices[0]
        message = getattr(choice, "message", None)
        text = getattr(message, "content", None) or ""
        usage = getattr(completion, "usage", None)
        return ChatReply(
            text=text,
            usage=Usage(
                prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            ),
            seconds=seconds,
            attempts=attempts,
            finish_reason=getattr(choice, "finish_reason", None),
            model=getattr(completion, "model", None) or self.model,
        )

    def _map_error(self, exc: openai.OpenAIError, attempt: int) -> ChatEndpointError:
        """One line naming the endpoint, the status and the server's own words."""
        tries = f" ({attempt} attempt{'s' if attempt > 1 else ''})"
        if isinstance(exc, openai.APITimeoutError):
            return ChatEndpointError(
                f"chat endpoint {self.endpoint} timed out after {self.timeout:g} s{tries}",
                retryable=True,
            )
        if isinstance(exc, openai.APIConnectionError):
            cause = one_line(exc.__cause__ or exc.message or "connection failed", 120)
            return ChatEndpointError(
                f"cannot reach chat endpoint {self.endpoint}: {cause}{tries}", retryable=True
            )
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            retryable = status in RETRYABLE_STATUS or status >= 500
            message = f"chat endpoint {self.endpoint} answered HTTP {status}"
            detail = _server_detail(exc)
            if detail:
                message += f": {detail.rstrip('.')}"
            if status in _HINTS:
                message += f"; {_HINTS[status]}"
            if retryable:
                message += tries
            return ChatEndpointError(message, status=status, retryable=retryable)
        if isinstance(exc, openai.APIResponseValidationError):
            return ChatEndpointError(
                f"chat endpoint {self.endpoint} answered something that is not a chat completion"
            )
        return ChatEndpointError(f"chat endpoint {self.endpoint} failed: {one_line(exc)}")

    def _delay(self, exc: openai.OpenAIError, attempt: int) -> float:
        """Exponential backoff with jitter; the server's Retry-After wins when it gives one."""
        if isinstance(exc, openai.APIStatusError):
            header = exc.response.headers.get("retry-after")
            try:
                if header is not None:
                    return min(self.max_backoff, max(0.0, float(header)))
            except ValueError:
                pass
        base = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return base * (0.5 + random.random() / 2)


def _server_detail(exc: openai.APIStatusError) -> str:
    """The human part of an error body: OpenAI's error.message, FastAPI's detail, or raw text."""
    body = exc.body
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping):
            for key in ("message", "detail", "error"):
                if inner.get(key):
                    return one_line(inner[key])
        if isinstance(inner, str) and inner:
            return one_line(inner)
        for key in ("message", "detail"):
            if body.get(key):
                return one_line(body[key])
        return ""
    if isinstance(body, str):
        return one_line(_HTML_TAG_RE.sub(" ", body))
    return ""
