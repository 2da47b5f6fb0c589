"""Pinned (page-locked) host memory, where the machine gives it.

Copies between RAM and a CUDA device run asynchronously, and faster, from pinned memory; the pack pins the staging
buffers of `host_copy` and block swap's master copies. Pinning can be refused: Windows caps pinned memory near half
the RAM, containers cap locked memory, and ComfyUI's `--disable-pinned-memory` asks for none. Every pinned
allocation goes through `empty`. After the first refusal, or `disable`, no more pinning is tried in this process, and
the callers copy through pageable memory: slower, the same bytes.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

_refusal: str | None = None  # why pinning is off in this process (None: it is on)


class PinnedMemoryUnavailable(RuntimeError):
    """Pinned host memory was asked for where it is off (`refusal` says why)."""


def refusal() -> str | None:
    """Why pinned memory is off in this process, or None."""
    return _refusal


def disable(reason: str) -> None:
    """Turn pinning off for the rest of the process (the first reason is kept and logged once)."""
    global _refusal
    if _refusal is None:
        _refusal = reason
        log.warning("Pinned RAM is off: %s. Copies between RAM and the GPU go through pageable memory (slower).",
                    reason)


def allowed() -> bool:
    """Whether pinned memory may be asked for: a CUDA device is there and pinning is not off."""
    return _refusal is None and torch.cuda.is_available()


def empty(shape: int | tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized pinned CPU tensor; `PinnedMemoryUnavailable` where pinning is off or the allocation is refused
    (which turns it off)."""
    if _refusal is not None:
        raise PinnedMemoryUnavailable(_refusal)
    try:
        return torch.empty(shape, dtype=dtype, pin_memory=True)
    except RuntimeError as err:
        size = torch.Size([shape] if isinstance(shape, int) else shape).numel() * dtype.itemsize
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        disable(f"pinning {size / 2**20:.0f} MiB of RAM failed ({first_line})")
        raise PinnedMemoryUnavailable(_refusal) from err
