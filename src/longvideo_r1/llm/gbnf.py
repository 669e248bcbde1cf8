"""A small grammar tree that writes GBNF, and reads back as a regex and a sampler.

Constrained decoding needs one grammar text that llama.cpp (``LlamaGrammar``
and its server's ``grammar`` field), vLLM (``structured_outputs.grammar``,
xgrammar) and SGLang (``ebnf``) all accept. Their common subset is small:
named rules, string literals, character classes, grouping, alternation and
repetition. This module builds grammars from those pieces only, so what it
writes stays inside that subset (rule names use letters, digits and dashes:
llama.cpp rejects underscores).

The same tree also becomes a Python regex (the grammars here are not
recursive) and a random string generator, so tests can check what a grammar
admits against the parser that reads the replies, without a model.
:mod:`longvideo_r1.agent.grammar` owns which replies the grammar admits; this
module knows nothing about the protocol.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Lit:
    """A literal string."""

    text: str


@dataclass(frozen=True)
class Chars:
    """One character of a class, written as the inside of ``[...]`` (e.g. ``^<``).

    The class body must mean the same in GBNF and in Python regex, so keep to
    plain characters, ranges, a leading ``^`` and the escapes ``\\\\``,
    ``\\]`` and ``\\xHH``.
    """

    body: str


@dataclass(frozen=True)
class Seq:
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Alt:
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Rep:
    """``item`` repeated ``low`` to ``high`` times (``high=None``: no upper bound)."""

    item: Expr
    low: int = 0
    high: int | None = None


@dataclass(frozen=True)
class Ref:
    """A named rule of the same grammar."""

    name: str


Expr = Lit | Chars | Seq | Alt | Rep | Ref

_RULE_NAME = re.compile(r"^[a-z][a-z0-9-]*$")


def seq(*items: Expr | str) -> Expr:
    """A sequence; plain strings are literals, adjacent literals are merged."""
    out: list[Expr] = []
    for item in items:
        item = Lit(item) if isinstance(item, str) else item
        if isinstance(item, Lit) and not item.text:
            continue
        if isinstance(item, Lit) and out and isinstance(out[-1], Lit):
            out[-1] = Lit(out[-1].text + item.text)
        else:
            out.append(item)
    if len(out) == 1:
        return out[0]
    return Seq(tuple(out))


def alt(*items: Expr | str) -> Expr:
    """An alternation; duplicates dropped, one item stays itself."""
    out: list[Expr] = []
    for item in items:
        item = Lit(item) if isinstance(item, str) else item
        if item not in out:
            out.append(item)
    if not out:
        raise ValueError("an alternation needs at least one item")
    return out[0] if len(out) == 1 else Alt(tuple(out))


def opt(item: Expr | str) -> Expr:
    return Rep(Lit(item) if isinstance(item, str) else item, 0, 1)


@dataclass(frozen=True)
class Grammar:
    """Named rules; ``root`` is where a reply starts."""

    rules: Mapping[str, Expr]
    root: str = "root"

    def __post_init__(self) -> None:
        for name in self.rules:
            if not _RULE_NAME.match(name):
                raise ValueError(f"rule name {name!r}: use lowercase letters, digits and dashes")
        if self.root not in self.rules:
            raise ValueError(f"the grammar has no rule {self.root!r}")
        for name, expr in self.rules.items():
            for ref in _refs(expr):
                if ref not in self.rules:
                    raise ValueError(f"rule {name!r} refers to the missing rule {ref!r}")

    def gbnf(self) -> str:
        """The grammar as GBNF text, root first."""
        names = [self.root, *(n for n in self.rules if n != self.root)]
        return "\n".join(f"{n} ::= {_gbnf(self.rules[n], top=True)}" for n in names) + "\n"

    def regex(self) -> re.Pattern[str]:
        """A regex admitting exactly the strings the grammar admits (rules inlined)."""
        return re.compile(_regex(Ref(self.root), self.rules, ()), re.DOTALL)

    def admits(self, text: str) -> bool:
        return self.regex().fullmatch(text) is not None

    def sample(self, rng: random.Random, max_repeat: int = 12, alphabet: str | None = None) -> str:
        """A random string the grammar admits; unbounded repeats stop at ``max_repeat``."""
        chars = _ALPHABET if alphabet is None else alphabet
        return _sample(Ref(self.root), self.rules, rng, max_repeat, chars)


# rendering --------------------------------------------------------------------------------

_GBNF_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def gbnf_literal(text: str) -> str:
    """A double-quoted GBNF literal; control characters as ``\\xHH``."""
    out = []
    for ch in text:
        if ch in _GBNF_ESCAPES:
            out.append(_GBNF_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _gbnf(expr: Expr, top: bool = False) -> str:
    if isinstance(expr, Lit):
        return gbnf_literal(expr.text)
    if isinstance(expr, Chars):
        return f"[{expr.body}]"
    if isinstance(expr, Ref):
        return expr.name
    if isinstance(expr, Seq):
        text = " ".join(_gbnf(i) for i in expr.items)
        return text if top else f"({text})"
    if isinstance(expr, Alt):
        text = " | ".join(_gbnf(i) for i in expr.items)
        return text if top else f"({text})"
    inner = _gbnf(expr.item)
    if not isinstance(expr.item, (Lit, Chars, Ref)):
        inner = inner if inner.startswith("(") else f"({inner})"
    low, high = expr.low, expr.high
    if (low, high) == (0, None):
        return inner + "*"
    if (low, high) == (1, None):
        return inner + "+"
    if (low, high) == (0, 1):
        return inner + "?"
    if high is None:
        return f"{inner}{{{low},}}"
    return f"{inner}{{{low},{high}}}" if low != high else f"{inner}{{{low}}}"


def _regex(expr: Expr, rules: Mapping[str, Expr], stack: tuple[str, ...]) -> str:
    if isinstance(expr, Lit):
        return re.escape(expr.text)
    if isinstance(expr, Chars):
        return f"[{expr.body}]"
    if isinstance(expr, Ref):
        if expr.name in stack:
            raise ValueError(f"rule {expr.name!r} is recursive; no regex for it")
        return "(?:" + _regex(rules[expr.name], rules, (*stack, expr.name)) + ")"
    if isinstance(expr, Seq):
        return "".join(_regex(i, rules, stack) for i in expr.items)
    if isinstance(expr, Alt):
        return "(?:" + "|".join(_regex(i, rules, stack) for i in expr.items) + ")"
    high = "" if expr.high is None else str(expr.high)
    return f"(?:{_regex(expr.item, rules, stack)}){{{expr.low},{high}}}"


_ALPHABET = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    " \t\n\r!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
    "éßüçñ中文—–“”‘’«»…\u00a0\u2028\x00\x07\x1b\x7f"
)


def _sample(expr: Expr, rules: Mapping[str, Expr], rng: random.Random, cap: int, chars: str) -> str:
    if isinstance(expr, Lit):
        return expr.text
    if isinstance(expr, Chars):
        pattern = re.compile(f"[{expr.body}]")
        allowed = [c for c in chars if pattern.fullmatch(c)]
        if not allowed:
            raise ValueError(f"no character of the sampling alphabet matches [{expr.body}]")
        return rng.choice(allowed)
    if isinstance(expr, Ref):
        return _sample(rules[expr.name], rules, rng, cap, chars)
    if isinstance(expr, Seq):
        return "".join(_sample(i, rules, rng, cap, chars) for i in expr.items)
    if isinstance(expr, Alt):
        return _sample(rng.choice(expr.items), rules, rng, cap, chars)
    high = expr.low + cap if expr.high is None else expr.high
    count = rng.randint(expr.low, max(expr.low, min(high, expr.low + cap)))
    return "".join(_sample(expr.item, rules, rng, cap, chars) for _ in range(count))


def _refs(expr: Expr) -> Iterable[str]:
    if isinstance(expr, Ref):
        yield expr.name
    elif isinstance(expr, (Seq, Alt)):
        for item in expr.items:
            yield from _refs(item)
    elif isinstance(expr, Rep):
        yield from _refs(expr.item)


@dataclass(frozen=True)
class Constraint:
    """What a backend needs to constrain one reply.

    ``grammar`` covers the whole reply. Engines that check the whole
    vocabulary at every constrained token (llama.cpp) may instead let the
    model write freely after ``head`` until ``stop`` (at most ``free_tokens``
    tokens, then ``stop`` is written for it) and constrain only what follows
    ``stop`` with ``tail``. The free route admits more in the free part (the
    grammar may forbid characters there that are harmless to the reader), so
    the builder of a constraint must make both routes readable.
    """

    grammar: str
    head: str
    stop: str
    tail: str
    free_tokens: int = 768
    bounded: str | None = None
    """``grammar`` with the free part capped in characters, for engines that constrain the
    whole reply and must finish it within a token limit (None: use ``grammar``)."""
    tail_tokens: int = 400
    """Tokens that always suffice for the longest text ``tail`` admits."""

    @property
    def whole_tokens(self) -> int:
        """Tokens an engine that constrains the whole reply (``bounded``) gives it, so the
        capped think and the tail always finish: a cut-off call would waste the round."""
        return self.free_tokens * 4 + self.tail_tokens
