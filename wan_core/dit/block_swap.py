"""Block swap: run a `WanDiT` whose transformer blocks do not all fit on the GPU.

The first `resident` blocks stay on the GPU with the rest of the model; the other blocks keep their weights in CPU
memory, their master copy, and are copied to the GPU on a side CUDA stream just before they run: while block i
computes, the copy of the next swapped block is already under way (an event orders its use after the copy), and the
GPU copy of a block is dropped as soon as it has run. At most two swapped blocks are on the GPU at a time.

`enable_block_swap(model, resident)` swaps `model.blocks` for a `ModuleList` that keeps the swapped blocks on the
CPU when the model is moved (`model.to("cuda")` moves everything else), so the sampler's own device moves keep
working. Works with any block weights: bf16/fp16/fp32, `FP8Linear` (fp8 + scale buffer) and `GGUFLinear` (raw ggml
blocks, 3-5x smaller transfers). LoRA merges: change the swapped blocks' master copies on the CPU (`swap.masters()`),
or replace their parameters and call `swap.refresh()`.

RAM: while the model is on the GPU the masters are pinned copies (packed by `host_buffers`, no power-of-two
rounding); moved back to the CPU (offload_model parks the idle expert) they return to the tensors they came from
(for a loaded expert, views of its memory-mapped file) and the pinned buffers go to the next pinning
(`host_buffers.give_back`: the expert that starts sampling), so only the sampling expert holds pinned RAM. A master
patched while pinned (LoRA) is written back first. The file pages read while pinning and while moving the resident
blocks are handed back block by block (`model.mapped_files`). Where pinned memory is off or refused
(`pinned_memory`), the masters stay plain CPU tensors and each copy to the GPU waits for its bytes to leave RAM.

On the CPU (tests) the "GPU copy" is a plain copy on the same device, and there are no streams or events.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .. import pinned_memory
from ..errors import InputError
from ..host_buffers import give_back, host_buffers
from ..mapped_weights import release_file_pages
from ..patching import weights_generation
from .model import WanDiT

GIB = 1024**3


def module_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(module))


def _tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    yield from module.parameters()
    yield from module.buffers()


def choose_resident_blocks(
    num_blocks: int, block_bytes: int, other_bytes: int, free_bytes: int, reserve_bytes: int
) -> int:
    """How many blocks can stay on a device with `free_bytes` free, when the rest of the model takes `other_bytes`,
    the forward's activations `reserve_bytes`, and two swapped blocks are in flight (all blocks if they all fit)."""
    if other_bytes + num_blocks * block_bytes + reserve_bytes <= free_bytes:
        return num_blocks
    room = free_bytes - other_bytes - reserve_bytes - 2 * block_bytes
    return max(0, min(num_blocks, room // max(1, block_bytes)))


@dataclass
class _Slot:
    """One swapped block: its tensors' CPU master copies and, while it is on the GPU, their copies there."""

    block: nn.Module
    masters: list[tuple[nn.Module, str, bool, torch.Tensor]] = field(default_factory=list)  # module, name, is_param
    sources: list[torch.Tensor | None] = field(default_factory=list)  # the unpinned tensors the masters came from
    generation: int | None = None  # while pinned: the model's `weights_generation` when pinned
    copies: list[torch.Tensor] | None = None
    ready: torch.cuda.Event | None = None


class BlockSwap:
    """The swapping of one model's blocks; see the module docstring."""

    def __init__(self, model: WanDiT, resident: int, *, pin: bool | None = None) -> None:
        num = len(model.blocks)
        if not 0 <= resident <= num:
            raise InputError(f"Block swap: {resident} resident blocks asked, the model has {num} (0 to {num}).")
        self.model = model
        self.resident = resident
        self.pin = pinned_memory.allowed() if pin is None else pin
        self._slots = {i: _Slot(model.blocks[i]) for i in range(resident, num)}
        self._stream: torch.cuda.Stream | None = None
        self._hooks: list = []
        self.transfers = 0  # blocks copied to the device so far
        self.pinned = False  # the masters are pinned copies of `sources`
        self.refresh()

    # --- master copies --------------------------------------------------------------------------------------------
    def refresh(self, *, on_device: bool | None = None) -> None:
        """Take the swapped blocks' current tensors as their master copies (on the CPU; pinned copies while the rest
        of the model is on a CUDA device and `pin`). `on_device`: where the rest of the model is (None: look)."""
        self.drop_copies()
        self.pinned = False
        pin = self.pin and (self._rest_on_device() if on_device is None else on_device)
        for slot in self._slots.values():
            slot.masters, slot.generation = [], None
            for module in slot.block.modules():
                for table, is_param in ((module._parameters, True), (module._buffers, False)):
                    for name, tensor in table.items():
                        if tensor is None:
                            continue
                        master = tensor.detach() if pin else tensor.detach().to("cpu")  # pinning copies it anyway
                        self._assign(module, name, is_param, master)
                        slot.masters.append((module, name, is_param, master))
            # A tensor that was on the device has no CPU source: unpinning makes one.
            slot.sources = [master if master.device.type == "cpu" else None for *_, master in slot.masters]
        if pin:
            self.pin_masters()

    def _rest_on_device(self) -> bool:
        """Whether the model's tensors outside the swapped blocks are on a non-CPU device."""
        swapped = {id(t) for slot in self._slots.values() for t in _tensors(slot.block)}
        return any(t.device.type != "cpu" for t in _tensors(self.model) if id(t) not in swapped)

    def _release_file_pages(self) -> None:
        release_file_pages(self.model)

    def pin_masters(self) -> None:
        """Masters become pinned copies of their sources (with `pin`); the file pages read are handed back block by
        block."""
        if self.pinned or not self.pin:
            return
        self.drop_copies()
        try:
            buffers = iter(host_buffers([m for slot in self._slots.values() for *_, m in slot.masters],
                                        pin=torch.cuda.is_available()))  # CPU tests: plain buffers
        except pinned_memory.PinnedMemoryUnavailable:  # `pinned_memory` logged why
            self.pin = False
            self.refresh()  # plain CPU masters (a tensor still on the GPU is copied off it)
            return
        for slot in self._slots.values():
            masters = []
            for module, name, is_param, current in slot.masters:
                master = next(buffers).copy_(current)
                self._assign(module, name, is_param, master)
                masters.append((module, name, is_param, master))
            slot.masters = masters
            slot.generation = weights_generation(self.model)
            self._release_file_pages()
        self.pinned = True

    def unpin_masters(self) -> None:
        """Masters back to their sources (a master patched while pinned is written back first); the pinned buffers
        are given back for the next pinning."""
        if not self.pinned:
            return
        self.drop_copies()
        if self._stream is not None:
            self._stream.synchronize()  # no copy reads the pinned masters once they are given back
        staged = [master for slot in self._slots.values() for *_, master in slot.masters]
        for slot in self._slots.values():
            masters, sources = [], []
            patched = weights_generation(self.model) != slot.generation
            for (module, name, is_param, master), source in zip(slot.masters, slot.sources, strict=True):
                if source is None:
                    source = master.clone()
                elif patched and not torch.equal(source, master):
                    with torch.inference_mode():  # the source may be an inference tensor (loaded in a ComfyUI node)
                        source.copy_(master)
                self._assign(module, name, is_param, source)
                masters.append((module, name, is_param, source))
                sources.append(source)
            slot.masters, slot.sources, slot.generation = masters, sources, None
        give_back(staged, pinned=torch.cuda.is_available())
        self.pinned = False

    def masters(self) -> dict[str, torch.Tensor]:
        """The CPU master copies of the swapped blocks' tensors by state-dict name (change them in place to patch)."""
        names = {id(t): n for n, t in self.model.state_dict(keep_vars=True).items()}
        out = {}
        for slot in self._slots.values():
            for module, name, is_param, master in slot.masters:
                current = module._parameters[name] if is_param else module._buffers[name]
                out[names.get(id(current), name)] = master
        return out

    @staticmethod
    def _assign(module: nn.Module, name: str, is_param: bool, tensor: torch.Tensor) -> None:
        if is_param:
            module._parameters[name].data = tensor
        else:
            module._buffers[name] = tensor

    # --- moving ---------------------------------------------------------------------------------------------------
    def _load(self, index: int, device: torch.device) -> None:
        slot = self._slots[index]
        if slot.copies is not None:
            return
        self.transfers += 1
        if device.type != "cuda":
            slot.copies = [master.to(device, copy=True) for _, _, _, master in slot.masters]
            return
        if self._stream is None or self._stream.device != device:
            self._stream = torch.cuda.Stream(device)
        stream = self._stream
        # No wait on the compute stream: the masters never change during a forward, and memory freed by a block that
        # compute still reads is not reused before compute got there (`record_stream` in `_use`).
        with torch.cuda.stream(stream):
            slot.copies = [master.to(device, non_blocking=True) for _, _, _, master in slot.masters]
            slot.ready = torch.cuda.Event()
            slot.ready.record(stream)

    def _use(self, index: int) -> None:
        slot = self._slots[index]
        if slot.ready is not None:
            compute = torch.cuda.current_stream(slot.copies[0].device)
            compute.wait_event(slot.ready)
            for copy in slot.copies:
                copy.record_stream(compute)  # allocated on the side stream, freed after compute used it
        for (module, name, is_param, _), copy in zip(slot.masters, slot.copies, strict=True):
            self._assign(module, name, is_param, copy)

    def _release(self, index: int) -> None:
        slot = self._slots[index]
        for module, name, is_param, master in slot.masters:
            self._assign(module, name, is_param, master)
        slot.copies, slot.ready = None, None

    def drop_copies(self) -> None:
        """Forget any device copy (the model is moving, or the masters changed); a block whose forward was cut short
        (out of memory) gets its master copies back."""
        for index, slot in self._slots.items():
            if slot.copies is not None:
                self._release(index)

    # --- hooks ----------------------------------------------------------------------------------------------------
    def _next_swapped(self, index: int) -> int | None:
        return next((j for j in range(index + 1, len(self.model.blocks)) if j in self._slots), None)

    def _before(self, index: int, hidden: torch.Tensor) -> None:
        device = hidden.device
        if index in self._slots:
            self._load(index, device)  # not prefetched: the first swapped block when no block is resident
            self._use(index)
        following = self._next_swapped(index)
        if following is not None:
            self._load(following, device)

    def attach(self) -> None:
        for index, block in enumerate(self.model.blocks):
            self._hooks.append(block.register_forward_pre_hook(
                lambda _module, args, index=index: self._before(index, args[0])))
            if index in self._slots:
                self._hooks.append(block.register_forward_hook(
                    lambda _module, _args, _out, index=index: self._release(index)))

    def detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self.drop_copies()

    @property
    def swapped(self) -> list[int]:
        return sorted(self._slots)


class SwappedBlocks(nn.ModuleList):
    """`model.blocks` under block swap: same children and state-dict names; moving the model to a device leaves the
    swapped blocks' master copies on the CPU."""

    swap: BlockSwap | None = None

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 - torch's signature
        swap = self.swap
        if swap is None:
            return super()._apply(fn, recurse)
        swap.drop_copies()
        moves_off_cpu = fn(torch.zeros(1)).device.type != "cpu"
        if moves_off_cpu:
            swap.pin_masters()
        else:
            swap.unpin_masters()
        for index, block in enumerate(self):
            if index in swap._slots and moves_off_cpu:
                continue
            block._apply(fn)
            if moves_off_cpu:
                swap._release_file_pages()
        if not moves_off_cpu:
            # A dtype change on the CPU made new tensors. The rest of the model is on its way to the CPU too (modules
            # after the blocks, the head, are not moved yet): no pinning.
            swap.refresh(on_device=False)
        return self


def enable_block_swap(model: WanDiT, resident: int | None = None, *, device: torch.device | str | None = None,
                      reserve_gib: float = 4.0) -> BlockSwap:
    """Swap `model`'s blocks beyond the first `resident` (None: as many as fit in the free memory of `device`, keeping
    `reserve_gib` for the activations). Returns the `BlockSwap` (also `model.block_swap`)."""
    disable_block_swap(model)
    if resident is None:
        resident = auto_resident_blocks(model, torch.device(device or model.device), reserve_gib)
    blocks = SwappedBlocks(list(model.blocks))
    model.blocks = blocks
    swap = BlockSwap(model, resident)
    blocks.swap = swap
    swap.attach()
    model.block_swap = swap
    return swap


def disable_block_swap(model: WanDiT) -> None:
    """Back to all blocks moving with the model (the swapped ones stay on the CPU until the model is moved)."""
    swap = getattr(model, "block_swap", None)
    if swap is None:
        return
    swap.detach()
    model.blocks.swap = None
    model.block_swap = None


def device_free_bytes(device: torch.device) -> int:
    """Free memory of a CUDA device for this process: what the driver has free, within the process's memory
    fraction (`torch.cuda.set_per_process_memory_fraction`, as the emulated small cards of the bench use)."""
    free, total = torch.cuda.mem_get_info(device)
    fraction = torch.cuda.get_per_process_memory_fraction(device)
    cached_free = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(min(free + cached_free, fraction * total - torch.cuda.memory_allocated(device)))


def auto_resident_blocks(model: WanDiT, device: torch.device, reserve_gib: float) -> int:
    """The resident block count for `device` (all blocks off CUDA)."""
    num = len(model.blocks)
    if device.type != "cuda":
        return num
    free = device_free_bytes(device)
    block_bytes = max(module_bytes(b) for b in model.blocks)
    on_device = sum(t.numel() * t.element_size() for t in _tensors(model) if t.device.type == "cuda")
    other = module_bytes(model) - num * block_bytes
    return choose_resident_blocks(num, block_bytes, other, free + on_device, int(reserve_gib * GIB))


# The Model Loader's `blocks_on_gpu` choices: all (no swap), auto (what fits the free memory), or a count.
BLOCKS_ON_GPU_CHOICES = ("all", "auto", *(str(n) for n in range(0, 41, 2)))


def apply_blocks_on_gpu(model: WanDiT, setting: str, device: torch.device | str) -> BlockSwap | None:
    """Block swap as the `blocks_on_gpu` setting says (counts above the model's block count mean all)."""
    if setting == "all":
        return None
    if setting != "auto" and not setting.isdigit():
        raise InputError(f"blocks_on_gpu must be 'all', 'auto' or a block count, not {setting!r}.")
    resident = None if setting == "auto" else int(setting)
    if resident is not None and resident >= len(model.blocks):
        return None
    return enable_block_swap(model, resident, device=device)
