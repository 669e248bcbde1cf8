"""The verl glue on CPU: the agent loop, the ``<tool>`` parser and the paper's configs.

verl's agent loop is instantiated exactly as verl's worker does it (hydra,
from configs/verl/agent-loop.yaml, with the worker's keyword arguments) and
run on its event loop. The server manager is a test double: it replays an
oracle trajectory's replies as token ids, or samples from a tiny Qwen3 built
in code, and records what it was asked. What comes out is checked id by id
against the chat template and then padded by verl's own post-processing.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("verl")
pytest.importorskip("transformers")

import hydra  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from verl.experimental.agent_loop.agent_loop import (  # noqa: E402
    DictConfigWrap,
    ToolListWrap,
)
from verl.experimental.agent_loop.tool_parser import ToolParser  # noqa: E402
from verl.utils.dataset.rl_dataset import RLHFDataset  # noqa: E402
from verl.workers.rollout.replica import TokenOutput  # noqa: E402

from longvideo_r1.agent.replies import parse_reply  # noqa: E402
from longvideo_r1.errors import ConfigError  # noqa: E402
from longvideo_r1.training.oracle import (  # noqa: E402
    OracleConfig,
    oracle_trajectory,
    synthetic_answerer,
)
from longvideo_r1.training.reward import TERMS  # noqa: E402
from longvideo_r1.training.rollouts import TransformersGenerator, encode, render  # noqa: E402
from longvideo_r1.training.sft import build_tiny_model, build_tokenizer  # noqa: E402
from longvideo_r1.training.synthetic import synthetic_dataset  # noqa: E402
from longvideo_r1.training.trees import MappingTrees  # noqa: E402
from longvideo_r1.training.verl_agent import (  # noqa: E402
    PARSER_NAME,
    NavigatorAgentLoop,
    NavigatorToolParser,
    loop_options,
    read_tool_calls,
)
from longvideo_r1.training.verl_data import read_rows, rows_for, write_parquet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "verl"
ITEM = synthetic_dataset(1, seed=11)[0]
ORACLE = oracle_trajectory(
    ITEM.question,
    ITEM.ctree,
    OracleConfig(seed=3, answer_form="letter", video_qa="always"),
    answerer=synthetic_answerer(ITEM.ctree, ITEM.question),  # the loop's own, phrasing and all
)
REPLIES = [m["content"] for m in ORACLE.messages if m["role"] == "assistant"]


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE with Qwen's markers, trained on the oracle conversation."""
    return build_tokenizer([m["content"] for m in ORACLE.messages], vocab_size=1024)


@pytest.fixture(scope="module")
def extra_info(tmp_path_factory):
    """The row verl hands the loop, read back from Parquet as verl reads it."""
    rows = rows_for([ITEM.question], MappingTrees([ITEM.ctree]), "synthetic", inline=True)
    path = write_parquet(rows, tmp_path_factory.mktemp("verl") / "train.parquet")
    return read_rows(path)[0]["extra_info"]


class ScriptedServer:
    """verl's server manager, as a test double: each call 'samples' the next fixed reply."""

    def __init__(self, tokenizer, replies, logprob: float = -0.25):
        self.tokenizer, self.replies, self.logprob = tokenizer, list(replies), logprob
        self.requests: list[tuple[str, list[int], dict]] = []

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
        self.requests.append((request_id, list(prompt_ids), dict(sampling_params)))
        ids = encode(self.tokenizer, self.replies.pop(0))
        ids = [*ids, self.tokenizer.convert_tokens_to_ids("<|im_end|>")]
        ids = ids[: sampling_params["max_tokens"]]
        return TokenOutput(
            token_ids=ids, log_probs=[self.logprob] * len(ids), stop_reason="completed"
        )


class SlowServer(ScriptedServer):
    """Yields to the event loop before answering, so concurrent trajectories interleave."""

    async def generate(self, request_id, **kwargs):
        await asyncio.sleep(0.01)
        return await super().generate(request_id, **kwargs)


class ModelServer:
    """verl's server manager over a real (tiny) model: sampling with its logprobs."""

    def __init__(self, model, tokenizer):
        self.generator = TransformersGenerator(
            model, [tokenizer.convert_tokens_to_ids("<|im_end|>")]
        )

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
        out = self.generator.generate(
            prompt_ids, sampling_params["max_tokens"], sampling_params["temperature"]
        )
        return TokenOutput(token_ids=out.ids, log_probs=out.logprobs, stop_reason="completed")


PARAMS = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": -1,
    "repetition_penalty": 1.0,
    "logprobs": True,
}


def make_loop(tokenizer, server, prompt_length=4096, response_length=4096, **navigator):
    """The loop as verl's worker makes it: hydra, from the YAML entry, with the worker's kwargs.

    Call it inside the event loop, as the worker does.
    """
    trainer = OmegaConf.create(
        {
            "actor_rollout_ref": {
                "rollout": {"prompt_length": prompt_length, "response_length": response_length}
            },
            "data": {},
        }
    )
    (entry,) = OmegaConf.load(CONFIGS / "agent-loop.yaml")
    for key, value in navigator.items():
        OmegaConf.update(entry, f"navigator.{key}", value, merge=True)
    loop = hydra.utils.instantiate(
        config=entry,
        trainer_config=DictConfigWrap(trainer),
        server_manager=server,
        tokenizer=tokenizer,
        processor=None,
        hf_model_type=None,
        dataset_cls=RLHFDataset,
        data_config=DictConfigWrap(trainer.data),
        tools=ToolListWrap([]),
    )
    assert isinstance(loop, NavigatorAgentLoop)
    return loop


def run_group(tokenizer, servers, extra_info, **options):
    """One trajectory per server, all on one event loop at once, as verl's worker runs them."""

    async def one(server):
        loop = make_loop(tokenizer, server, **options)
        return await loop.run(dict(PARAMS), extra_info=extra_info, raw_prompt=[], index=0)

    async def main():
        return await asyncio.gather(*(one(server) for server in servers))

    return asyncio.run(main())


def run_loop(tokenizer, server, extra_info, **options):
    """One trajectory of one row."""
    return run_group(tokenizer, [server], extra_info, **options)[0]


def _runs(ids, mask, value):
    """Consecutive runs of ``ids`` where ``mask`` equals ``value``."""
    runs, current = [], []
    for token, m in zip(ids, mask, strict=True):
        if m == value:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


# the agent loop -----------------------------------------------------------------------------


def test_the_loop_returns_the_oracle_episode_as_ids_mask_logprobs_and_reward(tokenizer, extra_info):
    server = ScriptedServer(tokenizer, REPLIES)
    out = run_loop(tokenizer, server, extra_info)
    messages = ORACLE.messages
    prompt = encode(tokenizer, render(tokenizer, messages[:2], generation_prompt=True))
    assert out.prompt_ids == prompt
    full = encode(tokenizer, render(tokenizer, messages, generation_prompt=False))
    assert prompt + out.response_ids == full[: len(prompt) + len(out.response_ids)]
    assert len(out.response_mask) == len(out.response_ids) == len(out.response_logprobs)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    said = [tokenizer.decode(run[:-1]) for run in _runs(out.response_ids, out.response_mask, 1)]
    assert said == REPLIES and all(
        run[-1] == end for run in _runs(out.response_ids, out.response_mask, 1)
    )
    for lp, m in zip(out.response_logprobs, out.response_mask, strict=True):
        assert lp == (-0.25 if m else 0.0)
    observations = [tokenizer.decode(r) for r in _runs(out.response_ids, out.response_mask, 0)]
    assert len(observations) == len(REPLIES) - 1
    assert all(
        "<|im_start|>user" in o and o.endswith("<|im_start|>assistant\n") for o in observations
    )
    assert "Caption from tool get_caption" in observations[0]
    assert any("<information>" in o for o in observations)  # video_qa ran too
    assert out.num_turns == 2 * len(REPLIES)  # the question, then reply and observation turns
    info = out.extra_fields["reward_extra_info"]
    assert set(info) >= {*TERMS, "total", "rounds", "tool_calls", "answered"}
    assert info["accuracy"] == 1.0 and info["answered"] == 1.0 and info["repeat"] == 0.0
    assert 0.0 < info["grounding_f1"] <= 1.0
    assert out.reward_score == info["total"] == pytest.approx(1.0 + info["grounding_f1"])
    assert info["rounds"] == len(REPLIES) and info["tool_calls"] == len(REPLIES) - 1
    assert out.metrics.generate_sequences >= 0.0 and out.metrics.tool_calls >= 0.0


def test_the_server_sees_the_concatenated_ids_and_verls_sampling_params(tokenizer, extra_info):
    server = ScriptedServer(tokenizer, REPLIES)
    out = run_loop(tokenizer, server, extra_info)
    ids = out.prompt_ids + out.response_ids
    mine = [i for i, m in enumerate(out.response_mask) if m]
    for _request, context, params in server.requests:
        assert ids[: len(context)] == context  # each call continues the episode's own ids
        assert params["temperature"] == 1.0 and params["logprobs"] is True
        assert params["top_p"] == 1.0 and params["max_tokens"] <= 1024
    assert len({r[0] for r in server.requests}) == 1  # one sticky request id per trajectory
    assert len(server.requests) == len(REPLIES) and mine  # one generation per round


def test_a_group_of_trajectories_runs_concurrently_on_one_event_loop(tokenizer, extra_info):
    """verl gathers a step's trajectories on one loop; each navigator waits in its own thread."""
    servers = [SlowServer(tokenizer, REPLIES) for _ in range(8)]
    started = time.perf_counter()
    outs = run_group(tokenizer, servers, extra_info)
    seconds = time.perf_counter() - started
    alone = run_loop(tokenizer, ScriptedServer(tokenizer, REPLIES), extra_info)
    for out in outs:
        assert out.response_ids == alone.response_ids
        assert out.response_mask == alone.response_mask
    assert len({s.requests[0][0] for s in servers}) == 8  # a request id per trajectory
    assert seconds < 8 * len(REPLIES) * 0.01 + 5  # the waits overlap


def test_a_cancelled_trajectory_lets_go_of_its_thread_at_once(tokenizer, extra_info):
    """verl may cancel a step's trajectories; the loop must not block on the navigator's thread."""

    class Stuck(ScriptedServer):
        async def generate(self, request_id, **kwargs):
            await asyncio.sleep(60)

    async def main():
        loop = make_loop(tokenizer, Stuck(tokenizer, REPLIES))
        task = asyncio.create_task(loop.run(dict(PARAMS), extra_info=extra_info, raw_prompt=[]))
        await asyncio.sleep(0.3)
        task.cancel()
        started = time.perf_counter()
        with pytest.raises(asyncio.CancelledError):
            await task
        waited = time.perf_counter() - started
        while any(t.name.startswith("lvr1-rollout") for t in threading.enumerate()):
            # the loop still runs the stuck generation: only the loop's own cancel frees the thread
            assert time.perf_counter() - started < 5, "the rollout thread is still running"
            await asyncio.sleep(0.05)
        return waited

    assert asyncio.run(main()) < 1.0


def test_verl_pads_the_output_into_its_tensors(tokenizer, extra_info):
    """verl's own post-processing (padding, masks, positions) takes the output as it is."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    out = run_loop(tokenizer, ScriptedServer(tokenizer, REPLIES), extra_info)
    worker = object.__new__(AgentLoopWorker)
    worker.tokenizer, worker.processor = tokenizer, None
    worker.rollout_config = OmegaConf.create({"prompt_length": 4096, "response_length": 4096})
    worker.reward_loop_worker_handles, worker.distillation_enabled = None, False
    worker.mm_processor_kwargs = {}
    padded = asyncio.run(worker._agent_loop_postprocess(out, False, raw_prompt=[]))
    assert padded.input_ids.shape == (1, 8192)
    n = len(out.response_ids)
    assert padded.response_mask[0, :n].tolist() == out.response_mask
    assert padded.response_mask[0, n:].sum() == 0
    assert padded.response_logprobs.shape == (1, 4096)
    assert padded.reward_score == out.reward_score


def test_a_spent_response_budget_ends_the_run_inside_verls_tensor(tokenizer, extra_info):
    first = len(encode(tokenizer, REPLIES[0])) + 1
    server = ScriptedServer(tokenizer, REPLIES)
    out = run_loop(tokenizer, server, extra_info, response_length=first + 5)
    assert len(out.response_ids) <= first + 5
    assert sum(out.response_mask) <= first + 5
    assert out.extra_fields["reward_extra_info"]["answered"] == 0.0
    assert out.reward_score <= 1.0  # no answer: no accuracy


class RefusingServer(ScriptedServer):
    """Refuses every prompt as vLLM refuses one longer than its window."""

    async def generate(self, request_id, **kwargs):
        raise ValueError("The decoder prompt (length 9000) is longer than the maximum model length")


def test_a_server_refusal_ends_that_run_with_the_servers_reason(tokenizer, extra_info, caplog):
    """The server is a boundary: its refusal is an endpoint failure, not an internal error."""
    out = run_loop(tokenizer, RefusingServer(tokenizer, REPLIES), extra_info)
    assert out.extra_fields["reward_extra_info"]["answered"] == 0.0
    assert sum(out.response_mask) == 0  # nothing sampled, nothing to learn from
    assert not [r for r in caplog.records if r.levelname == "ERROR"]  # no traceback logged


def test_the_loop_samples_from_a_real_tiny_model(tmp_path, extra_info):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_model(tmp_path / "tiny", [m["content"] for m in ORACLE.messages], seed=1)
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    out = run_loop(
        tok, ModelServer(model, tok), extra_info, agent={"max_rounds": 2, "max_reply_tokens": 12}
    )
    assert 0 < sum(out.response_mask) <= 24
    assert len(out.response_logprobs) == len(out.response_ids)
    for lp, m in zip(out.response_logprobs, out.response_mask, strict=True):
        assert (m and math.isfinite(lp) and lp <= 0.0) or (not m and lp == 0.0)
    assert out.extra_fields["reward_extra_info"]["rounds"] == 2.0


def test_verls_own_dataset_reads_the_rows_the_loop_runs_on(tokenizer, tmp_path):
    """lvr1 data verl's Parquet through RLHFDataset and its collate, as the trainer reads it."""
    from verl.utils.dataset.rl_dataset import collate_fn

    from longvideo_r1.cli.main import main

    assert main(["data", "verl", "synthetic:3", "--seed", "11", "--out", str(tmp_path)]) == 0
    config = OmegaConf.create(
        {"cache_dir": str(tmp_path / "cache"), "max_prompt_length": 8192, "return_raw_chat": True}
    )
    dataset = RLHFDataset(str(tmp_path / "train.parquet"), tokenizer, config)
    batch = collate_fn([dataset[i] for i in range(len(dataset))])
    assert list(batch["agent_name"]) == ["lvr1_navigator"] * 3
    assert batch["extra_info"][0]["question"]["id"] == ITEM.question.id  # seed 11, item 0
    out = run_loop(tokenizer, ScriptedServer(tokenizer, REPLIES), batch["extra_info"][0])
    assert out.extra_fields["reward_extra_info"]["accuracy"] == 1.0


class RoutedServers:
    """One scripted server per trajectory, told apart by the sticky request id."""

    def __init__(self, tokenizer, n):
        self.servers = [ScriptedServer(tokenizer, REPLIES) for _ in range(n)]
        self.routes: dict[str, int] = {}

    async def generate(self, request_id, **kwargs):
        index = self.routes.setdefault(request_id, len(self.routes))
        return await self.servers[index].generate(request_id, **kwargs)


def test_verls_agent_loop_worker_makes_a_training_batch_with_our_loop(tmp_path):
    """The whole rollout side of a verl step on CPU: our recipe, verl's worker, a GRPO group."""
    from transformers import AutoTokenizer
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.protocol import DataProto
    from verl.utils.dataset.rl_dataset import collate_fn

    from longvideo_r1.cli.main import main

    model = build_tiny_model(tmp_path / "tiny", [m["content"] for m in ORACLE.messages], seed=1)
    tokenizer = AutoTokenizer.from_pretrained(model)
    data = tmp_path / "data"
    assert main(["data", "verl", "synthetic:1", "--seed", "11", "--out", str(data)]) == 0
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(
            config_name="grpo-qwen3-8b",
            overrides=[
                f"actor_rollout_ref.model.path={model}",
                f"data.train_files={data / 'train.parquet'}",
                "data.max_prompt_length=4096",
                "data.max_response_length=4096",
                "actor_rollout_ref.rollout.n=2",
                f"actor_rollout_ref.rollout.agent.agent_loop_config_path={CONFIGS / 'agent-loop.yaml'}",
            ],
        )
    data_config = OmegaConf.to_container(cfg.data, resolve=True) | {"cache_dir": str(tmp_path)}
    dataset = RLHFDataset(cfg.data.train_files, tokenizer, OmegaConf.create(data_config))
    batch = DataProto.from_single_dict(collate_fn([dataset[0]])).repeat(2, interleave=True)

    async def step():
        worker = AgentLoopWorker(cfg, RoutedServers(tokenizer, 2))
        return await worker.generate_sequences(batch)

    out = asyncio.run(step())
    assert out.batch["responses"].shape == (2, 4096)
    assert out.batch["rollout_log_probs"].shape == (2, 4096)
    scores = out.batch["rm_scores"].sum(-1).tolist()
    total = out.non_tensor_batch["total"].tolist()
    assert scores == pytest.approx(total) and min(out.non_tensor_batch["accuracy"]) == 1.0
    assert set(out.meta_info["reward_extra_keys"]) >= {*TERMS, "total", "rounds"}
    generated = out.batch["response_mask"].sum(-1).tolist()
    assert generated[0] == generated[1] == sum(len(encode(tokenizer, r)) + 1 for r in REPLIES)


# options ------------------------------------------------------------------------------------


def test_loop_options_default_to_the_paper_and_refuse_bad_values():
    options = loop_options(OmegaConf.load(CONFIGS / "agent-loop.yaml")[0].navigator)
    config = options.agent_config(1.0)
    assert (config.max_rounds, config.answer_form, config.constrain) == (15, "letter", "off")
    weights = options.weights()
    assert (weights.accuracy, weights.grounding_f1, weights.repeat) == (1.0, 1.0, 0.2)
    assert loop_options({}).agent_config(None).max_rounds == 15
    with pytest.raises(ConfigError, match="unknown key 'agnt'"):
        loop_options({"agnt": {}})
    with pytest.raises(ConfigError, match="max_rounds must be at least 1"):
        loop_options({"agent": {"max_rounds": 0}})
    with pytest.raises(ConfigError, match="navigator.agent"):
        loop_options({"agent": {"max_turns": 3}})
    with pytest.raises(ConfigError, match="repeat must be 0 or more"):
        loop_options({"reward": {"repeat": -0.2}})
    with pytest.raises(ConfigError, match="navigator.video_qa"):
        loop_options({"video_qa": "oracle"})


# the tool-call parser ---------------------------------------------------------------------

WELL_FORMED = [
    "<think>The clue is early.</think>\n<tool>get_caption((1, 2))</tool>",
    "<think>Zoom in.</think>\n<tool>get_caption((2, 1, 3))</tool>",
    '<think>Look.</think>\n<tool>video_qa((1, 2, 3), "What colour is the coat?")</tool>',
    '<think>JSON.</think>\n<tool>{"name": "get_caption", "arguments": {"node_id": [1, 2]}}</tool>',
]
NO_CALL = [
    "<think>Enough.</think>\n<answer>B</answer>",
    "<think>Hmm.</think>\n<tool></tool>",
    "<think>Two.</think>\n<tool>get_caption((1, 2)) get_caption((1, 3))</tool>",
    "<think>What?</think>\n<tool>open_video((1, 2))</tool>",
    "no tags at all",
]


def _extract(tokenizer, text):
    parser = ToolParser.get_tool_parser(PARSER_NAME, tokenizer)
    assert isinstance(parser, NavigatorToolParser)
    ids = encode(tokenizer, text) + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    return asyncio.run(parser.extract_tool_calls(ids))


@pytest.mark.parametrize("text", WELL_FORMED)
def test_the_parser_reads_a_call_as_our_parser_does(tokenizer, text):
    action = parse_reply(text).action
    content, calls = _extract(tokenizer, text)
    assert action is not None and len(calls) == 1
    args = OmegaConf.to_container(OmegaConf.create(calls[0].arguments))
    assert calls[0].name == action.tool and tuple(args["node_id"]) == action.node_id
    assert args.get("query") == action.query
    assert "<tool>" not in content and content.startswith("<think>")


@pytest.mark.parametrize("text", NO_CALL)
def test_the_parser_gives_no_call_where_our_parser_runs_none(tokenizer, text):
    assert parse_reply(text).action is None
    assert read_tool_calls(text) == (text, [])
    content, calls = _extract(tokenizer, text)
    assert calls == [] and content == text


# the configs --------------------------------------------------------------------------------


def test_the_verl_recipe_composes_with_the_papers_values_and_passes_verls_checks():
    from verl.trainer.main_ppo import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="grpo-qwen3-8b")
    arr = cfg.actor_rollout_ref
    assert arr.model.path == "runs/sft-qwen3-8b"
    assert arr.model.external_lib == "longvideo_r1.training.verl_agent"
    assert (arr.rollout.n, cfg.data.train_batch_size) == (16, 12)
    assert arr.actor.optim.lr == 1e-6
    assert (arr.actor.use_kl_loss, arr.actor.kl_loss_coef, arr.actor.kl_loss_type) == (
        True,
        1e-4,
        "low_var_kl",
    )
    assert arr.rollout.temperature == 1.0 and arr.rollout.name == "vllm"
    assert arr.rollout.multi_turn.format == PARSER_NAME
    assert arr.rollout.agent.default_agent_loop == "lvr1_navigator"
    assert (ROOT / arr.rollout.agent.agent_loop_config_path).is_file()
    assert cfg.algorithm.adv_estimator == "grpo" and not cfg.algorithm.use_kl_in_reward
    assert cfg.trainer.total_epochs == 2
    assert arr.rollout.prompt_length + arr.rollout.response_length == 24576
    validate_config(cfg, need_reference_policy(cfg), need_critic(cfg))
    assert "LVR1_CONFIG" in cfg.ray_kwargs.ray_init.runtime_env.env_vars  # reaches the workers
    assert omega_conf_to_dataclass(arr.rollout).calculate_log_probs
