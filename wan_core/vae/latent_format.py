"""Raw vs normalized Wan latents.

The VAE's own latents ("raw") are what ComfyUI's LATENT holds and what its VAE Decode / VAE Encode take and give.
The DiT samples normalized latents: `(raw - mean) / std` with the published per-channel statistics, ComfyUI's
`Wan21.process_in` / `Wan22.process_in` (`comfy/latent_formats.py`, `scale_factor` 1). The channel count tells the
format: 16 channels = the Wan2.1 VAE (T2V/I2V-A14B), 48 = the Wan2.2 VAE (TI2V-5B).
"""

from __future__ import annotations

import torch

from ..errors import InputError
from .config import published_stats

VAE_OF_CHANNELS = {16: "wan2.1", 48: "wan2.2"}


def latent_stats(channels: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The published (mean, std), float32, shaped to broadcast over `[..., C, T, H, W]` latents."""
    variant = VAE_OF_CHANNELS.get(channels)
    if variant is None:
        raise InputError(
            f"A Wan latent has 16 (Wan2.1 VAE) or 48 (Wan2.2 VAE) channels; this one has {channels}. "
            "Connect a latent made for Wan (Wan2.2 sampler, VAE Encode with a Wan VAE, EmptyHunyuanLatentVideo, "
            "Wan22ImageToVideoLatent)."
        )
    mean, std = published_stats(variant, channels)
    shape = (channels, 1, 1, 1)
    return (
        torch.tensor(mean, dtype=torch.float32, device=device).view(shape),
        torch.tensor(std, dtype=torch.float32, device=device).view(shape),
    )


def channel_dim(latents: torch.Tensor) -> int:
    if latents.ndim not in (4, 5):
        raise InputError(f"Wan latents are [C, T, H, W] or [B, C, T, H, W]; got shape {tuple(latents.shape)}.")
    return latents.ndim - 4


def normalize(raw: torch.Tensor) -> torch.Tensor:
    """Raw VAE latents -> the DiT's normalized latents (float32), as ComfyUI's `process_in`."""
    mean, std = latent_stats(raw.shape[channel_dim(raw)], raw.device)
    return (raw.float() - mean) / std


def denormalize(normalized: torch.Tensor) -> torch.Tensor:
    """The DiT's normalized latents -> raw VAE latents (float32), as ComfyUI's `process_out`."""
    mean, std = latent_stats(normalized.shape[channel_dim(normalized)], normalized.device)
    return normalized.float() * std + mean
