"""What the two 8-bit attentions (`attention8`, `sage_sm90`) share: the inputs they take, and the Triton helpers of
their input kernels (one program's block of token rows of one head, SageAttention's int8 rounding)."""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the install
    triton = None
    tl = None


def takes_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether `[B, L, H, D]` q, k, v have the form both 8-bit kernels take: fp16 or bf16 alike, head dim 64 or 128,
    the same heads, channels contiguous."""
    return (
        q.dtype in (torch.float16, torch.bfloat16)
        and q.dtype == k.dtype == v.dtype
        and q.shape[-1] in (64, 128)
        and q.shape[2] == k.shape[2] == v.shape[2]
        and q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
    )


if triton is not None:

    @triton.jit
    def round_int8(x, scale):
        """`x / scale` rounded half away from zero, then truncated to int8 (SageAttention's quantization)."""
        y = x / scale
        y += 0.5 * tl.where(y >= 0, 1.0, -1.0)
        return y.to(tl.int8)

    @triton.jit
    def head_rows(X, L, s_xb, s_xl, s_xh, ROWS: tl.constexpr, C: tl.constexpr):
        """This program's block of `ROWS` token rows of one head of `X` `[B, L, H, C]` (program ids: block, head,
        batch): (values, row indices `[ROWS, 1]`, in-range mask), rows past `L` read as 0."""
        blk, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        rows = blk * ROWS + tl.arange(0, ROWS)
        mask = rows[:, None] < L
        x = tl.load(X + b * s_xb + h * s_xh + rows[:, None] * s_xl + tl.arange(0, C)[None, :], mask=mask, other=0.0)
        return x, rows[:, None], mask
