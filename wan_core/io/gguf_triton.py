"""GGUF block dequantization in one Triton kernel per call, for every block format city96's Wan files use (Q4_0,
Q4_1, Q5_0, Q5_1, Q8_0 and the k-quants Q2_K ... Q6_K that the `_K_M` / `_K_S` files mix).

The torch path (`gguf_dequant`) spends a dozen elementwise passes with float32 and integer intermediates per tensor;
a GGUF expert dequantizes every block Linear in every forward, so that is most of what a GGUF forward costs beyond a
bf16 one. Here each value is read from its block's bytes and written once in the target dtype. The arithmetic is the
torch path's, operation for operation in float32, with floating-point contraction off (`enable_fp_fusion=False`: no
fused multiply-add), so the values are the same bits. CUDA only (and Triton's CPU interpreter, for tests);
`WAN_CORE_TRITON=0` turns it off.
"""

from __future__ import annotations

import contextlib

import torch

from .. import triton_support
from ..triton_support import tl, triton

_ENABLED = triton_support.ENABLED
# ggml type id: (elements per block, bytes per block, blocks per program)
_LAYOUTS = {2: (32, 18, 64), 3: (32, 20, 64), 6: (32, 22, 64), 7: (32, 24, 64), 8: (32, 34, 64),
            10: (256, 84, 8), 11: (256, 110, 8), 12: (256, 144, 8), 13: (256, 176, 8), 14: (256, 210, 8)}


def handles(raw: torch.Tensor, qtype: int, dtype: torch.dtype) -> bool:
    """Whether `dequantize` serves these raw bytes (else use the torch path, which is also what a compiled region
    traces: the compiler fuses its ops itself)."""
    return (_ENABLED and triton is not None and qtype in _LAYOUTS and (raw.is_cuda or triton_support.INTERPRET)
            and dtype in (torch.float32, torch.bfloat16, torch.float16) and not torch.compiler.is_compiling())


if triton is not None:

    @triton.jit
    def _f16(ptr, mask):
        """The little-endian fp16 at `ptr` (uint8 pointers), as float32."""
        low = tl.load(ptr, mask=mask, other=0).to(tl.uint16)
        high = tl.load(ptr + 1, mask=mask, other=0).to(tl.uint16)
        return (low | (high << 8)).to(tl.float16, bitcast=True).to(tl.float32)

    @triton.jit
    def _byte(ptr, mask):
        return tl.load(ptr, mask=mask, other=0).to(tl.int32)

    @triton.jit
    def _scale_min_k4(scales, sub, mask):
        """Sub-block `sub`'s six-bit scale and min of a Q4_K / Q5_K block (12 packed bytes at `scales`)."""
        first = sub < 4
        a = _byte(scales + sub, mask)
        b = _byte(scales + sub + 4, mask)
        c = _byte(scales + tl.where(first, 0, sub - 4), mask)
        sc = tl.where(first, a & 63, (b & 0xF) | ((c >> 2) & 0x30))
        mn = tl.where(first, b & 63, (b >> 4) | ((a >> 2) & 0x30))
        return sc.to(tl.float32), mn.to(tl.float32)

    @triton.jit
    def _dequant_kernel(RAW, OUT, n_blocks, QTYPE: tl.constexpr, ELEMS: tl.constexpr, SIZE: tl.constexpr,
                        BLOCKS: tl.constexpr):
        block = tl.program_id(0) * BLOCKS + tl.arange(0, BLOCKS)[:, None]
        e = tl.arange(0, ELEMS)[None, :]
        mask = block < n_blocks
        base = RAW + block.to(tl.int64) * SIZE
        if QTYPE == 8:  # Q8_0: d, 32 int8
            q = tl.load(base + 2 + e, mask=mask, other=0).to(tl.int8, bitcast=True).to(tl.float32)
            value = q * _f16(base, mask)
        elif QTYPE == 2 or QTYPE == 3:  # Q4_0 (d, qs[16]: q - 8) and Q4_1 (d, m, qs[16]: d q + m)
            offset: tl.constexpr = 2 if QTYPE == 2 else 4
            q = (_byte(base + offset + e % 16, mask) >> (4 * (e // 16))) & 0xF
            if QTYPE == 2:
                value = _f16(base, mask) * (q - 8).to(tl.float32)
            else:
                value = _f16(base, mask) * q.to(tl.float32) + _f16(base + 2, mask)
        elif QTYPE == 6 or QTYPE == 7:  # Q5_0 (d, qh[4], qs[16]: q - 16) and Q5_1 (d, m, qh[4], qs[16]: d q + m)
            offset: tl.constexpr = 2 if QTYPE == 6 else 4
            high = (_byte(base + offset + e // 8, mask) >> (e % 8)) & 1
            q = ((_byte(base + offset + 4 + e % 16, mask) >> (4 * (e // 16))) & 0xF) | (high << 4)
            if QTYPE == 6:
                value = _f16(base, mask) * (q - 16).to(tl.float32)
            else:
                value = _f16(base, mask) * q.to(tl.float32) + _f16(base + 2, mask)
        elif QTYPE == 14:  # Q6_K: ql[128], qh[64], int8 scales[16], d
            low = (_byte(base + (e // 128) * 64 + e % 64, mask) >> (4 * ((e // 64) % 2))) & 0xF
            high = (_byte(base + 128 + (e // 128) * 32 + e % 32, mask) >> (2 * ((e // 32) % 4))) & 3
            q = ((low | (high << 4)) - 32).to(tl.float32)
            scale = tl.load(base + 192 + e // 16, mask=mask, other=0).to(tl.int8, bitcast=True).to(tl.float32)
            value = (_f16(base + 208, mask) * scale) * q
        elif QTYPE == 10:  # Q2_K: scales[16] (4-bit scale, 4-bit min), qs[64], d, dmin
            scale = _byte(base + e // 16, mask)
            q = ((_byte(base + 16 + (e // 128) * 32 + e % 32, mask) >> (2 * ((e // 32) % 4))) & 3).to(tl.float32)
            value = (_f16(base + 80, mask) * (scale & 0xF).to(tl.float32)) * q - _f16(base + 82, mask) * (
                scale >> 4).to(tl.float32)
        elif QTYPE == 11:  # Q3_K: hmask[32], qs[64], scales[12] (6-bit, offset 32), d
            sub = e // 16
            low = (_byte(base + 96 + sub % 8, mask) >> (4 * (sub // 8))) & 0xF
            high = (_byte(base + 104 + sub % 4, mask) >> (2 * (sub // 4))) & 3
            low_bits = (_byte(base + 32 + (e // 128) * 32 + e % 32, mask) >> (2 * ((e // 32) % 4))) & 3
            high_bit = ((_byte(base + e % 32, mask) >> (e // 32)) & 1) ^ 1
            q = (low_bits - (high_bit << 2)).to(tl.float32)
            value = (_f16(base + 108, mask) * ((low | (high << 4)) - 32).to(tl.float32)) * q
        else:  # Q4_K (d, dmin, scales[12], qs[128]) and Q5_K (the same, qh[32] before qs)
            sub = e // 32
            sc, mn = _scale_min_k4(base + 4, sub, mask)
            qs = base + 48 if QTYPE == 13 else base + 16
            q = (_byte(qs + (e // 64) * 32 + e % 32, mask) >> (4 * (sub % 2))) & 0xF
            if QTYPE == 13:
                q = q | (((_byte(base + 16 + e % 32, mask) >> sub) & 1) << 4)
            value = (_f16(base, mask) * sc) * q.to(tl.float32) - _f16(base + 2, mask) * mn
        tl.store(OUT + block.to(tl.int64) * ELEMS + e, value.to(OUT.dtype.element_ty), mask=mask)


def dequantize(raw: torch.Tensor, qtype: int, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """The `numel` values stored as ggml type `qtype` in the bytes `raw` (uint8), flat, in `dtype`; `handles` first."""
    elems, size, blocks = _LAYOUTS[qtype]
    n_blocks = numel // elems
    out = torch.empty(numel, dtype=dtype, device=raw.device)
    grid = (triton.cdiv(n_blocks, blocks),)
    with torch.cuda.device(raw.device) if raw.is_cuda else contextlib.nullcontext():
        _dequant_kernel[grid](raw.contiguous(), out, n_blocks, QTYPE=qtype, ELEMS=elems, SIZE=size, BLOCKS=blocks,
                              enable_fp_fusion=False)
    return out
