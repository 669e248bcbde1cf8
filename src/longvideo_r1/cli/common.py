"""What the commands share: the settings flags, their reading, and the session they open.

Every command that touches a video, a model or a question file takes it from the
same flags, spelled the same way, so a flag means one thing across ``lvr1``: they
are declared here once and read back into :class:`Settings`, :class:`AgentConfig`,
a :class:`VideoSession` or a benchmark's questions here once.
"""

from __future__ import annotations

import argparse
from typing import Any, get_args

from longvideo_r1.agent.config import (
    SMALL_NAVIGATOR_LEVERS,
    SMALL_NAVIGATOR_ROUNDS,
    AgentConfig,
)
from longvideo_r1.agent.session import VideoSession
from longvideo_r1.config import ROLES, LeversMode, Settings, levers_on, load_settings
from longvideo_r1.errors import ConfigError
from longvideo_r1.options import add_config_flags, config_from_args
from longvideo_r1.questions.loaders import benchmark_name, load_questions


def _common_parser() -> argparse.ArgumentParser:
    """Options every subcommand accepts: where settings and the cache live."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("settings")
    group.add_argument(
        "--config",
        metavar="PATH",
        help="YAML settings file (default ~/.config/longvideo-r1/config.yaml or $LVR1_CONFIG)",
    )
    group.add_argument(
        "--store",
        metavar="PATH",
        help="SQLite caption database (default ~/.cache/longvideo-r1/store.sqlite or $LVR1_STORE)",
    )
    return common


def _tree_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("tree")
    group.add_argument("--min-width", type=int, help="smallest tree width (default 4; 3 for MLVU)")
    group.add_argument("--max-width", type=int, help="largest tree width (default 8)")


def _endpoint_options(
    parser: argparse.ArgumentParser, role: str, what: str, alias: str | None = None
) -> None:
    """``--ROLE-base-url`` and friends; ``alias`` adds ``--ALIAS-base-url`` ... for the same role.

    An alias lets a command name the role by what it plays there (the
    teacher of ``lvr1 data teacher`` is the reasoning role) while the
    settings file and ``LVR1_ROLE_*`` variables stay the same.
    """
    flag = role.replace("_", "-")
    env = f"LVR1_{role.upper()}"
    group = parser.add_argument_group(f"{what} endpoint (OpenAI-compatible, e.g. vLLM)")

    def names(suffix: str) -> list[str]:
        return [f"--{n}-{suffix}" for n in ((alias,) if alias else ()) + (flag,)]

    group.add_argument(
        *names("base-url"),
        dest=f"{role}_base_url",
        metavar="URL",
        help=f"server base URL, e.g. http://localhost:8000/v1 ({env}_BASE_URL)",
    )
    group.add_argument(
        *names("model"),
        dest=f"{role}_model",
        metavar="NAME",
        help=f"model name on that server ({env}_MODEL)",
    )
    group.add_argument(
        *names("api-key"),
        dest=f"{role}_api_key",
        metavar="KEY",
        help=f"API key ({env}_API_KEY, else OPENAI_API_KEY)",
    )
    group.add_argument(
        *names("timeout"),
        dest=f"{role}_timeout",
        type=float,
        metavar="S",
        help=f"seconds per request ({env}_TIMEOUT)",
    )
    if role == "reasoning":  # the only role an embedded chat model plays
        group.add_argument(
            *names("context"),
            dest=f"{role}_context",
            type=int,
            metavar="N",
            help=f"context window of the embedded model in tokens (default 16384, capped at "
            f"the model's own; {env}_CONTEXT)",
        )


def _captioner_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--captioner",
        metavar="NAME",
        help="'embedded' (CPU, default), 'vlm' (the caption endpoint) or 'imported:NAME' "
        "(captions imported with --import-reference; $LVR1_CAPTIONER)",
    )
    parser.add_argument(
        "--navigable-captions",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the embedded captioner's high and medium captions name each part's distinctive "
        "words, cached apart from plain captions (default: as --levers; "
        "$LVR1_NAVIGABLE_CAPTIONS)",
    )
    _levers_option(parser)


def _levers_option(parser: argparse.ArgumentParser) -> None:
    preset = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in SMALL_NAVIGATOR_LEVERS.items())
    parser.add_argument(
        "--levers",
        choices=get_args(LeversMode),
        default=None,
        help=f"the preset for small navigators: navigable captions and {preset}, "
        f"{SMALL_NAVIGATOR_ROUNDS} rounds unless --max-rounds is given. auto (default) is on "
        "for the embedded navigator with the embedded captioner and off for a reasoning "
        "server; off gives the plain agent. A lever flag given takes control of the agent's "
        "three ($LVR1_LEVERS)",
    )


_AGENT_FLAGS_BY_HAND = ("require_fetched_leaf", "max_repeated_calls")
"""AgentConfig fields whose flags keep their established spelling: ``--qa-anywhere`` turns the
leaf rule off, and ``--max-repeated-calls 0`` means never."""


def _preset_defaults() -> dict[str, str]:
    """The defaults --help states for the flags the levers preset sets."""
    preset = {**SMALL_NAVIGATOR_LEVERS, "max_rounds": SMALL_NAVIGATOR_ROUNDS}
    return {
        name: f"{value} with the levers on, else {getattr(AgentConfig, name)}"
        for name, value in preset.items()
    }


def _agent_options(parser: argparse.ArgumentParser) -> None:
    """One flag per AgentConfig field, its help the field's own."""
    add_config_flags(
        parser,
        AgentConfig,
        "the agent (a spent budget forces an answer; --constrain and --answer-form also come "
        "from $LVR1_CONSTRAIN, $LVR1_ANSWER_FORM or the config file)",
        skip=_AGENT_FLAGS_BY_HAND,
        shown_defaults=_preset_defaults(),
    )
    helps = AgentConfig.help()
    group = parser.add_argument_group("the agent's rules")
    group.add_argument(
        "--max-repeated-calls",
        type=int,
        default=AgentConfig.max_repeated_calls,
        metavar="N",
        help=f"{helps['max_repeated_calls']} 0 means never. (default: "
        f"{AgentConfig.max_repeated_calls})",
    )
    group.add_argument(
        "--qa-anywhere",
        action="store_true",
        help="allow video_qa on a leaf whose caption was not fetched, which the protocol "
        "forbids (require_fetched_leaf off)",
    )


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        "store": getattr(args, "store", None),
        "captioner": getattr(args, "captioner", None),
        "levers": getattr(args, "levers", None),
        "navigable_captions": getattr(args, "navigable_captions", None),
        "min_width": getattr(args, "min_width", None),
        "max_width": getattr(args, "max_width", None),
        "constrain": getattr(args, "constrain", None),
        "answer_form": getattr(args, "answer_form", None),
    }
    for role in ROLES:
        values = {
            field: getattr(args, f"{role}_{field}", None)
            for field in ("base_url", "model", "api_key", "timeout", "context")
        }
        overrides[role] = values
    return load_settings(getattr(args, "config", None), overrides)


def _session(args: argparse.Namespace, settings: Settings, video: str | None = None):
    return VideoSession.open(
        video or args.video, settings, subtitles=getattr(args, "subtitles", None)
    )


def _agent_config(args: argparse.Namespace, settings: Settings):
    """AgentConfig from the flags given; constrain and answer form as the settings resolved them,
    the levers preset where the settings turn it on and no lever flag took control."""
    return config_from_args(
        AgentConfig,
        args,
        **_lever_preset(args, settings),
        constrain=settings.constrain,
        answer_form=settings.answer_form,
        require_fetched_leaf=not args.qa_anywhere,
        max_repeated_calls=args.max_repeated_calls or None,
    )


def _lever_preset(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """SMALL_NAVIGATOR_LEVERS (and its rounds, unless --max-rounds was given) when the levers
    are on and none of their flags was given.

    One lever flag given means the user chose the levers: only the given ones apply and
    the others keep AgentConfig's defaults, so a run is never half preset, half chosen.
    """
    if not levers_on(settings) or any(hasattr(args, name) for name in SMALL_NAVIGATOR_LEVERS):
        return {}
    preset = dict(SMALL_NAVIGATOR_LEVERS)
    if not hasattr(args, "max_rounds"):
        preset["max_rounds"] = SMALL_NAVIGATOR_ROUNDS
    return preset


def _question_file(args: argparse.Namespace):
    """(questions, benchmark name) of QUESTIONS, read with the loader options the command has."""
    if not args.benchmark:
        raise ConfigError("--benchmark NAME is needed to read a question file")
    options: dict[str, Any] = {}
    if getattr(args, "subset", None):
        options["subset"] = args.subset
    if getattr(args, "with_subtitles", False):
        options["subtitles"] = True
    if getattr(args, "skip_malformed", False):
        options["skip_malformed"] = True
    name = benchmark_name(args.benchmark)
    return load_questions(args.questions, name, **options), name
