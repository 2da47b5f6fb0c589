"""`LoraPatch`: a LoRA file at a strength, merged into a loaded `WanDiT` (a `wan_core.patching.ModelPatch`).

Each changed weight (by a low-rank pair, a LoHa or LoKr product, with or without DoRA's magnitude) is merged in
float32 and written back in its own dtype: bf16/fp16/fp32 weights are cast once; fp8 weights (`FP8Linear`: e4m3
values x a per-tensor `weight_scale`) are dequantized, merged and quantized again with a fresh scale, as ComfyUI does
(docs/lora.md gives the measured error and why merging beats a low-rank side path).
The originals are kept by `PatchedWeights`, so removing the LoRA gives the base weights back bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..dit.fp8 import quantize_weight
from ..dit.model import FP8, FP8Linear
from ..errors import InputError
from ..io.quant import quantize_per_tensor
from ..patching import PatchedWeights
from .files import read_lora
from .formats import LoraLayer


@dataclass(frozen=True)
class LoraPatch:
    """The LoRA file `path` applied at `strength` (hashable: part of a DiT handle's identity)."""

    path: str
    strength: float = 1.0

    def apply(self, module: torch.nn.Module, expert: str, weights: PatchedWeights) -> None:
        lora = read_lora(self.path)
        where = f"the LoRA {lora.source} on the {expert} model"
        for layer in lora.layers.values():
            merge_layer(module, layer, self.strength, weights, where)


def dequantize_fp8(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 weights of e4m3 `values` `[N, K]` with a per-tensor `[]` or per-channel `[N]` scale."""
    scale = scale.float()
    return values.float() * (scale.reshape(-1, 1) if scale.ndim else scale)


def _weight_name(model: torch.nn.Module, module: str, where: str) -> tuple[str, torch.nn.Module | None]:
    """(the parameter a layer's low-rank pair and `diff` change, its owning module or None for a bare parameter)."""
    try:
        owner = model.get_submodule(module)
    except AttributeError:
        owner = None
    if owner is not None and isinstance(getattr(owner, "weight", None), torch.Tensor):
        return module + ".weight", owner
    try:
        model.get_parameter(module)
    except AttributeError:
        raise InputError(
            f"{where} changes {module}, which this model does not have (a LoRA for another Wan model size, e.g. "
            "14B vs 5B?). Use a LoRA made for this model."
        ) from None
    return module, None


def _check_shape(what: str, shape: tuple[int, ...], expected: torch.Size, where: str) -> None:
    if tuple(shape) != tuple(expected):
        raise InputError(
            f"{where}: its {what} has shape {list(shape)} but the model's is {list(expected)}: the LoRA was made for "
            "another Wan model (14B vs 5B, t2v vs i2v). Use a LoRA made for this model."
        )


def _decomposed(merged: torch.Tensor, layer: LoraLayer, strength: float, where: str) -> torch.Tensor:
    """DoRA: the weight plus the adapter's change, each output row (or input column) rescaled to the file's
    magnitude; a strength blends from the base weight to that, as ComfyUI does. The norm is that of the changed
    weight, as LyCORIS and PEFT train it (ComfyUI takes the base weight's norm for per-row magnitudes)."""
    base = merged.clone()
    layer.adapter.add_to(merged.view(merged.shape[0], -1), layer.scale(1.0))
    magnitude = layer.dora_scale.to(merged.device, torch.float32)
    per_row = magnitude.shape[0] == merged.shape[0]
    axis = 0 if per_row else 1
    if magnitude.numel() != merged.shape[axis]:
        raise InputError(f"{where}: {layer.module}.dora_scale has shape {list(magnitude.shape)}, which is neither one "
                         f"value per output row ({merged.shape[0]}) nor per input column ({merged.shape[1]}) of the "
                         "weight: the LoRA was made for another Wan model. Use a LoRA made for this model.")
    shape = [1] * merged.dim()
    shape[axis] = merged.shape[axis]
    dims = tuple(d for d in range(merged.dim()) if d != axis)
    norm = torch.linalg.vector_norm(merged, dim=dims, keepdim=True).add_(torch.finfo(torch.float32).eps)
    merged.mul_(magnitude.reshape(shape) / norm)
    return merged if strength == 1.0 else base.add_(merged.sub_(base), alpha=strength)


def merge_layer(
    model: torch.nn.Module, layer: LoraLayer, strength: float, weights: PatchedWeights, where: str
) -> None:
    """Add `layer`'s changes at `strength` to `model`'s weights through `weights` (which keeps the originals)."""
    if layer.adapter is not None or layer.diff is not None:
        name, owner = _weight_name(model, layer.module, where)
        current = weights.get(name)
        fp8 = isinstance(owner, FP8Linear) and current.dtype == FP8
        # a copy: `.float()` of a float32 weight (norms, modulations) is the weight itself, which the in-place adds
        # below would change before `weights.set` keeps its original
        merged = dequantize_fp8(current, owner.weight_scale) if fp8 else current.to(torch.float32, copy=True)
        if layer.adapter is not None:
            rows = current.shape[0]
            _check_shape(f"{layer.module} {layer.adapter.kind}", layer.adapter.shape,
                         torch.Size((rows, math.prod(current.shape[1:]))), where)
            if layer.dora_scale is not None:
                merged = _decomposed(merged, layer, strength, where)
            else:
                layer.adapter.add_to(merged.view(rows, -1), layer.scale(strength))
        if layer.diff is not None:
            _check_shape(f"{layer.module}.diff", layer.diff.shape, current.shape, where)
            merged = merged.add_(layer.diff.to(current.device, torch.float32), alpha=strength)
        if fp8:
            values, scale = quantize_per_tensor(merged) if owner.weight_scale.ndim == 0 else quantize_weight(merged)
            weights.set(name, values)
            weights.set(layer.module + ".weight_scale", scale)
        else:
            weights.set(name, merged)
    if layer.diff_b is not None:
        name = layer.module + ".bias"
        try:
            current = weights.get(name)
        except AttributeError:
            raise InputError(f"{where} changes the bias of {layer.module}, which has none in this model.") from None
        _check_shape(f"{layer.module}.diff_b", layer.diff_b.shape, current.shape, where)
        weights.set(name, current.float() + strength * layer.diff_b.to(current.device, torch.float32))
