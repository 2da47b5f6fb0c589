"""A Linear whose weight stays in a GGUF block format and is dequantized on its device each time the layer runs."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..io.gguf_dequant import dequantize, raw_shape, type_name


class WeightChange(Protocol):
    """A change to a quantized layer's weight that runs with the layer (a LoRA: `wan_core.lora.deferred`), applied
    to the weight dequantized for the call. `low_rank`: a low-rank pair alone, which goes into the weight in the
    compute dtype; any other change needs the float32 weight. An `nn.Module`, so its tensors move with the layer."""

    low_rank: bool

    def changed(self, weight: torch.Tensor) -> torch.Tensor: ...


class GGUFLinear(nn.Module):
    """`weight` holds the layer's raw ggml blocks (uint8 `[out, row bytes]`); the matmul runs in the input's dtype
    on a weight dequantized just before use (only one layer's full-precision weight exists at a time).

    `changes` (LoRAs, in order) run with the layer, since quantized blocks cannot take a merge: each call they change
    the freshly dequantized weight, as ComfyUI-GGUF patches it. Low-rank pairs alone go into it in the compute dtype
    (the GEMM accumulates in float32); once one change needs more (LoHa, LoKr, DoRA, full deltas), the weight is
    dequantized in float32 and every change applied in order, so the result is the in-order merge."""

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
        weight = self.dequantized_weight(x.dtype if all(c.low_rank for c in changes) else torch.float32)
        for change in changes:  # block formats dequantize into a fresh tensor: changing it in place is safe
            weight = change.changed(weight)
        return F.linear(x, weight.to(x.dtype), bias)
