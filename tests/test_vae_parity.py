"""Wan VAE parity with diffusers' `AutoencoderKLWan` (test-only dependency), both variants, fp32, tiny configs.

diffusers' model is built from our tiny config (`keymap.diffusers_config`), given random weights, saved with
`save_pretrained`, and loaded back through our diffusers-layout loader; both then see the same inputs. diffusers
returns raw latents (the pipelines normalize them), so the reference latents are normalized here as the official
wrapper does: `(mu - mean) * (1 / std)`, and decode is fed `z / (1 / std) + mean`.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLWan

from wan_core.vae import VAE_CONFIGS, WanVAE, load_vae
from wan_core.vae.keymap import diffusers_config

# Pixel sizes: 2x3 latents for Wan2.1 (stride 8), 2x2 for Wan2.2 (stride 16).
SIZES = {"tiny-wan2.1": (16, 24), "tiny-wan2.2": (32, 32)}
TOLERANCE = 1e-4


def random_diffusers_vae(name: str, seed: int = 0) -> AutoencoderKLWan:
    """diffusers' model of a tiny config with every tensor random (gammas away from 1, biases non-zero)."""
    torch.manual_seed(seed)
    model = AutoencoderKLWan(**diffusers_config(VAE_CONFIGS[name])).eval()
    with torch.no_grad():
        for key, param in model.named_parameters():
            if key.endswith("gamma"):
                param.uniform_(0.5, 1.5)
            else:
                param.add_(torch.randn_like(param) * 0.05)
    return model


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got - ref).abs().max() / ref.abs().max()).item()


@pytest.fixture(scope="module", params=sorted(SIZES))
def pair(request, tmp_path_factory) -> tuple[str, AutoencoderKLWan, WanVAE]:
    ref = random_diffusers_vae(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(folder)
    ours = load_vae(folder)
    assert ours.variant == VAE_CONFIGS[request.param].variant
    assert ours.config == VAE_CONFIGS[request.param]
    return request.param, ref, ours


def _stats(vae: WanVAE) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, vae.z_dim, 1, 1, 1)
    return vae.latents_mean.view(shape), vae.latents_std.view(shape)


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_encode_matches_diffusers(pair, frames):
    name, ref, ours = pair
    torch.manual_seed(frames)
    video = torch.rand(1, 3, frames, *SIZES[name]) * 2 - 1
    mean, std = _stats(ours)
    with torch.no_grad():
        expected = (ref.encode(video).latent_dist.mode() - mean) * (1.0 / std)
    got = ours.encode(video)
    lat_frames = (frames - 1) // 4 + 1
    s = ours.stride[1]
    assert got.shape == (1, ours.z_dim, lat_frames, SIZES[name][0] // s, SIZES[name][1] // s)
    assert got.dtype == torch.float32
    assert expected.std() > 0.05  # a real signal, not a constant
    assert rel_err(got, expected) < TOLERANCE


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_decode_matches_diffusers(pair, frames):
    name, ref, ours = pair
    lat_frames = (frames - 1) // 4 + 1
    s = ours.stride[1]
    torch.manual_seed(100 + frames)
    latents = torch.randn(1, ours.z_dim, lat_frames, SIZES[name][0] // s, SIZES[name][1] // s)
    mean, std = _stats(ours)
    with torch.no_grad():
        expected = ref.decode(latents / (1.0 / std) + mean).sample
    got = ours.decode(latents)
    assert got.shape == (1, 3, frames, *SIZES[name])
    # most of the output lies inside [-1, 1], so the comparison is not one of clamped values
    assert (expected.abs() < 1).float().mean() > 0.5
    assert got.abs().max() <= 1
    assert rel_err(got, expected) < TOLERANCE


def test_batch_equals_one_by_one(pair):
    name, _, ours = pair
    torch.manual_seed(7)
    video = torch.rand(2, 3, 5, *SIZES[name]) * 2 - 1
    both = ours.encode(video)
    one = torch.cat([ours.encode(video[i : i + 1]) for i in range(2)])
    assert rel_err(both, one) < 1e-5
    out_both = ours.decode(both)
    out_one = torch.cat([ours.decode(both[i : i + 1]) for i in range(2)])
    assert rel_err(out_both, out_one) < 1e-5
