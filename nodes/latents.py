"""ComfyUI's LATENT for Wan: `{"samples": raw VAE latents [B, C, T, H, W]}` (float32, CPU), as native VAE Encode,
EmptyHunyuanLatentVideo and Wan22ImageToVideoLatent make it and native VAE Decode, latent upscale and preview read
it. Our nodes keep normalized latents inside and convert only here."""

from __future__ import annotations

import torch

from wan_core.errors import InputError
from wan_core.vae.latent_format import denormalize, normalize


def latent_output(normalized: torch.Tensor) -> dict:
    """A LATENT of normalized latents `[C, T, H, W]` (one video) or `[B, C, T, H, W]`."""
    if normalized.ndim == 4:
        normalized = normalized.unsqueeze(0)
    return {"samples": denormalize(normalized.to("cpu", torch.float32))}


def latent_input(latent: dict, name: str = "latent") -> torch.Tensor:
    """The normalized latents `[B, C, T, H, W]` (float32) of a LATENT; rejects image latents with a clear message."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor):
        raise InputError(f"'{name}' must be a ComfyUI LATENT (a dict with 'samples'); got {type(latent).__name__}.")
    if samples.ndim == 4 and samples.shape[0] in (16, 48):  # one video without the batch dimension
        samples = samples.unsqueeze(0)
    if samples.ndim != 5:
        raise InputError(
            f"'{name}' holds an image latent of shape {tuple(samples.shape)}; Wan needs a video latent "
            "[B, C, T, H, W] (from a Wan VAE Encode, EmptyHunyuanLatentVideo or Wan22ImageToVideoLatent)."
        )
    return normalize(samples)


def reject_noise_mask(latent: dict) -> None:
    """The sampler has no masked (inpainting-style) sampling: a LATENT whose noise_mask keeps a part refuses clearly."""
    mask = latent.get("noise_mask") if isinstance(latent, dict) else None
    if isinstance(mask, torch.Tensor) and bool((mask < 1).any()):
        raise InputError(
            "This latent has a noise_mask (e.g. Wan22ImageToVideoLatent with a start image); the Wan2.2 sampler does "
            "not sample masked latents. Connect the picture to the sampler's start_image instead (with the VAE)."
        )
