"""Copies between a CUDA device and pageable CPU memory through two pinned stages.

torch's plain copy between a GPU and pageable (unpinned) RAM lets the driver stage it through a pinned buffer of its
own, one CPU thread doing the host side: on an H100 host 1.5-2.8 GB/s to the CPU (that thread also faults in every
destination page) and 8-9 GB/s to the GPU. Here the bytes go through two pinned stages of `STAGE_BYTES` that take
turns: while one is in flight on a side stream, torch's CPU threads fill or empty the other. The same host gave
9-22 GB/s to the CPU and 32-35 GB/s to the GPU (docs/benchmarks.md). A 14B expert is 14 GB: a LoRA's originals, an
expert parked on the CPU and an expert loaded onto the GPU go this way. Where pinned memory is off
(`pinned_memory`), the copies are torch's plain ones.

A copy whose CPU side is pinned already needs no stage: the GPU's copy engine reads or writes it directly, at the
bus's speed (55 GB/s on an H100 host, against 26-33 GB/s staged). `move_module(..., pinnable=True)` gives the weights
that leave a GPU a home that can be pinned later in place (few large buffers, `host_buffers`), for a model that may go
back and forth (two experts evicted for each other under one budget: `mapped_weights`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import pinned_memory
from .host_buffers import host_buffers

STAGE_BYTES = 8 * 2**20  # an A14B attention weight (26 MB in fp8) spans several, so its two halves overlap
MIN_BYTES = 2**20  # smaller tensors (norms, biases, scales) are copied as they are


def _stageable(dst: torch.Tensor, src: torch.Tensor) -> bool:
    """Whether `dst.copy_(src)` is a plain byte copy between a CUDA device and pageable CPU memory."""
    devices = {dst.device.type, src.device.type}
    host = src if src.device.type == "cpu" else dst
    return (
        devices == {"cpu", "cuda"}
        and dst.dtype == src.dtype
        and dst.shape == src.shape
        and dst.is_contiguous()
        and src.is_contiguous()
        and src.nbytes >= MIN_BYTES
        and not host.is_pinned()
        and pinned_memory.allowed()
    )


def _pinned_transfer(dst: torch.Tensor, src: torch.Tensor) -> bool:
    """Whether `dst.copy_(src)` goes between a CUDA device and pinned CPU memory (the copy engine's own speed)."""
    if {dst.device.type, src.device.type} != {"cpu", "cuda"}:
        return False
    return (src if src.device.type == "cpu" else dst).is_pinned()


def copy_tensors(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """`dst.copy_(src)` for each `(dst, src)`; those between a CUDA device and pageable CPU memory go through the
    pinned stages, those with a pinned CPU side are queued without waiting, and all are complete on return."""
    staged: dict[torch.device, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    queued: set[torch.device] = set()
    with torch.inference_mode():  # views and writes of inference tensors (ComfyUI loads models in this mode) too
        for dst, src in pairs:
            if src.shape == dst.shape and src.device != dst.device:
                src = src.contiguous()
            if _stageable(dst, src):
                gpu = dst.device if dst.is_cuda else src.device
                staged.setdefault(gpu, []).append((dst.reshape(-1), src.reshape(-1)))
            elif _pinned_transfer(dst, src):
                dst.copy_(src, non_blocking=True)
                queued.add(dst.device if dst.is_cuda else src.device)
            else:
                dst.copy_(src)
        for device, flat_pairs in staged.items():
            _through_stages(device, flat_pairs)
        for device in queued:
            torch.cuda.current_stream(device).synchronize()


def _through_stages(device: torch.device, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Copy flat `(dst, src)` pairs (one side on `device`) in chunks of one stage, the two stages taking turns;
    plain copies where the stages cannot be pinned."""
    try:  # per slot and dtype: views of another dtype are refused on inference tensors
        stages = {(slot, dtype): pinned_memory.empty(STAGE_BYTES // dtype.itemsize, dtype)
                  for slot in (0, 1) for dtype in {src.dtype for _, src in pairs}}
    except pinned_memory.PinnedMemoryUnavailable:
        for dst, src in pairs:
            dst.copy_(src)
        return
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))  # the sources as the caller's stream left them
    in_flight: list[tuple[torch.cuda.Event, torch.Tensor | None, torch.Tensor] | None] = [None, None]

    def settle(slot: int) -> None:
        """Wait for the slot's transfer; a transfer to the CPU is then copied out of the stage."""
        if in_flight[slot] is None:
            return
        done, host_part, stage = in_flight[slot]
        done.synchronize()
        if host_part is not None:
            host_part.copy_(stage)
        in_flight[slot] = None

    index = 0
    for dst, src in pairs:
        to_gpu, chunk = dst.is_cuda, STAGE_BYTES // src.element_size()
        for start in range(0, src.numel(), chunk):
            slot, size = index % 2, min(chunk, src.numel() - start)
            index += 1
            settle(slot)
            stage = stages[slot, src.dtype][:size]
            if to_gpu:
                stage.copy_(src[start : start + size])
            with torch.cuda.stream(stream):
                if to_gpu:
                    dst[start : start + size].copy_(stage, non_blocking=True)
                else:
                    stage.copy_(src[start : start + size], non_blocking=True)
                done = torch.cuda.Event()
                done.record(stream)
            in_flight[slot] = (done, None if to_gpu else dst[start : start + size], stage)
    for slot in (index % 2, (index + 1) % 2):  # oldest first
        settle(slot)


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of `tensor` in pageable CPU memory."""
    if not tensor.is_cuda:
        return tensor.detach().to("cpu", copy=True)
    out = torch.empty(tensor.shape, dtype=tensor.dtype)
    copy_tensors([(out, tensor)])
    return out


def set_parameter(module: torch.nn.Module, name: str, value: torch.Tensor) -> torch.nn.Parameter:
    """Point parameter `name` of `module` at `value`, keeping the Parameter object as `module.to` does; returns the
    parameter now there."""
    param = module._parameters[name]
    # An inference-mode parameter given ordinary data would be left without a version counter: no view of it works.
    if not (param.is_inference() and not value.is_inference()):
        try:
            param.data = value
            return param
        except RuntimeError:  # a tensor type `set_data` cannot switch from (meta)
            pass
    param = module._parameters[name] = torch.nn.Parameter(value, requires_grad=param.requires_grad)
    return param


def _pinnable_homes(leaving: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """CPU tensors for the CUDA tensors of `leaving`, by the same keys: views of few large buffers that
    `pinned_memory.pin_in_place` can pin (`host_buffers`)."""
    homes: dict[int, torch.Tensor] = {}
    for inference in (False, True):  # an inference tensor's home is one too, so that its Parameter can stay
        keys = [key for key, t in leaving.items() if t.is_cuda and t.is_inference() == inference]
        if keys:
            with torch.inference_mode(inference):
                homes.update(zip(keys, host_buffers([leaving[key] for key in keys], pin=False), strict=True))
    return homes


def move_module(module: torch.nn.Module, device: torch.device | str, *, pinnable: bool = False) -> None:
    """`module.to(device)`, with its parameters' and buffers' copies between the CPU and a CUDA device staged
    (`copy_tensors`). A tensor shared by several modules is moved once and stays shared. With `pinnable`, the weights
    that leave a GPU for the CPU land in buffers that can be pinned later in place (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    places: dict[int, list[tuple[torch.nn.Module, str, bool]]] = {}
    leaving: dict[int, torch.Tensor] = {}
    for owner in module.modules():
        for table, is_param in ((owner._parameters, True), (owner._buffers, False)):
            for name, tensor in table.items():
                if tensor is not None and {tensor.device.type, device.type} == {"cpu", "cuda"}:
                    places.setdefault(id(tensor), []).append((owner, name, is_param))
                    leaving[id(tensor)] = tensor
    arrived = _pinnable_homes(leaving) if pinnable and device.type == "cpu" else {}
    for key, tensor in leaving.items():
        if key not in arrived:
            with torch.inference_mode(tensor.is_inference()):  # so that the Parameter objects can stay
                arrived[key] = torch.empty(tensor.shape, dtype=tensor.dtype, device=device)
    copy_tensors([(arrived[key], t) for key, t in leaving.items()])
    for key, spots in places.items():
        (owner, name, is_param), *others = spots
        if not is_param:
            for owner, name, _ in spots:
                owner._buffers[name] = arrived[key]
            continue
        param = set_parameter(owner, name, arrived[key])
        for owner, name, _ in others:
            owner._parameters[name] = param
    module.to(device)
