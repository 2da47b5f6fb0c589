"""Device strings of the nodes (`auto`, `cpu`, `gpu:0`, `gpu:1`, ...), the same strings ComfyUI's core device nodes use.

Devices are listed and resolved when a node runs, never at import: a pack that reads the device at import time is
frozen to the device of that moment.
"""

from __future__ import annotations

import logging
import re

import torch

from wan_core.errors import InputError

from . import host

AUTO = "auto"
CPU = "cpu"
ALL_GPUS = "all GPUs (one video)"  # the DiT only: one video split over every GPU (nodes/all_gpus.py)
_GPU_PATTERN = re.compile(r"^(?:gpu|cuda):(\d+)$")
LOG = logging.getLogger("comfyui-wan22")


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def list_devices() -> list[str]:
    """`auto`, `cpu`, one `gpu:N` per GPU of this machine, and `all GPUs (one video)` where there are several."""
    return [AUTO, CPU] + [f"gpu:{index}" for index in range(gpu_count())] + ([ALL_GPUS] if gpu_count() > 1 else [])


def check_device_name(name: str) -> None:
    """Raise InputError for a string that is not a device name at all (an absent GPU is fine: it falls back)."""
    if name not in (AUTO, CPU, ALL_GPUS) and not _GPU_PATTERN.match(name):
        raise InputError(f"Unknown device {name!r}; use 'auto', 'cpu', 'gpu:N' (N = 0, 1, ...) or {ALL_GPUS!r}.")


def default_device() -> torch.device:
    """ComfyUI's main device inside ComfyUI; otherwise the first GPU, else the CPU."""
    chosen = host.default_torch_device()
    if chosen is not None:
        return torch.device(chosen)
    return torch.device("cuda", 0) if gpu_count() > 0 else torch.device(CPU)


def resolve_device(name: str, *, warn: bool = True) -> torch.device:
    """The torch device for a device string; a GPU this machine lacks falls back to the default (with a warning
    unless `warn` is False: the node that chose the device warns once, its consumers resolve quietly)."""
    check_device_name(name)
    if name in (AUTO, ALL_GPUS):  # all GPUs: the host's device (the workers take every GPU)
        return default_device()
    if name == CPU:
        return torch.device(CPU)
    index = int(_GPU_PATTERN.match(name).group(1))
    if index < gpu_count():
        return torch.device("cuda", index)
    fallback = default_device()
    if warn:
        LOG.warning(
            "[Wan2.2] device %s does not exist on this machine (%d GPU(s)); using %s instead.",
            name, gpu_count(), device_label(fallback),
        )
    return fallback


def device_label(device: torch.device) -> str:
    """Short text for the canvas badge: `GPU 1`, `CPU`, `MPS`."""
    if device.type == "cuda":
        return f"GPU {device.index or 0}"
    return device.type.upper()


DEVICE_EVENT = "wan22.device"


def announce_device(node_id: str | None, device: torch.device) -> None:
    """Tell the canvas where node `node_id` runs (`{"node", "device"}`), for its badge (js/wan22.js)."""
    if node_id is not None:
        host.send_event(DEVICE_EVENT, {"node": str(node_id), "device": device_label(device)})
