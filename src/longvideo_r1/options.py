"""Config dataclasses whose fields document themselves, and their command-line flags.

Every config of the project (the agent's budgets, the oracle, the teacher,
the filter, exports, hints, training recipes) is a dataclass whose fields
carry their help text. This module is the one place that turns such a field
into a flag, so each setting has one default and one help text, and
``--help``, the docs and the code cannot drift apart (as TRL's configs do).
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, field, fields
from typing import Any


def option(default: Any, help: str) -> Any:
    """A dataclass field that carries its own documentation; lists and dicts are copied."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def field_help(cls: type) -> dict[str, str]:
    """Each field's help text, for command-line help and docs."""
    return {f.name: f.metadata.get("help", "") for f in fields(cls)}


def add_config_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    title: str,
    only: Sequence[str] | None = None,
    skip: Sequence[str] = (),
    shown_defaults: Mapping[str, str] | None = None,
) -> None:
    """One flag per field of a config dataclass (``max_rounds`` -> ``--max-rounds``).

    Booleans get ``--flag`` / ``--no-flag``; optional numbers accept
    ``none``; ``Literal`` fields list their choices. A flag not given is left
    out of the namespace, so the dataclass's own default applies: one place
    for defaults, one for help. ``shown_defaults`` replaces the default a
    flag's help states where a command resolves it otherwise (a preset).
    """
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title)
    for f in fields(cls):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        kind, choices, optional = _flag_kind(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        text = f.metadata.get("help", "").replace("%", "%%")
        default = "none" if f.default is None or f.default is MISSING else f.default
        default = (shown_defaults or {}).get(f.name, default)
        if kind is bool:
            group.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=f"{text} (default: {'on' if f.default else 'off'})",
            )
            continue
        metavar = {int: "N", float: "X"}.get(kind, "TEXT") if choices is None else None
        group.add_argument(
            flag,
            dest=f.name,
            type=_flag_value(kind, optional),
            choices=choices,
            metavar=metavar,
            default=argparse.SUPPRESS,
            help=f"{text} (default: {default})",
        )


def config_from_args(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """The config dataclass with the fields whose flags were given, ``fixed`` over them (values
    a command derives itself); the dataclass's checks apply."""
    given = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    return cls(**{**given, **fixed})


def _flag_kind(hint: Any) -> tuple[type, tuple[str, ...] | None, bool]:
    """(value type, choices, whether 'none' is accepted) of a config field's annotation."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0]
    if typing.get_origin(hint) is typing.Literal:
        return str, tuple(str(a) for a in typing.get_args(hint)), optional
    return hint, None, optional


def _flag_value(kind: type, optional: bool) -> Callable[[str], Any]:
    """argparse ``type=`` for a field: the field's type, or None for 'none' where allowed."""

    def parse(text: str) -> Any:
        if optional and text.strip().lower() == "none":
            return None
        return kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return parse
