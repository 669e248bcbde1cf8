"""``lvr1 train grpo``: the recipe, bad inputs before any model, and real GRPO steps on CPU.

The trainer tests run the shipped ``configs/grpo-tiny.yaml`` (a small Qwen3
built in code, synthetic caption trees) through TRL's GRPOTrainer with our
``rollout_func``: real optimiser steps, the step log, resume, and what TRL
hands the rollout function.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

from longvideo_r1.errors import ConfigError  # noqa: E402
from longvideo_r1.training import grpo  # noqa: E402
from longvideo_r1.training.command import main  # noqa: E402
from longvideo_r1.training.policy import StepStats, read_log  # noqa: E402
from longvideo_r1.training.recipe import (  # noqa: E402
    GRPORecipe,
    grpo_recipe_help,
    load_recipe,
    parse_overrides,
    recipe_from_dict,
)
from longvideo_r1.training.reward import TERMS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "grpo-tiny.yaml"


def tiny(tmp_path: Path, **overrides) -> GRPORecipe:
    values = {"output_dir": str(tmp_path / "run"), **overrides}
    return load_recipe(TINY, values, GRPORecipe)


# the recipe --------------------------------------------------------------------------------


def test_shipped_grpo_configs_load():
    small = load_recipe(TINY, kind=GRPORecipe)
    assert small.model == "tiny-qwen3" and small.num_generations == 2
    nano = load_recipe(ROOT / "configs" / "grpo-nano.yaml", kind=GRPORecipe)
    assert nano.num_generations >= 4 and nano.gguf == "q8_0"


def test_defaults_are_the_papers_stage_two():
    paper = GRPORecipe()
    assert (paper.num_generations, paper.prompts_per_step, paper.max_turns) == (16, 12, 15)
    assert (paper.learning_rate, paper.beta, paper.temperature) == (1e-6, 1e-4, 1.0)
    assert (paper.reward_accuracy, paper.reward_grounding_f1, paper.reward_repeat) == (
        1.0,
        1.0,
        0.2,
    )
    help_text = grpo_recipe_help()
    assert set(help_text) >= {"beta", "num_generations", "max_turns", "finetune", "resume"}
    assert all(help_text.values())


def test_trl_config_is_one_step_per_batch_of_groups(tmp_path):
    config = grpo.grpo_config(tiny(tmp_path, prompts_per_step=3, micro_batch_size=2))
    assert config.num_generations == 2 and config.generation_batch_size == 6
    assert config.gradient_accumulation_steps == config.steps_per_generation == 3
    assert config.beta == pytest.approx(1e-4)
    assert config.reward_weights == [1.0, 1.0, -0.2, -0.0, 0.1]  # TERMS' signed weights


# bad input: one line each, before any model loads -----------------------------------------


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model or building the tiny one fails the test: the error must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(grpo, "resolve_model", refuse)
    monkeypatch.setattr(grpo, "load_policy", refuse)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("bogus=1", "unknown key 'bogus'"),
        ("num_generations=1", "num_generations: a group needs at least 2 rollouts"),
        ("max_turns=0", "max_turns: must be at least 1, got 0"),
        ("max_think_tokens=0", "max_think_tokens: must be at least 1, got 0"),
        ("beta=-0.1", "beta: the KL coefficient must be 0 or more"),
        ("micro_batch_size=3", "micro_batch_size: 3 does not divide"),
        ("temperature=0", "temperature: must be above 0"),
        ("reward_repeat=-0.2", "reward_repeat: must be 0 or more"),
        ("model=./no-such-model", "model: ./no-such-model does not exist"),
        ("model=configs/no-such-model", "model: configs/no-such-model does not exist"),
        ("model=missing.gguf", "model: missing.gguf does not exist"),
        ("data=synthetic:0", "data: 'synthetic:0': use synthetic:N with N >= 1"),
        ("data=nowhere.json", "data: nowhere.json is not synthetic:N, testbench or a question"),
        ("eval_data=synthetic:x", "data: 'synthetic:x': use synthetic:N"),
        ("gguf=q8_0", "gguf: q8_0 needs a GGUF base"),
        ("resume=/nope", "resume: /nope is not a checkpoint directory"),
    ],
)
def test_bad_input_fails_in_one_line_before_any_model(
    no_model, tmp_path, capsys, override, message
):
    code = main(["grpo", str(TINY), "-o", f"output_dir={tmp_path}", "-o", override])
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.count("\n") == 0 and message in err, err


def test_constrained_rollouts_without_xgrammar_fail_in_one_line(
    no_model, tmp_path, capsys, monkeypatch
):
    import builtins

    real_import = builtins.__import__

    def no_xgrammar(name, *args, **kwargs):
        if name == "xgrammar" or name.startswith("xgrammar."):
            raise ImportError("No module named 'xgrammar'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_xgrammar)
    code = main(["grpo", str(TINY), "-o", f"output_dir={tmp_path}", "-o", "constrain=true"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.count("\n") == 0
    assert "constrain: constrained rollouts need xgrammar" in err, err


def test_constrain_holds_the_navigator_to_the_grammar(tmp_path):
    assert grpo.agent_config(tiny(tmp_path), 1.0).constrain == "off"
    agent = grpo.agent_config(tiny(tmp_path, constrain=True, max_think_tokens=4), 1.0)
    assert (agent.constrain, agent.max_think_tokens) == ("on", 4)


def test_an_empty_question_file_is_an_empty_source(no_model, tmp_path, capsys):
    empty = tmp_path / "empty.json"
    empty.write_text("[]", encoding="utf-8")
    code = main(
        [
            "grpo",
            str(TINY),
            "-o",
            f"data={empty}",
            "-o",
            "benchmark=cgbench",
            "-o",
            f"output_dir={tmp_path}",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.count("\n") == 0
    assert "holds no question" in err or "no question" in err, err


def test_real_questions_need_a_captioner_and_a_store(no_model, tmp_path):
    with pytest.raises(ConfigError, match="captioner: name the captions"):
        grpo.run_grpo(tiny(tmp_path, data="testbench"))
    with pytest.raises(ConfigError, match="captions: no caption store at"):
        grpo.run_grpo(
            tiny(tmp_path, data="testbench", captioner="x", captions=str(tmp_path / "no.sqlite"))
        )
    with pytest.raises(ConfigError, match="video_qa: truth is for synthetic"):
        grpo.run_grpo(tiny(tmp_path, data="testbench", video_qa="truth"))


def test_overrides_reach_the_recipe():
    values = parse_overrides(["beta=0", "finetune=lora", "max_steps=3"])
    recipe = recipe_from_dict(values, "test", GRPORecipe)
    assert (recipe.beta, recipe.finetune, recipe.max_steps) == (0.0, "lora", 3)


# real steps --------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_tiny_config_runs_real_steps_logs_them_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["grpo", str(TINY), "-o", f"output_dir={out}", "-o", "eval_data=synthetic:1"]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "trained to step 2" in printed.out
    # the held-out scoring shows its bar, with the running count of right answers
    assert "held-out, before training" in printed.err and "held-out, after training" in printed.err
    assert "1/1" in printed.err and " right" in printed.err
    rows = read_log(out / "steps.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        for name in TERMS:
            assert f"rewards/{name}/mean" in row and f"nav/{name}" in row
        assert row["nav/rollouts"] == 4.0 and row["nav/rounds"] >= 1
        assert {"loss", "kl", "reward", "nav/tool_calls", "nav/accuracy"} <= set(row)
    before = json.loads((out / "eval-before.json").read_text())
    after = json.loads((out / "eval-after.json").read_text())
    for scores in (before, after):
        assert scores["questions"] == 1
        assert {"mean_reward", "accuracy", "grounding_f1", "rounds"} <= set(scores)
        (question,) = scores["per_question"]
        assert len(question["path"]) == question["rounds"]  # what each round did
    assert (out / "config.json").is_file() and (out / "chat_template.jinja").is_file()
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    # every training rollout, round by round, under the step it trained
    played = read_log(out / "rollouts.jsonl")
    assert [r["step"] for r in played] == [1] * 4 + [2] * 4
    for r in played:
        assert r["question"].startswith("synthetic-") and r["right"] in "ABCD"
        assert set(r["rewards"]) >= set(TERMS) and r["rounds"]
        assert all({"kind", "output"} <= set(one) for one in r["rounds"])

    # interrupted after step 2: a longer rerun resumes there and logs only the new step
    assert main([*args, "-o", "max_steps=3"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert [r["step"] for r in read_log(out / "steps.jsonl")] == [1, 2, 3]
    assert [r["step"] for r in read_log(out / "rollouts.jsonl")] == [1] * 4 + [2] * 4 + [3] * 4
    result = json.loads((out / "grpo_result.json").read_text())
    assert result["steps"] == 3 and result["resumed_from"].endswith("checkpoint-2")
    assert result["before"] == before  # scored once, before the first step

    # the run's output scores like any checkpoint
    assert (
        main(["grpo-eval", str(TINY), "-o", f"output_dir={out}", "-o", "eval_data=synthetic:1"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "mean_reward" in printed and "accuracy" in printed and str(out) in printed


@pytest.mark.slow
def test_a_constrained_tiny_policy_answers_every_held_out_question(tmp_path, capsys):
    """Unconstrained, the random tiny model rarely writes a reply that parses; under the
    round grammars every round is canonical and every rollout ends with an answer."""
    pytest.importorskip("xgrammar")
    args = ["grpo-eval", str(TINY), "-o", f"output_dir={tmp_path}", "-o", "eval_data=synthetic:2"]
    assert main([*args, "-o", "constrain=true", "-o", "max_think_tokens=6"]) == 0
    scores = dict(
        line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("  ")
    )
    assert float(scores["answered"]) == 1.0 and float(scores["format"]) == 1.0, scores


@pytest.mark.slow
def test_trl_gives_each_question_num_generations_times_and_rewards_move_the_weights(
    tmp_path, monkeypatch
):
    """What TRL 1.16 hands rollout_func: the group's question repeated, one completion each.

    A made-up reward that varies within a group (the parity of the first
    sampled token) gives non-zero advantages, so a step must change the weights.
    """
    import torch

    def parity(trace, question, weights):
        first = trace.rounds[0].output or "" if trace.rounds else ""
        terms = {name: 0.0 for name in TERMS}
        terms["accuracy"] = float(len(first) % 2)
        terms["total"] = terms["accuracy"]
        return terms

    monkeypatch.setattr(grpo, "reward_terms", parity)
    recipe = tiny(tmp_path, max_steps=1, eval="none", num_generations=3, micro_batch_size=3)
    trainer, rollouts = grpo.build_trainer(
        recipe, grpo.load_prompts(recipe.data, recipe, recipe.seed, None), StepStats()
    )
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    [prompts] = rollouts.calls
    assert len(prompts) == recipe.prompts_per_step * recipe.num_generations
    groups = [prompts[i : i + 3] for i in range(0, len(prompts), 3)]
    assert all(len(set(g)) == 1 for g in groups) and len({g[0] for g in groups}) == 2
    changed = [k for k, v in trainer.model.named_parameters() if not torch.equal(v, before[k])]
    rows = read_log(Path(recipe.output_dir) / "steps.jsonl")
    assert rows[0]["reward_std"] > 0 and rows[0]["grad_norm"] > 0
    assert changed, "a step with non-zero advantages left every weight unchanged"


@pytest.mark.slow
def test_lora_runs_a_step_and_saves_merged_weights(tmp_path):
    recipe = tiny(tmp_path, finetune="lora", max_steps=1, eval="none", lora_r=4, lora_alpha=8)
    result = grpo.run_grpo(recipe)
    assert result.steps == 1
    assert (result.output_dir / "config.json").is_file()
    assert (result.output_dir / "adapter").is_dir()
