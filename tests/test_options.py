"""Config fields that document themselves, and the flags made from them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

import pytest

from longvideo_r1.options import add_config_flags, config_from_args, field_help, option


@dataclass(frozen=True)
class Demo:
    rounds: int = option(30, "Rounds at most.")
    budget: float | None = option(None, "Seconds (None: no limit).")
    mode: Literal["auto", "on", "off"] = option("auto", "How 100% sure.")
    strict: bool = option(True, "Refuse loose replies.")
    tags: list = option(["a"], "Tags.")


def parse(argv: list[str], **kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_config_flags(parser, Demo, "demo", **kw)
    return parser.parse_args(argv)


def test_every_field_has_one_help_text_and_list_defaults_are_copied():
    assert field_help(Demo) == {
        "rounds": "Rounds at most.",
        "budget": "Seconds (None: no limit).",
        "mode": "How 100% sure.",
        "strict": "Refuse loose replies.",
        "tags": "Tags.",
    }
    first, second = Demo(), Demo()
    first.tags.append("b")
    assert second.tags == ["a"]


def test_flags_take_the_fields_types_choices_and_none():
    args = parse(["--rounds", "5", "--budget", "none", "--mode", "off", "--no-strict"])
    assert config_from_args(Demo, args) == Demo(rounds=5, budget=None, mode="off", strict=False)
    assert config_from_args(Demo, parse([])) == Demo()  # a flag not given keeps the default
    assert config_from_args(Demo, parse(["--budget", "2.5"])).budget == 2.5
    with pytest.raises(argparse.ArgumentError, match="invalid choice"):
        parse(["--mode", "sometimes"])
    with pytest.raises(argparse.ArgumentError, match="invalid int value"):
        parse(["--rounds", "none"])  # not optional, so 'none' is not a value


def test_only_and_skip_pick_the_flags():
    parser = argparse.ArgumentParser()
    add_config_flags(parser, Demo, "demo", only=("mode",))
    text = parser.format_help()
    assert "--mode {auto,on,off}" in text and "How 100% sure. (default: auto)" in text
    assert "--rounds" not in text
    parser = argparse.ArgumentParser()
    add_config_flags(parser, Demo, "demo", skip=("tags", "mode"))
    assert "--rounds N" in parser.format_help() and "--mode" not in parser.format_help()


def test_values_a_command_derives_win_over_the_flags():
    args = parse(["--rounds", "5", "--mode", "on"])
    assert config_from_args(Demo, args, mode="off") == Demo(rounds=5, mode="off")
