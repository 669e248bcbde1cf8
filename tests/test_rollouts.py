"""Rollouts: token ids, masks and logprobs of the navigator's own loop, never re-tokenized.

A scripted generator replays an oracle trajectory's replies as token ids, so
the episode's ids can be compared with what the chat template renders for the
same conversation: ChatML (the tiny model's), and the real Qwen2.5 and Qwen3
templates TRL ships. A tiny Qwen3 built in code checks the sampling logprobs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("trl")

from longvideo_r1.agent import grammar as reply_grammar  # noqa: E402
from longvideo_r1.agent.config import AgentConfig  # noqa: E402
from longvideo_r1.agent.replies import parse_reply  # noqa: E402
from longvideo_r1.errors import EndpointError  # noqa: E402
from longvideo_r1.training.oracle import OracleConfig, oracle_trajectory  # noqa: E402
from longvideo_r1.training.rollouts import (  # noqa: E402
    Generated,
    GrammarMasks,
    TokenBackend,
    TransformersGenerator,
    delta,
    encode,
    render,
    rollout,
    rollout_group,
    turn_suffix,
)
from longvideo_r1.training.sft import build_tiny_model, build_tokenizer  # noqa: E402
from longvideo_r1.training.synthetic import synthetic_dataset  # noqa: E402
from longvideo_r1.training.trees import caption_answerer, make_toolbox  # noqa: E402

ITEM = synthetic_dataset(1, seed=11)[0]
ORACLE = oracle_trajectory(ITEM.question, ITEM.ctree, OracleConfig(seed=3, answer_form="either"))
REPLIES = [m["content"] for m in ORACLE.messages if m["role"] == "assistant"]


def _trl_template(name: str) -> str:
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / name).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE with Qwen's markers, trained on the oracle conversation."""
    return build_tokenizer([m["content"] for m in ORACLE.messages], vocab_size=1024)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_model(
        tmp_path_factory.mktemp("tiny"), [m["content"] for m in ORACLE.messages], seed=1
    )
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


class Scripted:
    """A TokenGenerator that 'samples' fixed replies: their canonical ids plus the end token."""

    def __init__(self, tokenizer, replies, stop: bool = True):
        self.tokenizer, self.replies, self.stop = tokenizer, list(replies), stop
        self.contexts: list[list[int]] = []

    def generate(self, ids, max_tokens, temperature, grammar=None):
        assert grammar is None  # a scripted generator takes none, so it is never given one
        self.contexts.append(list(ids))
        out = encode(self.tokenizer, self.replies.pop(0))
        if self.stop:
            out.append(self.tokenizer.convert_tokens_to_ids("<|im_end|>"))
        out = out[:max_tokens]
        return Generated(out, [-0.5] * len(out), "stop" if self.stop else "length")


def replay(tokenizer, replies=REPLIES, constrain="off", **options):
    box = make_toolbox(ITEM.ctree, caption_answerer(ITEM.ctree, ITEM.question))
    config = AgentConfig(constrain=constrain, answer_form="either", max_rounds=len(replies) + 1)
    return rollout(
        Scripted(tokenizer, replies, **options),
        tokenizer,
        box,
        ITEM.ctree.tree,
        ITEM.question,
        config,
    )


def _model_segments(one):
    """Runs of consecutive completion ids with mask 1: the model's turns."""
    runs, current = [], []
    for token, mask in zip(one.completion_ids, one.completion_mask, strict=True):
        if mask:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


# the template's deltas ---------------------------------------------------------------------


def test_chatml_ids_equal_the_full_render_of_the_conversation(tokenizer):
    one = replay(tokenizer)
    assert one.trace.status == "answered" and one.trace.answer == ITEM.question.answer
    said = [m["content"] for m in one.trace.messages() if m["role"] == "assistant"]
    assert said == REPLIES  # the oracle's replies, read back from the ids
    full = encode(tokenizer, render(tokenizer, one.trace.messages(), generation_prompt=False))
    ids = one.prompt_ids + one.completion_ids
    assert ids == full[: len(ids)]
    assert tokenizer.decode(full[len(ids) :]) == "\n"  # only the glue after the last turn
    first = render(tokenizer, one.trace.messages()[:2], generation_prompt=True)
    assert one.prompt_ids == encode(tokenizer, first)


def test_the_mask_covers_exactly_the_models_turns_and_their_end_token(tokenizer):
    one = replay(tokenizer)
    segments = _model_segments(one)
    assert [tokenizer.decode(s) for s in segments] == [r + "<|im_end|>" for r in REPLIES]
    assert len(one.logprobs) == len(one.completion_ids) == len(one.completion_mask)
    for logprob, mask in zip(one.logprobs, one.completion_mask, strict=True):
        assert logprob == (-0.5 if mask else 0.0)
    # what the model saw before each turn is exactly the episode so far
    assert one.generated_tokens == sum(len(s) for s in segments)


def test_the_newline_after_im_end_is_glue_with_mask_zero(tokenizer):
    one = replay(tokenizer)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    newline = encode(tokenizer, "\n")
    ids, mask = one.completion_ids, one.completion_mask
    turn_ends = [i for i, t in enumerate(ids) if t == end and mask[i] == 1]
    assert len(turn_ends) == len(REPLIES)
    for i in turn_ends[:-1]:
        assert ids[i + 1 : i + 1 + len(newline)] == newline
        assert mask[i + 1] == 0


@pytest.mark.parametrize("template", ["qwen2_5.jinja", "qwen3.jinja"])
def test_real_qwen_templates_render_each_boundary_as_the_ids_have_it(tokenizer, template):
    """Replies without a think block, which Qwen3 keeps verbatim in past turns: the ids
    before the last reply equal the template's render of everything before it."""
    qwen = build_tokenizer([m["content"] for m in ORACLE.messages], vocab_size=1024)
    qwen.chat_template = _trl_template(template)
    plain = [r.split("</think>", 1)[1].strip() for r in REPLIES]
    one = replay(qwen, plain)
    assert one.trace.status == "answered"
    messages = one.trace.messages()
    before_last = encode(qwen, render(qwen, messages[:-1], generation_prompt=True))
    last = _model_segments(one)[-1]
    assert one.prompt_ids + one.completion_ids == before_last + last
    assert turn_suffix(qwen) == "<|im_end|>\n"


def test_qwen3_keeps_the_thinking_the_template_would_drop(tokenizer):
    qwen = build_tokenizer([m["content"] for m in ORACLE.messages], vocab_size=1024)
    qwen.chat_template = _trl_template("qwen3.jinja")
    one = replay(qwen)
    text = qwen.decode(one.completion_ids)
    for reply in REPLIES:
        assert reply in text  # every turn's <think> stays in the ids the trainer scores
    rerendered = render(qwen, one.trace.messages(), generation_prompt=False)
    assert REPLIES[0] not in rerendered  # what re-tokenizing the conversation would lose


def test_a_reply_cut_at_the_token_limit_gets_the_whole_end_of_turn_as_glue(tokenizer):
    one = replay(tokenizer, ["<think>looking", "<think>still", "<think>more"], stop=False)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ends = [m for t, m in zip(one.completion_ids, one.completion_mask, strict=True) if t == end]
    assert ends and all(m == 0 for m in ends)  # written by the template, not sampled


def test_delta_renders_user_turns_with_the_next_assistant_header(tokenizer):
    text = delta(tokenizer, [{"role": "user", "content": "obs"}])
    assert text == "<|im_start|>user\nobs<|im_end|>\n<|im_start|>assistant\n"


def test_the_backend_refuses_a_conversation_it_did_not_write(tokenizer):
    backend = TokenBackend(tokenizer, Scripted(tokenizer, ["<think>a</think>", "b"]))
    start = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    reply = backend.chat(start)
    with pytest.raises(EndpointError, match="not the reply"):
        backend.chat([*start, {"role": "assistant", "content": "other"}, start[1]])
    with pytest.raises(EndpointError, match="did not grow"):
        backend.chat(start)
    assert reply.text == "<think>a</think>" and reply.finish_reason == "stop"


def test_a_full_context_ends_the_run_as_an_error_with_its_tokens(tokenizer):
    box = make_toolbox(ITEM.ctree, caption_answerer(ITEM.ctree, ITEM.question))
    first = encode(tokenizer, render(tokenizer, ORACLE.messages[:2], generation_prompt=True))
    one = rollout(
        Scripted(tokenizer, REPLIES),
        tokenizer,
        box,
        ITEM.ctree.tree,
        ITEM.question,
        AgentConfig(constrain="off", answer_form="either"),
        max_episode_tokens=len(first) + 60,
    )
    assert one.trace.status == "error" and "context window" in (one.trace.reason or "")
    assert len(one.prompt_ids) + len(one.completion_ids) <= len(first) + 60 + 200
    assert one.generated_tokens > 0


# a real model -------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_logprobs_are_those_of_the_sampling_distribution(tiny, temperature):
    import torch

    model, tok = tiny
    generator = TransformersGenerator(model, [tok.eos_token_id], tok.pad_token_id)
    prompt = encode(tok, render(tok, ORACLE.messages[:2], generation_prompt=True))[:200]
    out = generator.generate(prompt, 12, temperature)
    assert len(out.ids) == len(out.logprobs) > 0
    with torch.no_grad():
        logits = model(torch.tensor([prompt + out.ids])).logits[0, len(prompt) - 1 : -1]
    scaled = logits / temperature if temperature > 0 else logits
    expected = torch.log_softmax(scaled.float(), dim=-1)
    for i, token in enumerate(out.ids):
        assert out.logprobs[i] == pytest.approx(float(expected[i, token]), abs=1e-3)
    if temperature == 0.0:
        assert out.ids == [int(t) for t in logits.argmax(-1)]


def test_a_later_turn_reuses_the_cache_and_generates_what_a_fresh_prefill_would(tiny):
    model, tok = tiny
    prompt = encode(tok, render(tok, ORACLE.messages[:2], generation_prompt=True))[:200]
    kept = TransformersGenerator(model, [tok.eos_token_id], tok.pad_token_id)
    first = kept.generate(prompt, 10, 0.0)
    assert kept._cache.get_seq_length() >= len(prompt)  # the episode so far stays cached
    observation = encode(tok, "<|im_start|>user\nCaption of (1, 2): a red tram.<|im_end|>\n")
    turn = prompt + first.ids + observation
    again = kept.generate(turn, 10, 0.0)
    fresh = TransformersGenerator(model, [tok.eos_token_id], tok.pad_token_id).generate(
        turn, 10, 0.0
    )
    assert again.ids == fresh.ids
    assert again.logprobs == pytest.approx(fresh.logprobs, abs=1e-3)
    # another episode sharing only a prefix: the cache is cut back to it, not reused whole
    other = prompt[:150] + observation
    cut = kept.generate(other, 6, 0.0)
    plain = TransformersGenerator(model, [tok.eos_token_id], tok.pad_token_id)
    assert cut.ids == plain.generate(other, 6, 0.0).ids
    kept.forget()
    assert kept._cache is None


def test_a_group_of_tiny_model_rollouts_runs_the_real_loop(tiny):
    import torch

    model, tok = tiny
    torch.manual_seed(0)
    generator = TransformersGenerator(model, [tok.eos_token_id], tok.pad_token_id)
    box = make_toolbox(ITEM.ctree, caption_answerer(ITEM.ctree, ITEM.question))
    config = AgentConfig(max_rounds=2, max_reply_tokens=8, temperature=1.0, constrain="off")
    seen = []
    group = rollout_group(
        generator, tok, box, ITEM.ctree.tree, ITEM.question, config, 3, on_rollout=seen.append
    )
    assert len(group) == len(seen) == 3
    first = encode(tok, render(tok, group[0].trace.messages()[:2], generation_prompt=True))
    for one in group:
        assert one.prompt_ids == first
        assert len(one.completion_ids) == len(one.completion_mask) == len(one.logprobs)
        assert len(one.trace.rounds) == 2 and one.generated_tokens <= 16
        assert all(lp <= 0.0 for lp in one.logprobs)
    assert len({tuple(one.completion_ids) for one in group}) > 1  # sampled, not copied


# constrained rollouts ---------------------------------------------------------------------


def test_a_generator_without_masks_takes_no_grammar_and_on_refuses_it(tokenizer):
    backend = TokenBackend(tokenizer, Scripted(tokenizer, REPLIES))
    assert not backend.supports_constraints()
    one = replay(tokenizer, constrain="on")
    assert one.trace.status == "error" and "takes no grammar" in (one.trace.reason or "")
    assert one.generated_tokens == 0  # refused before the model wrote anything


def test_a_random_tiny_model_under_the_grammar_writes_only_valid_rounds(tiny):
    """The tiny model's free replies almost never parse; under the round grammar every one
    does, ends with the end-of-turn token, and is a text the round's grammar admits."""
    import torch

    pytest.importorskip("xgrammar")
    model, tok = tiny
    torch.manual_seed(0)
    vocab = model.get_output_embeddings().weight.shape[0]
    masks = GrammarMasks(tok, vocab, [tok.eos_token_id])
    generator = TransformersGenerator(model, [tok.eos_token_id], tok.pad_token_id, masks=masks)
    assert generator.takes_grammar
    box = make_toolbox(ITEM.ctree, caption_answerer(ITEM.ctree, ITEM.question))
    config = AgentConfig(
        max_rounds=3,
        max_reply_tokens=40,
        max_think_tokens=8,
        temperature=1.0,
        constrain="on",
        answer_form="either",
    )
    group = rollout_group(generator, tok, box, ITEM.ctree.tree, ITEM.question, config, 2)
    for one in group:
        rounds = one.trace.rounds
        assert rounds and all(r.constrained for r in rounds)
        assert "parse_error" not in [r.kind for r in rounds]
        assert one.trace.status == "answered"
        assert all(r.finish_reason == "stop" for r in rounds)
        assert all(lp <= 0.0 for lp in one.logprobs)
        first = reply_grammar.ReplyRules(
            width=ITEM.ctree.tree.width,
            fetched=frozenset(h.node_id for h in one.trace.high_captions),
            choices=tuple(ITEM.question.choices),
            answer_form=config.answer_form,
            think_max_chars=8 * reply_grammar.THINK_CHARS_PER_TOKEN,
        )
        whole, _ = reply_grammar.reply_grammars(first)
        assert whole.admits(rounds[0].output), rounds[0].output
        reply = parse_reply(rounds[0].output, ITEM.ctree.tree, ITEM.question.choices)
        assert reply.notes == () and type(reply.result).__name__ != "ParseError"


def test_the_masked_logprobs_are_those_of_the_distribution_left_to_sample_from(tiny):
    """Masking only moves probability onto what the grammar admits: every logprob is at
    least the unmasked one, and the end token, once the grammar is done, is certain."""
    import torch

    pytest.importorskip("xgrammar")
    model, tok = tiny
    vocab = model.get_output_embeddings().weight.shape[0]
    masks = GrammarMasks(tok, vocab, [tok.eos_token_id])
    generator = TransformersGenerator(model, [tok.eos_token_id], tok.pad_token_id, masks=masks)
    prompt = encode(tok, render(tok, ORACLE.messages[:2], generation_prompt=True))[:200]
    out = generator.generate(prompt, 40, 1.0, grammar='root ::= "<answer>B</answer>"')
    assert tok.decode(out.ids[:-1]) == "<answer>B</answer>"
    assert out.finish_reason == "stop" and out.ids[-1] == tok.eos_token_id
    with torch.no_grad():
        logits = model(torch.tensor([prompt + out.ids])).logits[0, len(prompt) - 1 : -1]
    free = torch.log_softmax(logits.float(), dim=-1)
    unmasked = [float(free[i, t]) for i, t in enumerate(out.ids)]
    assert all(m >= u - 1e-4 for m, u in zip(out.logprobs, unmasked, strict=True))
    assert sum(out.logprobs) > sum(unmasked) + 1.0  # the mask made the text far likelier
    assert out.logprobs[-1] == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(EndpointError, match="xgrammar refused"):
        generator.generate(prompt, 4, 1.0, grammar="root ::= undefined-rule")
