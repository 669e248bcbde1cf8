"""A real OpenAI-compatible chat server that plays a fixed script, for tests.

The agent is tested over a real HTTP connection, through the same client and
backend as production, against a server that answers each
``POST /v1/chat/completions`` with the next step of its script and records
every request body it got. Steps are plain reply texts, :class:`Say` (a
reply with its own usage), :class:`Fail` (an HTTP error with an OpenAI-style
body) or :class:`Hangup` (close the connection unanswered, and by default
stop the whole server, as a crashed endpoint would). A request after the
script ran out gets a 500 that says so, so a test that expected fewer calls
fails loudly.

Grammars: a server built with ``grammar_field`` (one of :data:`GRAMMAR_FIELDS`)
takes a grammar in that request field, as vLLM, SGLang or llama.cpp's server
do; :attr:`ScriptedChatServer.grammars` records what each scripted request
carried there. The backend's one-time probe (a grammar admitting one
made-up word) is answered apart from the script, with that word where the
field is the server's own and with other text where it is not (a server that
ignores unknown fields), and recorded in :attr:`ScriptedChatServer.probes`.

Only the standard library: ``http.server`` in a daemon thread on 127.0.0.1,
port chosen by the OS.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Say:
    """A chat completion whose message content is ``text``."""

    text: str
    prompt_tokens: int = 100
    completion_tokens: int = 20
    finish_reason: str = "stop"
    delay: float = 0.0


@dataclass(frozen=True)
class Fail:
    """An HTTP error, its body shaped like OpenAI's (``{"error": {"message": ...}}``)."""

    status: int
    message: str


@dataclass(frozen=True)
class Hangup:
    """Close the connection without a response; ``stop`` also takes the server down."""

    stop: bool = True


Step = str | Say | Fail | Hangup

GRAMMAR_FIELDS = ("structured_outputs", "guided_grammar", "ebnf", "grammar")
_PROBE = re.compile(r'^root ::= "([a-z]+)"\s*$')


def grammar_of(body: dict[str, Any], field: str) -> str | None:
    """The grammar text a request body carries in ``field``, if any."""
    value = body.get(field)
    if field == "structured_outputs":
        value = value.get("grammar") if isinstance(value, dict) else None
    return value if isinstance(value, str) else None


class ScriptedChatServer:
    """Plays ``script`` to whoever calls it; records the JSON body of every request."""

    def __init__(
        self,
        script: Iterable[Step],
        model: str = "scripted-model",
        grammar_field: str | None = None,
    ) -> None:
        if grammar_field is not None and grammar_field not in GRAMMAR_FIELDS:
            raise ValueError(f"grammar_field must be one of {GRAMMAR_FIELDS}")
        self.model = model
        self.grammar_field = grammar_field
        self.requests: list[dict[str, Any]] = []
        self.grammars: list[str | None] = []
        self.probes: list[dict[str, Any]] = []
        self._script = [Say(s) if isinstance(s, str) else s for s in script]
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,))
        self._thread.daemon = True
        self._stopped = False

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def remaining(self) -> int:
        with self._lock:
            return len(self._script)

    def messages(self, index: int) -> list[dict[str, Any]]:
        """The messages of the ``index``-th request (negative counts from the end)."""
        return self.requests[index]["messages"]

    def start(self) -> ScriptedChatServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port; safe to call twice and from a handler."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ScriptedChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _next(self, body: dict[str, Any]) -> Step | None:
        with self._lock:
            probe = self._intercept(body)
            if probe is not None:
                return probe
            return self._script.pop(0) if self._script else None

    def _intercept(self, body: dict[str, Any]) -> Say | None:
        """Record a request (caller holds the lock); a grammar probe is answered here."""
        probe = self._probe_reply(body)
        if probe is not None:
            self.probes.append(body)
            return Say(probe, prompt_tokens=5, completion_tokens=2)
        self.requests.append(body)
        field = self.grammar_field
        self.grammars.append(grammar_of(body, field) if field else None)
        return None

    def _probe_reply(self, body: dict[str, Any]) -> str | None:
        """The answer to a grammar probe, or ``None`` when the request is not one."""
        for field in GRAMMAR_FIELDS:
            match = _PROBE.match(grammar_of(body, field) or "")
            if match is not None:
                return match.group(1) if field == self.grammar_field else "Sure."
        return None

    def _completion(self, step: Say) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-scripted-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": step.text},
                    "finish_reason": step.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": step.prompt_tokens,
                "completion_tokens": step.completion_tokens,
                "total_tokens": step.prompt_tokens + step.completion_tokens,
            },
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: ScriptedChatServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the OpenAI client expects
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows what matters."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.rstrip("/").endswith("/models"):
            owner = self.server.owner
            self._json(200, {"object": "list", "data": [{"id": owner.model, "object": "model"}]})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._json(404, {"error": {"message": f"no route {self.path}"}})
            return
        owner = self.server.owner
        step = owner._next(json.loads(raw or b"{}"))
        if step is None:
            self._json(500, {"error": {"message": "the scripted server's script is exhausted"}})
        elif isinstance(step, Fail):
            self._json(step.status, {"error": {"message": step.message, "type": "scripted"}})
        elif isinstance(step, Hangup):
            self.close_connection = True
            if step.stop:
                threading.Thread(target=owner.stop, daemon=True).start()
        else:
            if step.delay:
                time.sleep(step.delay)
            self._json(200, owner._completion(step))

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
