"""Stage-2 training: multi-turn GRPO over the navigator's own loop, with TRL's GRPOTrainer.

Our tool calls are not a chat-template tool format, so TRL's ``tools=``
route does not apply; its ``rollout_func`` does (TRL 1.16: a callable of
the prompts and the trainer that returns ``prompt_ids``, ``completion_ids``,
``logprobs``, optionally ``env_mask``, and extra per-completion fields that
reach the reward functions). :class:`PolicyRollouts` is that function: each
prompt names a question, and each is played by
:func:`~longvideo_r1.training.rollouts.rollout`, the unchanged navigator with
the production tools over a cached caption tree, generating with the
trainer's own model. The observations and template glue carry mask 0, so
the loss is on the model's turns only.

TRL's sampler repeats every question ``num_generations`` times in a row and
hands the function that whole list (this version's docstring says "no
duplication", its sampler does duplicate; ``tests/test_grpo.py`` checks which),
so one completion per entry is returned and consecutive entries form a group.

The reward's terms (:mod:`~longvideo_r1.training.reward`) are separate TRL
reward functions with the recipe's signed weights, so TRL logs each term's
mean beside the total. Navigation figures (rounds, tool calls, answered
share) join them in ``steps.jsonl`` (:mod:`~longvideo_r1.training.policy`).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longvideo_r1.agent.config import AgentConfig
from longvideo_r1.captions.store import CaptionStore
from longvideo_r1.config import default_store_path
from longvideo_r1.errors import ConfigError, EndpointError
from longvideo_r1.files import write_atomic
from longvideo_r1.llm.convert import hf_to_gguf
from longvideo_r1.llm.embedded import EMBEDDED_ALIASES
from longvideo_r1.llm.weights import MODELS
from longvideo_r1.questions.loaders import load_questions
from longvideo_r1.questions.schema import Question
from longvideo_r1.testing.testbench import load_testbench
from longvideo_r1.training.oracle import synthetic_answerer
from longvideo_r1.training.policy import (
    StepStats,
    append_log,
    evaluate_policy,
    rollout_row,
    step_log_callback,
    summarize,
    trim_log,
)
from longvideo_r1.training.recipe import TINY_MODEL, GRPORecipe
from longvideo_r1.training.reward import TERMS, RewardWeights, reward_terms
from longvideo_r1.training.rollouts import (
    GrammarMasks,
    Rollout,
    TransformersGenerator,
    import_xgrammar,
    rollout,
)
from longvideo_r1.training.sft import (
    CHATML_TEMPLATE,
    NAVIGATOR_GGUF,
    TrainError,
    base_gguf,
    checkpointing_field,
    resolve_model,
    resume_point,
    save_for_serving,
    synthetic_records,
)
from longvideo_r1.training.synthetic import synthetic_count, synthetic_dataset
from longvideo_r1.training.trees import (
    AnswererFactory,
    MappingTrees,
    StoreTrees,
    TreeSource,
    caption_answerer,
    make_toolbox,
    unavailable_trees,
)

STEP_LOG = "steps.jsonl"
ROLLOUT_LOG = "rollouts.jsonl"
EVAL_BEFORE = "eval-before.json"
EVAL_AFTER = "eval-after.json"


# questions and trees ---------------------------------------------------------------------


@dataclass
class Prompts:
    """The questions to roll out on, by id, with where their caption trees come from."""

    questions: dict[str, Question]
    trees: TreeSource
    answerer: AnswererFactory

    def ids(self) -> list[str]:
        return list(self.questions)


def load_prompts(spec: str, recipe: GRPORecipe, seed: int, stack: ExitStack) -> Prompts:
    """Questions and trees of a data spec; an empty source fails in one line, before any model.

    ``synthetic:N`` brings its own trees; real questions (``testbench`` or a
    question file) navigate the caption store's trees of their videos, and
    the questions whose video has none are left out (all of them: an error).
    """
    try:
        count = synthetic_count(spec)
    except ConfigError as exc:
        raise ConfigError(f"data: {exc}") from None
    if count is not None:
        items = synthetic_dataset(count, seed=seed)
        answerer = synthetic_answerer if recipe.video_qa == "truth" else caption_answerer
        questions = {i.question.id: i.question for i in items}
        return Prompts(questions, MappingTrees([i.ctree for i in items]), answerer)
    if recipe.video_qa == "truth":
        raise ConfigError("video_qa: truth is for synthetic:N data only; use captions")
    listed = _real_questions(spec, recipe)
    usable = [q for q in listed if q.answer is not None and q.clue_intervals]
    if not usable:
        raise TrainError(f"data: {spec} holds no question with an answer and clue intervals")
    if not recipe.captioner:
        raise ConfigError("captioner: name the captions to navigate (real questions need it)")
    store_path = Path(recipe.captions).expanduser() if recipe.captions else default_store_path()
    if not store_path.is_file():
        raise ConfigError(f"captions: no caption store at {store_path}")
    store = stack.enter_context(CaptionStore(store_path))
    trees = StoreTrees(store, recipe.captioner)
    missing = unavailable_trees(usable, trees)
    kept = [q for q in usable if q.video_id not in missing]
    if not kept:
        first = next(iter(missing.values()), "no video")
        raise TrainError(f"data: no question of {spec} has a caption tree: {first}")
    return Prompts({q.id: q for q in kept}, trees, caption_answerer)


def _real_questions(spec: str, recipe: GRPORecipe) -> list[Question]:
    if spec == "testbench":
        return list(load_testbench())
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"data: {spec} is not synthetic:N, testbench or a question file")
    if not recipe.benchmark:
        raise ConfigError("benchmark: name the format of the question file in data")
    return list(load_questions(path, recipe.benchmark))


def agent_config(recipe: GRPORecipe, temperature: float) -> AgentConfig:
    """The navigator's settings for a rollout: the recipe's turns, reply size and answer form.

    With ``constrain`` every reply is held to the round's grammar (``on``:
    a generator that cannot take one is an error, not a silent fallback);
    without it the format term is what teaches the protocol.
    """
    return AgentConfig(
        max_rounds=recipe.max_turns,
        max_reply_tokens=recipe.max_reply_tokens,
        max_think_tokens=min(recipe.max_think_tokens, recipe.max_reply_tokens),
        temperature=temperature,
        constrain="on" if recipe.constrain else "off",
        answer_form=recipe.answer_form,
    )


# the rollout function --------------------------------------------------------------------


def stop_ids(tokenizer: Any, model: Any) -> list[int]:
    """Every id that ends a turn: the tokenizer's end of sequence, ``<|im_end|>``, the model's."""
    ids: list[int] = []
    for token in (tokenizer.eos_token, "<|im_end|>"):
        if token is not None and token in tokenizer.get_vocab():
            ids.append(int(tokenizer.convert_tokens_to_ids(token)))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.append(configured)
    elif configured:
        ids.extend(int(i) for i in configured)
    return list(dict.fromkeys(ids))


def grammar_masks(recipe: GRPORecipe, tokenizer: Any, model: Any) -> GrammarMasks | None:
    """The grammar masks a constrained recipe's rollouts use (None when unconstrained).

    Made once per model: reading a tokenizer's vocabulary into xgrammar
    takes about a second, a compiled round grammar a few milliseconds.
    """
    if not recipe.constrain:
        return None
    vocab = int(model.get_output_embeddings().weight.shape[0])
    return GrammarMasks(tokenizer, vocab, stop_ids(tokenizer, model))


def play(
    model: Any,
    tokenizer: Any,
    prompts: Prompts,
    question_id: str,
    agent: AgentConfig,
    weights: RewardWeights,
    max_episode_tokens: int,
    masks: GrammarMasks | None = None,
) -> Rollout:
    """One scored rollout of one question with ``model`` (under the round grammars with
    ``masks``)."""
    question = prompts.questions[question_id]
    ctree = prompts.trees.get(question)
    box = make_toolbox(ctree, prompts.answerer(ctree, question))
    generator = TransformersGenerator(
        model, stop_ids(tokenizer, model), tokenizer.pad_token_id, masks=masks
    )
    one = rollout(
        generator,
        tokenizer,
        box,
        ctree.tree,
        question,
        agent,
        max_episode_tokens=max_episode_tokens,
        end_id=tokenizer.pad_token_id,
    )
    one.rewards = reward_terms(one.trace, question, weights)
    return one


class PolicyRollouts:
    """TRL's ``rollout_func``: the navigator plays each prompt (a question id) once.

    The returned dict carries, per completion, the ids, the mask as
    ``env_mask`` (TRL's name for it), the sampling logprobs and the reward
    terms (``reward_terms``) the term reward functions read.
    """

    def __init__(
        self,
        prompts: Prompts,
        tokenizer: Any,
        recipe: GRPORecipe,
        stats: StepStats,
        on_rollout: Callable[[Rollout], None] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.prompts = prompts
        self.tokenizer = tokenizer
        self.recipe = recipe
        self.agent = agent_config(recipe, recipe.temperature)
        self.weights = RewardWeights(**recipe.reward_weights())
        self.stats = stats
        self.on_rollout = on_rollout
        self.log_path = log_path
        self.calls: list[list[str]] = []
        self.masks: GrammarMasks | None = None

    def __call__(self, prompts: list[str], trainer: Any) -> dict[str, list[Any]]:
        self.calls.append(list(prompts))
        model = trainer.accelerator.unwrap_model(trainer.model)
        if self.masks is None:
            self.masks = grammar_masks(self.recipe, self.tokenizer, model)
        started = time.perf_counter()
        done = []
        for question_id in prompts:
            one = play(
                model,
                self.tokenizer,
                self.prompts,
                str(question_id),
                self.agent,
                self.weights,
                self.recipe.max_episode_tokens,
                self.masks,
            )
            if self.on_rollout is not None:
                self.on_rollout(one)
            done.append(one)
        self.stats.add(summarize(done), time.perf_counter() - started)
        if self.log_path is not None and trainer.is_world_process_zero():
            step = int(trainer.state.global_step) + 1  # the step these rollouts train
            append_log(self.log_path, [rollout_row(step, r) for r in done])
        return {
            "prompt_ids": [r.prompt_ids for r in done],
            "completion_ids": [r.completion_ids for r in done],
            "logprobs": [r.logprobs for r in done],
            "env_mask": [r.completion_mask for r in done],
            "reward_terms": [r.rewards for r in done],
        }


def term_reward(name: str) -> Callable[..., list[float]]:
    """A TRL reward function that returns one term of each completion's reward."""

    def reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        return [float(terms[name]) for terms in kwargs["reward_terms"]]

    reward.__name__ = name
    reward.__qualname__ = name
    return reward


# the trainer -----------------------------------------------------------------------------


def check_model(recipe: GRPORecipe) -> None:
    """A base model that cannot exist fails here, in one line, before anything loads."""
    name = recipe.model
    if name == TINY_MODEL or EMBEDDED_ALIASES.get(name.lower(), name) in MODELS:
        return
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ConfigError(f"model: {name} does not exist")
        return
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model: {name} is a folder without a model (no config.json)")
        return
    parts = name.split("/")
    looks_like_hub_id = len(parts) == 2 and all(parts) and not name.startswith((".", "~", "/"))
    if not looks_like_hub_id or Path(parts[0]).expanduser().is_dir():
        raise ConfigError(
            f"model: {name} does not exist (not a model folder, a .gguf file, an embedded "
            f"model name, {TINY_MODEL} or a Hugging Face id)"
        )


def check_gguf(recipe: GRPORecipe) -> Path | None:
    """The GGUF the output is laid out like, asked for before training, not after it."""
    if recipe.gguf == "none":
        return None
    own = Path(recipe.model).expanduser() / NAVIGATOR_GGUF
    base = own if own.is_file() else base_gguf(recipe)  # type: ignore[arg-type]
    if base is None:
        raise ConfigError(
            f"gguf: {recipe.gguf} needs a GGUF base (a .gguf model, an embedded model name, or "
            f"an SFT output with its {NAVIGATOR_GGUF}), not {recipe.model!r}"
        )
    return base


def grpo_config(recipe: GRPORecipe) -> Any:
    """TRL's GRPOConfig: one optimiser step per batch of prompts_per_step x num_generations."""
    from trl import GRPOConfig

    batch = recipe.prompts_per_step * recipe.num_generations
    accumulation = batch // recipe.micro_batch_size
    weights = RewardWeights(**recipe.reward_weights()).signed()
    checkpointing = checkpointing_field(GRPOConfig)
    return GRPOConfig(
        output_dir=str(Path(recipe.output_dir).expanduser()),
        learning_rate=recipe.learning_rate,
        lr_scheduler_type=recipe.lr_scheduler_type,
        warmup_steps=recipe.warmup_ratio,
        num_train_epochs=recipe.num_train_epochs,
        max_steps=recipe.max_steps,
        per_device_train_batch_size=recipe.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        steps_per_generation=accumulation,
        num_generations=recipe.num_generations,
        max_completion_length=recipe.max_episode_tokens,
        temperature=recipe.temperature,
        beta=recipe.beta,
        epsilon=recipe.epsilon,
        loss_type=recipe.loss_type,
        scale_rewards=recipe.scale_rewards,
        reward_weights=[weights[name] for name in TERMS],
        seed=recipe.seed,
        data_seed=recipe.seed,
        bf16=recipe.bf16,
        **{checkpointing: recipe.gradient_checkpointing},
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=recipe.save_total_limit,
        logging_steps=recipe.logging_steps,
        report_to="none",
        disable_tqdm=True,
        use_cpu=recipe.bf16 and not _has_accelerator(),
        remove_unused_columns=False,
    )


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or torch.backends.mps.is_available()


def starting_model(recipe: GRPORecipe) -> str:
    """The model folder to start from; ``tiny-qwen3`` and GGUF bases are made once under the
    output (the tiny tokenizer learns its vocabulary from oracle conversations)."""
    rows = []
    if recipe.model == TINY_MODEL:
        rows = [{"messages": r.messages} for r in synthetic_records(8, recipe.seed)]
    return resolve_model(recipe, rows)  # type: ignore[arg-type]


def load_policy(recipe: GRPORecipe, model_path: str) -> tuple[Any, Any]:
    """The model and its tokenizer, the tokenizer carrying the template rollouts render with."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=torch.bfloat16 if recipe.bf16 else torch.float32
        )
    except OSError as exc:
        raise ConfigError(f"model: cannot load {model_path}: {str(exc).splitlines()[0]}") from None
    tokenizer.chat_template = choose_template(recipe, tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def choose_template(recipe: GRPORecipe, tokenizer: Any) -> str:
    """The template rollouts render turns with: the model's own, ChatML, or a file.

    An SFT output saves the template it was trained with, so ``auto`` keeps
    the rendering the policy learned; it needs no generation markers here
    (the mask comes from the rollout, not from the template).
    """
    choice = recipe.chat_template
    if choice == "chatml":
        return CHATML_TEMPLATE
    if choice == "auto":
        own = tokenizer.chat_template
        if isinstance(own, dict):
            own = own.get("default")
        return own or CHATML_TEMPLATE
    path = Path(choice).expanduser()
    if not path.is_file():
        raise ConfigError(f"chat_template: {choice!r} is not auto, chatml or a .jinja file")
    return path.read_text(encoding="utf-8")


def _lora_config(recipe: GRPORecipe) -> Any:
    from peft import LoraConfig

    targets: str | list[str] = recipe.lora_target_modules
    return LoraConfig(
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        task_type="CAUSAL_LM",
    )


@dataclass
class GRPOResult:
    """What a run reports: steps, time, the before/after scores and where the model is."""

    steps: int
    seconds: float
    output_dir: Path
    resumed_from: str | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    gguf: Path | None = None
    log_history: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        resumed = f", resumed from {self.resumed_from}" if self.resumed_from else ""
        scores = ""
        if self.before and self.after:
            scores = (
                f"; held-out reward {self.before['mean_reward']:.3f} -> "
                f"{self.after['mean_reward']:.3f}, accuracy {self.before['accuracy']:.2f} -> "
                f"{self.after['accuracy']:.2f}"
            )
        return (
            f"trained to step {self.steps} in {self.seconds:.1f} s{resumed}{scores}; model in "
            f"{self.output_dir}"
        )


def prepare(recipe: GRPORecipe, stack: ExitStack) -> tuple[Prompts, Prompts | None, str | None]:
    """Every check that needs no model: the model's name, the data, the eval data, resume.

    Run first, so a bad input fails in one line before torch loads anything.
    """
    check_model(recipe)
    check_gguf(recipe)
    if recipe.constrain:
        try:
            import_xgrammar()
        except EndpointError as exc:
            raise ConfigError(f"constrain: {exc}") from None
    resume = resume_point(recipe)
    train = load_prompts(recipe.data, recipe, recipe.seed, stack)
    held_out = None
    if recipe.eval != "none":
        held_out = load_prompts(recipe.eval_data, recipe, recipe.eval_seed, stack)
    return train, held_out, resume


def build_trainer(
    recipe: GRPORecipe,
    train: Prompts,
    stats: StepStats,
    callbacks: Sequence[Any] = (),
) -> tuple[Any, PolicyRollouts]:
    """A GRPOTrainer whose generation is our navigator; rows of its dataset are question ids."""
    from datasets import Dataset
    from trl import GRPOTrainer

    model, tokenizer = load_policy(recipe, starting_model(recipe))
    out = Path(recipe.output_dir).expanduser()
    rollouts = PolicyRollouts(train, tokenizer, recipe, stats, log_path=out / ROLLOUT_LOG)
    log = step_log_callback(out / STEP_LOG, stats)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*rollout_func.*experimental")
        try:
            trainer = GRPOTrainer(
                model=model,
                reward_funcs=[term_reward(name) for name in TERMS],
                args=grpo_config(recipe),
                train_dataset=Dataset.from_list([{"prompt": i} for i in train.ids()]),
                processing_class=tokenizer,
                peft_config=_lora_config(recipe) if recipe.finetune == "lora" else None,
                callbacks=[log, *callbacks],
                rollout_func=rollouts,
            )
        except ValueError as exc:
            raise TrainError(f"trainer: {str(exc).splitlines()[0]}") from None
    return trainer, rollouts


def _score(
    trainer: Any, tokenizer: Any, held_out: Prompts, recipe: GRPORecipe, progress: str | None
) -> dict[str, Any]:
    model = trainer.accelerator.unwrap_model(trainer.model)
    return score_policy(model, tokenizer, held_out, recipe, progress)


def score_policy(
    model: Any,
    tokenizer: Any,
    held_out: Prompts,
    recipe: GRPORecipe,
    progress: str | None = None,
) -> dict[str, Any]:
    """The policy's figures on held-out questions, one rollout each at ``eval_temperature``;
    ``progress`` titles a bar on stderr."""
    agent = agent_config(recipe, recipe.eval_temperature)
    weights = RewardWeights(**recipe.reward_weights())
    masks = grammar_masks(recipe, tokenizer, model)

    def one(question_id: str) -> Rollout:
        return play(
            model,
            tokenizer,
            held_out,
            question_id,
            agent,
            weights,
            recipe.max_episode_tokens,
            masks,
        )

    return evaluate_policy(one, held_out.ids(), progress)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def run_grpo(
    recipe: GRPORecipe, callbacks: Sequence[Any] = (), progress: bool = False
) -> GRPOResult:
    """Score, train (resuming when asked), score again, and save a model ready to serve;
    ``progress`` shows bars for the held-out scoring (the trainer shows its own)."""
    started = time.perf_counter()
    out = Path(recipe.output_dir).expanduser()
    with ExitStack() as stack:
        train, held_out, resume = prepare(recipe, stack)
        stats = StepStats()
        trainer, rollouts = build_trainer(recipe, train, stats, callbacks)
        tokenizer = rollouts.tokenizer
        for log in (STEP_LOG, ROLLOUT_LOG):
            trim_log(out / log, _step_of(resume))
        before = _load_json(out / EVAL_BEFORE) if resume else None
        if held_out is not None and recipe.eval == "before_after" and before is None:
            before = _score(trainer, tokenizer, held_out, recipe, _title(progress, "before"))
            _write_json(out / EVAL_BEFORE, before)
        trainer.train(resume_from_checkpoint=resume)
        after = None
        if held_out is not None:
            after = _score(trainer, tokenizer, held_out, recipe, _title(progress, "after"))
            _write_json(out / EVAL_AFTER, after)
        saved = save_for_serving(trainer, recipe)  # type: ignore[arg-type]
        gguf = None
        base = check_gguf(recipe)
        if base is not None and trainer.is_world_process_zero():
            gguf = hf_to_gguf(saved, base, saved / NAVIGATOR_GGUF, recipe.gguf, name=out.name).path
    result = GRPOResult(
        steps=int(trainer.state.global_step),
        seconds=time.perf_counter() - started,
        output_dir=saved,
        resumed_from=resume,
        before=before,
        after=after,
        gguf=gguf,
        log_history=list(trainer.state.log_history),
    )
    _write_json(
        out / "grpo_result.json",
        {
            "steps": result.steps,
            "seconds": round(result.seconds, 3),
            "resumed_from": resume,
            "before": before,
            "after": after,
        },
    )
    return result


def _title(progress: bool, when: str) -> str | None:
    return f"held-out, {when} training" if progress else None


def _step_of(checkpoint: str | None) -> int:
    if checkpoint is None:
        return 0
    tail = Path(checkpoint).name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def evaluate_checkpoint(
    recipe: GRPORecipe, model_path: str | None = None, progress: bool = False
) -> dict[str, Any]:
    """``lvr1 train grpo-eval``: score a model (default: the run's output, else its start)."""
    out = Path(recipe.output_dir).expanduser()
    path = model_path or (str(out) if (out / "config.json").is_file() else None)
    with ExitStack() as stack:
        if path is None:
            check_model(recipe)
        elif not (Path(path).expanduser() / "config.json").is_file():
            raise ConfigError(f"--model: {path} is not a model folder (no config.json)")
        held_out = load_prompts(recipe.eval_data, recipe, recipe.eval_seed, stack)
        if path is None:
            path = starting_model(recipe)
        model, tokenizer = load_policy(recipe, path)
        scores = score_policy(model, tokenizer, held_out, recipe, "held-out" if progress else None)
    return {"model": path, **scores}
