"""ComfyUI's quantized single files, read into plain weights.

Two formats are in circulation:
- `*_fp8_scaled` (2024-2025): e4m3 weights, a float32 `<layer>.scale_weight` beside each (optionally
  `<layer>.scale_input`) and a `scaled_fp8` marker tensor.
- The quantization metadata format of newer ComfyUI (`comfy/quant_ops.py`): `<layer>.weight_scale`
  (and `input_scale`, `weight_scale_2`), a `<layer>.comfy_quant` JSON tensor per layer and/or a
  `_quantization_metadata` JSON entry in the safetensors header; formats `float8_e4m3fn` (per-tensor scale)
  and `int8_blockwise` (one scale per block of `group_size` x `group_size`).
"""

from __future__ import annotations

import json

import torch

from ..errors import CorruptFileError
from .state_dict import FP8_DTYPES

_DROPPED_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant", ".weight_scale_2", ".pre_quant_scale")
_MARKERS = ("scaled_fp8",)


def is_quantized(state_dict: dict[str, torch.Tensor]) -> bool:
    return any(
        k in _MARKERS or k.endswith((".scale_weight", ".weight_scale", ".comfy_quant")) for k in state_dict
    ) or any(v.dtype in FP8_DTYPES for v in state_dict.values())


def _layer_formats(state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> dict[str, dict]:
    formats: dict[str, dict] = {}
    header = (metadata or {}).get("_quantization_metadata")
    if header:
        try:
            formats.update(json.loads(header).get("layers", {}))
        except (ValueError, AttributeError) as err:
            raise CorruptFileError(f"The _quantization_metadata header is not valid JSON ({err}).") from err
    for key, value in state_dict.items():
        if key.endswith(".comfy_quant"):
            try:
                formats[key[: -len(".comfy_quant")]] = json.loads(bytes(value.to(torch.uint8).tolist()).decode())
            except (ValueError, UnicodeDecodeError) as err:
                raise CorruptFileError(f"{key} does not hold a JSON quantization config ({err}).") from err
    return formats


def _scale_of(state_dict: dict[str, torch.Tensor], layer: str) -> torch.Tensor | None:
    for suffix in (".scale_weight", ".weight_scale"):
        if layer + suffix in state_dict:
            return state_dict[layer + suffix]
    return None


def _dequantize_one(weight: torch.Tensor, scale: torch.Tensor | None, fmt: dict, dtype: torch.dtype) -> torch.Tensor:
    values = weight.to(torch.float32)
    if scale is None:
        return values.to(dtype)
    scale = scale.to(torch.float32)
    if fmt.get("format") == "int8_blockwise" or (scale.dim() == 2 and scale.numel() > 1):
        rows, cols = scale.shape
        block_r, block_c = values.shape[0] // rows, values.shape[1] // cols
        values = (values.view(rows, block_r, cols, block_c) * scale[:, None, :, None]).view(weight.shape)
    else:
        values = values * scale
    return values.to(dtype)


def dequantize(
    state_dict: dict[str, torch.Tensor],
    dtype: torch.dtype,
    metadata: dict[str, str] | None = None,
    *,
    consume: bool = False,
) -> dict[str, torch.Tensor]:
    """Plain `dtype` weights from a ComfyUI quantized state dict (a plain one passes through). `consume`: each
    weight leaves `state_dict` once converted, so that the quantized and the plain weights are never all in memory."""
    formats = _layer_formats(state_dict, metadata)
    out: dict[str, torch.Tensor] = {}
    for key in list(state_dict):
        if key in _MARKERS or key.endswith(_DROPPED_SUFFIXES) or key.endswith((".scale_weight", ".weight_scale")):
            continue
        value = state_dict.pop(key) if consume else state_dict[key]
        layer = key[: -len(".weight")] if key.endswith(".weight") else None
        scale = _scale_of(state_dict, layer) if layer is not None else None
        quantized = value.dtype in FP8_DTYPES or value.dtype == torch.int8 or (layer in formats)
        if not quantized:
            out[key] = value.to(dtype) if value.is_floating_point() else value
        else:
            out[key] = _dequantize_one(value, scale, formats.get(layer, {}), dtype)
    return out


def quantize_per_tensor(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 values, float32 per-tensor scale) of a float weight: the scale maps its largest magnitude to e4m3's max."""
    fp8 = torch.float8_e4m3fn
    scale = weight.abs().amax().float().clamp(min=1e-12) / torch.finfo(fp8).max
    return (weight.float() / scale).to(fp8), scale


def quantize_fp8_scaled(state_dict: dict[str, torch.Tensor], *, new_format: bool = False) -> dict[str, torch.Tensor]:
    """The inverse, used to write ComfyUI-style fp8 test checkpoints: 2-D `.weight`s become e4m3 with a scale."""
    out: dict[str, torch.Tensor] = {}
    fp8 = torch.float8_e4m3fn
    for key, value in state_dict.items():
        if key.endswith(".weight") and value.dim() == 2 and value.is_floating_point():
            out[key], scale = quantize_per_tensor(value)
            layer = key[: -len(".weight")]
            if new_format:
                out[layer + ".weight_scale"] = scale
                out[layer + ".comfy_quant"] = torch.tensor(list(b'{"format": "float8_e4m3fn"}'), dtype=torch.uint8)
            else:
                out[layer + ".scale_weight"] = scale
        else:
            out[key] = value
    if not new_format:
        out["scaled_fp8"] = torch.empty(0, dtype=fp8)
    return out
