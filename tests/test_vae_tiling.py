"""Spatial tiling of the Wan VAE: tile placement and blending, tiled vs untiled results, the CUDA out-of-memory
fallback, and input checks."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from wan_core.errors import InputError
from wan_core.vae import build_vae
from wan_core.vae.tiling import blend_ramp, latent_tiles, run_tiled, tile_spans


@pytest.mark.parametrize(("total", "tile", "overlap"), [(10, 4, 1), (16, 6, 3), (17, 8, 4), (5, 8, 2), (12, 12, 3)])
def test_tile_spans_cover_with_overlap(total, tile, overlap):
    spans = tile_spans(total, tile, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == total
    assert all(e - s == min(tile, total) for s, e in spans)
    for (s0, e0), (s1, _) in zip(spans, spans[1:], strict=False):
        assert s0 < s1 and e0 - s1 >= overlap


@pytest.mark.parametrize(("total", "tile", "overlap"), [(64, 24, 8), (80, 32, 16), (40, 16, 1), (33, 16, 5)])
def test_blend_weights_cover_everything_and_cross_fade(total, tile, overlap):
    spans = tile_spans(total, tile, overlap)
    weights = torch.zeros(total, dtype=torch.float64)
    for s, e in spans:
        weights[s:e] += blend_ramp(s, e, total, overlap, device="cpu", dtype=torch.float64)
    assert weights.min() > 0.2
    # tiles overlapping by exactly `overlap` cross-fade: their weights add up to 1
    (s0, e0), (s1, e1) = spans[0], spans[1]
    if e0 - s1 == overlap and len(spans) > 2:
        pair = (
            blend_ramp(s0, e0, total, overlap, device="cpu")[s1 - s0 :]
            + blend_ramp(s1, e1, total, overlap, device="cpu")[: e0 - s1]
        )
        torch.testing.assert_close(pair, torch.ones_like(pair))


@pytest.mark.parametrize(("tile", "overlap"), [((4, 4), (1, 1)), ((3, 5), (1, 2)), ((6, 4), (3, 2))])
def test_run_tiled_is_exact_for_local_maps(tile, overlap):
    """With a map that has no receptive field beyond its pixel, tiling must be exact: checks placement and blending
    both for decode-like (x8 upsampling) and encode-like (/8 pooling) maps."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 3, 10, 14)
    up = lambda t: t.repeat_interleave(8, -1).repeat_interleave(8, -2) * 2 + 1  # noqa: E731
    torch.testing.assert_close(run_tiled(up, x, tile, overlap, 8, 3, 4), up(x))
    pixels = torch.randn(1, 3, 2, 80, 112)
    down = lambda t: F.avg_pool3d(t, (1, 8, 8))  # noqa: E731
    tiles_px = (tile[0] * 8, tile[1] * 8)
    overlap_px = (overlap[0] * 8, overlap[1] * 8)
    torch.testing.assert_close(run_tiled(down, pixels, tiles_px, overlap_px, 1 / 8, 2, 3), down(pixels))


def test_latent_tiles_units():
    assert latent_tiles((256, 256), 0.25, 8) == ((32, 32), (8, 8))
    assert latent_tiles((256, 128), 64, 16) == ((16, 8), (4, 4))
    assert latent_tiles(96, 0.9, 8) == ((12, 12), (6, 6))  # capped at half a tile
    for bad in [(0, 64), (4, 4), "big"]:
        with pytest.raises(InputError):
            latent_tiles(bad, 0.25, 8)
    with pytest.raises(InputError):
        latent_tiles((64, 64), 1.5, 8)


def _model(name: str):
    torch.manual_seed(0)
    return build_vae(name)


# (variant, latent size, tile in latents): 128x128 px for Wan2.1, 192x192 px for Wan2.2
TILED_CASES = {"tiny-wan2.1": (16, 12), "tiny-wan2.2": (12, 10)}
# measured maximum and mean absolute error (decode in [-1, 1], encode in normalized latent units); bounds below
MEASURED = {
    "tiny-wan2.1": {"decode": (0.340, 0.0156), "encode": (0.0705, 0.0042)},
    "tiny-wan2.2": {"decode": (0.326, 0.0187), "encode": (0.106, 0.0092)},
}


@pytest.mark.parametrize("name", sorted(TILED_CASES))
def test_tiled_close_to_untiled(name):
    """Tiled vs untiled decode and encode of a tiny random-weight model, 2 latent frames (5 video frames), tiles of
    12 (Wan2.1) / 10 (Wan2.2) latents with overlap 0.5.

    Measured (max abs / mean abs error): Wan2.1 decode 0.340 / 0.0156 (output std 0.23), encode 0.0705 / 0.0042
    (latent std 0.35); Wan2.2 decode 0.326 / 0.0187 (output std 0.30), encode 0.106 / 0.0092 (latent std 0.38).
    Asserted: below 1.25x those.
    The error is all near the seams: a random-weight decoder's result changes up to ~8 latents away from a zero-padded
    tile edge (its 3x3x3 convs see ~17 latents; untrained weights do not decay with distance), which is most of a
    tiny tile; trained weights are far more local. The exact placement and blending is checked by
    `test_run_tiled_is_exact_for_local_maps`.
    """
    vae = _model(name)
    size, tile_lat = TILED_CASES[name]
    s = vae.stride[1]
    tile = (tile_lat * s, tile_lat * s)
    torch.manual_seed(1)
    latents = torch.randn(1, vae.z_dim, 2, size, size)
    video = torch.rand(1, 3, 5, size * s, size * s) * 2 - 1

    full = vae.decode(latents)
    tiled = vae.decode(latents, tile_size=tile, tile_overlap=0.5)
    err = (tiled - full).abs()
    max_err, mean_err = MEASURED[name]["decode"]
    assert err.max() < 1.25 * max_err and err.mean() < 1.25 * mean_err, (err.max(), err.mean())

    full_z = vae.encode(video)
    tiled_z = vae.encode(video, tile_size=tile, tile_overlap=0.5)
    assert tiled_z.shape == full_z.shape
    err = (tiled_z - full_z).abs()
    max_err, mean_err = MEASURED[name]["encode"]
    assert err.max() < 1.25 * max_err and err.mean() < 1.25 * mean_err, (err.max(), err.mean())


def test_one_tile_is_the_untiled_result():
    vae = _model("tiny-wan2.1")
    latents = torch.randn(1, 16, 2, 4, 6)
    assert torch.equal(vae.decode(latents, tile_size=(64, 64)), vae.decode(latents))
    video = torch.rand(1, 3, 5, 32, 48) * 2 - 1
    assert torch.equal(vae.encode(video, tile_size=(48, 48)), vae.encode(video))


def _oom_above(vae, method: str, limit: int, calls: list):
    """Make `vae.model.<method>` raise CUDA out-of-memory for inputs wider than `limit` (its own grid units)."""
    original = getattr(vae.model, method)

    def wrapped(x):
        calls.append(tuple(x.shape[-2:]))
        if x.shape[-1] > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(x)

    setattr(vae.model, method, wrapped)


def test_decode_falls_back_to_tiles_on_cuda_oom(caplog):
    vae = _model("tiny-wan2.1")
    vae.fallback_tile_size = (32, 32)
    latents = torch.randn(1, 16, 2, 8, 8)
    expected = vae.decode(latents, tile_size=(32, 32))
    calls: list = []
    _oom_above(vae, "decode_raw", 4, calls)
    with caplog.at_level(logging.WARNING, logger="wan_core.vae.model"):
        got = vae.decode(latents)
    assert torch.equal(got, expected)
    assert calls[0] == (8, 8) and all(c == (4, 4) for c in calls[1:])
    assert any("ran out of CUDA memory" in r.getMessage() and "32x32" in r.getMessage() for r in caplog.records)


def test_fallback_shrinks_tiles_then_gives_up(caplog):
    vae = _model("tiny-wan2.1")
    vae.fallback_tile_size = (128, 128)
    latents = torch.randn(1, 16, 1, 16, 16)
    calls: list = []
    _oom_above(vae, "decode_raw", 8, calls)  # only tiles of 8 latents (64 px) fit
    with caplog.at_level(logging.WARNING, logger="wan_core.vae.model"):
        vae.decode(latents)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "64x64" in messages[-1]

    vae2 = _model("tiny-wan2.1")
    _oom_above(vae2, "decode_raw", 0, [])  # nothing fits
    with pytest.raises(torch.cuda.OutOfMemoryError, match="even in 64x64-pixel tiles"):
        vae2.decode(latents)


def test_encode_falls_back_to_tiles_on_cuda_oom(caplog):
    vae = _model("tiny-wan2.2")
    vae.fallback_tile_size = (64, 64)
    video = torch.rand(1, 3, 1, 128, 128) * 2 - 1
    expected = vae.encode(video, tile_size=(64, 64))
    _oom_above(vae, "encode_raw", 64, [])
    with caplog.at_level(logging.WARNING, logger="wan_core.vae.model"):
        got = vae.encode(video)
    assert torch.equal(got, expected)
    assert any("encode" in r.getMessage() for r in caplog.records)


def test_input_checks():
    vae = _model("tiny-wan2.1")
    with pytest.raises(InputError, match="4k\\+1"):
        vae.encode(torch.zeros(1, 3, 4, 16, 16))
    with pytest.raises(InputError, match="multiples of 8"):
        vae.encode(torch.zeros(1, 3, 1, 12, 16))
    with pytest.raises(InputError, match="16, T, H, W"):
        vae.decode(torch.zeros(1, 48, 1, 2, 2))
    with pytest.raises(InputError, match="tile_size"):
        vae.decode(torch.zeros(1, 16, 1, 2, 2), tile_size=(0, 8))
