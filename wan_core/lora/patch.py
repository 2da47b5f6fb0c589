"""`LoraPatch`: a LoRA file at a strength, merged into a loaded `WanDiT` (a `wan_core.patching.ModelPatch`).

Each changed weight (by a low-rank pair, a LoHa or LoKr product, with or without DoRA's magnitude) is merged in
float32 and written back in its own dtype: bf16/fp16/fp32 weights are cast once; fp8 weights (`FP8Linear`: e4m3
values x a per-tensor `weight_scale`) are dequantized, merged and quantized again with a fresh scale, as ComfyUI does
(docs/lora.md gives the measured error and why merging beats a low-rank side path).
The originals are kept by `PatchedWeights`, so removing the LoRA gives the base weights back bit for bit.
"""

from __future__ import annotations

import logging
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
from .merge import changed_weight, misfit, shape_misfit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraPatch:
    """The LoRA file `path` applied at `strength` (hashable: part of a DiT handle's identity)."""

    path: str
    strength: float = 1.0

    def apply(self, module: torch.nn.Module, expert: str, weights: PatchedWeights) -> None:
        lora = read_lora(self.path)
        where = f"the LoRA {lora.source} on the {expert} model"
        layers = list(lora.layers.values())
        misfits = {layer.module: reason for layer in layers if (reason := layer_misfit(module, layer, weights))}
        if misfits:
            report_misfits(misfits, len(layers), where)
        for layer in layers:
            if layer.module not in misfits:
                merge_layer(module, layer, self.strength, weights)


_ANOTHER_MODEL = "The LoRA was made for another Wan model (14B vs 5B, t2v vs i2v). Use a LoRA made for this model."
_reported: set[str] = set()


def report_misfits(misfits: dict[str, str], layer_count: int, where: str) -> None:
    """A LoRA none of whose layers fits is an error; one that fits in part is applied without the rest, as ComfyUI
    does (an I2V LoRA's 36-channel patch embedding on a T2V model, a module this model lacks), with one warning."""
    reasons = list(misfits.values())
    listed = "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} more" if len(reasons) > 3 else "")
    if len(misfits) == layer_count:
        raise InputError(f"{where}: none of its {layer_count} layer(s) fits this model: {listed}. {_ANOTHER_MODEL}")
    message = (f"{where}: {len(misfits)} of its {layer_count} layers do not fit this model and are left out (the "
               f"other {layer_count - len(misfits)} are applied): {listed}")
    if message not in _reported:  # once, not again at each strength switch
        _reported.add(message)
        log.warning(message)


def dequantize_fp8(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 weights of e4m3 `values` `[N, K]` with a per-tensor `[]` or per-channel `[N]` scale."""
    scale = scale.float()
    return values.float() * (scale.reshape(-1, 1) if scale.ndim else scale)


def _weight_name(model: torch.nn.Module, module: str) -> tuple[str, torch.nn.Module | None] | None:
    """(the parameter a layer's adapter and `diff` change, its owning module or None for a bare parameter); None
    when `model` has neither."""
    try:
        owner = model.get_submodule(module)
    except AttributeError:
        owner = None
    if owner is not None and isinstance(getattr(owner, "weight", None), torch.Tensor):
        return module + ".weight", owner
    try:
        model.get_parameter(module)
    except AttributeError:
        return None
    return module, None


def _weight_shape(owner: torch.nn.Module | None, current: torch.Tensor) -> torch.Size:
    """The logical shape of a weight (a GGUF layer stores packed blocks)."""
    if isinstance(owner, GGUFLinear):
        return torch.Size((owner.out_features, owner.in_features))
    return current.shape


def layer_misfit(model: torch.nn.Module, layer: LoraLayer, weights: PatchedWeights) -> str | None:
    """Why `layer` cannot change `model` (None: it can)."""
    if layer.adapter is not None or layer.diff is not None:
        found = _weight_name(model, layer.module)
        if found is None:
            return f"it changes {layer.module}, which this model does not have"
        name, owner = found
        reason = misfit(layer, _weight_shape(owner, weights.get(name)))
        if reason:
            return reason
    if layer.diff_b is not None:
        try:
            bias = weights.get(layer.module + ".bias")
        except AttributeError:
            return f"it changes the bias of {layer.module}, which has none in this model"
        return shape_misfit(f"{layer.module}.diff_b", tuple(layer.diff_b.shape), tuple(bias.shape))
    return None


def merge_layer(model: torch.nn.Module, layer: LoraLayer, strength: float, weights: PatchedWeights) -> None:
    """Add `layer`'s changes at `strength` to `model`'s weights through `weights` (which keeps the originals); on a
    GGUF-quantized layer, attach them to run with it (`deferred.py`). `layer_misfit` first."""
    if layer.adapter is not None or layer.diff is not None:
        name, owner = _weight_name(model, layer.module)
        current = weights.get(name)
        if isinstance(owner, GGUFLinear):
            weights.attach(owner, DeferredChange(replace(layer, diff_b=None), strength, current.device))
        else:
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
        current = weights.get(name)
        weights.set(name, current.float() + strength * layer.diff_b.to(current.device, torch.float32))
