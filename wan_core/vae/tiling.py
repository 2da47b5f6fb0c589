"""Spatial tiling of VAE encode/decode: overlapping tiles, each run through the full chunked causal pass, blended
with linear ramps over the overlaps.

Every tile covers all frames; only height and width are split. At each edge that borders another tile, a tile's
weight is 0 over the outer quarter of the overlap (where its own zero padding spoils it most), then rises linearly to
1 over the middle half; the frame's outer edges keep weight 1. The result is the weight-normalized sum, so two tiles
that overlap by exactly `overlap` cross-fade linearly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..errors import InputError

DEFAULT_OVERLAP = 0.25


def tile_spans(total: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """`(start, end)` spans of at most `tile` covering `0..total`, neighbours overlapping by at least `overlap`.

    The last span is aligned to the end, so every span has the full size when `tile <= total`.
    """
    if tile >= total:
        return [(0, total)]
    step = max(1, tile - overlap)
    count = math.ceil((total - tile) / step) + 1
    starts = sorted({min(i * step, total - tile) for i in range(count)})
    return [(s, s + tile) for s in starts]


MARGIN = 0.25


def blend_ramp(start: int, end: int, total: int, overlap: int, *, device, dtype=torch.float32) -> torch.Tensor:
    """1-D weights of the span `start..end` whose neighbours overlap it by `overlap` samples.

    At an edge inside `0..total`, the weight is 0 over the outer `MARGIN * overlap` samples (where the tile's own
    zero padding spoils its result most), then rises linearly to 1 over the middle of the overlap; two tiles that
    overlap by exactly `overlap` cross-fade linearly there (their weights sum to 1).
    """
    pos = torch.arange(start, end, device=device, dtype=torch.float64)
    weight = torch.ones_like(pos)
    if overlap > 0:
        margin = math.floor(overlap * MARGIN)
        ramp = overlap - 2 * margin
        if start > 0:
            weight = torch.minimum(weight, ((pos - start - margin + 0.5) / ramp).clamp(min=0))
        if end < total:
            weight = torch.minimum(weight, ((end - margin - pos - 0.5) / ramp).clamp(min=0))
    return weight.to(dtype)


def _tile_pair(tile_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(tile_size, int):
        tile_size = (tile_size, tile_size)
    if len(tile_size) != 2 or any(not isinstance(t, int) or t <= 0 for t in tile_size):
        raise InputError(f"tile_size must be a positive (height, width) in pixels, got {tile_size!r}")
    return int(tile_size[0]), int(tile_size[1])


def latent_tiles(
    tile_size: int | tuple[int, int], tile_overlap: float | int, spatial_stride: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Tile size and overlap in latent units from a tile size in pixels and an overlap that is either a fraction of
    the tile (float in [0, 1)) or a number of pixels (int); the overlap is capped at half a tile."""
    th, tw = _tile_pair(tile_size)
    if th < spatial_stride or tw < spatial_stride:
        raise InputError(f"tile_size {th}x{tw} is smaller than the VAE's spatial stride {spatial_stride}")
    lat = (th // spatial_stride, tw // spatial_stride)
    if isinstance(tile_overlap, bool) or not isinstance(tile_overlap, (int, float)) or tile_overlap < 0:
        raise InputError(f"tile_overlap must be a fraction in [0, 1) or a number of pixels, got {tile_overlap!r}")
    if isinstance(tile_overlap, float):
        if tile_overlap >= 1:
            raise InputError(f"a fractional tile_overlap must be below 1, got {tile_overlap}")
        ov = tuple(round(t * tile_overlap) for t in lat)
    else:
        ov = (round(tile_overlap / spatial_stride),) * 2
    # at most half a tile, so that every sample keeps a positive blend weight (see `blend_ramp`)
    ov = tuple(min(o, t // 2) for o, t in zip(ov, lat, strict=True))
    return lat, ov


def run_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: tuple[int, int],
    overlap: tuple[int, int],
    scale: float,
    out_frames: int,
    out_channels: int,
) -> torch.Tensor:
    """Run `fn` on overlapping spatial tiles of `x` [B, C, T, H, W] and blend the results.

    `tile`/`overlap` are in units of `x`'s grid; `fn` maps a tile of h x w to a result of (h*scale) x (w*scale) with
    `out_channels` channels and `out_frames` frames (decode: scale = stride, encode: scale = 1/stride).
    """
    b, _, _, height, width = x.shape
    rows = tile_spans(height, tile[0], overlap[0])
    cols = tile_spans(width, tile[1], overlap[1])
    if len(rows) == 1 and len(cols) == 1:
        return fn(x)
    out_h, out_w = round(height * scale), round(width * scale)
    acc = None
    weight_sum = torch.zeros(out_h, out_w, device=x.device, dtype=torch.float32)
    for r0, r1 in rows:
        for c0, c1 in cols:
            y = fn(x[:, :, :, r0:r1, c0:c1])
            o_r0, o_r1, o_c0, o_c1 = (round(v * scale) for v in (r0, r1, c0, c1))
            if acc is None:
                acc = torch.zeros(b, out_channels, out_frames, out_h, out_w, device=y.device, dtype=torch.float32)
            wr = blend_ramp(o_r0, o_r1, out_h, round(overlap[0] * scale), device=y.device)
            wc = blend_ramp(o_c0, o_c1, out_w, round(overlap[1] * scale), device=y.device)
            w2 = wr[:, None] * wc[None, :]
            acc[:, :, :, o_r0:o_r1, o_c0:o_c1].addcmul_(y.float(), w2)
            weight_sum[o_r0:o_r1, o_c0:o_c1] += w2
            del y
    return acc.div_(weight_sum)
