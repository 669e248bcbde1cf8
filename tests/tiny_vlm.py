"""A tiny random LLaVA, built offline, to exercise the real VLM HTTP path in tests.

No model hub is reachable where the tests run, and no package ships VLM
weights, so the test model is assembled from configs with random weights: a
two-layer CLIP vision tower, a two-layer Qwen2 text model and a byte-level
tokenizer made with the ``tokenizers`` library (every byte is a token, so any
prompt encodes without training a vocabulary). Its replies are noise; what it
proves is that our client, message layout and image data URLs go through an
OpenAI-compatible server (``transformers serve``) that really decodes the
images and runs the model.

What ``transformers serve DIR`` (transformers 5.x) needs to serve a local
directory, found by reading its ``cli/serving`` code:

- ``AutoProcessor`` must load a real processor (here ``LlavaProcessor``), not a
  bare tokenizer: with a tokenizer the server classifies the model as
  text-only and silently drops ``image_url`` parts.
- The chat template must emit the processor's image token for each
  ``{"type": "image"}`` part; the processor expands it to the patch count.
- Given as the positional argument the model is pinned and loaded before the
  server listens, so ``GET /health`` answering 200 means ready. Requests must
  name the model by that same string (the path); any other name gets HTTP 400.
- ``HF_HUB_OFFLINE=1`` is enough to load a local directory;
  ``HF_HUB_DISABLE_UPDATE_CHECK=1`` stops the CLI from asking PyPI for a newer
  version at start.
- The default CLIP image processor wants torchvision, which does not install
  beside the CPU torch wheel; the PIL variant is saved instead.
"""

from __future__ import annotations

import json
from pathlib import Path

IMAGE_TOKEN = "<image>"
END_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", END_TOKEN, IMAGE_TOKEN)
IMAGE_SIZE = 32
PATCH_SIZE = 8

# ChatML with image placeholders: an OpenAI image_url part reaches the template
# as {"type": "image"}; the processor expands each placeholder to the patch count.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _byte_tokenizer():
    """A byte-level BPE with no merges: 256 byte tokens plus the special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=None,
        eos_token=END_TOKEN,
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )


def _clip_image_processor():
    """The PIL CLIP processor where it exists: torchvision, which the default one wants,
    does not install beside the CPU torch wheel."""
    try:
        from transformers import CLIPImageProcessorPil

        return CLIPImageProcessorPil
    except ImportError:  # transformers 4.x has only the PIL-based class
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor


def build_tiny_llava(out_dir: Path, seed: int = 0) -> Path:
    """Write a servable random LLaVA (config, weights, processor) to ``out_dir``."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        GenerationConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        Qwen2Config,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _byte_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    end_id = tokenizer.convert_tokens_to_ids(END_TOKEN)
    vision = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=64,
    )
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        eos_token_id=end_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=end_id, pad_token_id=tokenizer.pad_token_id, do_sample=True, top_k=0
    )
    model.save_pretrained(out_dir)
    image_processor = _clip_image_processor()(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out_dir)
    params = sum(p.numel() for p in model.parameters())
    (out_dir / "tiny_vlm.json").write_text(json.dumps({"parameters": params}))
    return out_dir


if __name__ == "__main__":  # build by hand: python tests/tiny_vlm.py /tmp/tiny-llava
    import sys

    print(build_tiny_llava(Path(sys.argv[1])))
