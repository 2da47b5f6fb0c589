"""GGUF (ggml) block formats dequantized with torch, on whatever device the raw bytes are.

The layouts and arithmetic follow ggml (`ggml-quants.c`) as written in the `gguf` package's numpy reference
(`gguf.quants`), operation for operation in float32, so the results are the same numbers. Each function takes the raw
blocks `[n_blocks, type_size]` (uint8) and returns `[n_blocks, block_size]` float32.

Supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and the k-quants Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (the `_S`/`_M`
file variants mix these per tensor). On CUDA, the block formats go through one Triton kernel instead
(`gguf_triton`, the same arithmetic, the same bits).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..errors import CheckpointError
from . import gguf_triton

QK_K = 256
K_SCALE_SIZE = 12

# ggml type id: (name, elements per block, bytes per block); the ids are ggml's `GGMLQuantizationType`.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 30: ("BF16", 1, 2),
    2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34),
    10: ("Q2_K", QK_K, 84), 11: ("Q3_K", QK_K, 110), 12: ("Q4_K", QK_K, 144), 13: ("Q5_K", QK_K, 176),
    14: ("Q6_K", QK_K, 210),
}
FLOAT_TYPES = {0: torch.float32, 1: torch.float16, 30: torch.bfloat16}


def _f16(raw: torch.Tensor) -> torch.Tensor:
    """Little-endian fp16 values stored in the last dim of a uint8 tensor, as float32 `[..., n // 2]`."""
    return raw.contiguous().view(torch.float16).float()


def _bits(x: torch.Tensor, shifts: Sequence[int], mask: int) -> torch.Tensor:
    """`(x[..., None, :] >> shifts) & mask` for a uint8 `[..., k, n]` view: `[..., k, len(shifts), n]`."""
    shift = torch.tensor(shifts, dtype=torch.uint8, device=x.device).view(len(shifts), 1)
    return (x.unsqueeze(-2) >> shift) & mask


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _f16(blocks[:, :2])
    return blocks[:, 2:].contiguous().view(torch.int8).float() * d


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _f16(blocks[:, :2])
    qs = _bits(blocks[:, 2:], (0, 4), 0x0F).reshape(blocks.shape[0], 32)
    return d * (qs.to(torch.int8) - 8).float()


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    d, m = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])
    qs = _bits(blocks[:, 4:], (0, 4), 0x0F).reshape(blocks.shape[0], 32).float()
    return d * qs + m


def _high_bits(qh: torch.Tensor) -> torch.Tensor:
    """The 32 fifth bits of a Q5_0/Q5_1 block (little-endian uint32 `qh`) as `[n, 32]` uint8."""
    n = qh.shape[0]
    word = qh.contiguous().view(torch.int32).view(n, 1)
    shifts = torch.arange(32, dtype=torch.int32, device=qh.device).view(1, 32)
    return ((word >> shifts) & 1).to(torch.uint8)


def _q5_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _f16(blocks[:, :2])
    qh = _high_bits(blocks[:, 2:6])
    ql = _bits(blocks[:, 6:], (0, 4), 0x0F).reshape(blocks.shape[0], 32)
    q = (ql | (qh << 4)).to(torch.int8) - 16
    return d * q.float()


def _q5_1(blocks: torch.Tensor) -> torch.Tensor:
    d, m = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])
    qh = _high_bits(blocks[:, 4:8])
    ql = _bits(blocks[:, 8:], (0, 4), 0x0F).reshape(blocks.shape[0], 32)
    return d * (ql | (qh << 4)).float() + m


def _q2_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    scales, qs = blocks[:, : QK_K // 16], blocks[:, QK_K // 16 : QK_K // 16 + QK_K // 4]
    d, dmin = _f16(blocks[:, -4:-2]), _f16(blocks[:, -2:])
    dl = (d * (scales & 0x0F).float()).view(n, QK_K // 16, 1)
    ml = (dmin * (scales >> 4).float()).view(n, QK_K // 16, 1)
    q = _bits(qs.reshape(n, -1, 32), (0, 2, 4, 6), 3).reshape(n, QK_K // 16, 16).float()
    return (dl * q - ml).reshape(n, QK_K)


def _q3_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    hmask = blocks[:, : QK_K // 8]
    qs = blocks[:, QK_K // 8 : QK_K // 8 + QK_K // 4]
    scales = blocks[:, QK_K // 8 + QK_K // 4 : -2]
    d = _f16(blocks[:, -2:])
    low = _bits(scales[:, :8].reshape(n, 1, 8), (0, 4), 0x0F).reshape(n, 16)
    high = _bits(scales[:, 8:].reshape(n, 1, 4), (0, 2, 4, 6), 0x03).reshape(n, 16)
    sc = ((low | (high << 4)).to(torch.int8) - 32).float()
    dl = (d * sc).view(n, 16, 1)
    ql = _bits(qs.reshape(n, -1, 32), (0, 2, 4, 6), 3).reshape(n, 16, QK_K // 16)
    qh = _bits(hmask.reshape(n, -1, 32), tuple(range(8)), 1).reshape(n, 16, QK_K // 16) ^ 1
    q = (ql.to(torch.int8) - (qh << 2).to(torch.int8)).float()
    return (dl * q).reshape(n, QK_K)


def _scale_min_k4(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 six-bit scales and mins of a Q4_K/Q5_K block (packed in 12 bytes) as float32 `[n, 8]` each."""
    n = scales.shape[0]
    d, m, m_d = scales.reshape(n, 3, 4).unbind(1)
    sc = torch.cat([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc.float(), mn.float()


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d, dmin = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])
    sc, mn = _scale_min_k4(blocks[:, 4 : 4 + K_SCALE_SIZE])
    dl = (d * sc).view(n, -1, 1)
    dm = (dmin * mn).view(n, -1, 1)
    q = _bits(blocks[:, 4 + K_SCALE_SIZE :].reshape(n, -1, 32), (0, 4), 0x0F).reshape(n, -1, 32).float()
    return (dl * q - dm).reshape(n, QK_K)


def _q5_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d, dmin = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])
    sc, mn = _scale_min_k4(blocks[:, 4 : 4 + K_SCALE_SIZE])
    qh = blocks[:, 4 + K_SCALE_SIZE : 4 + K_SCALE_SIZE + QK_K // 8]
    qs = blocks[:, 4 + K_SCALE_SIZE + QK_K // 8 :]
    dl = (d * sc).view(n, -1, 1)
    dm = (dmin * mn).view(n, -1, 1)
    ql = _bits(qs.reshape(n, -1, 32), (0, 4), 0x0F).reshape(n, -1, 32)
    high = _bits(qh.reshape(n, -1, 32), tuple(range(8)), 1).reshape(n, -1, 32)
    q = (ql | (high << 4)).float()
    return (dl * q - dm).reshape(n, QK_K)


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    ql, qh = blocks[:, : QK_K // 2], blocks[:, QK_K // 2 : QK_K // 2 + QK_K // 4]
    scales = blocks[:, QK_K // 2 + QK_K // 4 : -2].contiguous().view(torch.int8).float()
    d = _f16(blocks[:, -2:])
    dl = (d * scales).view(n, QK_K // 16, 1)
    low = _bits(ql.reshape(n, -1, 64), (0, 4), 0x0F).reshape(n, -1, 32)
    high = _bits(qh.reshape(n, -1, 32), (0, 2, 4, 6), 0x03).reshape(n, -1, 32)
    q = ((low | (high << 4)).to(torch.int8) - 32).reshape(n, QK_K // 16, -1).float()
    return (dl * q).reshape(n, QK_K)


_BLOCK_DEQUANT: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    8: _q8_0, 2: _q4_0, 3: _q4_1, 6: _q5_0, 7: _q5_1,
    10: _q2_k, 11: _q3_k, 12: _q4_k, 13: _q5_k, 14: _q6_k,
}


def type_name(qtype: int) -> str:
    return GGML_TYPES[qtype][0] if qtype in GGML_TYPES else f"ggml type {qtype}"


def check_supported(qtype: int, where: str) -> None:
    if qtype not in GGML_TYPES:
        names = ", ".join(name for name, _, _ in GGML_TYPES.values())
        raise CheckpointError(
            f"{where} is stored as {type_name(qtype)}, which wan_core cannot dequantize (supported: {names}). "
            "Use a file quantized to one of these (e.g. Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q3_K_M or F16)."
        )


def raw_shape(qtype: int, shape: Sequence[int]) -> tuple[int, ...]:
    """The uint8 shape of a tensor of logical `shape` stored as `qtype` (rows along the last dim)."""
    _, block, size = GGML_TYPES[qtype]
    if shape[-1] % block:
        raise CheckpointError(f"A {type_name(qtype)} tensor needs its last dim to be a multiple of {block}, "
                              f"not {list(shape)}.")
    return (*shape[:-1], shape[-1] // block * size)


def dequantize(raw: torch.Tensor, qtype: int, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """The tensor of logical `shape` stored as ggml type `qtype` in the bytes `raw` (uint8, any shape), in `dtype`,
    computed on `raw`'s device."""
    if qtype in FLOAT_TYPES:
        return raw.contiguous().view(FLOAT_TYPES[qtype]).reshape(shape).to(dtype)
    if gguf_triton.handles(raw, qtype, dtype):
        return gguf_triton.dequantize(raw, qtype, math.prod(shape), dtype).view(shape)
    _, _, size = GGML_TYPES[qtype]
    blocks = raw.reshape(-1, size)
    return _BLOCK_DEQUANT[qtype](blocks).reshape(shape).to(dtype)
