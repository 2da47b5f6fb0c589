"""Model handles: what to load, from where, in which dtype, bound to which device.

A loader node returns a handle without reading any weight; `Wan22SetDevice` returns a copy bound to another device.
The weights are read the first time a consumer node runs (`handle.load()`), kept in a small cache so that two
handles of the same file share one module, and moved to the handle's device only then. A caller that needs a second
copy on another device (the batch manager's replica per GPU) passes a cache of its own: `handle.load(cache)`.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from wan_core.errors import InputError
from wan_core.patching import patches_pending, set_patches
from wan_core.pipeline.denoise import HIGH_NOISE, LOW_NOISE, SINGLE
from wan_core.runtime import Runtime, move_to

from .devices import check_device_name, resolve_device

if TYPE_CHECKING:
    from wan_core.pipeline.request import SamplingRequest

COMPUTE_DTYPES = {"default": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# The DiT loader's options for each weight_dtype choice of the model loader.
DIT_WEIGHT_FORMATS: dict[str, dict] = {
    # As stored: fp8_scaled files keep fp8 weights (matmuls in bf16), others load in their own dtype.
    "default": {"dtype": None, "fp8_weights": None},
    **{name: {"dtype": dtype, "fp8_weights": False} for name, dtype in COMPUTE_DTYPES.items() if dtype is not None},
    # fp8 storage: weights kept in e4m3 (half the memory), matmuls in bf16.
    "fp8_e4m3fn": {"dtype": torch.bfloat16, "fp8_weights": True},
    # fp8 storage and fp8 matmuls (Hopper / Ada / Blackwell): faster, slightly less exact.
    "fp8_e4m3fn_fast": {"dtype": torch.bfloat16, "fp8_compute": True},
}
# The autocast dtype of the DiT's matmuls for each weight_dtype: the official bf16, fp16 and fp32 as chosen.
DIT_COMPUTE_DTYPES: dict[str, torch.dtype | None] = {
    name: {"fp16": torch.float16, "fp32": None}.get(name, torch.bfloat16) for name in DIT_WEIGHT_FORMATS
}


class ModelCache:
    """Loaded modules by (kind, file, options), least recently used dropped first, a few per kind."""

    def __init__(self, capacity: dict[str, int]) -> None:
        self._capacity = capacity
        self._modules: OrderedDict[tuple, torch.nn.Module] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, load: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        with self._lock:
            if key in self._modules:
                self._modules.move_to_end(key)
                return self._modules[key]
            self._evict(kind=key[0])
            module = load()
            self._modules[key] = module
            return module

    def _evict(self, kind: str) -> None:
        same_kind = [key for key in self._modules if key[0] == kind]
        while len(same_kind) >= self._capacity.get(kind, 1):
            del self._modules[same_kind.pop(0)]

    def __len__(self) -> int:
        return len(self._modules)

    def clear(self) -> None:
        with self._lock:
            self._modules.clear()


# Two DiT experts (A14B high + low), one text encoder, one VAE.
MODEL_CACHE = ModelCache({"dit": 2, "t5": 1, "vae": 1})


def move_module(module: Any, device: torch.device, memory_required: int = 0) -> Any:
    """`module`, moved to `device` unless it is there already; on a GPU through the host's memory manager, which can
    then evict it for other models (and its Unload Models frees it), keeping `memory_required` bytes free beside it
    for the computation that follows. A text encoder registers the network it wraps."""
    from .memory_manager import load_on_device

    weights = module if isinstance(module, torch.nn.Module) else getattr(module, "model", None)
    if isinstance(weights, torch.nn.Module) and device.type != "cpu":
        load_on_device(weights, device, memory_required)
        return module
    move_to(module, device)
    return module


@dataclass(frozen=True, kw_only=True)
class ModelHandle:
    """Base of the handles: a device string (`auto`, `cpu`, `gpu:N`) resolved only when the model is used."""

    kind: ClassVar[str] = ""
    device: str = "auto"

    def bind(self, device: str) -> ModelHandle:
        check_device_name(device)
        return dataclasses.replace(self, device=device)

    def target_device(self) -> torch.device:
        return resolve_device(self.device, warn=False)

    def _load_cached(
        self,
        path: str,
        options: tuple,
        load: Callable[[], Any],
        cache: ModelCache | None = None,
        device: torch.device | None = None,
        memory_required: int = 0,
    ) -> Any:
        """`_cached`'s module moved to `device` (default: the bound device) with `memory_required` bytes kept free
        beside it."""
        module = self._cached(path, options, load, cache)
        return move_module(module, device or self.target_device(), memory_required)

    def _cached(self, path: str, options: tuple, load: Callable[[], Any], cache: ModelCache | None = None) -> Any:
        """The cached module of `path` in `cache` (default: the shared one; an empty cache is a cache too), where it
        is."""
        return (MODEL_CACHE if cache is None else cache).get((self.kind, path, *options), load)


@dataclass(frozen=True, kw_only=True)
class DiTHandle(ModelHandle):
    """The diffusion model of a task: the two A14B experts (high, low noise) or the single TI2V-5B model."""

    kind: ClassVar[str] = "dit"
    task: str
    high_noise_path: str
    low_noise_path: str | None = None
    weight_dtype: str = "default"
    attention: str = "auto"
    offload: bool = False
    # Weight patches (LoRA) per expert, applied in order: `wan_core.patching.ModelPatch` objects.
    patches_high: tuple = ()
    patches_low: tuple = ()
    blocks_on_gpu: str = "all"  # block swap: see wan_core.dit.block_swap.apply_blocks_on_gpu

    def runtime(self, *, host_placement: bool = False, memory_required: int = 0) -> Runtime:
        """How the experts run: the bound device, the compute dtype of `weight_dtype`, offload, the attention backend
        (`auto`: the fastest installed; a missing one raises here, saying what to install). `host_placement`: models
        go onto the GPU through the host's memory manager, which keeps to its budget by evicting others and keeps
        `memory_required` bytes free beside each (`forward_memory`); for a node sampling in ComfyUI's own thread, not
        for the batch queue's lanes (the manager is not thread-safe)."""
        runtime = Runtime.create(
            self.target_device(), compute_dtype=DIT_COMPUTE_DTYPES[self.weight_dtype], offload=self.offload,
            attention=self.attention,
        )  # fmt: skip
        if not host_placement:
            return runtime
        return runtime.replace(placer=functools.partial(move_module, memory_required=memory_required))

    def forward_memory(self, request: SamplingRequest) -> int:
        """The bytes one forward of this task's DiT needs beside its weights for `request`'s video (one latent at a
        time, as the sampler runs the guidance passes)."""
        from wan_core.configs import DIT_CONFIGS
        from wan_core.dit.activations import forward_activation_bytes
        from wan_core.pipeline.conditioning import seq_len_for

        tokens = seq_len_for(request.latent_shape, request.task.patch_size)
        return forward_activation_bytes(DIT_CONFIGS[self.task], tokens)

    def _load_expert(self, path: str, expert: str, patches: tuple, cache: ModelCache | None,
                     memory_required: int, place: bool) -> torch.nn.Module:
        from wan_core.dit.block_swap import apply_blocks_on_gpu
        from wan_core.dit.loader import load_dit

        def read() -> torch.nn.Module:
            model = load_dit(path, device="cpu", **DIT_WEIGHT_FORMATS[self.weight_dtype])
            apply_blocks_on_gpu(model, self.blocks_on_gpu, self.target_device())
            return model

        model = self._cached(path, (self.weight_dtype, self.blocks_on_gpu), read, cache)
        # new patches are merged on the device the expert runs on (a GPU merges far faster than the CPU)
        if place or self.offload or patches_pending(model, patches):
            # offloaded experts wait in CPU RAM; the sampler moves the one sampling onto the device and back
            move_module(model, torch.device("cpu") if self.offload else self.target_device(), memory_required)
        set_patches(model, patches, expert)
        return model

    def load(
        self, cache: ModelCache | None = None, memory_required: int = 0, place: bool = True
    ) -> tuple[torch.nn.Module, torch.nn.Module | None]:
        """(high-noise or only model, low-noise model or None) with this handle's patches: on the bound device (the
        host's memory manager keeping `memory_required` bytes free beside each), or in CPU RAM with `offload`. The
        base weights are read once; other patches on the same file re-patch them. `place=False` leaves each expert
        where it is unless its patches change (for a caller that places each expert when its steps start: under a
        tight budget, loading both first made each evict the other, 2 x 14 GB more moved per run)."""
        if not self.low_noise_path:
            single = self._load_expert(self.high_noise_path, SINGLE, self.patches_high, cache, memory_required, place)
            return single, None
        high = self._load_expert(self.high_noise_path, HIGH_NOISE, self.patches_high, cache, memory_required, place)
        low = self._load_expert(self.low_noise_path, LOW_NOISE, self.patches_low, cache, memory_required, place)
        return high, low


@dataclass(frozen=True, kw_only=True)
class T5Handle(ModelHandle):
    """The UMT5-XXL text encoder (and its tokenizer: inside the file, or a folder beside it)."""

    kind: ClassVar[str] = "t5"
    path: str
    weight_dtype: str = "default"
    tokenizer_path: str | None = None

    def load(self, cache: ModelCache | None = None) -> Any:
        from wan_core.text.encoder import load_text_encoder

        def read() -> Any:  # read onto a GPU it runs on: converted there (see text_encoder_from_state_dict)
            device = self.target_device()
            return load_text_encoder(self.path, tokenizer=self.tokenizer_path,
                                     device=device if device.type == "cuda" else "cpu",
                                     dtype=COMPUTE_DTYPES[self.weight_dtype])

        return self._load_cached(self.path, (self.weight_dtype, self.tokenizer_path), read, cache)


@dataclass(frozen=True, kw_only=True)
class VAEHandle(ModelHandle):
    """The Wan2.1 (z 16) or Wan2.2 (z 48) video VAE."""

    kind: ClassVar[str] = "vae"
    path: str
    weight_dtype: str = "default"

    def load(self, cache: ModelCache | None = None) -> torch.nn.Module:
        from wan_core.vae.loader import load_vae

        def read() -> torch.nn.Module:
            return load_vae(self.path, device="cpu", dtype=COMPUTE_DTYPES[self.weight_dtype])

        return self._load_cached(self.path, (self.weight_dtype,), read, cache)


def require_handle(value: Any, expected: type[ModelHandle], socket: str) -> Any:
    """`value` if it is an `expected` handle, else an error naming the wrong connection."""
    if not isinstance(value, expected):
        raise InputError(
            f"The {socket!r} input needs a {expected.__name__} (from the matching Wan2.2 loader), "
            f"got {type(value).__name__}; check the wire into {socket!r}."
        )
    return value
