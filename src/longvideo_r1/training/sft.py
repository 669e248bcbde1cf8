"""Stage-1 supervised fine-tuning of the navigator with TRL's SFTTrainer.

A recipe (:class:`~longvideo_r1.training.recipe.SFTRecipe`, read from YAML
by :func:`~longvideo_r1.training.recipe.load_recipe`) names a model, a
trajectory set and the optimiser settings; :func:`run_sft` trains with the
loss on the assistant turns only, so the model learns to navigate and answer
while the captions, tool observations and hints it reads are context. The
output directory holds the model, the tokenizer and the chat template the
model was trained with, so ``vllm serve``, ``transformers serve`` or
``from_pretrained`` load it as it is (LoRA runs are merged into the base
weights; the adapter is kept under ``adapter/``).

Data may be a TRL conversational export (``exports.py``), a folder of
trajectory records (filtered and exported on the fly) or ``synthetic:N``
(N oracle trajectories over synthetic videos, for a run from a fresh clone).
The model may be ``tiny-qwen3``: a small Qwen3 built from a config with a
byte-level BPE tokenizer trained on the data, which needs no download.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from longvideo_r1.errors import ConfigError, LVR1Error
from longvideo_r1.files import write_atomic
from longvideo_r1.llm.convert import gguf_to_hf, hf_to_gguf
from longvideo_r1.llm.embedded import EMBEDDED_ALIASES, resolve_embedded_model
from longvideo_r1.llm.weights import MODELS
from longvideo_r1.questions.schema import LETTERS
from longvideo_r1.training.exports import (
    ExportConfig,
    export_records,
    export_trajectories,
    load_export,
)
from longvideo_r1.training.oracle import OracleConfig, oracle_trajectory, rotate_choices
from longvideo_r1.training.recipe import (
    TINY_MODEL,
    SFTRecipe,
    load_recipe,
    parse_overrides,
    recipe_help,
)
from longvideo_r1.training.synthetic import synthetic_count, synthetic_dataset

NAVIGATOR_GGUF = "navigator.gguf"

# A ChatML template (Qwen3's markers) that renders every turn verbatim: the
# agent's "<think>...</think>" stays plain text exactly as the protocol sent
# it, and the generation block spans the assistant text plus its end-of-turn
# token, so the model is trained to stop.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message.content + '<|im_end|>\\n' }}{%- endgeneration %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


class TrainError(LVR1Error):
    """Training could not start or finish (one line, names the setting or file)."""


# data ------------------------------------------------------------------------------------


def synthetic_records(n: int, seed: int, balance_letters: bool = False) -> list[Any]:
    """Oracle trajectories over synthetic videos: training data without any video or model.

    With ``balance_letters`` question i is rotated so that its right letter
    is the i-th of A, B, C, D, ... in turn.
    """
    records = []
    for index, item in enumerate(synthetic_dataset(n, seed=seed)):
        question = item.question
        if balance_letters and question.answer is not None:
            n_choices = len(question.choices)
            shift = LETTERS.index(question.answer) - index % n_choices
            question = rotate_choices(question, shift % n_choices)
        records.append(oracle_trajectory(question, item.ctree, OracleConfig(seed=seed)))
    return records


def prepare_data(recipe: SFTRecipe) -> Path:
    """The TRL JSONL to train on, exporting trajectories first when given records.

    A folder or ``synthetic:N`` is filtered and exported into the output
    directory, so the exact training file is kept beside the model.
    """
    out = Path(recipe.output_dir).expanduser() / "train.jsonl"
    try:
        count = synthetic_count(recipe.data)
    except ConfigError as exc:
        raise ConfigError(f"data: {exc}") from None
    if count is not None:
        export_records(synthetic_records(count, recipe.seed, recipe.balance_letters), out)
        return out
    source = Path(recipe.data).expanduser()
    if source.is_dir():
        report = export_trajectories(source, out, ExportConfig(format="trl"))
        if report.rows == 0:
            raise TrainError(f"data: no trajectory in {source} passed the filter")
        return out
    if not source.is_file():
        raise ConfigError(f"data: {source} does not exist")
    return source


def load_conversations(path: Path) -> list[dict[str, Any]]:
    """Rows ``{"messages": [...]}``; the reader checks every row is a conversation."""
    conversations = load_export(path, "trl")
    if not conversations:
        raise TrainError(f"data: {path} holds no conversation")
    for number, messages in enumerate(conversations, 1):
        if not any(m["role"] == "assistant" for m in messages):
            raise TrainError(f"data: {path} row {number} has no assistant turn to learn from")
    return [{"messages": m} for m in conversations]


# model and tokenizer ---------------------------------------------------------------------


def build_tokenizer(texts: Sequence[str], vocab_size: int = 2048) -> Any:
    """A byte-level BPE with Qwen3's chat markers, trained on the given text.

    Byte-level, so every string round-trips exactly and the loss-mask check
    can decode masked tokens back to the assistant text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )


def build_tiny_model(
    out_dir: str | Path, texts: Sequence[str], seed: int = 0, vocab_size: int = 2048
) -> Path:
    """Save a small Qwen3 and its tokenizer: the architecture Qwen3-8B uses, at CPU size."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    out = Path(out_dir)
    tokenizer = build_tokenizer(texts, vocab_size)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _conversation_text(rows: Sequence[dict[str, Any]]) -> list[str]:
    return [m["content"] for row in rows for m in row["messages"]]


def base_gguf(recipe: SFTRecipe) -> Path | None:
    """The GGUF the recipe's model comes from: a .gguf path or an embedded model name."""
    name = EMBEDDED_ALIASES.get(recipe.model.lower(), recipe.model)
    if name in MODELS or recipe.model.endswith(".gguf"):
        return resolve_embedded_model(name)
    return None


def resolve_model(recipe: SFTRecipe, rows: Sequence[dict[str, Any]]) -> str:
    """The model path to load; ``tiny-qwen3`` and GGUF bases are made (once) under the output.

    A GGUF base is dequantized into ``output_dir/base-model`` so a rerun or a
    resumed run trains from the very same weights without redoing it.
    """
    base = Path(recipe.output_dir).expanduser() / "base-model"
    gguf = base_gguf(recipe)
    if recipe.model != TINY_MODEL and gguf is None:
        return recipe.model
    if not (base / "config.json").is_file():
        if gguf is not None:
            gguf_to_hf(gguf, base)
        else:
            build_tiny_model(base, _conversation_text(rows), seed=recipe.seed)
    return str(base)


def choose_template(recipe: SFTRecipe, tokenizer: Any) -> str:
    """The chat template to train and serve with; it always has generation markers.

    The model's own template is kept when it marks the assistant turns; a
    known template without markers gets TRL's training variant (for Qwen3:
    same rendering, every turn's thinking kept, generation markers added); a
    tokenizer without a template gets TRL's Qwen3 training template.
    """
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    choice = recipe.chat_template
    if choice == "chatml":
        return CHATML_TEMPLATE
    if choice == "trl-qwen3":
        return _trl_template("qwen3_training.jinja")
    if choice != "auto":
        path = Path(choice).expanduser()
        if not path.is_file():
            raise ConfigError(f"chat_template: {choice!r} is not auto, trl-qwen3, chatml or a file")
        template = path.read_text(encoding="utf-8")
    else:
        own = tokenizer.chat_template
        if isinstance(own, dict):
            own = own.get("default")
        if not own:
            return _trl_template("qwen3_training.jinja")
        if has_generation_markers(own):
            return own
        template = get_training_chat_template(tokenizer) or own
    if not has_generation_markers(template):
        raise TrainError(
            "chat_template: the template has no {% generation %} block, so the assistant turns "
            "cannot be told apart; use chatml, trl-qwen3 or a template with generation markers"
        )
    return template


def _trl_template(name: str) -> str:
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / name).read_text(encoding="utf-8")


# training --------------------------------------------------------------------------------


@dataclass
class SFTResult:
    """What a run reports: the last logged loss, the step reached, time and where it is."""

    final_loss: float
    mean_loss: float
    steps: int
    seconds: float
    output_dir: Path
    resumed_from: str | None = None
    first_loss: float | None = None
    log_history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        resumed = f", resumed from {self.resumed_from}" if self.resumed_from else ""
        return (
            f"trained to step {self.steps} in {self.seconds:.1f} s, final loss "
            f"{self.final_loss:.4f}{resumed}; model in {self.output_dir}"
        )


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest ``checkpoint-N`` with a trainer state in it (half-written ones are skipped)."""
    root = Path(output_dir).expanduser()
    if not root.is_dir():
        return None
    done = [
        p
        for p in root.glob("checkpoint-*")
        if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()
    ]
    return str(max(done, key=lambda p: int(p.name.split("-")[-1]))) if done else None


def resume_point(recipe: SFTRecipe | Any) -> str | None:
    """The checkpoint a run goes on from: ``resume`` of an SFT or GRPO recipe resolved."""
    if recipe.resume == "never":
        return None
    if recipe.resume == "auto":
        return last_checkpoint(recipe.output_dir)
    if not (Path(recipe.resume).expanduser() / "trainer_state.json").is_file():
        raise ConfigError(f"resume: {recipe.resume} is not a checkpoint directory")
    return recipe.resume


def checkpointing_field(config_class: type) -> str:
    """The config field that turns on activation recomputation: transformers 5.x renamed
    ``gradient_checkpointing``, and TRL's configs follow whichever version is installed."""
    names = {f.name for f in fields(config_class)}
    return (
        "activation_checkpointing"
        if "activation_checkpointing" in names
        else ("gradient_checkpointing")
    )


def trl_config(recipe: SFTRecipe) -> Any:
    """TRL's SFTConfig for the recipe: assistant-only loss, no padding-free packing."""
    from trl import SFTConfig

    checkpointing = checkpointing_field(SFTConfig)
    return SFTConfig(
        output_dir=str(Path(recipe.output_dir).expanduser()),
        learning_rate=recipe.learning_rate,
        lr_scheduler_type=recipe.lr_scheduler_type,
        warmup_steps=recipe.warmup_ratio,
        num_train_epochs=recipe.num_train_epochs,
        max_steps=recipe.max_steps,
        per_device_train_batch_size=recipe.per_device_train_batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        max_length=recipe.max_length,
        seed=recipe.seed,
        data_seed=recipe.seed,
        bf16=recipe.bf16,
        **{checkpointing: recipe.gradient_checkpointing},
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=recipe.save_total_limit,
        logging_steps=recipe.logging_steps,
        logging_first_step=True,
        assistant_only_loss=True,
        deepspeed=recipe.deepspeed,
        # bf16 on a machine without an accelerator: transformers wants the CPU named.
        use_cpu=recipe.bf16 and not _has_accelerator(),
        report_to="none",
        disable_tqdm=True,
    )


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or torch.backends.mps.is_available()


def _load_model(recipe: SFTRecipe, model_path: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if recipe.bf16 else torch.float32
    try:
        return AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    except OSError as exc:
        raise ConfigError(f"model: cannot load {model_path}: {str(exc).splitlines()[0]}") from None


def _load_tokenizer(model_path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_path)
    except OSError as exc:
        raise ConfigError(
            f"model: no tokenizer in {model_path}: {str(exc).splitlines()[0]}"
        ) from None


def _lora_config(recipe: SFTRecipe) -> Any:
    from peft import LoraConfig

    targets: str | list[str] = recipe.lora_target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"
    return LoraConfig(
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )


def build_trainer(recipe: SFTRecipe, callbacks: Sequence[Any] = ()) -> Any:
    """An SFTTrainer ready to train; the tokenizer carries the template it trains with."""
    from datasets import Dataset
    from trl import SFTTrainer

    rows = load_conversations(prepare_data(recipe))
    model_path = resolve_model(recipe, rows)
    tokenizer = _load_tokenizer(model_path)
    tokenizer.chat_template = choose_template(recipe, tokenizer)
    model = _load_model(recipe, model_path)
    try:
        trainer = SFTTrainer(
            model=model,
            args=trl_config(recipe),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=_lora_config(recipe) if recipe.finetune == "lora" else None,
            callbacks=list(callbacks) or None,
        )
    except ValueError as exc:
        raise TrainError(f"trainer: {str(exc).splitlines()[0]}") from None
    if len(trainer.train_dataset) == 0:
        raise TrainError(
            f"max_length: {recipe.max_length} tokens cut every conversation before its first "
            "assistant turn; raise it"
        )
    return trainer


def save_for_serving(trainer: Any, recipe: SFTRecipe) -> Path:
    """Write weights, tokenizer and chat template where servers look for them.

    Full runs go through ``trainer.save_model`` so DeepSpeed ZeRO-3 shards
    are gathered. LoRA is merged so nothing downstream needs peft; the
    adapter alone is kept under ``adapter/``.
    """
    out = Path(recipe.output_dir).expanduser()
    tokenizer = trainer.processing_class
    if recipe.finetune == "full":
        trainer.save_model(str(out))
    else:
        trainer.save_model(str(out / "adapter"))
        if not recipe.merge_lora:
            return out / "adapter"
        if trainer.is_world_process_zero():
            merged = trainer.model.merge_and_unload()
            merged.save_pretrained(out)
            tokenizer.save_pretrained(out)
    if trainer.is_world_process_zero():
        (out / "chat_template.jinja").write_text(tokenizer.chat_template, encoding="utf-8")
    return out


def _gguf_base_or_fail(recipe: SFTRecipe) -> Path:
    """The base a ``gguf`` output is laid out like; asked before training, not after it."""
    base = base_gguf(recipe)
    if base is None:
        raise TrainError(
            f"gguf: {recipe.gguf} needs a GGUF base model (a .gguf file or an embedded model "
            f"name), not {recipe.model!r}"
        )
    return base


def write_navigator_gguf(recipe: SFTRecipe, model_dir: Path) -> Path:
    """The trained weights as a GGUF laid out like the base, for ``lvr1 ask`` on a CPU."""
    base = _gguf_base_or_fail(recipe)
    name = Path(recipe.output_dir).name
    return hf_to_gguf(model_dir, base, model_dir / NAVIGATOR_GGUF, recipe.gguf, name=name).path


def run_sft(recipe: SFTRecipe, callbacks: Sequence[Any] = ()) -> SFTResult:
    """Train (resuming when asked) and save a model ready to serve."""
    started = time.perf_counter()
    if recipe.gguf != "none":
        _gguf_base_or_fail(recipe)
    resume = resume_point(recipe)
    trainer = build_trainer(recipe, callbacks)
    output = trainer.train(resume_from_checkpoint=resume)
    saved = save_for_serving(trainer, recipe)
    if recipe.gguf != "none" and trainer.is_world_process_zero():
        write_navigator_gguf(recipe, saved)
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    result = SFTResult(
        final_loss=losses[-1] if losses else float("nan"),
        mean_loss=float(output.training_loss),
        steps=int(trainer.state.global_step),
        seconds=time.perf_counter() - started,
        output_dir=saved,
        resumed_from=resume,
        first_loss=losses[0] if losses else None,
        log_history=list(trainer.state.log_history),
    )
    if trainer.is_world_process_zero():
        _write_result(result)
    return result


def _write_result(result: SFTResult) -> None:
    """A small JSON beside the model, so a run's outcome survives the terminal."""
    root = result.output_dir if result.output_dir.name != "adapter" else result.output_dir.parent
    write_atomic(
        root / "sft_result.json",
        json.dumps(
            {
                "final_loss": result.final_loss,
                "mean_loss": result.mean_loss,
                "steps": result.steps,
                "seconds": round(result.seconds, 3),
                "resumed_from": result.resumed_from,
            },
            indent=2,
        )
        + "\n",
    )


# command line ----------------------------------------------------------------------------


def add_recipe_parser(
    sub: Any, name: str, summary: str, title: str, keys: dict[str, str], example: str
) -> argparse.ArgumentParser:
    """``NAME CONFIG.yaml [--override key=value ...]`` under ``lvr1 train``, its help listing
    every recipe key with the key's own help."""
    listed = "\n".join(f"  {k}: {h}" for k, h in keys.items())
    parser = sub.add_parser(
        name,
        help=summary,
        description=f"{title} Recipe keys:\n{listed}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help=f"YAML recipe (see {example})")
    add_override_option(parser)
    return parser


def add_sft_parser(sub: Any) -> argparse.ArgumentParser:
    """``sft CONFIG.yaml [--override key=value ...]`` under ``lvr1 train``."""
    return add_recipe_parser(
        sub,
        "sft",
        "supervised fine-tuning on trajectories (TRL SFTTrainer, assistant-only loss)",
        "Supervised fine-tuning.",
        recipe_help(),
        "configs/sft-tiny.yaml",
    )


def add_override_option(parser: argparse.ArgumentParser) -> None:
    """``-o key=value``: one recipe key replaced (repeatable)."""
    parser.add_argument(
        "--override",
        "-o",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="replace one recipe key (repeatable), e.g. -o max_steps=10",
    )


def build_parser(prog: str = "lvr1 train") -> argparse.ArgumentParser:
    """``lvr1 train sft CONFIG.yaml [--override key=value ...]``."""
    parser = argparse.ArgumentParser(prog=prog, description="Fine-tune the navigator.")
    sub = parser.add_subparsers(dest="stage", required=True)
    add_sft_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``lvr1 train``; one-line errors, exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        recipe = load_recipe(args.config, parse_overrides(args.override))
        result = run_sft(recipe)
    except LVR1Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(result.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
