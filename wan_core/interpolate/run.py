"""One entry point for frame interpolation: RIFE with published weights, or ffmpeg's `minterpolate` without them.
The result says which one ran, so the CLI and the node can tell the user."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputError
from .ffmpeg import ffmpeg_interpolate
from .ifnet import IFNet
from .rife import rife_interpolate
from .weights import find_weights, load_ifnet, missing_weights_error

AUTO = "auto"  # RIFE when a recommended weight file is found, else ffmpeg
FFMPEG = "ffmpeg"  # never RIFE
MULTIPLIERS = (2, 4)


@dataclass(frozen=True)
class Interpolation:
    frames: torch.Tensor  # [F', H, W, 3] in 0..1, float32, CPU
    fps: float  # the input fps times the multiplier: same duration, smoother motion
    method: str  # what made the new frames, for the user


def resolve_weights(choice: str, folders: list[Path]) -> Path | None:
    """The RIFE file for ``choice``: a file name (must exist in ``folders``), :data:`AUTO` (the first recommended
    file found, else None) or :data:`FFMPEG` (None)."""
    if choice == FFMPEG:
        return None
    if choice == AUTO:
        return find_weights(folders)
    found = find_weights(folders, choice)
    if found is None:
        raise missing_weights_error(choice, folders)
    return found


@functools.lru_cache(maxsize=2)
def _cached_ifnet(path: str, mtime_ns: int) -> IFNet:
    return load_ifnet(path)


def interpolate_frames(
    frames: torch.Tensor,
    multiplier: int,
    *,
    fps: float,
    weights: str | Path | IFNet | None,
    device: torch.device | str | None = None,
    batch_size: int = 4,
    tile_size: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Interpolation:
    """``frames`` ``[F, H, W, 3]`` in 0..1 with ``multiplier - 1`` new frames between each pair: ``(F-1) *
    multiplier + 1`` frames at ``fps * multiplier``. ``weights``: a RIFE file (or a loaded IFNet); None uses
    ffmpeg's motion-compensated interpolation. RIFE runs in fp16 on a GPU, fp32 on the CPU."""
    if multiplier not in MULTIPLIERS:
        raise InputError(f"The interpolation multiplier must be one of {MULTIPLIERS}; got {multiplier}.")
    if weights is None:
        out = ffmpeg_interpolate(frames, multiplier)
        method = "ffmpeg minterpolate (motion-compensated; no RIFE weights, so lower quality than RIFE)"
    else:
        if isinstance(weights, IFNet):
            model, name = weights, "given model"
        else:
            path = Path(weights)
            if not path.is_file():
                raise missing_weights_error(path.name, [path.parent])
            model, name = _cached_ifnet(str(path.resolve()), path.stat().st_mtime_ns), path.name
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        out = rife_interpolate(model, frames, multiplier, device=device, dtype=dtype, batch_size=batch_size,
                               tile_size=tile_size, progress=progress)
        method = f"RIFE ({name}) on {device}"
    return Interpolation(frames=out, fps=fps * multiplier, method=f"{multiplier}x by {method}")
