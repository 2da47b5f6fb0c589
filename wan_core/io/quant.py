"""ComfyUI's quantized single files, read into plain weights.

Two formats are in circulation:
- `*_fp8_scaled` (2024-2025): e4m3 weights, a float32 `<layer>.scale_weight` beside each (optionally
  `<layer>.scale_input`) and a `scaled_fp8` marker tensor.
- The quantization metadata format of newer ComfyUI (`comfy/quant_ops.py` `QUANT_ALGOS`, loaded by
  `comfy/ops.py` `_load_quantized_module`): `<layer>.weight_scale` (and `input_scale`, `weight_scale_2`), a
  `<layer>.comfy_quant` JSON tensor per layer and/or a `_quantization_metadata` JSON entry in the safetensors
  header. Formats read here: `float8_e4m3fn` / `float8_e5m2` / `int8_tensorwise` (per-tensor or per-row scale),
  `int8_blockwise` (one scale per block of `group_size` x `group_size`), `nvfp4` (two e2m1 values per uint8 byte,
  high nibble first, an e4m3 scale per 16 values plus the per-tensor `weight_scale_2`) and `mxfp8` (e4m3 values, an
  e8m0 scale per 32); the block scales of the last two are stored in cuBLAS's tiled layout (comfy_kitchen
  `to_blocked`). The others (`convrot_w4a4`, `asym_w4a8_int8`, `awq_w4a16`, int8 with `convrot`) raise.
"""

from __future__ import annotations

import json

import torch

from ..errors import CheckpointError, CorruptFileError
from .state_dict import FP8_DTYPES

_DROPPED_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant", ".weight_scale_2", ".pre_quant_scale")
_MARKERS = ("scaled_fp8",)
READABLE_FORMATS = ("float8_e4m3fn", "float8_e5m2", "int8_tensorwise", "int8_blockwise", "nvfp4", "mxfp8")
E8M0 = getattr(torch, "float8_e8m0fnu", None)
_E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def is_quantized(state_dict: dict[str, torch.Tensor]) -> bool:
    return any(
        k in _MARKERS or k.endswith((".scale_weight", ".weight_scale", ".comfy_quant")) for k in state_dict
    ) or any(v.dtype in FP8_DTYPES for v in state_dict.values())


def layer_formats(state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> dict[str, dict]:
    """Layer -> its ComfyUI quantization config (`{"format": ...}`), from the header and the `.comfy_quant` tensors."""
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


def check_format(layer: str, fmt: dict) -> None:
    """CheckpointError naming the layer when its ComfyUI quantization format is not one this module reads."""
    name = fmt.get("format")
    params = fmt.get("params") if isinstance(fmt.get("params"), dict) else {}
    if name in READABLE_FORMATS and not (fmt.get("convrot") or params.get("convrot")):
        return
    kind = f"{name!r} with convrot rotation" if name in READABLE_FORMATS else repr(name)
    raise CheckpointError(
        f"Layer {layer!r} is stored in ComfyUI's {kind} quantization format, which wan_core cannot read (it reads "
        f"{', '.join(READABLE_FORMATS)}). Use the fp16/bf16, fp8_scaled or GGUF file of this model."
    )


def logical_shape(shape: tuple[int, ...], fmt: dict) -> tuple[int, ...]:
    """The shape a stored weight dequantizes to: `nvfp4` packs two values per byte of its last dim."""
    return (*shape[:-1], shape[-1] * 2) if fmt.get("format") == "nvfp4" else shape


def _scale_of(state_dict: dict[str, torch.Tensor], layer: str) -> torch.Tensor | None:
    for suffix in (".scale_weight", ".weight_scale"):
        if layer + suffix in state_dict:
            return state_dict[layer + suffix]
    return None


def _untiled(scales: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Block scales stored in cuBLAS's tiled layout (128 x 4 tiles, rows and columns padded) as a plain
    `[rows, cols]` (comfy_kitchen `from_blocked`)."""
    row_tiles, col_tiles = -(-rows // 128), -(-cols // 4)
    tiles = scales.reshape(row_tiles, col_tiles, 32, 4, 4).permute(0, 1, 3, 2, 4)
    plain = tiles.reshape(row_tiles, col_tiles, 128, 4).permute(0, 2, 1, 3).reshape(row_tiles * 128, col_tiles * 4)
    return plain[:rows, :cols]


def _nvfp4(packed: torch.Tensor, block_scale: torch.Tensor, tensor_scale: torch.Tensor) -> torch.Tensor:
    codes = torch.stack((packed >> 4, packed & 0x0F), dim=-1).reshape(packed.shape[0], -1)
    values = torch.tensor(_E2M1, device=packed.device)[codes.long()]
    rows, cols = values.shape
    blocks = _untiled(block_scale.view(torch.float8_e4m3fn).float(), rows, cols // 16) * tensor_scale.float()
    return (values.view(rows, -1, 16) * blocks[..., None]).view(rows, cols)


def _mxfp8(weight: torch.Tensor, block_scale: torch.Tensor) -> torch.Tensor:
    rows, cols = weight.shape
    exponents = _untiled(block_scale.view(torch.uint8), rows, cols // 32).to(torch.int32)
    scales = torch.where(exponents == 0, 0, exponents << 23).view(torch.float32)  # e8m0: 2**(e - 127); 0 -> 0
    return (weight.float().view(rows, -1, 32) * scales[..., None]).view(rows, cols)


def _scaled(weight: torch.Tensor, scale: torch.Tensor | None, layer: str) -> torch.Tensor:
    """`weight` times its scale: one per tensor, one per output row (`[rows, 1]`, or stored flat as `[rows]`), or
    one per block of a grid that divides the weight (`int8_blockwise`)."""
    values = weight.to(torch.float32)
    if scale is None:
        return values
    scale = scale.to(torch.float32)
    if scale.numel() == 1:
        return values * scale.reshape(())
    if scale.dim() == 1 and values.dim() == 2 and scale.numel() == values.shape[0]:
        scale = scale[:, None]
    if scale.dim() != 2 or values.dim() != 2 or values.shape[0] % scale.shape[0] or values.shape[1] % scale.shape[1]:
        raise CheckpointError(
            f"Layer {layer!r}: its weight {list(weight.shape)} cannot take a scale of shape {list(scale.shape)} (one "
            "per tensor, one per output row, or one per block of a grid that divides the weight). The file is damaged "
            "or in a quantization format wan_core does not read: use the bf16 or fp8_scaled file of this model."
        )
    rows, cols = scale.shape
    block_r, block_c = values.shape[0] // rows, values.shape[1] // cols
    return (values.view(rows, block_r, cols, block_c) * scale[:, None, :, None]).view(weight.shape)


def _dequantize_one(
    weight: torch.Tensor, state_dict: dict[str, torch.Tensor], layer: str, fmt: dict, dtype: torch.dtype
) -> torch.Tensor:
    """One quantized tensor of `state_dict` (which holds its layer's scales) as `dtype`."""
    scale = _scale_of(state_dict, layer)
    if fmt:
        check_format(layer, fmt)
    if fmt.get("format") == "nvfp4":
        values = _nvfp4(weight, scale, state_dict[layer + ".weight_scale_2"])
    elif fmt.get("format") == "mxfp8" or (scale is not None and scale.dtype == E8M0):
        values = _mxfp8(weight, scale)
    else:
        values = _scaled(weight, scale, layer)
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
    formats = layer_formats(state_dict, metadata)
    out: dict[str, torch.Tensor] = {}
    for key in list(state_dict):
        if key in _MARKERS or key.endswith(_DROPPED_SUFFIXES) or key.endswith((".scale_weight", ".weight_scale")):
            continue
        value = state_dict.pop(key) if consume else state_dict[key]
        layer = key[: -len(".weight")] if key.endswith(".weight") else key
        quantized = value.dtype in FP8_DTYPES or value.dtype == torch.int8 or (layer in formats)
        if not quantized:
            out[key] = value.to(dtype) if value.is_floating_point() else value
        else:
            out[key] = _dequantize_one(value, state_dict, layer, formats.get(layer, {}), dtype)
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
