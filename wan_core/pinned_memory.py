"""Pinned (page-locked) host memory, where the machine gives it.

Copies between RAM and a CUDA device run asynchronously, and faster, from pinned memory; the pack pins the staging
buffers of `host_copy` and block swap's master copies. Pinning can be refused: Windows caps pinned memory near half
the RAM, containers cap locked memory, and ComfyUI's `--disable-pinned-memory` asks for none. Every pinned
allocation goes through `empty`. After the first refusal, or `disable`, no more pinning is tried in this process, and
the callers copy through pageable memory: slower, the same bytes.

Small allocations (the stages) come from torch's pinned allocator, which keeps freed blocks for reuse. Large ones
are registered: torch's allocator asks the driver for pinned pages (`cudaHostAlloc`), which faults them in on one
thread, 2.0-2.3 GB/s on an H100 host. Here the pages of an anonymous map are faulted in by torch's threads and then
registered (`cudaHostRegister`), 7.8 GB/s on the same host in 256 MiB buffers. The map is unregistered and given
back to the OS when the last tensor on it is freed.

Memory that may be pinned later is allocated the same way, unregistered (`pageable`): `pin_in_place` registers it
once it has proved worth it (an expert's CPU copy that it keeps coming back to), with no copy, and only where the
machine has room (`room_to_pin`: pinned pages cannot be swapped out, so at least `MIN_AVAILABLE_BYTES`, or a tenth of
the RAM where that is more, must stay available).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import weakref
from collections.abc import Iterable

import torch

from .ram import available_ram

log = logging.getLogger(__name__)

MIN_AVAILABLE_BYTES = 4 * 2**30
MIN_REGISTERED_BYTES = 64 * 2**20  # smaller allocations take torch's pinned allocator and its cache
_PORTABLE = 1  # cudaHostRegisterPortable: pinned for every GPU's context, as ComfyUI registers its pins

_refusal: str | None = None  # why pinning is off in this process (None: it is on)
_in_place_refusal: str | None = None  # why `pin_in_place` is off (pinning new memory may still work)


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


def room_to_pin(meminfo: str = "/proc/meminfo") -> bool:
    """Whether the machine has RAM enough available to lock more of it (see the module docstring); False where the OS
    does not say how much is available."""
    ram = available_ram(meminfo)
    if ram is None:
        return False
    available, total = ram
    return available >= max(MIN_AVAILABLE_BYTES, total // 10)


class _HostMap(mmap.mmap):
    """A private anonymous map that can be registered with CUDA in place; unregistered when freed (before the map
    goes), that is when the last tensor on it is."""

    pointer: int | None = None  # where it is registered

    def __del__(self) -> None:
        if self.pointer is not None:
            with contextlib.suppress(AttributeError, TypeError):  # at exit, torch's modules may be gone first
                torch.cuda.cudart().cudaHostUnregister(self.pointer)


_MAPS: weakref.WeakValueDictionary[int, _HostMap] = weakref.WeakValueDictionary()  # by address, for `pin_in_place`


def pageable(nbytes: int) -> torch.Tensor:
    """`nbytes` of pageable RAM as a uint8 tensor, on a map of its own that `pin_in_place` can pin later without a
    copy."""
    if nbytes == 0:
        return torch.empty(0, dtype=torch.uint8)
    private = {"flags": mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS} if hasattr(mmap, "MAP_PRIVATE") else {}
    region = _HostMap(-1, nbytes, **private)  # shared anonymous memory (mmap's default) pins 3x slower
    tensor = torch.frombuffer(region, dtype=torch.uint8)
    _MAPS[tensor.data_ptr()] = region
    return tensor


def _register(region: _HostMap, pointer: int) -> None:
    """Register `region` (at `pointer`) with CUDA; RuntimeError where the driver refuses."""
    status = torch.cuda.cudart().cudaHostRegister(pointer, len(region), _PORTABLE)
    if int(status) != 0:
        _discard_last_cuda_error()
        raise RuntimeError(f"cudaHostRegister returned {status}")
    region.pointer = pointer


def _discard_last_cuda_error() -> None:
    """A refused runtime call leaves its error as this thread's last CUDA error, which torch's next kernel launch
    check would raise, far from here; a checked launch takes it now."""
    with contextlib.suppress(RuntimeError):
        torch.zeros(1, device="cuda")


def pin_in_place(tensors: Iterable[torch.Tensor], meminfo: str = "/proc/meminfo") -> int:
    """Pin the maps under `tensors` (from `pageable`) that are not pinned yet, where pinning is on and the machine
    has room for them (`room_to_pin`); returns the bytes pinned. Tensors on other memory are left as they are. A
    refusal leaves the rest pageable and turns this (not `empty`: block swap's masters matter more) off, with one
    warning."""
    global _in_place_refusal
    if not allowed() or _in_place_refusal is not None:
        return 0
    regions = {pointer: region for pointer in {t.untyped_storage().data_ptr() for t in tensors}
               if (region := _MAPS.get(pointer)) is not None and region.pointer is None}
    nbytes = sum(len(region) for region in regions.values())
    if not regions or not room_to_pin(meminfo):
        return 0
    try:
        for pointer, region in regions.items():
            _register(region, pointer)
    except RuntimeError as err:
        _in_place_refusal = str(err)
        log.warning("Kept CPU copies stay in pageable RAM: pinning %.0f MiB in place failed (%s). Loads from them copy "
                    "through the pinned stages (slower).", nbytes / 2**20, err)
        return sum(len(region) for region in regions.values() if region.pointer is not None)
    return nbytes


def empty(shape: int | tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized pinned CPU tensor; `PinnedMemoryUnavailable` where pinning is off or the allocation is refused
    (which turns it off)."""
    if _refusal is not None:
        raise PinnedMemoryUnavailable(_refusal)
    size = torch.Size([shape] if isinstance(shape, int) else shape).numel() * dtype.itemsize
    try:
        if size < MIN_REGISTERED_BYTES:
            return torch.empty(shape, dtype=dtype, pin_memory=True)
        memory = pageable(size)
        memory.zero_()  # faults the pages in on torch's threads
        _register(_MAPS[memory.data_ptr()], memory.data_ptr())
        return memory.view(dtype).view(shape)
    except (RuntimeError, OSError) as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        disable(f"pinning {size / 2**20:.0f} MiB of RAM failed ({first_line})")
        raise PinnedMemoryUnavailable(_refusal) from err
