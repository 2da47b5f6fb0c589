"""`LoraPatch`: a LoRA file at a strength, merged into a loaded `WanDiT` (a `wan_core.patching.ModelPatch`).

Each changed weight (by a low-rank pair, a LoHa or LoKr product, with or without DoRA's magnitude) is merged in
float32 and written back in its own dtype: bf16/fp16/fp32 weights are cast once; fp8 weights (`FP8Linear`: e4m3
values x a per-tensor `weight_scale`) are dequantized, merged and quantized again with a fresh scale, as ComfyUI does
(docs/lora.md gives the measured error and why merging beats a low-rank side path).
The originals are kept by `PatchedWeights`, so removing the LoRA gives the base weights back bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..dit.fp8 import quantize_weight
from ..dit.gguf_linear import GGUFLinear
from ..dit.model import FP8, FP8Linear
from ..errors import InputError
from ..io.quant import quantize_per_tensor
from ..patching import PatchedWeights
from .deferred import DeferredChange
from .files import read_lora
from .formats import LoraLayer
from .merge import changed_weight, check_fits, check_shape


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


def merge_layer(
    model: torch.nn.Module, layer: LoraLayer, strength: float, weights: PatchedWeights, where: str
) -> None:
    """Add `layer`'s changes at `strength` to `model`'s weights through `weights` (which keeps the originals); on a
    GGUF-quantized layer, attach them to run with it (`deferred.py`)."""
    if layer.adapter is not None or layer.diff is not None:
        name, owner = _weight_name(model, layer.module, where)
        current = weights.get(name)
        if isinstance(owner, GGUFLinear):
            check_fits(layer, torch.Size((owner.out_features, owner.in_features)), where)
            weights.attach(owner, DeferredChange(replace(layer, diff_b=None), strength, current.device))
        else:
            check_fits(layer, current.shape, where)
            fp8 = isinstance(owner, FP8Linear) and current.dtype == FP8
            # a copy: `.float()` of a float32 weight (norms, modulations) is the weight itself, which the in-place
            # changes would alter before `weights.set` keeps its original
            merged = dequantize_fp8(current, owner.weight_scale) if fp8 else current.to(torch.float32, copy=True)
            merged = changed_weight(merged, layer, strength)
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
        check_shape(f"{layer.module}.diff_b", tuple(layer.diff_b.shape), tuple(current.shape), where)
        weights.set(name, current.float() + strength * layer.diff_b.to(current.device, torch.float32))
