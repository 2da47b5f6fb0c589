"""LoRA changes to GGUF-quantized layers (`GGUFLinear`), whose blocks cannot take a merge: each change runs with the
layer, on the weight it dequantizes for each call, as ComfyUI-GGUF applies its patches. A plain low-rank pair adds
`(scale x up) @ down` to it in the compute dtype (`addmm_`, one rounding); anything else (LoHa, LoKr, DoRA, a full
delta) changes the float32 weight with the merge's own arithmetic (`merge.changed_weight`).

Changing the weight beats a side path beside the matmul (`x @ down.T @ up.T` added to the output): at video token
counts the output is several times the weight, and the side path's extra passes over it cost 7% of an A14B forward
at 480p on an H100, against 0.1% (a pair) to 3% (a LoKr) here (docs/benchmarks.md)."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from .adapters import LowRank
from .formats import LoraLayer
from .merge import changed_weight


class _Slot(int):
    """Where a tensor of the layer went: the index of the buffer that holds it."""


def _map_tensors(value: object, fn):  # noqa: ANN202 - returns `value`'s structure
    """`value` (a `LoraLayer`, its adapter, a tuple of factors) with each tensor (or `_Slot`) replaced by `fn` of it."""
    if isinstance(value, torch.Tensor | _Slot):
        return fn(value)
    if isinstance(value, tuple):
        return tuple(_map_tensors(item, fn) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _map_tensors(getattr(value, f.name), fn) for f in dataclasses.fields(value)}
        return dataclasses.replace(value, **fields)
    return value


class DeferredChange(nn.Module):
    """`layer` at `strength` on one quantized layer (`wan_core.dit.gguf_linear.WeightChange`). Its tensors are
    non-persistent buffers, so they move with the layer (device moves, block swap) and stay out of state dicts."""

    def __init__(self, layer: LoraLayer, strength: float, device: torch.device) -> None:
        super().__init__()
        self.low_rank = isinstance(layer.adapter, LowRank) and layer.dora_scale is None and layer.diff is None
        self.strength = strength
        if self.low_rank:
            down, up = layer.adapter.down.flatten(1), layer.adapter.up.flatten(1)
            self.register_buffer("down", down.to(device), persistent=False)
            self.register_buffer("up", (up.float() * layer.scale(strength)).to(device, up.dtype), persistent=False)
            return

        def keep(tensor: torch.Tensor) -> _Slot:
            slot = _Slot(len(self._buffers))
            self.register_buffer(f"t{slot}", tensor.to(device), persistent=False)
            return slot

        self._layer = _map_tensors(layer, keep)

    def changed(self, weight: torch.Tensor) -> torch.Tensor:
        if self.low_rank:
            return weight.addmm_(self.up.to(weight.dtype), self.down.to(weight.dtype))
        layer = _map_tensors(self._layer, lambda slot: self._buffers[f"t{slot}"])
        return changed_weight(weight, layer, self.strength)
