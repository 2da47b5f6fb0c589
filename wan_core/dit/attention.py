"""The one attention entry point of the DiT: PyTorch SDPA by default, flash-attn or SageAttention on request.

All backends take and return `[B, L, H, D]` (no masks: single-GPU sequences carry no padding, and the text context
is attended to with its zero padding, as the reference does).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..errors import WanError

BACKENDS = ("sdpa", "flash_attn", "sage")


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


@functools.cache
def _flash_fn() -> Callable | None:
    """The newest FlashAttention that imports: FA4 (CuTe DSL), FA3 (`flash_attn_interface`), FA2."""
    candidates = (
        ("flash_attn.cute", "flash_attn_func"),
        ("flash_attn_interface", "flash_attn_func"),
        ("flash_attn", "flash_attn_func"),
    )
    for module, name in candidates:
        try:
            mod = __import__(module, fromlist=[name])
            return getattr(mod, name)
        except Exception:  # ImportError, or a broken CUDA extension
            continue
    return None


@functools.cache
def _sage_fn() -> Callable | None:
    try:
        from sageattention import sageattn
    except Exception:
        return None
    return sageattn


def check_backend(name: str) -> str:
    """`name` if it can run here; a WanError that says what to install otherwise."""
    if name not in BACKENDS:
        raise WanError(f"Unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}.")
    if name == "flash_attn" and _flash_fn() is None:
        raise WanError(
            "attention_backend='flash_attn' was asked for, but no FlashAttention imports here. Install one "
            "(`pip install flash-attn-4`, FlashAttention-3 or `pip install flash-attn`), or use 'sdpa'."
        )
    if name == "sage" and _sage_fn() is None:
        raise WanError(
            "attention_backend='sage' was asked for, but SageAttention does not import here. "
            "`pip install sageattention`, or use 'sdpa'."
        )
    return name


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """Softmax attention of `q` `[B, Lq, H, D]` over `k`, `v` `[B, Lk, H, D]`; returns `[B, Lq, H, D]`.

    flash_attn and sage need CUDA fp16/bf16 tensors; other inputs (CPU, float32) go through SDPA.
    """
    if backend == "sdpa" or not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        return _sdpa(q, k, v)
    if backend == "flash_attn":
        out = _flash_fn()(q, k, v)
        return out[0] if isinstance(out, tuple) else out
    if backend == "sage":
        return _sage_fn()(q, k, v, tensor_layout="NHD", is_causal=False)
    raise WanError(f"Unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
