"""The chat client against a scripted local HTTP server: retries and one-line errors."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from longvideo_r1.config import EndpointSettings
from longvideo_r1.errors import ConfigError, EndpointError
from longvideo_r1.llm.client import ChatClient, ChatEndpointError

MESSAGES = [{"role": "user", "content": "hello"}]


@dataclass
class Answer:
    """One scripted response of the fake endpoint."""

    status: int = 200
    body: object = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def completion(text="hi there", prompt=11, completion_tokens=3, finish="stop"):
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "served-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        },
    }


class ScriptedServer(ThreadingHTTPServer):
    """Answers POSTs from a script (then with a default answer) and records the requests."""

    daemon_threads = True

    def __init__(self, default: Answer):
        super().__init__(("127.0.0.1", 0), ScriptedHandler)
        self.script: deque[Answer] = deque()
        self.default = default
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def next_answer(self) -> Answer:
        with self.lock:
            return self.script.popleft() if self.script else self.default


class ScriptedHandler(BaseHTTPRequestHandler):
    server: ScriptedServer

    def do_POST(self):  # noqa: N802 - name fixed by http.server
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        with self.server.lock:
            self.server.requests.append(
                {"path": self.path, "body": body, "auth": self.headers.get("Authorization")}
            )
        answer = self.server.next_answer()
        time.sleep(answer.delay)
        payload = answer.body if answer.body is not None else completion()
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        try:
            self.send_response(answer.status)
            content_type = "text/html" if isinstance(payload, str) else "application/json"
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for key, value in answer.headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def server():
    srv = ScriptedServer(Answer())
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def make_client(url, sleeps=None, **kwargs):
    options = {"model": "served-model", "api_key": "sk-test", "timeout": 5, "max_retries": 2}
    options.update(kwargs)
    recorder = sleeps.append if sleeps is not None else (lambda s: None)
    return ChatClient(url, sleep=recorder, **options)


def assert_one_line(error: Exception, url: str):
    message = str(error)
    assert "\n" not in message
    assert url in message
    assert "served-model" in message


def test_success_returns_text_usage_and_latency(server):
    client = make_client(server.url, max_tokens=64, temperature=0.0, extra_body={"seed": 7})
    reply = client.chat(MESSAGES)
    assert reply.text == "hi there"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (11, 3)
    assert reply.usage.total_tokens == 14
    assert reply.seconds > 0
    assert reply.attempts == 1
    assert reply.finish_reason == "stop" and not reply.truncated
    sent = server.requests[0]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["auth"] == "Bearer sk-test"
    assert sent["body"]["model"] == "served-model"
    assert sent["body"]["messages"] == MESSAGES
    assert sent["body"]["max_tokens"] == 64
    assert sent["body"]["temperature"] == 0.0
    assert sent["body"]["seed"] == 7


def test_per_call_limits_override_the_defaults(server):
    client = make_client(server.url, max_tokens=64)
    client.chat(MESSAGES, max_tokens=5, stop=["</caption>"])
    body = server.requests[0]["body"]
    assert body["max_tokens"] == 5
    assert body["stop"] == ["</caption>"]
    assert "temperature" not in body


def test_unreachable_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    sleeps: list[float] = []
    client = make_client(url, sleeps, max_retries=1)
    with pytest.raises(ChatEndpointError) as info:
        client.chat(MESSAGES)
    assert_one_line(info.value, url)
    assert "cannot reach" in str(info.value)
    assert "(2 attempts)" in str(info.value)
    assert len(sleeps) == 1


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            400,
            {"error": {"message": "maximum context length is 4096 tokens", "code": 400}},
            "HTTP 400: maximum context length is 4096 tokens",
        ),
        (
            401,
            {"error": {"message": "Invalid API key\nprovided", "type": "auth"}},
            "HTTP 401: Invalid API key provided; check the API key",
        ),
        (
            404,
            {"object": "error", "message": "The model `served-model` does not exist.", "code": 404},
            "HTTP 404: The model `served-model` does not exist; check the base URL",
        ),
        (422, {"detail": "Unexpected fields in the request"}, "HTTP 422: Unexpected fields"),
    ],
)
def test_client_errors_fail_at_once(server, status, body, expected):
    server.default = Answer(status=status, body=body)
    sleeps: list[float] = []
    with pytest.raises(ChatEndpointError) as info:
        make_client(server.url, sleeps).chat(MESSAGES)
    assert expected in str(info.value)
    assert info.value.status == status
    assert_one_line(info.value, server.url)
    assert len(server.requests) == 1 and sleeps == []


@pytest.mark.parametrize("status", [429, 500])
def test_transient_status_is_retried(server, status):
    server.script.append(Answer(status=status, body={"error": {"message": "busy"}}))
    sleeps: list[float] = []
    reply = make_client(server.url, sleeps, backoff=0.5).chat(MESSAGES)
    assert reply.text == "hi there"
    assert reply.attempts == 2
    assert len(server.requests) == 2
    assert len(sleeps) == 1 and 0.25 <= sleeps[0] <= 0.5


def test_retry_after_header_sets_the_wait(server):
    server.script.append(Answer(status=429, headers={"Retry-After": "7"}))
    server.script.append(Answer(status=429, headers={"Retry-After": "600"}))
    sleeps: list[float] = []
    make_client(server.url, sleeps, max_backoff=20).chat(MESSAGES)
    assert sleeps == [7.0, 20.0]


def test_service_unavailable_forever(server):
    server.default = Answer(status=503, body="<html><body><h1>503</h1> loading model</body></html>")
    sleeps: list[float] = []
    with pytest.raises(EndpointError) as info:
        make_client(server.url, sleeps, max_retries=3, backoff=1, max_backoff=3).chat(MESSAGES)
    message = str(info.value)
    assert "HTTP 503: 503 loading model (4 attempts)" in message
    assert_one_line(info.value, server.url)
    assert len(server.requests) == 4
    assert len(sleeps) == 3 and all(s <= 3 for s in sleeps)


def test_timeout(server):
    server.default = Answer(delay=1.5)
    client = make_client(server.url, timeout=0.3, max_retries=1)
    started = time.perf_counter()
    with pytest.raises(ChatEndpointError) as info:
        client.chat(MESSAGES)
    assert time.perf_counter() - started < 1.4
    assert "timed out after 0.3 s (2 attempts)" in str(info.value)
    assert info.value.retryable
    assert_one_line(info.value, server.url)


def test_reply_without_choices_is_an_endpoint_error(server):
    server.default = Answer(
        body={"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []}
    )
    with pytest.raises(ChatEndpointError, match="without a choice"):
        make_client(server.url).chat(MESSAGES)


def test_settings_make_a_client_and_missing_ones_say_which(server):
    settings = EndpointSettings(base_url=server.url, model="served-model", api_key="k", timeout=9)
    client = ChatClient.from_settings(settings, role="caption")
    assert (client.base_url, client.model, client.timeout) == (server.url, "served-model", 9.0)
    with pytest.raises(ConfigError, match="LVR1_CAPTION_BASE_URL"):
        ChatClient.from_settings(EndpointSettings(), role="caption")
    with pytest.raises(ConfigError):
        ChatClient("", "m")
    with pytest.raises(ConfigError, match="must start with http"):
        ChatClient("localhost:8000/v1", "m")
    with pytest.raises(ConfigError, match="needs a model name"):
        ChatClient(server.url, "")
