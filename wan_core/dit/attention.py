"""Attention backends of the DiT, in one registry: PyTorch SDPA, FlashAttention, SageAttention, and `auto`.

A backend is a callable object `backend(q, k, v) -> out` on `[B, L, H, D]` tensors (no masks: single-GPU sequences
carry no padding, and the text context is attended to with its zero padding, as the reference does). Each backend
is checked once, when it is resolved by name (`get_backend`); a backend object may wrap another one (the
sequence-parallel all-to-all wraps the local backend), which is why the model takes the object, not a name.

`auto` resolves to the fastest backend that imports and runs on the device: SageAttention 2 (sm_80+), then our own
8-bit Triton kernel (`int8_triton`: sm_90; on sm_89 and sm_120 by name), then FlashAttention, then SDPA.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..errors import InputError, WanError
from . import attention8, kernels, sage_sm90

log = logging.getLogger(__name__)

AUTO = "auto"


class AttentionBackend:
    """Base: softmax attention of `q` `[B, Lq, H, D]` over `k`, `v` `[B, Lk, H, D]`; returns `[B, Lq, H, D]`.

    Inputs a kernel cannot take (CPU, float32) go through SDPA, so one backend serves every call of a forward."""

    name = "sdpa"
    gpu_hint = "the build installed here does not run on this GPU"
    graph_safe = True  # its kernels launch on the current stream, so a CUDA graph can capture them

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if not self.takes(q):
            return sdpa(q, k, v)
        return self.kernel(q, k, v)

    def takes(self, q: torch.Tensor) -> bool:
        return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)

    def kernel(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return sdpa(q, k, v)

    def normed_q_attention(
        self, x: torch.Tensor, weight: torch.Tensor, eps: float, freqs: torch.Tensor | None, k: torch.Tensor,
        v: torch.Tensor,
    ) -> torch.Tensor:
        """Attention whose q is `kernels.rms_norm_rope` of the projection `x` `[B, L, H * D]` (RMSNorm over all heads
        times `weight`, then RoPE by `freqs`, None: none), over `k`, `v` `[B, Lk, H, D]`. A backend that quantizes q
        may make the norm in that pass."""
        q = kernels.rms_norm_rope(x, weight, eps, freqs, k.shape[-1])
        return self(q.unflatten(-1, (k.shape[2], k.shape[3])), k, v)

    @staticmethod
    def available() -> bool:
        """Whether the kernel imports here (SDPA always does)."""
        return True

    @staticmethod
    def runs_on(device: torch.device) -> bool:
        """Whether a build that imports runs on CUDA `device` (some are made for one GPU architecture)."""
        return True

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.name == self.name

    def __hash__(self) -> int:
        return hash((type(self), self.name))


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


class SdpaAttention(AttentionBackend):
    name = "sdpa"

    def takes(self, q: torch.Tensor) -> bool:
        return False


class FlashAttention(AttentionBackend):
    """The newest FlashAttention that imports: FA4 (CuTe DSL), FA3 (`flash_attn_interface`, or `fa3-fwd`'s
    `fa3_fwd_interface`), FA2."""

    name = "flash_attn"
    install_hint = (
        "`pip install flash-attn-4`, FlashAttention-3 (`pip install fa3-fwd` on Hopper) or `pip install flash-attn`"
    )
    gpu_hint = (
        "the FlashAttention build installed here does not run on this GPU (FlashAttention-3 is for Hopper only; "
        f"install {install_hint})"
    )

    def kernel(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = _flash_fn(torch.cuda.get_device_capability(q.device))(q, k, v)
        return out[0] if isinstance(out, tuple) else out

    @staticmethod
    def available() -> bool:
        return _flash_fn() is not None

    @staticmethod
    def runs_on(device: torch.device) -> bool:
        return _flash_fn(torch.cuda.get_device_capability(device)) is not None


class SageAttention(AttentionBackend):
    """SageAttention (8-bit q/k): 2.x built for the GPU, or 1.x from PyPI. On Hopper its kernel gets its inputs from
    our one-pass preparation (`sage_sm90`), the same values `sageattn` would give it in fewer passes."""

    name = "sage"
    install_hint = "SageAttention 2 (built from its sources; `pip install sageattention` gives 1.x)"
    graph_safe = False  # SageAttention 2's CUDA kernels launch on the legacy default stream, outside any capture

    def kernel(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return _ordered_with_legacy_stream(q, lambda out: self._attention(q, k, v, out))

    def normed_q_attention(
        self, x: torch.Tensor, weight: torch.Tensor, eps: float, freqs: torch.Tensor | None, k: torch.Tensor,
        v: torch.Tensor,
    ) -> torch.Tensor:
        q = x.unflatten(-1, (k.shape[2], k.shape[3]))
        if torch.compiler.is_compiling() or not (self.takes(q) and sage_sm90.supported(q, k, v)):
            return super().normed_q_attention(x, weight, eps, freqs, k, v)
        return _ordered_with_legacy_stream(
            q, lambda out: sage_sm90.attention_normed_q(x, weight, eps, freqs, k, v, out)
        )

    @staticmethod
    def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        if sage_sm90.supported(q, k, v):
            return sage_sm90.attention(q, k, v, out)
        result = _sage_fn()(q, k, v, tensor_layout="NHD", is_causal=False)
        return result if out is None else out.copy_(result)

    @staticmethod
    def available() -> bool:
        return _sage_fn() is not None


class Int8TritonAttention(AttentionBackend):
    """Our own 8-bit attention in Triton (`attention8`: SageAttention 2's algorithm, int8 q.k, fp8 p.v) on Ada, Hopper
    and RTX 50xx GPUs; needs no package beyond the Triton that PyTorch brings."""

    name = "int8_triton"
    install_hint = "Triton (it comes with PyTorch's CUDA builds on Linux; `pip install triton-windows` on Windows)"
    gpu_hint = "it needs fp8 tensor cores: an Ada (sm_89), Hopper (sm_90) or RTX 50xx (sm_120) GPU"

    def kernel(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if not attention8.supported(q, k, v):
            return sdpa(q, k, v)
        try:
            return attention8.attention(q, k, v)
        except attention8.BUILD_ERRORS as err:
            major, minor = torch.cuda.get_device_capability(q.device)
            reason = (str(err).strip().splitlines() or [type(err).__name__])[-1][:300]
            raise WanError(
                f"attention 'int8_triton' could not build its kernel for this GPU (sm_{major}{minor}, Triton "
                f"{attention8.triton.__version__}): {reason}. Use attention 'auto' or 'sdpa'."
            ) from err

    @staticmethod
    def available() -> bool:
        return attention8.triton is not None

    @staticmethod
    def runs_on(device: torch.device) -> bool:
        return torch.cuda.get_device_capability(device) in attention8.CAPABILITIES


FLASH_ATTENTION_3 = ("flash_attn_interface", "fa3_fwd_interface")  # built for Hopper (sm_90) only


@functools.cache
def _flash_fn(capability: tuple[int, int] | None = None) -> Callable | None:
    """The newest FlashAttention's `flash_attn_func` that imports; given a GPU's capability, one that runs there."""
    candidates = (
        ("flash_attn.cute", "flash_attn_func"),
        ("flash_attn_interface", "flash_attn_func"),
        ("fa3_fwd_interface", "flash_attn_func"),
        ("flash_attn", "flash_attn_func"),
    )
    for module, name in candidates:
        if capability is not None and module in FLASH_ATTENTION_3 and capability != (9, 0):
            continue
        try:
            mod = __import__(module, fromlist=[name])
            return getattr(mod, name)
        except Exception:  # ImportError, or a broken CUDA extension
            continue
    return None


def _ordered_with_legacy_stream(
    q: torch.Tensor, call: Callable[[torch.Tensor | None], torch.Tensor]
) -> torch.Tensor:
    """`call(out)`: attention of `q` whose CUDA kernels may launch on the legacy default stream whatever the current
    stream is (as SageAttention 2's do), written into `out` (None: into a tensor of its own).

    On the legacy stream it runs as it is. Elsewhere (the batch queue's lanes work on streams of their own, which do
    not synchronize with the legacy one) it runs wholly on the legacy stream, its input preparation too, after this
    stream's work so far and before its work to come, into an output allocated here: the output's memory then belongs
    to this stream and is freed in this stream's order (under the `cudaMallocAsync` allocator too, which may hand a
    freed block to another stream at once), while the call's own temporaries live and die on the legacy stream."""
    current, legacy = torch.cuda.current_stream(q.device), torch.cuda.default_stream(q.device)
    if current == legacy:
        return call(None)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    legacy.wait_stream(current)
    with torch.cuda.stream(legacy):
        call(out)
    current.wait_stream(legacy)
    return out


@functools.cache
def _sage_fn() -> Callable | None:
    try:
        from sageattention import sageattn
    except Exception:
        return None
    return sageattn


def _sage_version() -> tuple[int, ...]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return tuple(int(part) for part in version("sageattention").split(".")[:2] if part.isdigit())
    except PackageNotFoundError:
        return ()


BACKENDS: dict[str, type[AttentionBackend]] = {
    SdpaAttention.name: SdpaAttention,
    FlashAttention.name: FlashAttention,
    SageAttention.name: SageAttention,
    Int8TritonAttention.name: Int8TritonAttention,
}
NAMES = (AUTO, *BACKENDS)


def _fastest(device: torch.device | None) -> AttentionBackend:
    """SageAttention 2 where it runs (sm_80+; its 1.x is slower than SDPA on Hopper), then our 8-bit Triton kernel
    (Hopper, where it was measured), then FlashAttention, else SDPA."""
    on_gpu = device is not None and device.type == "cuda" and torch.cuda.is_available()
    if on_gpu:
        capability = torch.cuda.get_device_capability(device)
        if capability >= (8, 0) and SageAttention.available() and _sage_version() >= (2,):
            return SageAttention()
        if Int8TritonAttention.available() and capability in attention8.AUTO_CAPABILITIES:
            return Int8TritonAttention()
        if FlashAttention.available() and FlashAttention.runs_on(device):
            return FlashAttention()
    return SdpaAttention()


def get_backend(name: str | AttentionBackend, device: torch.device | str | None = None) -> AttentionBackend:
    """The backend object for `name` (`auto` picks for `device`); an error that says what to install otherwise."""
    if isinstance(name, AttentionBackend):
        return name
    if name == AUTO:
        backend = _fastest(torch.device(device) if device is not None else None)
        log.info("attention: auto -> %s", backend.name)
        return backend
    cls = BACKENDS.get(name)
    if cls is None:
        raise InputError(f"Unknown attention backend {name!r}; choose one of {', '.join(NAMES)}.")
    if not cls.available():
        raise InputError(
            f"attention {name!r} was asked for, but it does not import here. Install {cls.install_hint}, "
            "or use 'sdpa' or 'auto'."
        )
    if device is not None and torch.device(device).type == "cuda" and not cls.runs_on(torch.device(device)):
        major, minor = torch.cuda.get_device_capability(device)
        raise InputError(
            f"attention {name!r}: {cls.gpu_hint}, and this GPU is sm_{major}{minor}. Use 'auto', which picks what runs "
            "here, or 'sdpa'."
        )
    return cls()
