"""Parameter names: diffusers `WanTransformer3DModel` <-> official `WanModel` (the names `WanDiT` uses).

Only the module path of a key is renamed, so the quantization side keys of a layer (`.weight_scale`,
`.scale_weight`, `.comfy_quant`, ...) follow their weight.

| official | diffusers |
|---|---|
| `text_embedding.{0,2}` | `condition_embedder.text_embedder.linear_{1,2}` |
| `time_embedding.{0,2}` | `condition_embedder.time_embedder.linear_{1,2}` |
| `time_projection.1` | `condition_embedder.time_proj` |
| `blocks.N.self_attn.{q,k,v,o,norm_q,norm_k}` | `blocks.N.attn1.{to_q,to_k,to_v,to_out.0,norm_q,norm_k}` |
| `blocks.N.cross_attn.*` | `blocks.N.attn2.*` |
| `blocks.N.norm3` (the affine cross-attention norm) | `blocks.N.norm2` |
| `blocks.N.ffn.{0,2}` | `blocks.N.ffn.net.0.proj`, `blocks.N.ffn.net.2` |
| `blocks.N.modulation` | `blocks.N.scale_shift_table` |
| `head.head`, `head.modulation` | `proj_out`, `scale_shift_table` |
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_TOP = {
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "patch_embedding": "patch_embedding",
}
_BLOCK = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "self_attn.norm_q": "attn1.norm_q",
    "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "cross_attn.norm_q": "attn2.norm_q",
    "cross_attn.norm_k": "attn2.norm_k",
    "norm3": "norm2",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}
_TOP_INV = {v: k for k, v in _TOP.items()}
_BLOCK_INV = {v: k for k, v in _BLOCK.items()}
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")

DIFFUSERS_MARKERS = ("condition_embedder.", "scale_shift_table", "proj_out.")


def is_diffusers_layout(keys: Iterable[str]) -> bool:
    """Whether a key set uses diffusers' names (`condition_embedder.*`, `blocks.N.attn1.*`, ...)."""
    return any(k.startswith(DIFFUSERS_MARKERS) or ".attn1." in k or ".attn2." in k for k in keys)


def _rename(key: str, top: dict[str, str], block: dict[str, str], params: dict[str, str]) -> str:
    match = _BLOCK_KEY.match(key)
    if match is not None:
        index, rest = match.groups()
        if rest in params:
            return f"blocks.{index}.{params[rest]}"
        for src, dst in block.items():
            if rest.startswith(src + "."):
                return f"blocks.{index}.{dst}{rest[len(src):]}"
        return key
    if key in params:
        return params[key]
    for src, dst in top.items():
        if key.startswith(src + "."):
            return dst + key[len(src) :]
    return key


def diffusers_to_official_key(key: str) -> str:
    if _BLOCK_KEY.match(key):
        return _rename(key, _TOP_INV, _BLOCK_INV, {"scale_shift_table": "modulation"})
    return _rename(key, _TOP_INV, _BLOCK_INV, {"scale_shift_table": "head.modulation"})


def official_to_diffusers_key(key: str) -> str:
    if _BLOCK_KEY.match(key):
        return _rename(key, _TOP, _BLOCK, {"modulation": "scale_shift_table"})
    return _rename(key, _TOP, _BLOCK, {"head.modulation": "scale_shift_table"})


def diffusers_to_official(state_dict: dict) -> dict:
    return {diffusers_to_official_key(k): v for k, v in state_dict.items()}


def official_to_diffusers(state_dict: dict) -> dict:
    return {official_to_diffusers_key(k): v for k, v in state_dict.items()}


# Parameters addressed directly (not through a module): full-tensor deltas of LoRA files may name them.
_BLOCK_PARAMS = ("modulation",)
_TOP_PARAMS = ("head.modulation",)


def is_official_module(name: str) -> bool:
    """Whether `name` is a weight-holding module (or a bare parameter such as `blocks.N.modulation`) of `WanDiT`."""
    match = _BLOCK_KEY.match(name)
    if match is not None:
        return match.group(2) in _BLOCK or match.group(2) in _BLOCK_PARAMS
    return name in _TOP or name in _TOP_PARAMS


def flat_to_official_module(flat: str, diffusers: bool = False) -> str | None:
    """The official module of a name with dots written as underscores, or None: official names (kohya:
    `blocks_0_self_attn_q`) or, with `diffusers`, diffusers' names (SimpleTuner's LyCORIS: `blocks_0_attn1_to_q`)."""
    if diffusers:
        block = {**_BLOCK_INV, "scale_shift_table": "modulation"}
        top = {**_TOP_INV, "scale_shift_table": "head.modulation"}
    else:
        block = {name: name for name in (*_BLOCK, *_BLOCK_PARAMS)}
        top = {name: name for name in (*_TOP, *_TOP_PARAMS)}
    match = re.match(r"^blocks_(\d+)_(.+)$", flat)
    if match is not None:
        index, rest = match.groups()
        official = next((o for name, o in block.items() if name.replace(".", "_") == rest), None)
        return None if official is None else f"blocks.{index}.{official}"
    return next((o for name, o in top.items() if name.replace(".", "_") == flat), None)
