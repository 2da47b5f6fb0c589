"""A Linear whose weight stays in a GGUF block format and is dequantized on its device each time the layer runs."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..io.gguf_dequant import dequantize, raw_shape, type_name


class GGUFLinear(nn.Module):
    """`weight` holds the layer's raw ggml blocks (uint8 `[out, row bytes]`); the matmul runs in the input's dtype
    on a weight dequantized just before use (only one layer's full-precision weight exists at a time)."""

    def __init__(self, in_features: int, out_features: int, qtype: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.qtype = in_features, out_features, qtype
        shape = raw_shape(qtype, (out_features, in_features))
        self.weight = nn.Parameter(torch.empty(shape, dtype=torch.uint8), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {type_name(self.qtype)}"

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        return dequantize(self.weight, self.qtype, (self.out_features, self.in_features), dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.dequantized_weight(x.dtype), bias)
