"""UMT5-XXL parameter names: the official Wan checkpoint <-> transformers' `UMT5EncoderModel` (= ComfyUI's files).

Official `models_t5_umt5-xxl-enc-bf16.pth` (`wan/modules/t5.py`, `T5Encoder`) -> transformers / ComfyUI:
- `token_embedding.weight` -> `shared.weight` (and the tied `encoder.embed_tokens.weight`)
- `blocks.N.norm1.weight` -> `encoder.block.N.layer.0.layer_norm.weight`
- `blocks.N.attn.{q,k,v,o}.weight` -> `encoder.block.N.layer.0.SelfAttention.{q,k,v,o}.weight`
- `blocks.N.pos_embedding.embedding.weight` -> `encoder.block.N.layer.0.SelfAttention.relative_attention_bias.weight`
- `blocks.N.norm2.weight` -> `encoder.block.N.layer.1.layer_norm.weight`
- `blocks.N.ffn.gate.0.weight` (GELU branch) -> `encoder.block.N.layer.1.DenseReluDense.wi_0.weight`
- `blocks.N.ffn.fc1.weight` (linear branch) -> `encoder.block.N.layer.1.DenseReluDense.wi_1.weight`
- `blocks.N.ffn.fc2.weight` -> `encoder.block.N.layer.1.DenseReluDense.wo.weight`
- `norm.weight` -> `encoder.final_layer_norm.weight`

The official FFN computes `fc2(fc1(x) * gelu(gate(x)))`, transformers `wo(gelu(wi_0(x)) * wi_1(x))`: the same
product, so `gate.0 <-> wi_0` and `fc1 <-> wi_1`.

ComfyUI's `umt5_xxl_*.safetensors` use transformers' names, store the embedding once (`shared.weight`, no
`encoder.embed_tokens.weight`) and add the sentencepiece model as a uint8 tensor `spiece_model`; the fp8 files add
`scaled_fp8` and `<layer>.scale_weight` (see `wan_core.io.quant`).

GGUF files (city96's `umt5-xxl-encoder-*.gguf`, made with llama.cpp's `convert_hf_to_gguf.py`) use llama.cpp's T5
encoder names (gguf-py `constants.py`, `MODEL_TENSOR.ENC_*`; ComfyUI-GGUF's `loader.py` maps them back the same way):
`token_embd.weight` -> `shared.weight`, `enc.blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_o, attn_rel_b, ffn_norm,
ffn_gate, ffn_up, ffn_down}.weight` -> `encoder.block.N.*` (`ffn_gate` is the GELU branch `wi_0`, `ffn_up` is `wi_1`),
`enc.output_norm.weight` -> `encoder.final_layer_norm.weight`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ..errors import KeyMismatchError, describe_keys
from ..io.state_dict import strip_prefix

SHARED = "shared.weight"
EMBED_TOKENS = "encoder.embed_tokens.weight"
SPIECE_MODEL = "spiece_model"

# (official suffix after `blocks.N.`, transformers suffix after `encoder.block.N.`)
_BLOCK_PAIRS = (
    ("norm1.weight", "layer.0.layer_norm.weight"),
    ("attn.q.weight", "layer.0.SelfAttention.q.weight"),
    ("attn.k.weight", "layer.0.SelfAttention.k.weight"),
    ("attn.v.weight", "layer.0.SelfAttention.v.weight"),
    ("attn.o.weight", "layer.0.SelfAttention.o.weight"),
    ("pos_embedding.embedding.weight", "layer.0.SelfAttention.relative_attention_bias.weight"),
    ("norm2.weight", "layer.1.layer_norm.weight"),
    ("ffn.gate.0.weight", "layer.1.DenseReluDense.wi_0.weight"),
    ("ffn.fc1.weight", "layer.1.DenseReluDense.wi_1.weight"),
    ("ffn.fc2.weight", "layer.1.DenseReluDense.wo.weight"),
)
_GLOBAL_PAIRS = (
    ("token_embedding.weight", SHARED),
    ("norm.weight", "encoder.final_layer_norm.weight"),
)
_OFFICIAL_TO_HF_BLOCK = dict(_BLOCK_PAIRS)
_HF_TO_OFFICIAL_BLOCK = {hf: off for off, hf in _BLOCK_PAIRS}
_OFFICIAL_TO_HF_GLOBAL = dict(_GLOBAL_PAIRS)
_HF_TO_OFFICIAL_GLOBAL = {hf: off for off, hf in _GLOBAL_PAIRS}

# (llama.cpp suffix after `enc.blk.N.`, transformers suffix after `encoder.block.N.`)
_LLAMA_CPP_BLOCK_PAIRS = (
    ("attn_norm.weight", "layer.0.layer_norm.weight"),
    ("attn_q.weight", "layer.0.SelfAttention.q.weight"),
    ("attn_k.weight", "layer.0.SelfAttention.k.weight"),
    ("attn_v.weight", "layer.0.SelfAttention.v.weight"),
    ("attn_o.weight", "layer.0.SelfAttention.o.weight"),
    ("attn_rel_b.weight", "layer.0.SelfAttention.relative_attention_bias.weight"),
    ("ffn_norm.weight", "layer.1.layer_norm.weight"),
    ("ffn_gate.weight", "layer.1.DenseReluDense.wi_0.weight"),
    ("ffn_up.weight", "layer.1.DenseReluDense.wi_1.weight"),
    ("ffn_down.weight", "layer.1.DenseReluDense.wo.weight"),
)
LLAMA_CPP_EMBEDDING = "token_embd.weight"
_LLAMA_CPP_TO_HF_GLOBAL = {
    LLAMA_CPP_EMBEDDING: SHARED,
    "enc.output_norm.weight": "encoder.final_layer_norm.weight",
}
_LLAMA_CPP_TO_HF_BLOCK = dict(_LLAMA_CPP_BLOCK_PAIRS)

_OFFICIAL_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_LLAMA_CPP_BLOCK = re.compile(r"^enc\.blk\.(\d+)\.(.+)$")
_HF_BLOCK = re.compile(r"^encoder\.block\.(\d+)\.(.+)$")

# Prefixes that some exports put before every name (DataParallel, ComfyUI's saved CLIP, ...).
_OFFICIAL_PREFIXES = ("module.", "model.")
_HF_PREFIXES = ("umt5xxl.transformer.", "text_encoders.umt5xxl.transformer.", "transformer.", "text_encoder.")


def official_keys(num_layers: int) -> list[str]:
    """The names of an official encoder checkpoint with `num_layers` blocks."""
    keys = ["token_embedding.weight"]
    keys += [f"blocks.{i}.{off}" for i in range(num_layers) for off, _ in _BLOCK_PAIRS]
    return keys + ["norm.weight"]


def llama_cpp_keys(num_layers: int) -> list[str]:
    """The tensor names of a llama.cpp T5 encoder GGUF with `num_layers` blocks."""
    keys = [LLAMA_CPP_EMBEDDING]
    keys += [f"enc.blk.{i}.{name}" for i in range(num_layers) for name, _ in _LLAMA_CPP_BLOCK_PAIRS]
    return keys + ["enc.output_norm.weight"]


def is_official(sd: Mapping[str, torch.Tensor]) -> bool:
    """True when the names are the official checkpoint's (`token_embedding`, `blocks.N.*`)."""
    keys = strip_prefix(dict.fromkeys(sd), _OFFICIAL_PREFIXES)
    return "token_embedding.weight" in keys or any(k.startswith("blocks.") for k in keys)


def is_transformers(sd: Mapping[str, torch.Tensor]) -> bool:
    """True when the names are transformers' / ComfyUI's (`shared`, `encoder.block.N.*`)."""
    keys = strip_prefix(dict.fromkeys(sd), _HF_PREFIXES)
    return SHARED in keys or EMBED_TOKENS in keys or any(k.startswith("encoder.block.") for k in keys)


def is_llama_cpp(sd: Mapping[str, object]) -> bool:
    """True when the names are llama.cpp's T5 encoder names (`token_embd`, `enc.blk.N.*`), as in a GGUF file."""
    return LLAMA_CPP_EMBEDDING in sd or any(k.startswith("enc.blk.") for k in sd)


def _renamed(
    sd: Mapping[str, torch.Tensor],
    global_names: Mapping[str, str],
    block: re.Pattern[str],
    block_names: Mapping[str, str],
    block_prefix: str,
    what: str,
    expected: str = "",
) -> dict[str, torch.Tensor]:
    """`sd` under the other side's names (`block` captures the block index and the suffix); raises
    `KeyMismatchError` listing every key no rule names (keys that are not `what`)."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        match = block.match(key)
        if key in global_names:
            out[global_names[key]] = value
        elif match and match[2] in block_names:
            out[f"{block_prefix}.{match[1]}.{block_names[match[2]]}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise KeyMismatchError(f"{len(unknown)} name(s) are not {what}: {describe_keys(unknown)}.{expected}")
    return out

def from_official(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official names -> transformers names (`shared.weight`; the loader re-ties `encoder.embed_tokens`).

    Every name must be known: an unknown one raises `KeyMismatchError` rather than being dropped.
    """
    sd = strip_prefix(dict(sd), _OFFICIAL_PREFIXES)
    return _renamed(sd, _OFFICIAL_TO_HF_GLOBAL, _OFFICIAL_BLOCK, _OFFICIAL_TO_HF_BLOCK, "encoder.block",
                    "parameters of the official UMT5 encoder", " Expected names such as 'token_embedding.weight', "
                    "'blocks.0.attn.q.weight', 'norm.weight' (models_t5_umt5-xxl-enc-bf16.pth).")


def to_official(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers / ComfyUI names -> official names, e.g. to write `models_t5_umt5-xxl-enc-bf16.pth`.

    `encoder.embed_tokens.weight` is the tied copy of `shared.weight` and is dropped (it becomes `token_embedding`
    only when `shared.weight` is absent). ComfyUI's `spiece_model` and quantization tensors are not parameters and
    raise, like any other unknown name: dequantize first.
    """
    sd = strip_prefix(dict(sd), _HF_PREFIXES)
    global_names = dict(_HF_TO_OFFICIAL_GLOBAL)
    if SHARED in sd:
        sd.pop(EMBED_TOKENS, None)
    else:
        global_names[EMBED_TOKENS] = "token_embedding.weight"
    return _renamed(sd, global_names, _HF_BLOCK, _HF_TO_OFFICIAL_BLOCK, "blocks",
                    "parameters of transformers' UMT5EncoderModel")


def from_llama_cpp(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """llama.cpp (GGUF) names -> transformers names; an unknown name raises `KeyMismatchError`."""
    return _renamed(sd, _LLAMA_CPP_TO_HF_GLOBAL, _LLAMA_CPP_BLOCK, _LLAMA_CPP_TO_HF_BLOCK, "encoder.block",
                    "tensors of a llama.cpp T5 encoder", " Expected names such as 'token_embd.weight', "
                    "'enc.blk.0.attn_q.weight', 'enc.output_norm.weight' (umt5-xxl-encoder-*.gguf).")


def from_comfy(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI umt5 file -> transformers names: the names are the same; `spiece_model` is removed (read it first)
    and a prefix such as `umt5xxl.transformer.` (a CLIP saved by ComfyUI) is stripped."""
    sd = {k: v for k, v in sd.items() if not k.endswith(SPIECE_MODEL)}
    return strip_prefix(dict(sd), _HF_PREFIXES)


def to_transformers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any supported naming (official, transformers, ComfyUI, llama.cpp) -> transformers names."""
    if is_llama_cpp(sd):
        return from_llama_cpp(sd)
    if is_official(sd) and not is_transformers(sd):
        return from_official(sd)
    if is_transformers(sd):
        return from_comfy(sd)
    raise KeyMismatchError(
        f"These weights are not a UMT5 text encoder: no 'token_embedding.weight' / 'blocks.N.*' (official), "
        f"'shared.weight' / 'encoder.block.N.*' (transformers, ComfyUI) nor 'token_embd.weight' / 'enc.blk.N.*' "
        f"(llama.cpp, GGUF) names. They hold: {describe_keys(list(sd))}."
    )
