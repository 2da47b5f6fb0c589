"""GPU out-of-memory errors that say what was running, how full the GPU was, and which settings need less memory."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .errors import WanError


class GPUOutOfMemoryError(WanError, torch.cuda.OutOfMemoryError):
    """CUDA ran out of memory. Still a `torch.cuda.OutOfMemoryError`, so hosts that react to one (ComfyUI unloads its
    models) keep doing so; the message lists the settings that would avoid it."""


def gpu_memory_in_use(device: torch.device | str) -> str:
    """`'21.3 of 23.6 GiB in use'` for a CUDA device, '' for others or when the driver cannot say."""
    device = torch.device(device)
    if device.type != "cuda":
        return ""
    try:
        free, total = torch.cuda.mem_get_info(device)
    except RuntimeError:
        return ""
    return f"{(total - free) / 2**30:.1f} of {total / 2**30:.1f} GiB in use"


def out_of_memory(stage: str, device: torch.device | str, fixes: Sequence[str]) -> GPUOutOfMemoryError:
    """The error to raise (`from` the CUDA one) when `stage` ran out of memory on `device`; `fixes` are the settings
    that need less memory, the most effective first."""
    usage = gpu_memory_in_use(device)
    where = f"{device} ({usage})" if usage else str(device)
    return GPUOutOfMemoryError(f"CUDA out of memory while {stage} on {where}. To fit, try: {'; '.join(fixes)}.")
