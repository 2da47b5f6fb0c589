"""Where and how the models run: one frozen `Runtime` per generation, decided once by whoever starts the work (the
CLI's request resolution, the node handles, the batch engine) and read by everything below it.

It holds the device, the offload policy (models wait in CPU RAM between their uses), where the text encoder runs,
the compute dtype (the official `param_dtype`, applied as CUDA autocast; the model's float32 regions turn autocast
off), and the attention backend object (`wan_core.dit.attention`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .dit.attention import AttentionBackend, SdpaAttention, get_backend
from .errors import InputError
from .mapped_weights import move_weights


@dataclass(frozen=True)
class Runtime:
    device: torch.device = torch.device("cpu")
    compute_dtype: torch.dtype | None = torch.bfloat16  # CUDA autocast dtype; None: the weights' own dtype
    offload: bool = False  # models go back to CPU RAM after their stage; the idle expert waits there
    text_device: torch.device | None = None  # where the text encoder runs; None: `device`
    attention: AttentionBackend = field(default_factory=SdpaAttention)
    compile: bool = False  # torch.compile each DiT block (regional; `wan_core.dit.compiled`)
    cfg_batch: bool = False  # cond and uncond as one forward of batch 2 (more activation memory, fewer launches)
    cuda_graphs: bool = False  # DiT forwards replayed from CUDA graphs per shape (`wan_core.dit.cuda_graphs`)
    # How a model gets onto a device (None: `move_to`). The nodes put ComfyUI's memory manager here, so that loading
    # an expert, the VAE or the text encoder may evict others and keeps to ComfyUI's budget (`--reserve-vram`).
    placer: Callable[[Any, torch.device], Any] | None = None

    @classmethod
    def create(
        cls,
        device: torch.device | str | None = None,
        *,
        compute_dtype: torch.dtype | None = torch.bfloat16,
        offload: bool = False,
        t5_cpu: bool = False,
        attention: str | AttentionBackend = "sdpa",
        compile: bool = False,
        cfg_batch: bool = False,
        cuda_graphs: bool = False,
    ) -> Runtime:
        """A runtime with every choice resolved: `device` None is CUDA where present; `attention` `auto` picks the
        fastest backend for the device (an unavailable explicit backend raises, naming what to install)."""
        device = pick_device(device)
        return cls(
            device=device,
            compute_dtype=compute_dtype,
            offload=offload,
            text_device=torch.device("cpu") if t5_cpu else None,
            attention=get_backend(attention, device),
            compile=compile,
            cfg_batch=cfg_batch,
            cuda_graphs=cuda_graphs,
        )

    def replace(self, **changes: Any) -> Runtime:
        """A copy with `changes` (a `device` given as a string is parsed)."""
        if "device" in changes:
            changes["device"] = torch.device(changes["device"])
        return type(self)(**{**self.__dict__, **changes})

    @property
    def text_encoder_device(self) -> torch.device:
        return self.text_device or self.device

    def autocast(self) -> contextlib.AbstractContextManager:
        """The compute-dtype autocast for the model forwards: CUDA only, as in the official code."""
        enabled = self.device.type == "cuda" and self.compute_dtype is not None
        return torch.autocast("cuda", dtype=self.compute_dtype or torch.bfloat16, enabled=enabled)

    def place(self, model: Any, device: torch.device | None = None) -> None:
        """Put `model` on `device` (default: the runtime device), through `placer` where one is set."""
        (self.placer or move_to)(model, device or self.device)

    @contextlib.contextmanager
    def on_device(self, model: Any, device: torch.device | None = None) -> Iterator[Any]:
        """`model` on `device` (default: the runtime device) for the block; with offload, back in CPU RAM after it."""
        device = device or self.device
        self.place(model, device)
        try:
            yield model
        finally:
            if self.offload and device.type != "cpu":
                self.park(model)

    def park(self, *models: Any) -> None:
        """Move `models` to CPU RAM and hand the freed GPU memory back."""
        for model in models:
            if model is not None:
                move_to(model, "cpu")
        free_device_memory(self.device)


def pick_device(name: torch.device | str | None) -> torch.device:
    """`name` as a torch device (None: CUDA where present), or an error saying how to name one."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise InputError(f"device {name!r} is not a torch device ({err}); use e.g. cuda, cuda:1 or cpu.") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name}: this torch sees no CUDA GPU; use cpu or a CUDA build of torch.")
    return device


def module_device(model: object) -> torch.device | None:
    """The device of a module's first parameter or buffer, or its `device` attribute (None if it has none)."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    for getter in ("parameters", "buffers"):
        fn = getattr(model, getter, None)
        if fn is not None:
            for tensor in fn():
                return tensor.device
    return None


def move_to(model: object, device: torch.device | str) -> None:
    """Move a module to `device` unless it is there already (objects without `.to` are left alone)."""
    device = torch.device(device)
    current = module_device(model)
    if current is not None and same_device(current, device):
        return
    to = getattr(model, "to", None)
    if callable(to):
        move_weights(model, device)  # memory-mapped weights: parked without a copy, file pages given back


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether `a` and `b` are one device (`cuda` and `cuda:N` agree when N is the current device)."""
    if a.type != b.type:
        return False
    if a.type == "cuda" and a.index != b.index:
        current = torch.cuda.current_device()
        return (current if a.index is None else a.index) == (current if b.index is None else b.index)
    return a.index == b.index or a.type == "cpu"


def free_device_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
