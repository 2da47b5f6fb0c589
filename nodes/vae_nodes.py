"""Wan22VAEDecode / Wan22VAEEncode: Wan latents <-> ComfyUI IMAGE batches (`[F, H, W, 3]`, 0..1). The LATENT is
ComfyUI's (raw VAE latents), so native VAE Decode / Encode and these mix freely."""

from __future__ import annotations

import torch

from wan_core.errors import InputError
from wan_core.host_copy import copy_tensors
from wan_core.io.files import resolve_inside
from wan_core.kept_latents import keep_latents_on_failure, load_latents
from wan_core.video_io import FRAMES_PER_CHUNK

from . import host
from .devices import announce_device
from .handles import VAEHandle, require_handle
from .latents import latent_input, latent_output

CATEGORY = "Wan2.2"


def video_to_images(video: torch.Tensor) -> torch.Tensor:
    """`[3, F, H, W]` in [-1, 1] -> ComfyUI IMAGE `[F, H, W, 3]` in 0..1 (float32, CPU, contiguous). The arithmetic
    and the transpose run where the video is (the GPU after a decode), a few frames at a time (a long video's float32
    copy never sits on the GPU whole), each chunk copied once to the CPU."""
    _, frames, height, width = video.shape
    images = torch.empty(frames, height, width, 3, dtype=torch.float32)
    for start in range(0, frames, FRAMES_PER_CHUNK):
        chunk = video[:, start : start + FRAMES_PER_CHUNK].to(torch.float32).add(1.0).div_(2.0).clamp_(0.0, 1.0)
        copy_tensors([(images[start : start + FRAMES_PER_CHUNK], chunk.permute(1, 2, 3, 0))])
    return images


def images_to_video(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE `[F, H, W, C]` in 0..1 -> `[3, F, H, W]` in [-1, 1]."""
    if images.ndim != 4 or images.shape[-1] < 3:
        raise InputError(f"Expected a ComfyUI IMAGE [frames, height, width, 3]; got shape {tuple(images.shape)}.")
    return images[..., :3].permute(3, 0, 1, 2).float() * 2.0 - 1.0


def latent_samples(latent: object, latents_file: str) -> torch.Tensor:
    """The normalized latents `[B, z, F, H, W]` to decode: the LATENT input's, or those of a kept-latents file in the
    output folder (which hold normalized latents `[z, F, H, W]`)."""
    if latents_file.strip():
        if latent is not None:
            raise InputError("Give the VAE Decode node either a latent or a latents_file, not both.")
        path = resolve_inside(latents_file.strip(), host.output_directory(), "latents_file", "ComfyUI's output folder")
        return load_latents(path)[0].unsqueeze(0)
    if latent is None:
        raise InputError("The VAE Decode node needs a latent: connect the sampler's output, or name a kept "
                         ".latents.safetensors file in latents_file.")
    return latent_input(latent)


class Wan22VAEDecode:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "vae": ("WAN22_VAE",),
                "tiled": ("BOOLEAN", {"default": False, "tooltip": "Decode in spatial tiles: less memory, slower."}),
                "tile_size": ("INT", {"default": 256, "min": 64, "max": 2048, "step": 32, "tooltip": "Pixels."}),
                "tile_overlap": ("INT", {"default": 64, "min": 0, "max": 1024, "step": 16, "tooltip": "Pixels."}),
            },
            "optional": {
                "latent": ("LATENT",),
                "latents_file": ("STRING", {
                    "default": "",
                    "tooltip": "Instead of 'latent': a .latents.safetensors file that a failed decode kept in the "
                    "output folder (name relative to it).",
                }),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    FUNCTION = "decode"
    CATEGORY = CATEGORY

    def decode(
        self,
        vae: VAEHandle,
        latent: dict | None = None,
        tiled: bool = False,
        tile_size: int = 256,
        tile_overlap: int = 64,
        latents_file: str = "",
        unique_id: str | None = None,
    ) -> tuple:
        handle = require_handle(vae, VAEHandle, "vae")
        samples = latent_samples(latent, latents_file)
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

        def run() -> torch.Tensor:
            with torch.no_grad():
                tiling = {"tile_size": tile_size, "tile_overlap": tile_overlap} if tiled else {}
                return model.decode(samples.to(device), **tiling)

        if latents_file.strip() or samples.shape[0] != 1:
            video = run()
        else:  # a failed decode (out of memory after the tiled retry, NaN) keeps the sampler's work on disk
            video = keep_latents_on_failure(
                run, samples[0], folder=host.output_directory(), task=None, stem="wan22_decode_failed",
                how_to_decode=lambda kept: f"decode them later with this node's latents_file set to {kept.name!r}.",
            )  # fmt: skip
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
