"""8-bit attention in Triton: int8 q.k, fp8 p.v (SageAttention 2's algorithm, our own kernels; no extra package).

The algorithm (Zhang et al., SageAttention 2): k is smoothed by subtracting its mean over tokens (softmax is invariant
to a per-query constant, so the result does not change), q and k are quantized to int8 and multiplied on int8 tensor
cores; the softmax weights, scaled to e4m3's range, and v, scaled per channel, are multiplied on fp8 tensor cores,
each key block's product accumulated in its own float32 tile before it is added to the output (two-level
accumulation: the tensor cores' fp8 accumulator is narrower than float32).

Granularity here: one int8 scale per query row (folded with the softmax scale and log2(e)), one per block of
`BLOCK_N` keys, one fp8 scale per value channel. Inputs and output are `[B, L, H, D]` (D 64 or 128), the layout the
DiT's projections give; v is rewritten transposed (`[B, H, D, L]`, tokens padded to a whole block) so the fp8 MMA
reads it with the reduction dimension contiguous. Runs where Triton has fp8 tensor-core dots: CUDA sm_89 (Ada),
sm_90 (Hopper) and sm_120 (RTX 50xx); `TRITON_INTERPRET=1` runs it on CPU tensors (tests).
"""

from __future__ import annotations

import importlib
import math

import torch

from . import int8_tiles, kernels

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the install
    triton = None
    tl = None

BLOCK_M, BLOCK_N = 64, 128  # queries per program (one warpgroup); keys per block, k's quantization block
# Key/value blocks in flight. With 2, three programs fit on a Hopper SM (74 KB of shared memory each, 3 stages take
# 107 KB): 5-12% faster than 3 stages from 4,096 to 75,600 keys on an H100 (docs/benchmarks.md)
STAGES = 2
CAPABILITIES = ((8, 9), (9, 0), (12, 0))  # fp8 tensor cores Triton has dots for: Ada, Hopper, Blackwell (RTX 50xx)
AUTO_CAPABILITIES = ((9, 0),)  # where `auto` picks it: measured on Hopper; on the others only when asked for by name
LOG2E = 1.4426950408889634
FP8_MAX = 448.0  # e4m3fn's largest finite value

if triton is not None:

    from .int8_tiles import head_rows, round_int8

    @triton.jit
    def _quant_q_kernel(X, OUT, SCALE, L, factor, s_xb, s_xl, s_xh, s_ob, s_ol, s_oh, s_sb, s_sh,
                        ROWS: tl.constexpr, D: tl.constexpr):
        h, b = tl.program_id(1), tl.program_id(2)
        x, rows, mask = head_rows(X, L, s_xb, s_xl, s_xh, ROWS, D)
        x = x.to(tl.float32)
        scale = tl.max(tl.abs(x), axis=1) / 127.0 + 1e-7
        tl.store(OUT + b * s_ob + h * s_oh + rows * s_ol + tl.arange(0, D)[None, :], round_int8(x, scale[:, None]),
                 mask=mask)
        tl.store(SCALE + b * s_sb + h * s_sh + rows, scale[:, None] * factor, mask=mask)

    @triton.jit
    def _token_sums_kernel(X, SUMS, L, s_xb, s_xl, s_xh, s_sb, s_sh, ROWS: tl.constexpr, D: tl.constexpr):
        """Adds this program's rows of one head to that head's float64 sums over tokens `[B, H, D]`."""
        h, b = tl.program_id(1), tl.program_id(2)
        x, _, _ = head_rows(X, L, s_xb, s_xl, s_xh, ROWS, D)
        tl.atomic_add(SUMS + b * s_sb + h * s_sh + tl.arange(0, D), tl.sum(x.to(tl.float64), axis=0))

    @triton.jit
    def _quant_k_kernel(X, MEAN, OUT, SCALE, L, s_xb, s_xl, s_xh, s_mb, s_mh, s_ob, s_ol, s_oh, s_sb, s_sh,
                        ROWS: tl.constexpr, D: tl.constexpr):
        blk, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        x, rows, mask = head_rows(X, L, s_xb, s_xl, s_xh, ROWS, D)
        mean = tl.load(MEAN + b * s_mb + h * s_mh + tl.arange(0, D))
        x = tl.where(mask, x.to(tl.float32) - mean[None, :], 0.0)
        scale = tl.max(tl.max(tl.abs(x), axis=1), axis=0) / 127.0 + 1e-7
        tl.store(OUT + b * s_ob + h * s_oh + rows * s_ol + tl.arange(0, D)[None, :], round_int8(x, scale), mask=mask)
        tl.store(SCALE + b * s_sb + h * s_sh + blk, scale)

    @triton.jit
    def _quant_v_kernel(X, AMAX, OUT, L, s_xb, s_xl, s_xh, s_ab, s_ah, s_ob, s_oh, s_od,
                        ROWS: tl.constexpr, D: tl.constexpr):
        h, b = tl.program_id(1), tl.program_id(2)
        x, rows, _ = head_rows(X, L, s_xb, s_xl, s_xh, ROWS, D)
        dims = tl.arange(0, D)
        amax = tl.load(AMAX + b * s_ab + h * s_ah + dims)
        v = x.to(tl.float32) * (448.0 / tl.maximum(amax, 1e-30))[None, :]
        tl.store(OUT + b * s_ob + h * s_oh + dims[None, :] * s_od + rows, v.to(OUT.dtype.element_ty))

    @triton.jit
    def _key_block(q, q_scale, m_i, l_i, acc, K, KS, VT, k_row, k_col, v_row, start, Lk, s_kl, s_vd,
                   MASKED: tl.constexpr, TMA: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr):
        """One block of keys: the online softmax's update of (max, sum, output) for this program's queries."""
        cols = start + tl.arange(0, BLOCK_N)
        dims = tl.arange(0, D)
        if TMA:
            k = K.load([k_row + start, k_col])
        elif MASKED:
            k = tl.load(K + cols[:, None] * s_kl + dims[None, :], mask=cols[:, None] < Lk, other=0)
        else:
            k = tl.load(K + cols[:, None] * s_kl + dims[None, :])
        s = tl.dot(q, tl.trans(k), out_dtype=tl.int32).to(tl.float32)
        if MASKED:
            s = tl.where(cols[None, :] < Lk, s, float("-inf"))
        scale = q_scale * tl.load(KS + start // BLOCK_N)  # the scores' dequantization, in log2 units
        m_new = tl.maximum(m_i, tl.max(s, axis=1) * scale)
        # the weights scaled to e4m3's range (448 = 2**8.807) through the exponent; the sum carries the same factor
        p = tl.math.exp2(s * scale[:, None] - (m_new - 8.807354922057604)[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if TMA:
            vt = VT.load([v_row, start])
        else:
            vt = tl.load(VT + dims[:, None] * s_vd + cols[None, :])  # padded with zeros: no mask
        acc = acc * alpha[:, None] + tl.dot(p.to(tl.float8e4nv), tl.trans(vt))  # two-level accumulation
        return m_new, l_i, acc

    @triton.jit
    def _attention_kernel(Q, QS, K, KS, VT, VS, O, Lq, Lk, H,
                          s_qb, s_ql, s_qh, s_qsb, s_qsh, s_kb, s_kl, s_kh, s_ksb, s_ksh,
                          s_vb, s_vh, s_vd, s_vsb, s_vsh, s_ob, s_ol, s_oh,
                          D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TMA: tl.constexpr):
        blk, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, D)
        in_range = rows < Lq
        q = tl.load(Q + b * s_qb + h * s_qh + rows[:, None] * s_ql + dims[None, :], mask=in_range[:, None], other=0)
        q_scale = tl.load(QS + b * s_qsb + h * s_qsh + rows, mask=in_range, other=1.0)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        KS = KS + b * s_ksb + h * s_ksh
        if not TMA:  # descriptors address the whole tensors as 2-D: k `[B * Lk, H * D]`, v `[B * H * D, padded]`
            K = K + b * s_kb + h * s_kh
            VT = VT + b * s_vb + h * s_vh
        k_row, k_col, v_row = b * Lk, h * D, (b * H + h) * D
        full = (Lk // BLOCK_N) * BLOCK_N
        for start in range(0, full, BLOCK_N):
            m_i, l_i, acc = _key_block(q, q_scale, m_i, l_i, acc, K, KS, VT, k_row, k_col, v_row, start, Lk, s_kl,
                                       s_vd, False, TMA, D, BLOCK_N)
        if full < Lk:
            m_i, l_i, acc = _key_block(q, q_scale, m_i, l_i, acc, K, KS, VT, k_row, k_col, v_row, full, Lk, s_kl,
                                       s_vd, True, TMA, D, BLOCK_N)
        v_scale = tl.load(VS + b * s_vsb + h * s_vsh + dims)
        out = acc * (v_scale[None, :] / l_i[:, None])
        tl.store(O + b * s_ob + h * s_oh + rows[:, None] * s_ol + dims[None, :], out.to(O.dtype.element_ty),
                 mask=in_range[:, None])


def _build_errors() -> tuple[type[Exception], ...]:
    """The exceptions Triton raises when it cannot build a kernel for the GPU (names differ across versions)."""
    found = []
    for module, name in (("triton.errors", "TritonError"), ("triton.compiler.errors", "CompilationError"),
                         ("triton.runtime.errors", "OutOfResources"), ("triton.runtime.errors", "PTXASError")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


BUILD_ERRORS = _build_errors() if triton is not None else ()


def supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether `attention` runs these `[B, L, H, D]` tensors on this device."""
    return (
        triton is not None
        and kernels.usable(q)
        and int8_tiles.takes_inputs(q, k, v)
        and (not q.is_cuda or torch.cuda.get_device_capability(q.device) in CAPABILITIES)
    )


def quantize_q(q: torch.Tensor, sm_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`q` `[B, L, H, D]` as int8 and its per-row scales `[B, H, L]`, times `sm_scale * log2(e)`."""
    batch, length, heads, dim = q.shape
    out = torch.empty(q.shape, dtype=torch.int8, device=q.device)
    scale = torch.empty(batch, heads, length, dtype=torch.float32, device=q.device)
    rows = 64
    _quant_q_kernel[(math.ceil(length / rows), heads, batch)](
        q, out, scale, length, sm_scale * LOG2E, *q.stride()[:3], *out.stride()[:3], *scale.stride()[:2],
        ROWS=rows, D=dim, num_warps=4)
    return out, scale


def token_mean(k: torch.Tensor) -> torch.Tensor:
    """The float32 mean over tokens `[B, H, D]` of `k` `[B, L, H, D]`, the same for a head whatever the other heads.
    Its float64 sums of bf16 or fp16 values are exact (unless the values span more than about 2**29), so the order in
    which the programs add theirs changes nothing. `k.mean(dim=1, dtype=torch.float32)` sums in an order that depends
    on the head count: a video split over GPUs by heads (Ulysses) got other int8 keys than on one GPU, and its output
    differed by 0.4% (docs/benchmarks.md); torch's own float64 mean is 10x slower on an H100."""
    batch, length, heads, dim = k.shape
    sums = torch.zeros(batch, heads, dim, dtype=torch.float64, device=k.device)
    rows = 256
    _token_sums_kernel[(math.ceil(length / rows), heads, batch)](
        k, sums, length, *k.stride()[:3], *sums.stride()[:2], ROWS=rows, D=dim, num_warps=4)
    return (sums / length).float()


def quantize_k(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`k - mean(k over tokens)` `[B, L, H, D]` as int8 and one scale per `BLOCK_N` keys `[B, H, blocks]`."""
    batch, length, heads, dim = k.shape
    mean = token_mean(k)
    blocks = math.ceil(length / BLOCK_N)
    out = torch.empty(k.shape, dtype=torch.int8, device=k.device)
    scale = torch.empty(batch, heads, blocks, dtype=torch.float32, device=k.device)
    _quant_k_kernel[(blocks, heads, batch)](
        k, mean, out, scale, length, *k.stride()[:3], *mean.stride()[:2], *out.stride()[:3], *scale.stride()[:2],
        ROWS=BLOCK_N, D=dim, num_warps=8)
    return out, scale


def quantize_v(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`v` `[B, L, H, D]` as fp8 e4m3 `[B, H, D, L padded to BLOCK_N]` and its per-channel scales `[B, H, D]`."""
    batch, length, heads, dim = v.shape
    amax = torch.linalg.vector_norm(v, float("inf"), dim=1).float()  # [B, H, D]
    padded = math.ceil(length / BLOCK_N) * BLOCK_N
    out = torch.empty(batch, heads, dim, padded, dtype=torch.float8_e4m3fn, device=v.device)
    rows = 64
    _quant_v_kernel[(padded // rows, heads, batch)](
        v, amax, out, length, *v.stride()[:3], *amax.stride()[:2], *out.stride()[:3], ROWS=rows, D=dim,
        num_warps=4)
    return out, amax / FP8_MAX


def _descriptors(k8: torch.Tensor, vt: torch.Tensor, dim: int, tma: bool | None):
    """k and v as TMA descriptors (Hopper, Triton >= 3.4; `tma` True or False forces the choice), else the tensors
    themselves."""
    if tma is None:
        tma = k8.is_cuda and torch.cuda.get_device_capability(k8.device) >= (9, 0)
    if not tma:
        return k8, vt, False
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor
    except ImportError:
        return k8, vt, False
    k2 = k8.view(-1, k8.shape[2] * dim)
    v2 = vt.view(-1, vt.shape[-1])
    return (TensorDescriptor(k2, list(k2.shape), list(k2.stride()), [BLOCK_N, dim]),
            TensorDescriptor(v2, list(v2.shape), list(v2.stride()), [dim, BLOCK_N]), True)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tma: bool | None = None) -> torch.Tensor:
    """Softmax attention of `q` `[B, Lq, H, D]` over `k`, `v` `[B, Lk, H, D]` (`supported`), in 8 bits; k and v read
    through TMA descriptors on Hopper (`tma` forces it on or off: the tests run both paths in the interpreter)."""
    batch, length, heads, dim = q.shape
    q8, q_scale = quantize_q(q, dim ** -0.5)
    k8, k_scale = quantize_k(k)
    vt, v_scale = quantize_v(v)
    k_in, v_in, tma = _descriptors(k8, vt, dim, tma)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    _attention_kernel[(math.ceil(length / BLOCK_M), heads, batch)](
        q8, q_scale, k_in, k_scale, v_in, v_scale, out, length, k.shape[1], heads,
        *q8.stride()[:3], *q_scale.stride()[:2], *k8.stride()[:3], *k_scale.stride()[:2],
        *vt.stride()[:3], *v_scale.stride()[:2], *out.stride()[:3],
        D=dim, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, TMA=tma, num_warps=4, num_stages=STAGES)
    return out
