"""Fused Triton kernels for the DiT's memory-bound steps (CUDA only; the model falls back to PyTorch ops elsewhere).

- `modulated_layer_norm`: `layer_norm(x) * (1 + scale) + shift` of the float32 residual, written once in the
  compute dtype (PyTorch: a float32 LayerNorm pass, then a cast pass).
  With a `Residual`, the pending update `x += y * gate` is made in the same pass (its float32 result written back
  into `x`), so the residual stream is read once for the update and the norm instead of twice.
- `modulated_layer_norm_fp8` / `quantize_rows`: the same norm, or any activation (optionally through GELU-tanh
  first: the FFN's hidden layer), written as float8 e4m3 rows with one float32 scale per row, the input of the
  rowwise-scaled fp8 matmuls (`fp8.py`), in the one pass.
- `rms_norm_rope`: the RMSNorm over the whole projection times its weight, then the 3-D RoPE rotation of
  consecutive pairs, all in float32 registers, read once and written once in the compute dtype (PyTorch: an upcast,
  a norm, a complex multiply and a downcast, each a full pass).

Under `torch.compile` they are called as custom ops (`torch.ops.wan_core.*`), opaque to the compiler, so a
compiled block has no graph break. Set `WAN_CORE_TRITON=0` to turn them off. `TRITON_INTERPRET=1` runs them on CPU
tensors (tests).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import triton_support
from ..triton_support import tl, triton

ENABLED = triton_support.ENABLED


def usable(x: torch.Tensor) -> bool:
    """Whether the fused kernels can run on `x` here."""
    return ENABLED and triton is not None and (x.is_cuda or triton_support.INTERPRET)


def _warps(block: int) -> int:
    return max(1, min(16, block // 256))


if triton is not None:

    @triton.jit
    def _modulated_ln_kernel(X, OUT, SCALE, SHIFT, ROW_SCALE, Y, GATE, rows_per_mod, rows_per_gate, D, eps,
                             PLUS_ONE: tl.constexpr, QUANT: tl.constexpr, RESIDUAL: tl.constexpr,
                             GATED: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < D
        x = tl.load(X + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        if RESIDUAL:
            y = tl.load(Y + row * D + cols, mask=mask, other=0.0).to(tl.float32)
            if GATED:
                y = y * tl.load(GATE + (row // rows_per_gate) * D + cols, mask=mask, other=0.0).to(tl.float32)
            x = x + y
            tl.store(X + row * D + cols, x, mask=mask)
        mean = tl.sum(x, axis=0) / D
        xc = tl.where(mask, x - mean, 0.0)
        var = tl.sum(xc * xc, axis=0) / D
        rstd = 1.0 / tl.sqrt(var + eps)
        m = row // rows_per_mod
        scale = tl.load(SCALE + m * D + cols, mask=mask, other=0.0).to(tl.float32)
        shift = tl.load(SHIFT + m * D + cols, mask=mask, other=0.0).to(tl.float32)
        if PLUS_ONE:
            scale = scale + 1.0
        y = xc * rstd * scale + shift
        if QUANT:
            y, row_scale = _fp8_row(y, mask)
            tl.store(ROW_SCALE + row, row_scale)
        tl.store(OUT + row * D + cols, y.to(OUT.dtype.element_ty), mask=mask)

    @triton.jit
    def _fp8_row(y, mask):
        """`y / s` and `s = max|y| / 448` (e4m3's largest finite value): the row's fp8 values and scale."""
        amax = tl.max(tl.where(mask, tl.abs(y), 0.0), axis=0)
        row_scale = tl.maximum(amax / 448.0, 1e-12)
        return y / row_scale, row_scale

    @triton.jit
    def _quantize_rows_kernel(X, OUT, ROW_SCALE, D, GELU: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < D
        y = tl.load(X + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        if GELU:  # tanh approximation; tanh(z) = 2 * sigmoid(2z) - 1
            z = 0.7978845608028654 * (y + 0.044715 * y * y * y)
            y = y * tl.sigmoid(2.0 * z)
        y, row_scale = _fp8_row(y, mask)
        tl.store(ROW_SCALE + row, row_scale)
        tl.store(OUT + row * D + cols, y.to(OUT.dtype.element_ty), mask=mask)

    @triton.jit
    def _rms_rope_kernel(X, OUT, W, FREQS, seq_len, HALF, half_head, eps,
                         HAS_ROPE: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        j = tl.arange(0, BLOCK)
        offs = 2 * j[:, None] + tl.arange(0, 2)[None, :]
        mask2 = offs < 2 * HALF
        x = tl.load(X + row * 2 * HALF + offs, mask=mask2, other=0.0).to(tl.float32)
        ss = tl.sum(tl.sum(x * x, axis=1), axis=0)
        rstd = 1.0 / tl.sqrt(ss / (2 * HALF) + eps)
        w = tl.load(W + offs, mask=mask2, other=0.0).to(tl.float32)
        x = x * rstd * w
        if HAS_ROPE:
            xe, xo = tl.split(x)
            tok = row % seq_len
            p = j % half_head
            f = tl.load(FREQS + (tok * half_head + p)[:, None] * 2 + tl.arange(0, 2)[None, :],
                        mask=mask2, other=0.0)
            cos, sin = tl.split(f)
            x = tl.join(xe * cos - xo * sin, xe * sin + xo * cos)
        tl.store(OUT + row * 2 * HALF + offs, x.to(OUT.dtype.element_ty), mask=mask2)


class Residual(NamedTuple):
    """A residual update `x += y * gate` (`gate` None: `x += y`) of the float32 stream, left for the next norm to
    make in its own pass over `x`; `add_to` makes it on its own."""

    y: torch.Tensor
    gate: torch.Tensor | None = None

    def add_to(self, x: torch.Tensor, inplace: bool = True) -> torch.Tensor:
        if self.gate is None:
            return x.add_(self.y) if inplace else x + self.y
        return x.addcmul_(self.y, self.gate) if inplace else x.addcmul(self.y, self.gate)


def modulated_layer_norm(
    x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float, dtype: torch.dtype, plus_one: bool = True,
    residual: Residual | None = None,
) -> torch.Tensor:
    """`layer_norm(x) * (plus_one + scale) + shift` in `dtype`.

    `x` `[B, L, D]`; `scale`/`shift` (and the residual's gate) `[B, 1, D]` (per sample), `[B, L, D]` (per token) or
    `[D]` (shared). With `residual` (`y` `[B, L, D]`), `x` (float32) is first updated in place by it and the norm is of
    the updated `x`.
    """
    if torch.compiler.is_compiling():
        if residual is not None:
            residual.add_to(x)
        return torch.ops.wan_core.modulated_layer_norm(x, scale, shift, eps, dtype, plus_one)
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    _launch_modulated_ln(x, scale, shift, eps, plus_one, out, None, residual)
    return out


def modulated_layer_norm_fp8(
    x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float, plus_one: bool = True,
    residual: Residual | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`modulated_layer_norm` written as float8 e4m3 rows with one float32 scale per row (`[B, L, 1]`), for the
    rowwise-scaled fp8 matmul that follows: the quantization costs no extra pass over the activation."""
    if torch.compiler.is_compiling():
        if residual is not None:
            residual.add_to(x)
        return torch.ops.wan_core.modulated_layer_norm_fp8(x, scale, shift, eps, plus_one)
    out = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
    row_scale = torch.empty(*x.shape[:-1], 1, dtype=torch.float32, device=x.device)
    _launch_modulated_ln(x, scale, shift, eps, plus_one, out, row_scale, residual)
    return out, row_scale


def quantize_rows(x: torch.Tensor, gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` `[..., D]` (with `gelu`: GELU-tanh of `x`) as float8 e4m3 rows and float32 row scales `[..., 1]`
    (max|row| / 448), in one pass."""
    if torch.compiler.is_compiling():
        return torch.ops.wan_core.quantize_rows(x, gelu)
    x = x.contiguous()
    dim = x.shape[-1]
    out = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
    row_scale = torch.empty(*x.shape[:-1], 1, dtype=torch.float32, device=x.device)
    block = triton.next_power_of_2(dim)
    _quantize_rows_kernel[(x.numel() // dim,)](x, out, row_scale, dim, GELU=gelu, BLOCK=block,
                                               num_warps=_warps(block))
    return out, row_scale


def _per_row(t: torch.Tensor, batch: int, seq: int, dim: int) -> tuple[torch.Tensor, int]:
    """A modulation tensor (`[D]`, `[B, 1, D]` or `[B, L, D]`) as float32 rows `[R, D]`, and how many of the
    `batch * seq` token rows share each of them."""
    if t.dim() == 1:
        return t.reshape(1, dim).float().contiguous(), batch * seq
    if t.shape[1] == 1:
        rows = t.reshape(-1, dim).float().contiguous()
        return rows, (batch * seq if rows.shape[0] == 1 and batch > 1 else seq)
    return t.expand(batch, seq, dim).reshape(batch * seq, dim).float().contiguous(), 1


def _launch_modulated_ln(
    x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float, plus_one: bool, out: torch.Tensor,
    row_scale: torch.Tensor | None, residual: Residual | None,
) -> None:
    batch, seq, dim = x.shape
    if residual is not None and not (x.is_contiguous() and x.dtype == torch.float32):
        residual.add_to(x)  # the kernel writes the update back only into a float32 contiguous x
        residual = None
    x = x.contiguous()
    scale2, rows_per_mod = _per_row(scale, batch, seq, dim)
    shift2, _ = _per_row(shift, batch, seq, dim)
    gated = residual is not None and residual.gate is not None
    gate2, rows_per_gate = _per_row(residual.gate, batch, seq, dim) if gated else (x, 1)
    block = triton.next_power_of_2(dim)
    quant = row_scale is not None
    _modulated_ln_kernel[(batch * seq,)](
        x, out, scale2, shift2, row_scale if quant else out, residual.y.contiguous() if residual is not None else x,
        gate2, rows_per_mod, rows_per_gate, dim, eps, PLUS_ONE=plus_one, QUANT=quant, RESIDUAL=residual is not None,
        GATED=gated, BLOCK=block, num_warps=_warps(block),
    )  # fmt: skip


def rms_norm_rope(
    x: torch.Tensor, weight: torch.Tensor, eps: float, freqs: torch.Tensor | None, head_dim: int
) -> torch.Tensor:
    """RMSNorm of `x` `[B, L, D]` over D times `weight`, then (with `freqs`, complex64 `[L, head_dim/2]`) the RoPE
    rotation of each head's consecutive pairs; returned in `x.dtype`."""
    batch, seq, dim = x.shape
    if torch.compiler.is_compiling():
        return torch.ops.wan_core.rms_norm_rope(x, weight, eps, freqs, head_dim)
    x = x.contiguous()
    out = torch.empty_like(x)
    half = dim // 2
    table = torch.view_as_real(freqs).contiguous() if freqs is not None else x  # unused without rope
    block = triton.next_power_of_2(half)
    _rms_rope_kernel[(batch * seq,)](x, out, weight.float().contiguous(), table, seq, half, head_dim // 2, eps,
                                     HAS_ROPE=freqs is not None, BLOCK=block, num_warps=_warps(block))
    return out


# torch.compile: the kernels as opaque custom ops (no graph break inside a compiled block); eager calls skip them.
if triton is not None:

    @torch.library.custom_op("wan_core::modulated_layer_norm", mutates_args=())
    def _modulated_layer_norm_op(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float,
                                 dtype: torch.dtype, plus_one: bool) -> torch.Tensor:
        return modulated_layer_norm(x, scale, shift, eps, dtype, plus_one)

    @_modulated_layer_norm_op.register_fake
    def _(x, scale, shift, eps, dtype, plus_one):
        return x.new_empty(x.shape, dtype=dtype)

    @torch.library.custom_op("wan_core::modulated_layer_norm_fp8", mutates_args=())
    def _modulated_layer_norm_fp8_op(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float,
                                     plus_one: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return modulated_layer_norm_fp8(x, scale, shift, eps, plus_one)

    @_modulated_layer_norm_fp8_op.register_fake
    def _(x, scale, shift, eps, plus_one):
        return x.new_empty(x.shape, dtype=torch.float8_e4m3fn), x.new_empty(*x.shape[:-1], 1, dtype=torch.float32)

    @torch.library.custom_op("wan_core::quantize_rows", mutates_args=())
    def _quantize_rows_op(x: torch.Tensor, gelu: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return quantize_rows(x, gelu)

    @_quantize_rows_op.register_fake
    def _(x, gelu):
        return x.new_empty(x.shape, dtype=torch.float8_e4m3fn), x.new_empty(*x.shape[:-1], 1, dtype=torch.float32)

    @torch.library.custom_op("wan_core::rms_norm_rope", mutates_args=())
    def _rms_norm_rope_op(x: torch.Tensor, weight: torch.Tensor, eps: float, freqs: torch.Tensor | None,
                          head_dim: int) -> torch.Tensor:
        return rms_norm_rope(x, weight, eps, freqs, head_dim)

    @_rms_norm_rope_op.register_fake
    def _(x, weight, eps, freqs, head_dim):
        return torch.empty_like(x)
