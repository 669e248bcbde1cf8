"""Settings: which endpoints and models each role uses, where the cache lives.

One settings model, read from (lowest to highest precedence) built-in defaults,
a YAML config file, ``LVR1_*`` environment variables and command-line flags.
Roles are separate because production splits them: a reasoning LLM, a VLM for
captions and a VLM for video_qa may each live behind their own server.

Environment variables, per role ``CAPTION``, ``VIDEO_QA``, ``REASONING``::

    LVR1_<ROLE>_BASE_URL   e.g. http://localhost:8000/v1
    LVR1_<ROLE>_MODEL      e.g. Qwen/Qwen3-VL-8B-Instruct
    LVR1_<ROLE>_API_KEY    falls back to OPENAI_API_KEY, then "EMPTY"
    LVR1_<ROLE>_TIMEOUT    seconds per request

and ``LVR1_STORE`` (caption database), ``LVR1_CONFIG`` (config file),
``LVR1_CAPTIONER`` (``embedded`` or ``vlm``), ``LVR1_LEVERS`` (``auto``, ``on`` or
``off``), ``LVR1_NAVIGABLE_CAPTIONS`` (``on`` or ``off``), ``LVR1_CONSTRAIN`` (``auto``,
``on`` or ``off``) and ``LVR1_ANSWER_FORM`` (``auto``, ``letter``, ``text`` or ``either``).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from longvideo_r1.errors import ConfigError, validation_line

ROLES = ("caption", "video_qa", "reasoning")
ConstrainMode = Literal["auto", "on", "off"]
"""Whether the navigator's replies are decoded under the protocol's grammar."""
LeversMode = Literal["auto", "on", "off"]
"""Whether the small-navigator preset (navigable captions and the agent's levers) applies."""
AnswerFormSetting = Literal["auto", "letter", "text", "either"]
"""What <answer> holds; auto lets the backend decide (text embedded, either served)."""
DEFAULT_CONFIG_PATH = Path("~/.config/longvideo-r1/config.yaml")


class EndpointSettings(BaseModel):
    """One OpenAI-compatible chat endpoint (vLLM, transformers serve, a hosted API)."""

    base_url: str | None = Field(
        default=None,
        description="Base URL of an OpenAI-compatible server, e.g. http://localhost:8000/v1. "
        "Unset means the embedded CPU default for this role.",
    )
    model: str | None = Field(default=None, description="Model name the server knows.")
    api_key: str | None = Field(
        default=None, description="API key; falls back to OPENAI_API_KEY, then 'EMPTY'."
    )
    timeout: float = Field(default=120.0, gt=0, description="Seconds per request.")
    max_retries: int = Field(
        default=3, ge=0, description="Retries on 429, 5xx, timeouts and dropped connections."
    )
    max_tokens: int = Field(default=1024, gt=0, description="Completion token limit.")
    context: int | None = Field(
        default=None,
        gt=0,
        description="Context window of an embedded model in tokens (default 16384, capped at "
        "the model's own); a server sets its own.",
    )

    def require(self, role: str) -> None:
        """Refuse, in one line naming the flags and variables, an endpoint without URL or model."""
        if not self.base_url or not self.model:
            flag, key = role.replace("_", "-"), role.upper()
            raise ConfigError(
                f"the {role} endpoint needs a base URL and a model: --{flag}-base-url and "
                f"--{flag}-model, LVR1_{key}_BASE_URL and LVR1_{key}_MODEL, or the config file"
            )

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments shared by every client of this endpoint (key, limits, retries)."""
        return {
            "model": self.model,
            "api_key": self.resolved_key(),
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "max_tokens": self.max_tokens,
        }

    def resolved_key(self) -> str:
        return self.api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"


class Settings(BaseModel):
    """Everything a command needs to know besides its own arguments."""

    store: Path | None = Field(
        default=None,
        description="SQLite caption database (default ~/.cache/longvideo-r1/store.sqlite, "
        "or under $XDG_CACHE_HOME).",
    )
    captioner: str = Field(
        default="embedded",
        description="'embedded' (CPU, no model hub) or 'vlm' (the caption endpoint).",
    )
    levers: LeversMode = Field(
        default="auto",
        description="The preset for small navigators: navigable captions and the agent's "
        "min_depth 2, guide 2, answer_on_match 0.5. auto is on when the reasoning model is the "
        "embedded one (no reasoning base URL) and the captioner is embedded, off otherwise; "
        "on or off force it. An explicit navigable_captions or agent lever wins over it.",
    )
    navigable_captions: bool | None = Field(
        default=None,
        description="The embedded captioner's high and medium captions name each part's "
        "distinctive words (TF-IDF over the video's transcript). Unset follows levers.",
    )
    constrain: ConstrainMode = Field(
        default="auto",
        description="Constrain the navigator's replies to the protocol's grammar: auto (on for "
        "the embedded model and for servers that take a grammar), on or off.",
    )
    answer_form: AnswerFormSetting = Field(
        default="auto",
        description="What <answer> holds for a multiple-choice question: auto (text for the "
        "embedded model, either for a server), letter, text or either.",
    )
    min_width: int = Field(default=4, ge=1, description="Smallest tree width.")
    max_width: int = Field(default=8, ge=1, description="Largest tree width.")
    caption: EndpointSettings = Field(default_factory=EndpointSettings)
    video_qa: EndpointSettings = Field(default_factory=EndpointSettings)
    reasoning: EndpointSettings = Field(default_factory=EndpointSettings)

    @field_validator("constrain", "levers", mode="before")
    @classmethod
    def _yaml_switch(cls, value: Any) -> Any:
        """YAML reads a bare ``on``/``off`` as a boolean; take the word that was meant."""
        if isinstance(value, bool):
            return "on" if value else "off"
        return value

    def store_path(self) -> Path:
        return self.store.expanduser() if self.store else default_store_path()


def levers_on(settings: Settings) -> bool:
    """Whether the small-navigator preset applies: ``on``/``off`` as set, ``auto`` on exactly
    for the embedded navigator reading embedded captions.

    Measured on a 30-minute video, the embedded 0.5B navigator left alone never reads
    below the high-level captions; with the preset it reads down the tree. Served models
    are larger and keep the plain agent.
    """
    if settings.levers != "auto":
        return settings.levers == "on"
    return settings.reasoning.base_url is None and settings.captioner == "embedded"


def navigable(settings: Settings) -> bool:
    """Whether the captioner makes navigable captions: an explicit setting wins, else the
    levers decide, for the embedded captioner only (no other captioner makes them)."""
    if settings.navigable_captions is not None:
        return settings.navigable_captions
    return settings.captioner == "embedded" and levers_on(settings)


def default_store_path() -> Path:
    """``$XDG_CACHE_HOME/longvideo-r1/store.sqlite``, else under ``~/.cache``.

    ``LVR1_STORE`` and ``--store`` are resolved by the caller (config/CLI) and
    passed in as a path; this is only the fallback.
    """
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "longvideo-r1" / "store.sqlite"


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """Nested dict of the settings named by LVR1_* variables."""
    out: dict[str, Any] = {}
    plain = (
        ("store", "LVR1_STORE"),
        ("captioner", "LVR1_CAPTIONER"),
        ("levers", "LVR1_LEVERS"),
        ("navigable_captions", "LVR1_NAVIGABLE_CAPTIONS"),
        ("constrain", "LVR1_CONSTRAIN"),
        ("answer_form", "LVR1_ANSWER_FORM"),
    )
    for key, name in plain:
        if env.get(name):
            out[key] = env[name]
    for role in ROLES:
        role_out = {}
        for field in (
            "base_url",
            "model",
            "api_key",
            "timeout",
            "max_retries",
            "max_tokens",
            "context",
        ):
            value = env.get(f"LVR1_{role.upper()}_{field.upper()}")
            if value:
                role_out[field] = value
        if role_out:
            out[role] = role_out
    return out


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            merged[key] = _merge(dict(merged.get(key) or {}), value)
        else:
            merged[key] = value
    return merged


def _read_file(path: Path, required: bool) -> dict[str, Any]:
    path = path.expanduser()
    if not path.exists():
        if required:
            raise ConfigError(f"config file not found: {path}")
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} on "
            f"line {line}); save it as UTF-8"
        ) from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    _refuse_unknown_keys(data, Settings, path)
    return data


def _refuse_unknown_keys(
    data: Mapping[Any, Any], model: type[BaseModel], path: Path, prefix: str = ""
) -> None:
    """Refuse a key the settings lack, naming the nearest one: a typo must not mean the default.

    Nested sections (``reasoning: {base_url: ...}``) are checked against their
    own fields.
    """
    for key, value in data.items():
        name = str(key)
        field = model.model_fields.get(name)
        if field is None:
            raise ConfigError(
                f"config file {path}: {_unknown(name, list(model.model_fields), prefix)}"
            )
        section = field.annotation
        nested = isinstance(section, type) and issubclass(section, BaseModel)
        if nested and isinstance(value, Mapping):
            _refuse_unknown_keys(value, section, path, f"{prefix}{name}.")


def _unknown(name: str, known: list[str], prefix: str) -> str:
    """``unknown setting X (did you mean Y?)``, or the known names when none is near."""
    near = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {prefix}{near[0]}?" if near else f"known: {', '.join(known)}"
    return f"unknown setting {prefix}{name} ({hint})"


def load_settings(
    config_path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Settings from defaults < config file < environment < ``overrides`` (CLI flags)."""
    env = os.environ if env is None else env
    explicit = config_path or env.get("LVR1_CONFIG")
    path = Path(explicit) if explicit else DEFAULT_CONFIG_PATH
    data = _read_file(path, required=bool(explicit))
    data = _merge(data, _env_overrides(env))
    data = _merge(data, overrides or {})
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid setting {validation_line(exc, 'settings')}") from None
    if settings.min_width > settings.max_width:
        raise ConfigError(
            f"min_width {settings.min_width} is larger than max_width {settings.max_width}"
        )
    return settings


def first_difference(
    old: Mapping[str, Any], new: Mapping[str, Any], absent_as: Mapping[str, Any] | None = None
) -> str | None:
    """The first setting that differs between two flat mappings, worded for a refusal.

    Runs that resume from a folder compare what made it with what is asked
    now; results of two configurations must never mix unnoticed. A setting
    added since the folder was made is missing from ``old``; ``absent_as``
    gives the value that means "as before" (a new setting's default keeps the
    old behaviour), so such a folder resumes unless the new setting is used.
    """
    absent_as = absent_as or {}
    for key in [*old, *(k for k in new if k not in old)]:
        if key not in old and key in absent_as and new.get(key) == absent_as[key]:
            continue
        if old.get(key) != new.get(key):
            return f"{key} was {_show(old.get(key))}, now {_show(new.get(key))}"
    return None


def _show(value: Any) -> str:
    text = "unset" if value is None else repr(value)
    return text if len(text) <= 70 else text[:67] + "..."
