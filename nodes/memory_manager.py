"""Our models under ComfyUI's memory manager (`comfy.model_management`), through `host.load_models_gpu`.

ComfyUI keeps `current_loaded_models`, a list of `LoadedModel`s that each wrap a ModelPatcher; before a node loads a
model it frees memory by unloading the others (`free_memory`), "Unload models" unloads them all, and `--lowvram` /
`--reserve-vram` set how much of a model may sit on the GPU. `ManagedModel` is the ModelPatcher-like face of one of our
modules (a DiT expert, the text encoder, a VAE) that `LoadedModel` drives:
- `partially_load(device, budget)`: onto the device; a DiT that does not fit the budget gets block swap with as many
  resident blocks as fit (other models move whole);
- `partially_unload` / `detach`: back to the CPU (the block swap, if any, is kept for the next load; the CPU copy
  is kept from then on, so that the next eviction of unchanged weights copies nothing); each move is logged;
- sizes in bytes, counted from where the tensors are now (the sampler moves offloaded experts on its own);
- ComfyUI >= 0.13 also asks whether a model loads page by page (`is_dynamic`: no) and how much host RAM it has
  pinned or mapped (none that ComfyUI should budget): without those answers it fails on the first GPU load; later
  versions read each loaded model's `clone_base_uuid` when native multi-GPU sampling unloads its clones.
Outside ComfyUI `host` keeps a small list with the same effects, so the registration is exercised without ComfyUI.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
import weakref
from typing import Any

import torch

from wan_core.dit.block_swap import choose_resident_blocks, enable_block_swap, module_bytes
from wan_core.dit.model import WanDiT
from wan_core.mapped_weights import keep_cpu_copies, move_weights

from . import host

log = logging.getLogger(__name__)
CPU = torch.device("cpu")
_MANAGED: weakref.WeakKeyDictionary[torch.nn.Module, ManagedModel] = weakref.WeakKeyDictionary()
# Activations kept free beside a block-swapped DiT (ComfyUI reserves its own inference memory on top).
ACTIVATION_RESERVE_BYTES = 2 * 1024**3


def _tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(), *module.buffers()]


def _same(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


class ManagedModel:
    """The ModelPatcher-like interface of one module; one per module (ComfyUI compares them by identity)."""

    parent = None
    activation_reserve = ACTIVATION_RESERVE_BYTES

    def __init__(self, module: torch.nn.Module, load_device: torch.device,
                 offload_device: torch.device = CPU) -> None:
        self._module = weakref.ref(module)
        self.load_device = load_device
        self.offload_device = offload_device
        # ComfyUI >= 0.1x's `unload_model_and_clones` (native multi-GPU sampling) reads it on every loaded model: a
        # base of our own, so no native model counts as one of its clones
        self.clone_base_uuid = uuid.uuid4()

    @property
    def model(self) -> torch.nn.Module | None:
        return self._module()

    # --- sizes ------------------------------------------------------------------------------------------------
    def model_size(self) -> int:
        return module_bytes(self.model)

    def loaded_size(self) -> int:
        return sum(t.numel() * t.element_size() for t in _tensors(self.model) if _same(t.device, self.load_device))

    def current_loaded_device(self) -> torch.device:
        tensors = _tensors(self.model)
        return tensors[0].device if tensors else self.offload_device

    def model_dtype(self) -> torch.dtype:
        return next((t.dtype for t in _tensors(self.model) if t.is_floating_point()), torch.float32)

    # --- what LoadedModel calls that we have nothing for --------------------------------------------------------
    def model_patches_to(self, device_or_dtype: Any) -> None:
        return None

    def model_patches_models(self) -> list:
        return []

    def lowvram_patch_counter(self) -> int:
        return 0

    def is_clone(self, other: Any) -> bool:
        return False  # one ManagedModel per module: never two views of the same weights

    # --- what ComfyUI >= 0.13 also calls (its page-by-page "dynamic VRAM" loader, pinned and mapped host memory) ---
    def is_dynamic(self) -> bool:
        return False  # our modules move whole (or by block swap), never page by page through comfy-aimdo

    def pinned_memory_size(self) -> int:
        return 0  # nothing of ours is pinned by ComfyUI

    def loaded_ram_size(self) -> int:
        return 0

    def partially_unload_ram(self, ram_to_unload: float) -> int:
        return 0  # the CPU copy is where an unloaded module lives: there is no RAM to hand back

    def model_mmap_residency(self, free: bool = False) -> tuple[int, int]:
        # (resident, mapped) bytes ComfyUI budgets host RAM and pins by: none, since loading pins nothing and
        # `move_weights` streams a mapped DiT child by child, giving the file pages back as it goes
        return 0, 0

    # --- loading and unloading ------------------------------------------------------------------------------------
    def partially_load(self, device: torch.device, extra_memory: float, force_patch_weights: bool = False) -> int:
        """Move the module onto `device`, within `extra_memory` bytes where it can; returns the bytes it added."""
        module, before = self.model, self.loaded_size()
        needed = self.model_size() - before
        if isinstance(module, WanDiT) and needed > extra_memory and getattr(module, "block_swap", None) is None:
            blocks = list(module.blocks)
            block = max(module_bytes(b) for b in blocks)
            others = self.model_size() - len(blocks) * block
            resident = choose_resident_blocks(len(blocks), block, others, before + int(extra_memory),
                                              self.activation_reserve)
            enable_block_swap(module, resident)
        return self._timed_move(device, before)

    def partially_unload(self, device: torch.device, memory_to_free: float = 0, unpatch_weights: bool = True) -> int:
        # evicted once, likely evicted again (two experts under one budget): keep the CPU copy it comes back to, so
        # that the next eviction copies nothing back unless its weights were patched meanwhile
        keep_cpu_copies(self.model)
        return -self._timed_move(self.offload_device, self.loaded_size())

    def _timed_move(self, device: torch.device, before: int) -> int:
        """`move_weights` onto `device`, logged with its time (ComfyUI logs its own models' loads the same way);
        returns the bytes added on the load device."""
        start = time.perf_counter()
        move_weights(self.model, device)
        moved = self.loaded_size() - before
        if moved:
            if self.load_device.type == "cuda":
                torch.cuda.synchronize(self.load_device)
            name = os.path.basename(getattr(self.model, "source", "") or "") or type(self.model).__name__
            log.info("Wan22: %s %s %s: %.2f GB in %.2f s", "loaded" if moved > 0 else "unloaded", name,
                     "onto " + str(device) if moved > 0 else "to the CPU", abs(moved) / 1e9,
                     time.perf_counter() - start)
        return moved

    def detach(self, unpatch_all: bool = True) -> None:
        self.partially_unload(self.offload_device)


def managed(module: torch.nn.Module, device: torch.device) -> ManagedModel:
    """The one `ManagedModel` of `module`, loading onto `device`."""
    patcher = _MANAGED.get(module)
    if patcher is None:
        patcher = _MANAGED[module] = ManagedModel(module, device)
    patcher.load_device = device
    return patcher


def load_on_device(module: torch.nn.Module, device: torch.device, memory_required: int = 0) -> torch.nn.Module:
    """Put `module` on `device` through the host's memory manager (which first frees room by unloading other models,
    ours and other packs'); a CPU device is not managed."""
    if device.type == "cpu":
        move_weights(module, device)
        return module
    host.load_models_gpu([managed(module, device)], memory_required=memory_required)
    return module
