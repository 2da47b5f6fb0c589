"""SageAttention 2's Hopper kernel with its inputs prepared by our own Triton kernels.

`sageattn` on sm_90 spends about 6% of an A14B forward at 480p (4% at 720p) getting q, k and v ready before its
attention kernel runs: a `k.mean`, a bf16 `k - mean` pass, an int8 quantization of q that launches one program per
two rows, a `torch.cat` that pads v, a transpose/permute pass and an fp8 pass over v. Here each tensor is read once:

- q: int8 with one scale per "thread group" of the kernel's per-thread granularity (CTA 64 rows, warps of 16: rows
  `16w + t` and `16w + 8 + t` of a head share scale `8w + t`), `scale = max|x| / 127 + 1e-7`, rounded half away from
  zero;
- k: the same after subtracting the mean over tokens (rounded to the input dtype first, as `k - k.mean()` is), one
  scale per 32 rows (`j*8 + 2t + i` of each 128-row block share scale `4*block + t`);
- v: per channel (head, dim) fp8 e4m3 with `scale = max|v| / 448`, transposed to `[B, head_dim, heads, tokens]`
  (tokens padded with zeros to a multiple of 128), the tokens of each 16 in the order the kernel's fp8 MMA reads
  them (0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15 at positions 0..15).

The self- and cross-attention's q can come straight from its projection (`attention_normed_q`): its RMSNorm over all
heads, the weight and the RoPE rotation are made in the quantization's pass (one program per 16 tokens, which holds
their scale groups whole: it reads the tokens twice, for the norm and then head by head), so the normed q is never
written. Its int8 values are those of `quantize_q` on the unfused path's q but for the norm's summation order (one
int8 step, in a few values per million).

The results are the ones `sageattn` hands its kernel (`tests/test_gpu.py` compares them bit for bit), so the output is
SageAttention's. Used for bf16/fp16 `[B, L, H, 64 or 128]` inputs where SageAttention 2's sm_90 module imports;
`supported` is False elsewhere and the caller runs `sageattn` as it is.
"""

from __future__ import annotations

import functools
import math

import torch

from . import int8_tiles, kernels

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the install
    triton = None
    tl = None

Q_ROWS, K_ROWS, V_TOKENS = 64, 128, 64  # the kernel's CTA_Q, CTA_K; v is padded to K_ROWS
NHD, NOT_CAUSAL, PER_THREAD, NO_LSE = 0, 0, 3, 0  # the sm_90 entry point's layout, mask, granularity, lse flags

if triton is not None:
    from .int8_tiles import head_rows, round_int8

    @triton.jit
    def _quant_q_kernel(X, OUT, SCALE, L, s_xb, s_xl, s_xh, s_ob, s_ol, s_oh, s_sb, s_sh,
                        C: tl.constexpr):
        blk, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        x, rows, mask = head_rows(X, L, s_xb, s_xl, s_xh, 64, C)
        x4 = tl.reshape(x.to(tl.float32), (4, 2, 8, C))  # row 16w + 8i + t -> (w, i, t)
        scale = tl.max(tl.max(tl.abs(x4), axis=3), axis=1) / 127.0 + 0.0000001  # [4, 8]
        q = round_int8(x4, scale[:, None, :, None])
        tl.store(OUT + b * s_ob + h * s_oh + rows * s_ol + tl.arange(0, C)[None, :], tl.reshape(q, (64, C)),
                 mask=mask)
        w, t = tl.arange(0, 4), tl.arange(0, 8)
        tl.store(SCALE + b * s_sb + h * s_sh + (blk * 4 + w)[:, None] * 8 + t[None, :], scale)

    @triton.jit
    def _normed_q_kernel(X, W, FREQS, OUT, SCALE, L, eps, s_xb, s_xl, s_ob, s_ol, s_oh, s_sb, s_sh,
                         H: tl.constexpr, C: tl.constexpr, HAS_ROPE: tl.constexpr):
        band, b = tl.program_id(0), tl.program_id(1).to(tl.int64)
        rows = (band * 16 + tl.arange(0, 16)).to(tl.int64)  # offsets past 2**31 in long videos
        mask = rows[:, None] < L
        cols = tl.arange(0, C)
        x_rows = X + b * s_xb + rows[:, None] * s_xl + cols[None, :]
        squares = tl.zeros([16], tl.float32)
        for h in range(H):
            x = tl.load(x_rows + h * C, mask=mask, other=0.0).to(tl.float32)
            squares += tl.sum(x * x, axis=1)
        rstd = 1.0 / tl.sqrt(squares / (H * C) + eps)
        if HAS_ROPE:  # every head turns by the same angles
            pairs = (rows[:, None] * (C // 2) + tl.arange(0, C // 2)[None, :])[:, :, None] * 2
            cos, sin = tl.split(tl.load(FREQS + pairs + tl.arange(0, 2)[None, None, :], mask=mask[:, :, None],
                                        other=0.0))
        for h in range(H):
            x = tl.load(x_rows + h * C, mask=mask, other=0.0).to(tl.float32)
            x = x * rstd[:, None] * tl.load(W + h * C + cols)[None, :]
            if HAS_ROPE:
                even, odd = tl.split(tl.reshape(x, (16, C // 2, 2)))
                x = tl.reshape(tl.join(even * cos - odd * sin, even * sin + odd * cos), (16, C))
            x4 = tl.reshape(x.to(X.dtype.element_ty).to(tl.float32), (2, 8, C))  # rounded as the unfused q is
            scale = tl.max(tl.max(tl.abs(x4), axis=2), axis=0) / 127.0 + 0.0000001  # rows t and 8 + t share one
            q = round_int8(x4, scale[None, :, None])
            tl.store(OUT + b * s_ob + h * s_oh + rows[:, None] * s_ol + cols[None, :], tl.reshape(q, (16, C)),
                     mask=mask)
            tl.store(SCALE + b * s_sb + h * s_sh + band * 8 + tl.arange(0, 8), scale)

    @triton.jit
    def _quant_k_kernel(X, MEAN, OUT, SCALE, L, s_xb, s_xl, s_xh, s_mb, s_mh, s_ob, s_ol, s_oh, s_sb, s_sh,
                        C: tl.constexpr):
        blk, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        x, rows, mask = head_rows(X, L, s_xb, s_xl, s_xh, 128, C)
        mean = tl.load(MEAN + b * s_mb + h * s_mh + tl.arange(0, C))
        x = (x.to(tl.float32) - mean.to(tl.float32)[None, :]).to(x.dtype)  # `k - km` in k's dtype, as torch does
        x4 = tl.reshape(tl.where(mask, x.to(tl.float32), 0.0), (16, 4, 2, C))  # row 8j + 2t + i -> (j, t, i)
        scale = tl.max(tl.max(tl.max(tl.abs(x4), axis=3), axis=2), axis=0) / 127.0 + 0.0000001  # [4]
        k = round_int8(x4, scale[None, :, None, None])
        tl.store(OUT + b * s_ob + h * s_oh + rows * s_ol + tl.arange(0, C)[None, :], tl.reshape(k, (128, C)),
                 mask=mask)
        tl.store(SCALE + b * s_sb + h * s_sh + blk * 4 + tl.arange(0, 4), scale)

    @triton.jit
    def _quant_v_kernel(X, AMAX, OUT, L, s_xb, s_xl, s_xh, s_ab, s_ah, s_ob, s_od, s_oh, C: tl.constexpr):
        blk, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        pos = tl.arange(0, 64)
        p = pos % 16
        tokens = blk * 64 + (pos // 16) * 16 + (p % 2) + 2 * (p // 4) + 8 * ((p // 2) % 2)  # position -> token
        cols = tl.arange(0, C)
        x = tl.load(X + b * s_xb + h * s_xh + tokens[:, None] * s_xl + cols[None, :], mask=tokens[:, None] < L,
                    other=0.0)
        amax = tl.load(AMAX + b * s_ab + h * s_ah + cols).to(tl.float32)
        v = (x.to(tl.float32) * (448.0 / tl.maximum(amax, 1e-30))[None, :]).to(OUT.dtype.element_ty)
        out = OUT + b * s_ob + h * s_oh + cols[None, :] * s_od + (blk * 64 + pos)[:, None]
        tl.store(tl.trans(out), tl.trans(v))


@functools.cache
def _kernel_entry():
    """SageAttention 2's sm_90 attention op with v scales (None where it does not import)."""
    try:
        from sageattention import sm90_compile  # noqa: F401  (registers the op)
    except Exception:
        return None
    return getattr(torch.ops.sageattention_sm90, "qk_int8_sv_f8_accum_f32_fuse_v_scale_attn_inst_buf", None)


def supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether `attention` runs these `[B, L, H, D]` tensors (else call `sageattn`)."""
    return (
        triton is not None
        and kernels.ENABLED
        and q.is_cuda
        and int8_tiles.takes_inputs(q, k, v)
        and torch.cuda.get_device_capability(q.device) == (9, 0)
        and _kernel_entry() is not None
    )


def quantize_q(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`q` `[B, L, H, D]` as int8 (same shape) and its per-thread scales `[B, H, ceil(L/64) * 32]`."""
    batch, length, heads, dim = q.shape
    out = torch.empty(q.shape, dtype=torch.int8, device=q.device)
    scale = torch.empty(batch, heads, math.ceil(length / Q_ROWS) * 32, dtype=torch.float32, device=q.device)
    _quant_q_kernel[(math.ceil(length / Q_ROWS), heads, batch)](
        q, out, scale, length, q.stride(0), q.stride(1), q.stride(2), out.stride(0), out.stride(1), out.stride(2),
        scale.stride(0), scale.stride(1), C=dim, num_warps=4)
    return out, scale


def quantize_normed_q(
    x: torch.Tensor, weight: torch.Tensor, eps: float, freqs: torch.Tensor | None, heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_q` of the q that `kernels.rms_norm_rope(x, weight, eps, freqs, head_dim)` makes of the projection `x`
    `[B, L, heads * head_dim]`, in one pass (the module docstring)."""
    x = x.contiguous()
    batch, length, dim = x.shape
    blocks = math.ceil(length / Q_ROWS)
    out = torch.empty(batch, length, heads, dim // heads, dtype=torch.int8, device=x.device)
    scale = torch.empty(batch, heads, blocks * 32, dtype=torch.float32, device=x.device)
    table = torch.view_as_real(freqs).contiguous() if freqs is not None else x  # unused without RoPE
    _normed_q_kernel[(blocks * Q_ROWS // 16, batch)](
        x, weight.float().contiguous(), table, out, scale, length, eps, x.stride(0), x.stride(1), out.stride(0),
        out.stride(1), out.stride(2), scale.stride(0), scale.stride(1), H=heads, C=dim // heads,
        HAS_ROPE=freqs is not None, num_warps=4)
    return out, scale


def quantize_k(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`k - mean(k over tokens)` `[B, L, H, D]` as int8 and its per-thread scales `[B, H, ceil(L/128) * 4]`."""
    batch, length, heads, dim = k.shape
    mean = k.mean(dim=1)  # [B, H, D] in k's dtype, as sageattn's smoothing computes it
    out = torch.empty(k.shape, dtype=torch.int8, device=k.device)
    scale = torch.empty(batch, heads, math.ceil(length / K_ROWS) * 4, dtype=torch.float32, device=k.device)
    _quant_k_kernel[(math.ceil(length / K_ROWS), heads, batch)](
        k, mean, out, scale, length, k.stride(0), k.stride(1), k.stride(2), mean.stride(0), mean.stride(1),
        out.stride(0), out.stride(1), out.stride(2), scale.stride(0), scale.stride(1), C=dim, num_warps=8)
    return out, scale


def quantize_v(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`v` `[B, L, H, D]` as fp8 e4m3 `[B, D, H, ceil(L/128) * 128]` (see the module docstring) and its per-channel
    scales `[B, H, D]`."""
    batch, length, heads, dim = v.shape
    amax = torch.linalg.vector_norm(v, float("inf"), dim=1).float()  # [B, H, D]
    padded = math.ceil(length / K_ROWS) * K_ROWS
    out = torch.empty(batch, dim, heads, padded, dtype=torch.float8_e4m3fn, device=v.device)
    _quant_v_kernel[(padded // V_TOKENS, heads, batch)](
        v, amax, out, length, v.stride(0), v.stride(1), v.stride(2), amax.stride(0), amax.stride(1),
        out.stride(0), out.stride(1), out.stride(2), C=dim, num_warps=4)
    return out, amax / 448.0


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention of `[B, L, H, D]` tensors (`supported`), SageAttention 2's sm_90 kernel, into `out` (a
    contiguous tensor like `q`) where given."""
    return _attention(*quantize_q(q), k, v, out)


def attention_normed_q(
    x: torch.Tensor, weight: torch.Tensor, eps: float, freqs: torch.Tensor | None, k: torch.Tensor, v: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """`attention` of the q `kernels.rms_norm_rope` makes of the projection `x` `[B, L, H * D]`, over `k`, `v`
    `[B, Lk, H, D]` (`supported` for `x` viewed as `[B, L, H, D]`), its norm made in its quantization's pass."""
    return _attention(*quantize_normed_q(x, weight, eps, freqs, k.shape[2]), k, v, out)


def _attention(
    q_int8: torch.Tensor, q_scale: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor | None
) -> torch.Tensor:
    k_int8, k_scale = quantize_k(k)
    v_fp8, v_scale = quantize_v(v)
    out = torch.empty(q_int8.shape, dtype=k.dtype, device=k.device) if out is None else out
    _kernel_entry()(q_int8, k_int8, v_fp8, out, q_scale, k_scale, v_scale, NHD, NOT_CAUSAL, PER_THREAD,
                    q_int8.shape[-1] ** -0.5, NO_LSE)
    return out
