"""fp8 matmuls that pay: rowwise-scaled activations quantized inside the kernel that produces them.

The DiT's block Linears in fp8 compute (`model.FP8Linear`) keep float8 e4m3 weights with one float32 scale per
output channel (or one per tensor, as fp8_scaled files store it). Their input is quantized per row (per token):
`x ~= data * scale`, `scale = max|row| / 448`. Where the activation comes from a modulated LayerNorm (q/k/v, the
cross-attention q, the first FFN Linear) the norm kernel writes the fp8 rows and scales itself
(`kernels.modulated_layer_norm_fp8`), so quantization costs no pass of its own; the others (attention outputs, the
FFN's hidden layer, whose GELU is computed in the same pass, the text context) take one fused read-and-write pass
(`kernels.quantize_rows`) instead of the abs-max, divide and cast passes of per-tensor scaling. The matmul is
`torch._scaled_mm` with a `[M, 1]` row scale and a `[1, N]` channel scale (CUDA sm_89 / sm_90, torch >= 2.5);
elsewhere the layer computes in bf16 from its dequantized weight. It accumulates in the tensor cores' fast mode
(`use_fast_accum`): on an H100 (bench/fp8_matmul.py, docs/benchmarks.md) 1.07-1.20x faster at the block's shapes,
and its error against a float32 product of the same fp8 operands is 0.23-0.33% instead of 0.17%, far below the 5%
the fp8 quantization itself costs a forward.

Why not torchao's float8 rowwise or comfy-kitchen: both quantize the activation in a separate pass before the
matmul, the cost measured in docs/perf (fp8 + unfused rowwise quant 607-873 TFLOP/s against bf16's 751-822; kitchen's
`int8_linear` about bf16); the gain is only there when the producer of the activation writes fp8.

Error (relative L2 against float32; tests/test_fp8.py on the CPU, whose `_scaled_mm` also takes rowwise scales): one
Linear with outlier channels and tokens 3.3% (per-tensor activation scaling 3.8%; bound 4%); the whole tiny random
DiT 2.0% where bf16 gives 0.35% (bound 4%); tests/test_gpu.py checks the CUDA kernels and the same bound there.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import kernels

FP8 = getattr(torch, "float8_e4m3fn", None)
FP8_MAX = 448.0


class Fp8Rows(NamedTuple):
    """An activation `[..., K]` as float8 e4m3 `data` and float32 per-row `scale` `[..., 1]`; `dtype` is the compute
    dtype it stands for (the matmul's output dtype). It answers `shape`, `dtype` and `is_cuda` like the tensor."""

    data: torch.Tensor
    scale: torch.Tensor
    dtype: torch.dtype

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def is_cuda(self) -> bool:
        return self.data.is_cuda

    @property
    def device(self) -> torch.device:
        return self.data.device

    def dequantize(self) -> torch.Tensor:
        return (self.data.float() * self.scale).to(self.dtype)


@functools.cache
def _rowwise_on(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index) >= (8, 9)


@torch.compiler.assume_constant_result
def rowwise_supported(device: torch.device) -> bool:
    """Whether `torch._scaled_mm` with rowwise scales runs on `device` (CUDA with fp8 tensor cores)."""
    if device.type != "cuda" or FP8 is None or not hasattr(torch, "_scaled_mm"):
        return False
    return _rowwise_on(device.index if device.index is not None else torch.cuda.current_device())


def quantize_rows(x: torch.Tensor, gelu: bool = False) -> Fp8Rows:
    """`x` `[..., K]` (with `gelu`: its GELU-tanh, computed in float32) as fp8 rows with one scale per row (one
    fused kernel on CUDA)."""
    if kernels.usable(x) and x.is_cuda:
        data, scale = kernels.quantize_rows(x, gelu)
        return Fp8Rows(data, scale, x.dtype)
    y = F.gelu(x.float(), approximate="tanh") if gelu else x.float()
    scale = (y.abs().amax(-1, keepdim=True) / FP8_MAX).clamp_(min=1e-12)
    return Fp8Rows((y / scale).to(FP8), scale, x.dtype)


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A Linear weight `[N, K]` as fp8 with one float32 scale per output channel `[N]`."""
    scale = (weight.float().abs().amax(1) / FP8_MAX).clamp_(min=1e-12)
    return (weight.float() / scale[:, None]).to(FP8), scale


def rowwise_linear(
    x: torch.Tensor | Fp8Rows, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """`x @ (weight * weight_scale).T + bias` as one rowwise-scaled fp8 matmul; output in the compute dtype.
    `weight_scale` is per channel `[N]` or per tensor `[]`."""
    rows = x if isinstance(x, Fp8Rows) else quantize_rows(x)
    k, n = rows.data.shape[-1], weight.shape[0]
    scale_b = weight_scale.float().reshape(1, -1).expand(1, n).contiguous()
    out = torch._scaled_mm(
        rows.data.reshape(-1, k), weight.t(), scale_a=rows.scale.reshape(-1, 1), scale_b=scale_b,
        bias=None if bias is None else bias.to(rows.dtype), out_dtype=rows.dtype, use_fast_accum=True,
    )  # fmt: skip
    return out.view(*rows.data.shape[:-1], n)


def to_fp8_compute(model: torch.nn.Module) -> torch.nn.Module:
    """Swap the block Linears of a `WanDiT` for `FP8Linear` with per-channel weight scales, in place (benchmarks and
    tests; the loader does the same while loading with `fp8_compute`)."""
    from .model import FP8Linear, fp8_capable

    for name, module in list(model.named_modules()):
        if not isinstance(module, torch.nn.Linear) or not fp8_capable(name + ".weight"):
            continue
        new = FP8Linear(module.in_features, module.out_features, bias=module.bias is not None)
        data, scale = quantize_weight(module.weight.data)
        new.weight = torch.nn.Parameter(data, requires_grad=False)
        if module.bias is not None:
            new.bias = torch.nn.Parameter(module.bias.data, requires_grad=False)
        new.weight_scale = scale
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, new)
    return model
