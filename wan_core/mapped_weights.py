"""A model's weights as views of its memory-mapped weight files (`model.mapped_files`, set by `load_dit`): giving their
pages back, and parking the model on the CPU without copying its weights.

Pages: the pages of a private (copy-on-write) map that were only read can be dropped (MADV_DONTNEED: the resident
memory drops at once, touching them reads the file again, from the OS cache). A page written in place (a LoRA merge,
block swap writing a patched master back) exists only in the process: DONTNEED would lose it, so a model whose weights
were ever patched gets MADV_PAGEOUT / MADV_COLD instead (written pages swapped, never lost), which some kernels lack
(gVisor rejects both); its read pages then stay resident until the OS needs them.

Parking: moving a model to the GPU copies its weights there, and moving it back (offload_model parking the idle
expert) would copy them into new process memory, though the file views hold the same bytes. `moving(model, device)`
remembers the views when the weights leave the CPU and, when they come back unpatched since, points the parameters at
the views again (the device copies are freed; no RAM is taken) and gives their pages back. Weights patched meanwhile
take torch's ordinary copy. Block swap's masters have their own sources (`wan_core.dit.block_swap`).

A model that a memory manager moves back and forth (an expert evicted for the other one under a tight VRAM budget)
can keep its CPU copies too (`keep_cpu_copies`): after its first return, the CPU tensors it leaves from are
remembered like file views, so each later return copies nothing unless patches changed the weights meanwhile. Its
CPU copy then stays in RAM while it is on the device (a DiT expert: its size in RAM, as when it is parked). The first
return that finds the copy unchanged pins it in place where the machine has room (`pinned_memory.pin_in_place`), so
that the loads from it, one per run and expert, take no staging copy through the CPU: 0.37-0.43 s for a 14.9 GB
expert against 0.9-1.9 s. Pinning it at its first return instead cost more than that (registering its pages while
they are written), in a run that may be the only one.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from . import pinned_memory
from .host_copy import move_module, set_parameter
from .patching import weights_generation
from .placement_state import drop_state, weight_places
from .ram import forget_read_pages, release_pages

log = logging.getLogger(__name__)

_Key = tuple[int, str, bool]  # id of the module, tensor name, is a parameter


@dataclass
class _Views:
    """The file views of the tensors that left the CPU, and the model's weights generation when they did."""

    generation: int
    views: dict[_Key, tuple[torch.nn.Module, torch.Tensor]] = field(default_factory=dict)


def mapped_files(model: object) -> list[mmap.mmap]:
    return list(getattr(model, "mapped_files", None) or ())


def release_file_pages(model: object) -> None:
    """Give back the pages of `model`'s mapped files: dropped where nothing was ever written to them, else paged out
    where the kernel can (see the module docstring)."""
    maps = mapped_files(model)
    if not maps:
        return
    if weights_generation(model) == 0:
        forget_read_pages(maps)
    elif not release_pages(maps):
        log.debug("this kernel cannot page out the patched weight files of %s: their pages stay resident",
                  getattr(model, "source", "the model"))


def _spans(maps: list[mmap.mmap]) -> list[tuple[int, int]]:
    spans = []
    for region in maps:
        with contextlib.suppress(ValueError):  # a closed map
            start = torch.frombuffer(region, dtype=torch.uint8, count=1).data_ptr()
            spans.append((start, start + len(region)))
    return spans


def _tensors(model: torch.nn.Module) -> Iterator[tuple[torch.nn.Module, str, bool, torch.Tensor]]:
    for module in model.modules():
        for table, is_param in ((module._parameters, True), (module._buffers, False)):
            for name, tensor in table.items():
                if tensor is not None:
                    yield module, name, is_param, tensor


def keep_cpu_copies(model: torch.nn.Module) -> None:
    """Remember all the CPU tensors `model`'s weights leave from, not only file views (see the module docstring)."""
    model._wan_keep_cpu_copies = True


def _keeps_cpu_copies(model: object) -> bool:
    return getattr(model, "_wan_keep_cpu_copies", False)


def _remember(model: torch.nn.Module) -> None:
    spans, any_cpu_tensor = _spans(mapped_files(model)), _keeps_cpu_copies(model)
    generation = weights_generation(model)
    kept: _Views | None = getattr(model, "_wan_file_views", None)
    if kept is None or kept.generation != generation:  # views taken before a patch may be stale
        kept = _Views(generation)
    for module, name, is_param, tensor in _tensors(model):
        pointer = tensor.data_ptr()
        if tensor.device.type == "cpu" and (any_cpu_tensor or any(start <= pointer < end for start, end in spans)):
            kept.views[(id(module), name, is_param)] = (module, tensor.detach())
    model._wan_file_views = kept


def pristine_view(model: torch.nn.Module, name: str) -> torch.Tensor | None:
    """The file view (or kept CPU copy) that parameter (or buffer) `name` of `model` left the CPU from, if the
    model's weights had never been changed before it left (nothing was ever written to it then, and writes since went
    to the device copies): the loaded bytes, an original a patch can keep without a copy. None otherwise."""
    kept: _Views | None = getattr(model, "_wan_file_views", None)
    if kept is None or kept.generation != 0:
        return None
    owner, _, attr = name.rpartition(".")
    try:
        module = model.get_submodule(owner)
    except AttributeError:
        return None
    entry = kept.views.get((id(module), attr, True)) or kept.views.get((id(module), attr, False))
    return None if entry is None else entry[1]


def _point_back(model: torch.nn.Module) -> list[torch.Tensor]:
    """Point the tensors that left the CPU unpatched at their file views (or kept CPU copies) again; returns those
    views."""
    kept: _Views | None = getattr(model, "_wan_file_views", None)
    model._wan_file_views = None
    if kept is None or kept.generation != weights_generation(model):
        return []
    views = []
    for module, name, is_param, tensor in list(_tensors(model)):
        entry = kept.views.get((id(module), name, is_param))
        if entry is None or tensor.device.type == "cpu":  # block swap's masters: unpinned by the model's move
            continue
        view = entry[1]
        if view.dtype != tensor.dtype or view.shape != tensor.shape:
            continue
        if is_param:
            set_parameter(module, name, view)
        else:
            module._buffers[name] = view
        views.append(view)
    return views


@contextlib.contextmanager
def moving(model: object, device: torch.device | str) -> Iterator[None]:
    """Around `model.to(device)`: a model with mapped files (or kept CPU copies) remembers its file views when leaving
    the CPU and is pointed back at them when returning (see the module docstring); its file pages are given back
    after the move."""
    device = torch.device(device)
    if not isinstance(model, torch.nn.Module) or not (mapped_files(model) or _keeps_cpu_copies(model)):
        yield
        return
    if device.type == "cpu":
        views = _point_back(model)
        if _keeps_cpu_copies(model):  # back to a kept copy: worth pinning for the next loads
            pinned_memory.pin_in_place(views)
    else:
        _remember(model)
    yield
    release_file_pages(model)


def move_weights(model: object, device: torch.device | str) -> None:
    """`model.to(device)` for a model that may hold views of its mapped files (see `moving`). Leaving the CPU it moves
    one child at a time (a plain block list block by block) and gives the file pages back after each, so that moving
    a 14 GB expert never holds all of its file resident at once. What was kept for the weights' place (CUDA graphs
    hold their addresses) is dropped when any weight moved."""
    device = torch.device(device)
    before = weight_places(model) if isinstance(model, torch.nn.Module) else None
    try:
        with moving(model, device):
            if not isinstance(model, torch.nn.Module):
                model.to(device)
                return
            if device.type != "cpu" and mapped_files(model):
                for child in model.children():
                    for part in child if type(child) is torch.nn.ModuleList else [child]:
                        move_module(part, device)
                        release_file_pages(model)
            move_module(model, device, pinnable=device.type == "cpu" and _keeps_cpu_copies(model))
    finally:
        if before is None or weight_places(model) != before:
            drop_state(model)
