"""GGUF <-> Hugging Face conversion of the navigator, checked against both readers.

The round trip is judged by the programs that consume the files: transformers
reading our GGUF must get back the very weights we wrote (so tensor names and
the rotary permutation are exact inverses of its reader), and llama.cpp
running it must predict what transformers predicts.
"""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest

from longvideo_r1.errors import ConfigError
from longvideo_r1.llm import weights
from longvideo_r1.llm.convert import ConvertError, gguf_to_hf, hf_to_gguf, serving_template
from longvideo_r1.llm.embedded import EmbeddedBackend
from longvideo_r1.training.sft import CHATML_TEMPLATE

MESSAGES = [
    {"role": "system", "content": "You navigate."},
    {"role": "user", "content": "Question?"},
    {"role": "assistant", "content": "<think>x</think>\n<answer>B</answer>"},
]


def test_serving_template_drops_only_the_training_markers():
    served = serving_template(CHATML_TEMPLATE)
    assert "{%- generation %}" not in served and "endgeneration" not in served
    text = (
        jinja2.Environment()
        .from_string(served)
        .render(messages=MESSAGES, add_generation_prompt=False)
    )
    assert text == (
        "<|im_start|>system\nYou navigate.<|im_end|>\n"
        "<|im_start|>user\nQuestion?<|im_end|>\n"
        "<|im_start|>assistant\n<think>x</think>\n<answer>B</answer><|im_end|>\n"
    )


def test_missing_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="base GGUF not found"):
        hf_to_gguf(tmp_path, tmp_path / "nope.gguf", tmp_path / "out.gguf")
    with pytest.raises(ConfigError, match="GGUF file not found"):
        gguf_to_hf(tmp_path / "nope.gguf", tmp_path / "hf")


# real models -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_gguf() -> Path:
    pytest.importorskip("gguf")
    try:
        return weights.ensure_model(weights.SMOLLM2_135M)
    except weights.WeightsError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def hf_model(base_gguf, tmp_path_factory) -> Path:
    out = gguf_to_hf(base_gguf, tmp_path_factory.mktemp("smollm2-hf"))
    (out / "chat_template.jinja").write_text(CHATML_TEMPLATE, encoding="utf-8")
    return out


@pytest.mark.slow
def test_transformers_reads_back_the_weights_we_wrote(hf_model, base_gguf, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    export = hf_to_gguf(hf_model, base_gguf, tmp_path / "nav.gguf", type="f32", name="nav")
    assert export.arch == "llama" and export.tensors == 272 and export.path.is_file()
    original = AutoModelForCausalLM.from_pretrained(hf_model).state_dict()
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="nav.gguf").state_dict()
    assert set(back) == set(original)
    for name, tensor in original.items():
        assert torch.equal(back[name], tensor), name


@pytest.mark.slow
def test_llama_cpp_runs_the_export_as_transformers_does(hf_model, base_gguf, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = hf_to_gguf(hf_model, base_gguf, tmp_path / "nav.gguf", type="f32").path
    tokenizer = AutoTokenizer.from_pretrained(hf_model)
    model = AutoModelForCausalLM.from_pretrained(hf_model)
    prompt = serving_template(CHATML_TEMPLATE)
    text = (
        jinja2.Environment()
        .from_string(prompt)
        .render(messages=MESSAGES[:2], add_generation_prompt=True)
    )
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    expected = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)

    backend = EmbeddedBackend(path, n_ctx=512, max_tokens=8, temperature=0.0)
    try:
        reply = backend.chat(MESSAGES[:2])
    finally:
        backend.close()
    assert expected.strip() and reply.text.strip() == expected.strip()


@pytest.mark.slow
def test_q8_export_is_smaller_and_runs(hf_model, base_gguf, tmp_path):

    export = hf_to_gguf(hf_model, base_gguf, tmp_path / "nav.gguf", type="q8_0")
    assert export.bytes < 0.4 * 4 * 135e6
    backend = EmbeddedBackend(export.path, n_ctx=512, max_tokens=4, temperature=0.0)
    try:
        assert backend.chat(MESSAGES[:2]).usage.completion_tokens > 0
    finally:
        backend.close()


@pytest.mark.slow
def test_a_model_of_another_shape_is_refused(base_gguf, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=30,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "small")
    with pytest.raises(ConvertError, match="has shape"):
        hf_to_gguf(tmp_path / "small", base_gguf, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()
