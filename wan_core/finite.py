"""NaN / Inf detection: in user numbers before any work, in weights as they load, in latents and decoded video.

A non-finite value anywhere in sampling spreads to every pixel and the video comes out black; these checks stop the
run with an error naming what is non-finite and the likely cause instead of saving such a video."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping

import torch

from .errors import CheckpointError, InputError, WanError

LATENT_CAUSES = (
    "a weight file holding NaN/Inf, fp16 overflow in the text encoder (run it in bf16 or fp32), or an extreme "
    "cfg / shift"
)


class NonFiniteError(WanError):
    """A tensor the pipeline produced holds NaN or Inf; nothing was saved from it."""


def check_finite_number(name: str, value: object) -> None:
    """InputError when `value` (a number, or a tuple / list of numbers) is NaN or infinite."""
    values = value if isinstance(value, (tuple, list)) else [value]
    for item in values:
        if isinstance(item, numbers.Real) and not isinstance(item, bool) and not math.isfinite(item):
            raise InputError(f"{name} is {item!r}; it must be a finite number (NaN and infinity are not allowed)")


def _count_non_finite(tensor: torch.Tensor) -> int:
    return int((~torch.isfinite(tensor)).sum().item())


def check_finite(tensor: torch.Tensor, what: str, causes: str = LATENT_CAUSES) -> None:
    """Raise `NonFiniteError` naming `what` and the likely `causes` when `tensor` holds NaN or Inf."""
    if torch.isfinite(tensor).all():
        return
    bad = _count_non_finite(tensor)
    raise NonFiniteError(
        f"{what} holds NaN/Inf in {bad} of {tensor.numel()} values; no video was saved. Likely cause: {causes}."
    )


# Inf and NaN as bit patterns: viewed as integers of its width, a value is Inf or NaN exactly when all the bits of
# `mask` are set (the exponent; for e4m3fn, which has no Inf, exponent and mantissa), so the largest `x & mask` of a
# tensor equals `mask` exactly when it holds one. The "fnuz" fp8 formats' only NaN is one byte, 0x80.
_NON_FINITE_MASKS = {
    torch.float32: (torch.int32, 0x7F800000),
    torch.bfloat16: (torch.int16, 0x7F80),
    torch.float16: (torch.int16, 0x7C00),
    **{getattr(torch, name): (torch.uint8, mask)
       for name, mask in (("float8_e4m3fn", 0x7F), ("float8_e5m2", 0x7C)) if hasattr(torch, name)},
}
_FNUZ_NAN = tuple(getattr(torch, name) for name in ("float8_e4m3fnuz", "float8_e5m2fnuz") if hasattr(torch, name))
# On the CPU the test runs over slices of this many values, whose temporaries stay in cache: fp8 block weights of A14B
# shapes are scanned at 13.7 GiB/s on 2 cores, against 1.1 GiB/s for whole-tensor passes (12 s of a 14B expert's
# load, now 1 s).
CPU_SLICE = 1 << 21


def _all_finite(tensor: torch.Tensor) -> bool:
    if tensor.dtype in _FNUZ_NAN:
        return not bool((tensor.view(torch.uint8) == 0x80).any())
    if tensor.dtype not in _NON_FINITE_MASKS:
        return bool(torch.isfinite(tensor).all())
    bits, mask = _NON_FINITE_MASKS[tensor.dtype]
    flat = tensor.view(bits).reshape(-1)
    slices = flat.split(CPU_SLICE) if flat.device.type == "cpu" else (flat,)
    return all(int((part & mask).amax()) != mask for part in slices)


def non_finite_tensors(tensors: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """The names of floating tensors holding NaN or Inf (checked where they lie, one tensor at a time)."""
    return [name for name, tensor in tensors
            if tensor.is_floating_point() and tensor.numel() and not _all_finite(tensor)]


def scan_weights(
    state: Mapping[str, torch.Tensor], where: str, read: Callable[[torch.Tensor], None] | None = None
) -> None:
    """CheckpointError naming the tensors of `state` (loaded from `where`) that hold NaN or Inf. `read` is told of
    each tensor once checked (a load's `PageDropper.read`, so that the scan does not keep a whole file resident)."""
    bad = []
    for name, tensor in state.items():
        bad += non_finite_tensors([(name, tensor)])
        if read is not None:
            read(tensor)
    if bad:
        shown = ", ".join(repr(name) for name in bad[:8]) + (f", ... ({len(bad)} in all)" if len(bad) > 8 else "")
        raise CheckpointError(
            f"{where} holds NaN/Inf values in {len(bad)} tensor(s): {shown}. The file is damaged or was saved from a "
            "diverged model: download it again."
        )


def check_weight_dtypes(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.dtype], where: str) -> None:
    """CheckpointError when a tensor that the model holds as floating point is stored as an integer or bool."""
    wrong = [f"{name} ({state[name].dtype})" for name, dtype in expected.items()
             if name in state and dtype.is_floating_point and not state[name].is_floating_point()]
    if wrong:
        shown = ", ".join(wrong[:6]) + (f", ... ({len(wrong)} in all)" if len(wrong) > 6 else "")
        raise CheckpointError(
            f"{where} stores floating-point weights as integers: {shown}. These cannot be used as weights; the file "
            "was converted wrongly: use the original bf16/fp16/fp32 (or fp8_scaled) file."
        )
