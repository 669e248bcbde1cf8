"""The grammar tree: GBNF text in the subset llama.cpp, vLLM and SGLang share, and its regex."""

from __future__ import annotations

import random

import pytest

from longvideo_r1.llm.gbnf import Chars, Grammar, Lit, Ref, Rep, alt, gbnf_literal, opt, seq


def test_literals_escape_quotes_backslashes_and_control_characters():
    assert gbnf_literal('say "hi"\\now') == '"say \\"hi\\"\\\\now"'
    assert gbnf_literal("a\nb\tc\rd") == '"a\\nb\\tc\\rd"'
    assert gbnf_literal("bell\x07 del\x7f é") == '"bell\\x07 del\\x7F é"'


def test_gbnf_text_of_every_construct():
    grammar = Grammar(
        {
            "root": seq("<a>", Ref("body"), "</a>"),
            "body": alt("x", seq("y", opt("z")), Rep(Chars("0-9"), 1, None)),
            "spare": Rep(Chars("^<"), 0, 5),
        }
    )
    assert grammar.gbnf() == (
        'root ::= "<a>" body "</a>"\nbody ::= "x" | ("y" "z"?) | [0-9]+\nspare ::= [^<]{0,5}\n'
    )


def test_sequences_merge_literals_and_alternations_drop_duplicates():
    assert seq("a", "b", Lit(""), "c") == Lit("abc")
    assert alt("a", "a") == Lit("a")
    with pytest.raises(ValueError, match="at least one item"):
        alt()


def test_rule_names_and_references_are_checked():
    with pytest.raises(ValueError, match="lowercase letters, digits and dashes"):
        Grammar({"root": Lit("x"), "bad_name": Lit("y")})  # llama.cpp rejects underscores
    with pytest.raises(ValueError, match="missing rule 'nowhere'"):
        Grammar({"root": Ref("nowhere")})
    with pytest.raises(ValueError, match="no rule 'root'"):
        Grammar({"start": Lit("x")})


def test_the_regex_admits_what_the_grammar_admits():
    grammar = Grammar({"root": seq("id(", alt("1", "12"), opt(seq(", ", Chars("1-3"))), ")")})
    for text in ("id(1)", "id(12)", "id(1, 3)", "id(12, 2)"):
        assert grammar.admits(text), text
    for text in ("id(2)", "id(1, 4)", "id(1,3)", "id(1) ", "xid(1)"):
        assert not grammar.admits(text), text


def test_samples_are_admitted_and_bounded_repeats_hold():
    grammar = Grammar({"root": seq("<", Rep(Chars('^"\\\\<\\x00-\\x1F'), 2, 6), ">")})
    rng = random.Random(7)
    for _ in range(200):
        text = grammar.sample(rng)
        assert grammar.admits(text)
        assert 4 <= len(text) <= 8 and '"' not in text[1:-1] and "<" not in text[1:-1]


def test_recursive_grammars_have_no_regex():
    grammar = Grammar({"root": alt("x", seq("(", Ref("root"), ")"))})
    assert "root ::=" in grammar.gbnf()
    with pytest.raises(ValueError, match="recursive"):
        grammar.regex()
