"""Model patches (LoRA and the like): changes to a loaded module's weights that can be swapped without re-reading
the base weights from disk, and removed to give the exact base weights back.

A patch is a hashable object with `apply(module, expert, weights)`: it writes new values through `weights.set(name,
tensor)`, which keeps the original of every parameter it changes (once, in CPU RAM, or as the untouched view of the
memory-mapped file it was loaded from). A module's patches are set as a whole with `set_patches`: the originals are
put back bit for bit, then the new patches apply in order. The originals stay kept while the module carries patches,
so switching a LoRA's strength copies nothing back to the CPU; they are dropped when the last patch is removed. Which
patches a module carries is part of its handle's identity (`nodes.handles.DiTHandle.patches`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Protocol

import torch

from .host_copy import copy_tensors, to_host


class ModelPatch(Hashable, Protocol):
    def apply(self, module: torch.nn.Module, expert: str, weights: PatchedWeights) -> None:
        """Change `module`'s weights for `expert` (`high_noise`, `low_noise` or `single`) through `weights`."""


def weights_generation(module: torch.nn.Module) -> int:
    """A count that changes whenever patches change `module`'s weights (block swap writes the staged copies it
    handed out back to their sources when it did). Version counters cannot tell: ComfyUI loads models under
    `torch.inference_mode`, and inference tensors have none."""
    return getattr(module, "_wan_weights_generation", 0)


def _weights_changed(module: torch.nn.Module) -> None:
    module._wan_weights_generation = weights_generation(module) + 1


class PatchedWeights:
    """The originals of the parameters that patches changed, and the patches now applied."""

    def __init__(self, module: torch.nn.Module) -> None:
        self._module = module
        self._originals: dict[str, torch.Tensor] = {}
        self._changed: set[str] = set()  # the names whose current values differ from their originals
        self._attached: list[torch.nn.Module] = []  # quantized layers running changes (`attach`)
        self.applied: tuple = ()

    def _tensor(self, name: str) -> torch.Tensor:
        """Parameter or buffer `name` (buffers: e.g. an fp8 layer's `weight_scale`)."""
        try:
            return self._module.get_parameter(name)
        except AttributeError:
            return self._module.get_buffer(name)

    def get(self, name: str) -> torch.Tensor:
        """The current value of parameter (or buffer) `name`."""
        return self._tensor(name)

    def set(self, name: str, value: torch.Tensor) -> None:
        """Give parameter (or buffer) `name` the value `value` (cast to its dtype, on its device), keeping the
        original once."""
        param = self._tensor(name)
        if name not in self._originals:
            self._originals[name] = self._original(name, param)
        with torch.no_grad():
            param.copy_(value.to(dtype=param.dtype, device=param.device))
        self._changed.add(name)
        _weights_changed(self._module)

    def attach(self, layer: torch.nn.Module, change: torch.nn.Module) -> None:
        """Run `change` with `layer`, a quantized layer that cannot take a merge (`GGUFLinear.changes`), until the
        patches are restored; no stored weight changes."""
        layer.changes.append(change)
        self._attached.append(layer)

    @property
    def attached(self) -> bool:
        return bool(self._attached)

    def _original(self, name: str, param: torch.Tensor) -> torch.Tensor:
        """A CPU copy of `param`'s bits; for weights on a device that came from a memory-mapped file untouched, the
        file view itself (a Lightning LoRA changes every block Linear: a copy would be the whole 14 GB expert)."""
        if param.device.type != "cpu":
            from .mapped_weights import pristine_view  # it imports this module

            view = pristine_view(self._module, name)
            if view is not None and view.dtype == param.dtype and view.shape == param.shape:
                return view
        return to_host(param)

    def restore(self, keep_originals: bool = False) -> None:
        """Every changed parameter back to its original bits; with `keep_originals` the originals stay kept for the
        patches applied next (a 14B expert's are 14 GB: copying them off the GPU again took 4.9 s of a 6.8 s LoRA
        strength switch on an H100)."""
        copy_tensors([(self._tensor(name), self._originals[name]) for name in self._changed])
        if self._changed:
            _weights_changed(self._module)
        self._changed.clear()
        for layer in self._attached:
            del layer.changes[:]
        self._attached.clear()
        if not keep_originals:
            self._originals.clear()
        self.applied = ()


def patches_pending(module: torch.nn.Module, patches: Sequence[ModelPatch]) -> bool:
    """Whether `set_patches(module, patches, ...)` would change anything (other patches are applied now)."""
    weights: PatchedWeights | None = getattr(module, "_wan_patched_weights", None)
    return (weights.applied if weights is not None else ()) != tuple(patches)


def set_patches(module: torch.nn.Module, patches: Sequence[ModelPatch], expert: str) -> None:
    """Make `patches` (in order) the ones applied to `module`; nothing happens when they already are."""
    if not patches_pending(module, patches):
        return
    patches = tuple(patches)
    weights: PatchedWeights | None = getattr(module, "_wan_patched_weights", None)
    if weights is None:
        weights = PatchedWeights(module)
        module._wan_patched_weights = weights
    attached = weights.attached
    weights.restore(keep_originals=bool(patches))
    for patch in patches:
        patch.apply(module, expert, weights)
    weights.applied = patches
    swap = getattr(module, "block_swap", None)
    if swap is not None and (attached or weights.attached):
        # the swapped blocks' changes (`attach`) stream with them: the masters are taken again, from the weights' own
        # tensors (pinned copies would otherwise become the sources that parking the model returns to)
        swap.unpin_masters()
        swap.refresh()
