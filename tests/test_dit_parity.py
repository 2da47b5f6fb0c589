"""Our DiT against diffusers' WanTransformer3DModel, same random weights, loaded through our diffusers-layout loader."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from wan_core.configs import DIT_CONFIGS, WanDiTConfig
from wan_core.dit.keymap import diffusers_to_official_key, official_to_diffusers_key
from wan_core.dit.loader import load_dit
from wan_core.dit.model import WanDiT

diffusers = pytest.importorskip("diffusers")

# fp32 parity lands near 2e-6. Planted bugs on SENSITIVE below: RoPE base 10500 instead of 10000 gives ~1.3e-4,
# exact instead of tanh GELU ~5e-5; both fail at this tolerance (checked by planting each in wan_core/dit).
TOL = 1e-5
GRID = (3, 8, 12)  # latent frames, height, width (patch 1x2x2 -> 3*4*6 = 72 tokens)
# head_dim 64 (rotary parts of 24/20/20 dims) over 5*8*8 = 320 tokens: far positions make a wrong RoPE base show.
SENSITIVE = dataclasses.replace(DIT_CONFIGS["tiny-t2v"], dim=64, num_heads=1, ffn_dim=256)
SENSITIVE_GRID = (5, 16, 16)


def _random_diffusers(cfg: WanDiTConfig, seed: int) -> torch.nn.Module:
    kwargs = {k: v for k, v in cfg.to_diffusers_json().items() if not k.startswith("_")}
    model = diffusers.WanTransformer3DModel(**kwargs).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "scale_shift_table" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) / math.prod(p.shape[1:]) ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def _rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def _contexts(batch: int, width: int, gen: torch.Generator) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Prompt embeddings of different lengths, and the zero-padded [B, 512, width] tensor diffusers takes."""
    items = [torch.randn(7 + 13 * i, width, generator=gen) for i in range(batch)]
    padded = torch.zeros(batch, 512, width)
    for i, u in enumerate(items):
        padded[i, : u.shape[0]] = u
    return items, padded


def _run_pair(name: str, tmp_path, t: torch.Tensor, batch: int = 2):
    cfg = DIT_CONFIGS[name]
    gen = torch.Generator().manual_seed(123)
    reference = _random_diffusers(cfg, seed=7)
    reference.save_pretrained(tmp_path / "transformer")
    ours = load_dit(tmp_path / "transformer")
    assert isinstance(ours, WanDiT) and ours.config == cfg

    noise_channels = 16 if cfg.model_type == "i2v" else cfg.in_dim
    x = torch.randn(batch, noise_channels, *GRID, generator=gen)
    y = torch.randn(batch, cfg.in_dim - noise_channels, *GRID, generator=gen) if cfg.model_type == "i2v" else None
    items, padded = _contexts(batch, cfg.text_dim, gen)
    with torch.no_grad():
        out = ours(x, t, items, y=y)
        ref = reference(torch.cat([x, y], 1) if y is not None else x, t, padded, return_dict=False)[0]
    assert out.shape == ref.shape == (batch, cfg.out_dim, *GRID)
    assert out.dtype == torch.float32
    return out, ref


def test_parity_t2v(tmp_path):
    out, ref = _run_pair("tiny-t2v", tmp_path, torch.tensor([500.0, 37.0]))
    assert _rel(out, ref) < TOL


def test_parity_i2v_with_y_channels(tmp_path):
    out, ref = _run_pair("tiny-i2v", tmp_path, torch.tensor([980.0, 250.0]))
    assert _rel(out, ref) < TOL


def test_parity_ti2v_per_token_t(tmp_path):
    tokens = GRID[0] * (GRID[1] // 2) * (GRID[2] // 2)
    per_frame = tokens // GRID[0]
    t = torch.full((2, tokens), 700.0)
    t[:, :per_frame] = 0.0  # the conditioning frame's tokens are clean (TI2V image-to-video)
    t[1, per_frame:] = 300.0
    out, ref = _run_pair("tiny-ti2v", tmp_path, t)
    assert _rel(out, ref) < TOL


def test_parity_ti2v_uniform_per_token_t_matches_scalar_t(tmp_path):
    tokens = GRID[0] * (GRID[1] // 2) * (GRID[2] // 2)
    out, ref = _run_pair("tiny-ti2v", tmp_path, torch.full((1, tokens), 640.0), batch=1)
    assert _rel(out, ref) < TOL


def test_parity_with_long_rotary_positions_and_head_dim_64(tmp_path):
    _random_diffusers(SENSITIVE, seed=7).save_pretrained(tmp_path / "transformer")
    reference = diffusers.WanTransformer3DModel.from_pretrained(tmp_path / "transformer").eval()
    ours = load_dit(tmp_path / "transformer")
    assert ours.config.head_dim == 64
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(1, 16, *SENSITIVE_GRID, generator=gen)
    items, padded = _contexts(1, SENSITIVE.text_dim, gen)
    t = torch.tensor([500.0])
    with torch.no_grad():
        out = ours(x, t, items)
        ref = reference(x, t, padded, return_dict=False)[0]
    assert _rel(out, ref) < TOL


def test_context_tensor_and_list_agree(tmp_path):
    cfg = DIT_CONFIGS["tiny-t2v"]
    _random_diffusers(cfg, seed=3).save_pretrained(tmp_path / "transformer")
    ours = load_dit(tmp_path / "transformer")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, *GRID, generator=gen)
    items, padded = _contexts(1, cfg.text_dim, gen)
    with torch.no_grad():
        a = ours(x, torch.tensor([321.0]), items)
        b = ours(x, torch.tensor([321.0]), padded)
    torch.testing.assert_close(a, b)


def test_key_maps_cover_every_parameter():
    for name in ("tiny-t2v", "tiny-i2v", "tiny-ti2v"):
        cfg = DIT_CONFIGS[name]
        ours = {k: tuple(v.shape) for k, v in WanDiT(cfg).state_dict().items()}
        kwargs = {k: v for k, v in cfg.to_diffusers_json().items() if not k.startswith("_")}
        theirs = {k: tuple(v.shape) for k, v in diffusers.WanTransformer3DModel(**kwargs).state_dict().items()}
        assert {official_to_diffusers_key(k): s for k, s in ours.items()} == theirs
        assert {diffusers_to_official_key(k): s for k, s in theirs.items()} == ours
