"""A Linear whose weight stays in a GGUF block format and is dequantized on its device each time the layer runs."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..io.gguf_dequant import dequantize, raw_shape, type_name


class WeightChange(Protocol):
    """A change to a quantized layer's weight that runs with the layer (a LoRA: `wan_core.lora.deferred`): as a side
    path beside the matmul (`side_path`: `side_output(x)` is added to the layer's output), or applied to the float32
    dequantized weight (`changed(weight)`). An `nn.Module`, so its tensors move with the layer."""

    side_path: bool

    def side_output(self, x: torch.Tensor) -> torch.Tensor: ...

    def changed(self, weight: torch.Tensor) -> torch.Tensor: ...


class GGUFLinear(nn.Module):
    """`weight` holds the layer's raw ggml blocks (uint8 `[out, row bytes]`); the matmul runs in the input's dtype
    on a weight dequantized just before use (only one layer's full-precision weight exists at a time).

    `changes` (LoRAs, in order) run with the layer, since quantized blocks cannot take a merge: low-rank pairs as a
    side path (a few MB; exact up to the compute dtype's rounding), anything else (LoHa, LoKr, DoRA, full deltas)
    applied to the dequantized weight in float32 each call; once one change needs that, all of them go that way, so
    the result is the in-order merge."""

    def __init__(self, in_features: int, out_features: int, qtype: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.qtype = in_features, out_features, qtype
        shape = raw_shape(qtype, (out_features, in_features))
        self.weight = nn.Parameter(torch.empty(shape, dtype=torch.uint8), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None
        self.changes = nn.ModuleList()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {type_name(self.qtype)}"

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        return dequantize(self.weight, self.qtype, (self.out_features, self.in_features), dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        changes: list[WeightChange] = list(self.changes)
        if all(change.side_path for change in changes):
            out = F.linear(x, self.dequantized_weight(x.dtype), bias)
            for change in changes:
                out = out + change.side_output(x)
            return out
        weight = self.dequantized_weight(torch.float32)
        for change in changes:
            weight = change.changed(weight)
        return F.linear(x, weight.to(x.dtype), bias)
