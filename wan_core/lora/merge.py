"""The arithmetic of a LoRA layer on one float32 weight: its adapter's change (with DoRA's rescaling) and its full
delta, at a strength. Shared by merges into stored weights (`patch.py`) and by changes that run with a quantized
layer (`deferred.py`)."""

from __future__ import annotations

import math

import torch

from .formats import LoraLayer


def shape_misfit(what: str, shape: tuple[int, ...], expected: tuple[int, ...]) -> str | None:
    """Why a LoRA tensor of `shape` cannot change a model tensor of `expected` shape (None: it can)."""
    if tuple(shape) != tuple(expected):
        return f"its {what} has shape {list(shape)} but the model's is {list(expected)}"
    return None


def misfit(layer: LoraLayer, shape: torch.Size) -> str | None:
    """Why `layer` cannot change a weight of `shape` (None: it can)."""
    if layer.adapter is not None:
        reason = shape_misfit(f"{layer.module} {layer.adapter.kind}", layer.adapter.shape,
                              (shape[0], math.prod(shape[1:])))
        if reason:
            return reason
    if layer.diff is not None:
        reason = shape_misfit(f"{layer.module}.diff", tuple(layer.diff.shape), tuple(shape))
        if reason:
            return reason
    if layer.dora_scale is not None:
        magnitude = layer.dora_scale
        axis = 0 if magnitude.shape[0] == shape[0] else 1
        if magnitude.numel() != shape[axis]:
            return (f"its {layer.module}.dora_scale has shape {list(magnitude.shape)}, which is neither one value per "
                    f"output row ({shape[0]}) nor per input column ({shape[1]}) of the weight")
    return None


def _decomposed(weight: torch.Tensor, layer: LoraLayer, strength: float) -> torch.Tensor:
    """DoRA: the weight plus the adapter's change, each output row (or input column) rescaled to the file's
    magnitude; a strength blends from the base weight to that, as ComfyUI does. The norm is that of the changed
    weight, as LyCORIS and PEFT train it (ComfyUI takes the base weight's norm for per-row magnitudes)."""
    base = weight.clone()
    layer.adapter.add_to(weight.view(weight.shape[0], -1), layer.scale(1.0))
    magnitude = layer.dora_scale.to(weight.device, torch.float32)
    axis = 0 if magnitude.shape[0] == weight.shape[0] else 1
    shape = [1] * weight.dim()
    shape[axis] = weight.shape[axis]
    dims = tuple(d for d in range(weight.dim()) if d != axis)
    norm = torch.linalg.vector_norm(weight, dim=dims, keepdim=True).add_(torch.finfo(torch.float32).eps)
    weight.mul_(magnitude.reshape(shape) / norm)
    return weight if strength == 1.0 else base.add_(weight.sub_(base), alpha=strength)


def changed_weight(weight: torch.Tensor, layer: LoraLayer, strength: float) -> torch.Tensor:
    """`weight` (float32, changed in place where it can) with `layer`'s adapter and full delta at `strength`;
    `misfit` first."""
    if layer.adapter is not None:
        if layer.dora_scale is not None:
            weight = _decomposed(weight, layer, strength)
        else:
            layer.adapter.add_to(weight.view(weight.shape[0], -1), layer.scale(strength))
    if layer.diff is not None:
        weight = weight.add_(layer.diff.to(weight.device, torch.float32), alpha=strength)
    return weight
