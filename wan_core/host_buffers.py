"""Host (CPU) memory for many tensors in a few large buffers, pinned for asynchronous copies to the GPU.

Pinning an A14B block's fp8 weights one tensor at a time (five by five thousand bytes up to 71 MB) would take
thousands of allocations, each rounded up to a power of two by torch's pinned allocator (1.5x their size). Here the
tensors are packed (largest first, first fit) into buffers of `CHUNK_BYTES`, which `pinned_memory` registers whole
(or, unpinned, leaves for `pinned_memory.pin_in_place` to pin later); a buffer given back (`give_back`) is kept for
the next `host_buffers` of the same size. Pinning goes through `pinned_memory.empty`: where it is refused,
`host_buffers` raises `pinned_memory.PinnedMemoryUnavailable`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from . import pinned_memory

CHUNK_BYTES = 256 * 2**20
ALIGN = 64  # bytes: every view starts aligned for any dtype

# Buffers an unpinned model gave back (`give_back`), taken first by the next `host_buffers` of the same sizes: the
# expert parked at the MoE switch hands its pinned RAM to the one that starts sampling. torch's pinned cache was seen
# not to (A14B 480p on an H100: both experts' 8.5 GB pinned at once after the switch).
_SPARE: list[tuple[torch.UntypedStorage, bool]] = []


def host_buffers(like: list[torch.Tensor], *, pin: bool, chunk_bytes: int = CHUNK_BYTES) -> list[torch.Tensor]:
    """Uninitialized CPU tensors of the shapes and dtypes of `like` (contiguous), views of few large buffers, pinned
    when `pin`. A tensor larger than `chunk_bytes` gets a buffer of its own."""
    sizes = [-(-t.nbytes // ALIGN) * ALIGN for t in like]
    places: list[tuple[int, int]] = [(0, 0)] * len(like)  # (buffer index, byte offset)
    capacities: list[int] = []
    used: list[int] = []
    for index in sorted(range(len(like)), key=lambda i: -sizes[i]):
        size = sizes[index]
        buffer = next((b for b, cap in enumerate(capacities) if cap - used[b] >= size), None)
        if buffer is None:
            buffer = len(capacities)
            capacities.append(max(chunk_bytes, size))
            used.append(0)
        places[index] = (buffer, used[buffer])
        used[buffer] += size
    buffers = [_buffer(n, pin) for n in used]
    out = []
    for tensor, (buffer, offset) in zip(like, places, strict=True):
        raw = buffers[buffer][offset : offset + tensor.nbytes]
        out.append(raw.view(tensor.dtype).view(tensor.shape) if tensor.numel() else
                   torch.empty(tensor.shape, dtype=tensor.dtype))  # no bytes to copy: nothing to pin
    return out


def _buffer(nbytes: int, pin: bool) -> torch.Tensor:
    for index, (storage, pinned) in enumerate(_SPARE):
        if storage.nbytes() == nbytes and pinned == pin:
            del _SPARE[index]
            return torch.empty(0, dtype=torch.uint8).set_(storage)
    return pinned_memory.empty(nbytes, torch.uint8) if pin else pinned_memory.pageable(nbytes)


def give_back(views: Iterable[torch.Tensor], *, pinned: bool) -> None:
    """The buffers under `views` (from `host_buffers`; nothing reads or writes them any more) become the spares the
    next `host_buffers` takes; earlier spares are let go. The spares stay until then."""
    storages: dict[int, torch.UntypedStorage] = {}
    for view in views:
        storage = view.untyped_storage()
        if storage.nbytes():
            storages.setdefault(storage.data_ptr(), storage)
    _SPARE[:] = [(storage, pinned) for storage in storages.values()]


def drop_spares() -> None:
    """Let the spare buffers go (their RAM is unregistered and given back)."""
    _SPARE.clear()
