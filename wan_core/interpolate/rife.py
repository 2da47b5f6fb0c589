"""RIFE over a whole clip: every pair of neighbouring frames gets ``multiplier - 1`` frames between them, computed in
batches of pairs on the device, optionally in overlapping spatial tiles (less memory for 720p on small cards)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import InputError
from ..vae.tiling import blend_ramp, tile_spans
from .ifnet import IFNet

DEFAULT_TILE_OVERLAP = 64


def interpolated_count(frame_count: int, multiplier: int) -> int:
    """Frames out of ``frame_count`` frames: the originals are kept, ``multiplier - 1`` go between each pair."""
    return (frame_count - 1) * multiplier + 1


def check_request(frames: torch.Tensor, multiplier: int) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"Expected frames [F, H, W, 3] in 0..1; got shape {tuple(frames.shape)}.")
    if frames.shape[0] < 2:
        raise InputError(f"Interpolation needs at least 2 frames; got {frames.shape[0]}.")
    if multiplier < 1:
        raise InputError(f"The multiplier must be 1 or more (2 doubles the frame rate); got {multiplier}.")


def _run_tiled(
    model: IFNet, img0: torch.Tensor, img1: torch.Tensor, timestep: float, tile_size: int, overlap: int
) -> torch.Tensor:
    """``model(img0, img1, timestep)`` over overlapping tiles, blended with linear ramps (whole frame if it fits)."""
    height, width = img0.shape[2:]
    if tile_size <= 0 or (height <= tile_size and width <= tile_size):
        return model(img0, img1, timestep)
    out = torch.zeros_like(img0)
    total = torch.zeros((1, 1, height, width), device=img0.device, dtype=img0.dtype)
    for y0, y1 in tile_spans(height, tile_size, overlap):
        wy = blend_ramp(y0, y1, height, overlap, device=img0.device, dtype=img0.dtype)
        for x0, x1 in tile_spans(width, tile_size, overlap):
            wx = blend_ramp(x0, x1, width, overlap, device=img0.device, dtype=img0.dtype)
            weight = wy[:, None] * wx[None, :]
            tile = model(img0[:, :, y0:y1, x0:x1], img1[:, :, y0:y1, x0:x1], timestep)
            out[:, :, y0:y1, x0:x1] += tile * weight
            total[:, :, y0:y1, x0:x1] += weight
    return out / total


@torch.inference_mode()
def rife_interpolate(
    model: IFNet,
    frames: torch.Tensor,
    multiplier: int,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int = 4,
    tile_size: int = 0,
    tile_overlap: int = DEFAULT_TILE_OVERLAP,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """``frames`` ``[F, H, W, 3]`` in 0..1 -> ``[(F-1)*multiplier + 1, H, W, 3]`` (float32, CPU). Frame ``k *
    multiplier`` of the result is input frame ``k``; between them RIFE's frames at times ``i / multiplier``.
    ``tile_size`` > 0 splits frames larger than that many pixels into tiles overlapping by ``tile_overlap``.
    ``progress(done, total)`` is called after each batch of pairs."""
    check_request(frames, multiplier)
    if batch_size < 1:
        raise InputError(f"batch_size must be 1 or more; got {batch_size}.")
    if tile_size > 0 and tile_overlap >= tile_size:
        raise InputError(f"tile_overlap ({tile_overlap}) must be smaller than tile_size ({tile_size}).")
    device = torch.device(device)
    model = model.to(device=device, dtype=dtype)
    count = frames.shape[0]
    out = torch.empty((interpolated_count(count, multiplier), *frames.shape[1:]), dtype=torch.float32)
    out[::multiplier] = frames.float()
    pairs = count - 1
    for start in range(0, pairs, batch_size):
        stop = min(start + batch_size, pairs)
        # one host->device copy of frames start..stop serves both sides of every pair in the batch
        clip = frames[start:stop + 1].to(device=device, dtype=dtype).permute(0, 3, 1, 2)
        for step in range(1, multiplier):
            middle = _run_tiled(model, clip[:-1], clip[1:], step / multiplier, tile_size, tile_overlap)
            out[start * multiplier + step:stop * multiplier:multiplier] = middle.permute(0, 2, 3, 1).float().cpu()
        if progress is not None:
            progress(stop, pairs)
    return out
