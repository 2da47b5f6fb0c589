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


# (variant, latent size, tile in latents): 96x96 px for Wan2.1, 160x160 px for Wan2.2; 2x2 tiles overlapping by 4
TILED_CASES = {"tiny-wan2.1": (12, 8), "tiny-wan2.2": (10, 8)}
REFERENCE_TOL = 1e-5  # float32 sums in another order


def _reference_spans(total: int, tile: int, overlap: int) -> list[int]:
    """Tile starts as the module docstring defines them, one by one: every `tile - overlap`, the last at the end."""
    if tile >= total:
        return [0]
    starts, start = [], 0
    while start + tile < total:
        starts.append(start)
        start += tile - overlap
    return starts + [total - tile]


def _reference_weight(pos: int, start: int, end: int, total: int, overlap: int) -> float:
    """A tile's blend weight at output sample `pos`, per the module docstring: at an edge that borders another tile,
    0 over the outer quarter of the overlap, then linear to 1 across the middle half (sample centres at +0.5)."""
    margin = overlap // 4
    ramp = overlap - 2 * margin
    weight = 1.0
    if start > 0:
        weight = min(weight, max(0.0, (pos + 0.5 - start - margin) / ramp))
    if end < total:
        weight = min(weight, max(0.0, (end - pos - 0.5 - margin) / ramp))
    return weight


def _reference_tiled(fn, x: torch.Tensor, tile: int, overlap: int, scale: float) -> torch.Tensor:
    """Independent tiled pass: `fn` on each square tile of `x`, the results blended with per-sample weights built in
    plain Python from the documented scheme, then divided by the weight sum (float64)."""
    size = x.shape[-1]
    out = round(size * scale)
    o_tile, o_overlap = round(tile * scale), round(overlap * scale)
    acc, total = None, torch.zeros(out, out, dtype=torch.float64)
    for r in _reference_spans(size, tile, overlap):
        for c in _reference_spans(size, tile, overlap):
            y = fn(x[..., r:r + tile, c:c + tile]).double()
            acc = torch.zeros(*y.shape[:3], out, out, dtype=torch.float64) if acc is None else acc
            o_r, o_c = round(r * scale), round(c * scale)
            wr = [_reference_weight(p, o_r, o_r + o_tile, out, o_overlap) for p in range(o_r, o_r + o_tile)]
            wc = [_reference_weight(p, o_c, o_c + o_tile, out, o_overlap) for p in range(o_c, o_c + o_tile)]
            weights = torch.tensor(wr, dtype=torch.float64)[:, None] * torch.tensor(wc, dtype=torch.float64)[None]
            acc[..., o_r:o_r + o_tile, o_c:o_c + o_tile] += y * weights
            total[o_r:o_r + o_tile, o_c:o_c + o_tile] += weights
    return (acc / total).float()


@pytest.mark.parametrize("name", sorted(TILED_CASES))
def test_tiled_matches_an_independent_tiling_reference(name):
    """Tiled decode and encode of a tiny random-weight model (2 latent frames, tiles of 8 latents, overlap 0.5)
    against `_reference_tiled`, which runs the untiled network on each tile and blends in plain Python. The
    tiled result differs from the untiled one near the seams (a random-weight decoder's 3x3x3 convs see most of a
    tiny tile); that difference must be exactly the documented blend of per-tile results, nothing else."""
    vae = _model(name)
    size, tile_lat = TILED_CASES[name]
    s = vae.stride[1]
    torch.manual_seed(1)
    latents = torch.randn(1, vae.z_dim, 2, size, size)
    video = torch.rand(1, 3, 5, size * s, size * s) * 2 - 1
    overlap_lat = round(tile_lat * 0.5)

    tiled = vae.decode(latents, tile_size=(tile_lat * s, tile_lat * s), tile_overlap=0.5)
    z = latents * vae.latents_std.view(1, -1, 1, 1, 1) + vae.latents_mean.view(1, -1, 1, 1, 1)
    reference = _reference_tiled(vae.model.decode_raw, z, tile_lat, overlap_lat, s).clamp(-1, 1)
    assert len(_reference_spans(size, tile_lat, overlap_lat)) == 2  # 2x2 tiles really are blended
    assert (tiled - reference).abs().max() < REFERENCE_TOL

    tiled_z = vae.encode(video, tile_size=(tile_lat * s, tile_lat * s), tile_overlap=0.5)
    mu = _reference_tiled(vae.model.encode_raw, video, tile_lat * s, overlap_lat * s, 1 / s)
    reference_z = (mu - vae.latents_mean.view(1, -1, 1, 1, 1)) / vae.latents_std.view(1, -1, 1, 1, 1)
    assert (tiled_z - reference_z).abs().max() < REFERENCE_TOL


def test_one_tile_is_the_untiled_result():
    vae = _model("tiny-wan2.1")
    latents = torch.randn(1, 16, 2, 4, 6)
    assert torch.equal(vae.decode(latents, tile_size=(64, 64)), vae.decode(latents))
    video = torch.rand(1, 3, 5, 32, 48) * 2 - 1
    assert torch.equal(vae.encode(video, tile_size=(48, 48)), vae.encode(video))


@pytest.mark.parametrize("name", ["tiny-wan2.1", "tiny-wan2.2"])
def test_decoding_a_latent_frame_at_a_time_is_the_whole_decode(name):
    vae = _model(name)
    latents = torch.randn(1, vae.z_dim, 3, 4, 6) * 3
    chunks = list(vae.decode_chunks(latents))
    assert [c.shape[2] for c in chunks] == [1, 4, 4]
    assert torch.equal(torch.cat(chunks, dim=2), vae.decode(latents))


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
