"""SFT with TRL on a tiny Qwen3 built in code: real steps, the loss mask, resume, LoRA, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real optimizer steps with torch and TRL (about 45 s)

pytest.importorskip("trl")
pytest.importorskip("peft")

from longvideo_r1.errors import ConfigError  # noqa: E402
from longvideo_r1.training.exports import export_records  # noqa: E402
from longvideo_r1.training.recipe import (  # noqa: E402
    SFTRecipe,
    load_recipe,
    parse_overrides,
    recipe_from_dict,
)
from longvideo_r1.training.sft import (  # noqa: E402
    TrainError,
    base_gguf,
    build_tiny_model,
    build_trainer,
    last_checkpoint,
    main,
    run_sft,
    synthetic_records,
    trl_config,
    write_navigator_gguf,
)

MAX_LENGTH = 1536


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four oracle trajectories over synthetic videos, exported as TRL conversations."""
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    export_records(synthetic_records(4, seed=5), path)
    return path


def test_balanced_synthetic_data_has_every_letter_in_turn():
    plain = synthetic_records(8, seed=5)
    balanced = synthetic_records(8, seed=5, balance_letters=True)
    assert [r.answer for r in balanced] == list("ABCDABCD")
    for before, after in zip(plain, balanced, strict=True):
        assert after.outcome == "correct" and after.predicted == after.answer
        right = before.choices[ord(before.answer) - ord("A")]
        assert after.choices[ord(after.answer) - ord("A")] == right
        assert sorted(after.choices) == sorted(before.choices)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    """A tiny Qwen3 with a BPE tokenizer trained on the data, saved like a hub checkpoint."""
    texts = [m["content"] for line in data.open() for m in json.loads(line)["messages"]]
    return build_tiny_model(tmp_path_factory.mktemp("base"), texts, seed=0)


def recipe(base: Path, data: Path, out: Path, **values: object) -> SFTRecipe:
    settings: dict[str, object] = dict(
        model=str(base),
        data=str(data),
        output_dir=str(out),
        learning_rate=5e-3,
        lr_scheduler_type="constant",
        warmup_ratio=0.0,
        max_steps=6,
        max_length=MAX_LENGTH,
        save_steps=100,
        seed=0,
    )
    settings.update(values)
    return SFTRecipe(**settings)  # type: ignore[arg-type]


def assistant_runs(input_ids: list[int], labels: list[int]) -> list[list[int]]:
    """Contiguous runs of tokens that carry a loss."""
    runs: list[list[int]] = []
    inside = False
    for token, label in zip(input_ids, labels, strict=True):
        if label == -100:
            inside = False
            continue
        if not inside:
            runs.append([])
            inside = True
        runs[-1].append(token)
    return runs


def qwen3_rendering(content: str) -> str:
    """How TRL's Qwen3 training template writes an assistant turn."""
    reasoning, _, rest = content.partition("</think>")
    reasoning = reasoning.split("<think>")[-1]
    return f"<think>\n{reasoning.strip(chr(10))}\n</think>\n\n{rest.lstrip(chr(10))}<|im_end|>\n"


@pytest.mark.parametrize("template", ["auto", "trl-qwen3"])
def test_loss_mask_covers_exactly_the_assistant_turns(
    base: Path, data: Path, tmp_path: Path, template: str
) -> None:
    trainer = build_trainer(
        recipe(base, data, tmp_path, chat_template=template, max_length=100_000)
    )
    tokenizer = trainer.processing_class
    for row in trainer.train_dataset:
        runs = assistant_runs(row["input_ids"], row["labels"])
        got = [tokenizer.decode(run) for run in runs]
        turns = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        if template == "auto":  # the tiny tokenizer's own template: turns verbatim
            assert got == [turn + "<|im_end|>\n" for turn in turns]
        else:
            assert got == [qwen3_rendering(turn) for turn in turns]
        masked = sum(label != -100 for label in row["labels"])
        assert 0 < masked < len(row["labels"]) / 2


def test_full_finetune_lowers_the_loss_and_saves_a_servable_model(
    base: Path, data: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = run_sft(recipe(base, data, tmp_path / "full", max_steps=8))
    losses = [row["loss"] for row in result.log_history if "loss" in row]
    assert result.steps == 8
    assert len(losses) == 8
    assert losses[-1] < losses[0] - 0.5, losses
    assert result.final_loss == losses[-1]
    model = AutoModelForCausalLM.from_pretrained(result.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(result.output_dir)
    assert "{% generation %}" in tokenizer.chat_template.replace(
        "{%- generation %}", "{% generation %}"
    )
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    assert model.config.model_type == "qwen3"
    assert (result.output_dir / "chat_template.jinja").is_file()


class StopAt:
    """Interrupts training after a given step, as a crash or a preempted job would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def __getattr__(self, name: str):  # the other TrainerCallback events do nothing
        return lambda *args, **kwargs: None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


def test_resume_continues_from_the_last_checkpoint(base: Path, data: Path, tmp_path: Path) -> None:
    settings = recipe(base, data, tmp_path / "resume", max_steps=4, save_steps=2)
    first = run_sft(settings, callbacks=[StopAt(2)])
    assert first.steps == 2
    assert last_checkpoint(settings.output_dir).endswith("checkpoint-2")
    second = run_sft(settings)
    assert second.resumed_from.endswith("checkpoint-2")
    assert second.steps == 4
    steps = [row["step"] for row in second.log_history if "loss" in row]
    assert steps == sorted(steps) and steps[-1] == 4 and 3 in steps
    assert last_checkpoint(settings.output_dir).endswith("checkpoint-4")


def test_lora_trains_adapters_and_saves_merged_weights(
    base: Path, data: Path, tmp_path: Path
) -> None:
    from safetensors import safe_open

    result = run_sft(
        recipe(base, data, tmp_path / "lora", finetune="lora", lora_r=4, lora_alpha=8, max_steps=2)
    )
    assert result.steps == 2
    out = result.output_dir
    assert (out / "adapter" / "adapter_config.json").is_file()
    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        assert not [k for k in weights.keys() if "lora" in k]  # noqa: SIM118


# recipes and errors ----------------------------------------------------------------------


def test_shipped_configs_load() -> None:
    root = Path(__file__).resolve().parents[1] / "configs"
    tiny = load_recipe(root / "sft-tiny.yaml")
    paper = load_recipe(root / "sft-qwen3-8b.yaml")
    assert tiny.model == "tiny-qwen3"
    assert paper.learning_rate == 1e-5 and paper.lr_scheduler_type == "cosine"
    assert paper.warmup_ratio == 0.1 and paper.num_train_epochs == 3
    assert paper.per_device_train_batch_size * paper.gradient_accumulation_steps * 8 == 32
    assert paper.max_length == 24576 and paper.bf16 and paper.gradient_checkpointing
    nano = load_recipe(root / "sft-nano.yaml")
    assert nano.model == "smollm2-135m" and nano.chat_template == "chatml" and nano.gguf == "q8_0"


def test_gguf_output_needs_a_gguf_base(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="gguf: 'q3' is not one of none, q8_0"):
        recipe_from_dict({"gguf": "q3"})
    recipe = recipe_from_dict({"model": "tiny-qwen3", "gguf": "f16", "output_dir": str(tmp_path)})
    assert base_gguf(recipe) is None
    with pytest.raises(TrainError, match="needs a GGUF base model"):
        write_navigator_gguf(recipe, tmp_path)
    with pytest.raises(TrainError, match="needs a GGUF base model"):
        run_sft(recipe)  # refused before an hour of training, not after it
    assert not (tmp_path / "base-model").exists()
    with pytest.raises(ConfigError, match="neither a GGUF file nor one of"):
        base_gguf(recipe_from_dict({"model": str(tmp_path / "missing.gguf")}))


def test_bf16_without_an_accelerator_names_the_cpu(tmp_path: Path) -> None:
    import torch

    config = trl_config(recipe_from_dict({"bf16": True, "output_dir": str(tmp_path)}))
    assert config.bf16
    assert config.use_cpu == (not torch.cuda.is_available())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("learning_rat: 1e-5\n", "unknown key 'learning_rat'"),
        ("max_steps: lots\n", "max_steps: expected int, got 'lots'"),
        ("finetune: qlora\n", "finetune: 'qlora' is not one of full, lora"),
        ("warmup_ratio: 1.5\n", "warmup_ratio: must be in [0, 1)"),
        ("bf16: maybe\n", "bf16: expected bool"),
        ("- a list\n", "expected a mapping"),
        ("model: [unclosed\n", "is not valid YAML"),
    ],
)
def test_bad_recipes_fail_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_overrides_keep_yaml_types(tmp_path: Path) -> None:
    assert parse_overrides(["max_steps=10", "bf16=true", "model=a/b"]) == {
        "max_steps": 10,
        "bf16": True,
        "model": "a/b",
    }
    path = tmp_path / "r.yaml"
    path.write_text("learning_rate: 1e-5\n")  # YAML reads this as a string; still accepted
    assert load_recipe(path, {"max_steps": "7"}).max_steps == 7
    assert load_recipe(path, parse_overrides(["learning_rate=1e-4"])).learning_rate == 1e-4
    assert load_recipe(path).learning_rate == 1e-5
    with pytest.raises(ConfigError, match="use key=value"):
        parse_overrides(["max_steps"])


def test_main_reports_errors_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(f"data: {tmp_path / 'missing.jsonl'}\noutput_dir: {tmp_path / 'out'}\n")
    assert main(["sft", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data:") and "does not exist" in err and "\n" not in err
    assert main(["sft", str(path), "-o", "nope=1"]) == 2
    assert "unknown key 'nope'" in capsys.readouterr().err
