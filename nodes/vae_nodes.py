"""Wan22VAEDecode / Wan22VAEEncode: Wan latents <-> ComfyUI IMAGE batches (`[F, H, W, 3]`, 0..1). The LATENT is
ComfyUI's (raw VAE latents), so native VAE Decode / Encode and these mix freely."""

from __future__ import annotations

import torch

from wan_core.errors import InputError

from .devices import announce_device
from .handles import VAEHandle, require_handle
from .latents import latent_input, latent_output

CATEGORY = "Wan2.2"


def video_to_images(video: torch.Tensor) -> torch.Tensor:
    """`[3, F, H, W]` in [-1, 1] -> ComfyUI IMAGE `[F, H, W, 3]` in 0..1 (float32, CPU)."""
    return video.permute(1, 2, 3, 0).to("cpu", torch.float32).add(1.0).div(2.0).clamp(0.0, 1.0)


def images_to_video(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE `[F, H, W, C]` in 0..1 -> `[3, F, H, W]` in [-1, 1]."""
    if images.ndim != 4 or images.shape[-1] < 3:
        raise InputError(f"Expected a ComfyUI IMAGE [frames, height, width, 3]; got shape {tuple(images.shape)}.")
    return images[..., :3].permute(3, 0, 1, 2).float() * 2.0 - 1.0


class Wan22VAEDecode:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "vae": ("WAN22_VAE",),
                "latent": ("LATENT",),
                "tiled": ("BOOLEAN", {"default": False, "tooltip": "Decode in spatial tiles: less memory, slower."}),
                "tile_size": ("INT", {"default": 256, "min": 64, "max": 2048, "step": 32, "tooltip": "Pixels."}),
                "tile_overlap": ("INT", {"default": 64, "min": 0, "max": 1024, "step": 16, "tooltip": "Pixels."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    FUNCTION = "decode"
    CATEGORY = CATEGORY

    def decode(
        self, vae: VAEHandle, latent: dict, tiled: bool, tile_size: int, tile_overlap: int, unique_id: str | None = None
    ) -> tuple:
        handle = require_handle(vae, VAEHandle, "vae")
        samples = latent_input(latent)
        if tiled and tile_overlap >= tile_size:
            raise InputError(f"tile_overlap ({tile_overlap}) must be smaller than tile_size ({tile_size}).")
        device = handle.target_device()
        announce_device(unique_id, device)
        model = handle.load()
        if samples.shape[1] != model.z_dim:
            raise InputError(
                f"This latent has {samples.shape[1]} channels but the VAE makes {model.z_dim}: TI2V-5B latents "
                "(48) need the Wan2.2 VAE, A14B latents (16) the Wan2.1 VAE."
            )
        with torch.no_grad():
            tiling = {"tile_size": tile_size, "tile_overlap": tile_overlap} if tiled else {}
            video = model.decode(samples.to(device), **tiling)
        return (torch.cat([video_to_images(clip) for clip in video]),)


class Wan22VAEEncode:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {"vae": ("WAN22_VAE",), "images": ("IMAGE",)},
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "encode"
    CATEGORY = CATEGORY

    def encode(self, vae: VAEHandle, images: torch.Tensor, unique_id: str | None = None) -> tuple:
        handle = require_handle(vae, VAEHandle, "vae")
        if (images.shape[0] - 1) % 4:
            raise InputError(f"The VAE encodes 4n+1 frames (1, 5, 9, ...); got {images.shape[0]}. Trim the batch.")
        device = handle.target_device()
        announce_device(unique_id, device)
        model = handle.load()
        with torch.no_grad():
            video = images_to_video(images).unsqueeze(0).to(device, next(model.parameters()).dtype)
            latents = model.encode(video)
        return (latent_output(latents),)
