"""Wan22FrameInterpolate: IMAGE frames -> IMAGE frames at 2x or 4x the frame rate (RIFE, or ffmpeg without weights).

Works on the frames of any pack. RIFE weights are looked up in ComfyUI's `models/frame_interpolation/` and in
ComfyUI-Frame-Interpolation's own `ckpts/rife/` folder, so files that pack downloaded are found too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from wan_core.interpolate import AUTO, FFMPEG, MODEL_KIND, MULTIPLIERS, RECOMMENDED_FILES

from . import host

CATEGORY = "Wan2.2"
LOG = logging.getLogger("comfyui-wan22")
FRAME_INTERPOLATION_PACK = ("ComfyUI-Frame-Interpolation", "ckpts", "rife")


def rife_folders() -> list[str]:
    """The folders searched for RIFE weights (ComfyUI's model folder kind, registered on first use)."""
    extra = []
    if host.in_comfyui():
        for custom in host.model_folders("custom_nodes"):
            candidate = os.path.join(custom, *FRAME_INTERPOLATION_PACK)
            if os.path.isdir(candidate):
                extra.append(candidate)
    host.register_model_kind(MODEL_KIND, extra)
    return host.model_folders(MODEL_KIND)


def rife_choices() -> list[str]:
    found = [name for name in host.list_models(MODEL_KIND) if name not in RECOMMENDED_FILES]
    return [AUTO, *RECOMMENDED_FILES, *found, FFMPEG]


class Wan22FrameInterpolate:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        rife_folders()
        return {
            "required": {
                "images": ("IMAGE",),
                "multiplier": ("INT", {"default": 2, "min": MULTIPLIERS[0], "max": MULTIPLIERS[-1], "step": 2,
                                       "tooltip": "2: one new frame between each pair; 4: three."}),
                "rife_model": (rife_choices(), {
                    "default": AUTO,
                    "tooltip": "RIFE weights in models/frame_interpolation/ (rife49.pth, rife47.pth, or ComfyUI's "
                    "rife_v4.26 / rife_v4.25 .safetensors). auto: RIFE if "
                    "one of those is there, else ffmpeg's motion-compensated interpolation. ffmpeg: never RIFE.",
                }),
                "fps": ("FLOAT", {"default": 16.0, "min": 1.0, "max": 240.0, "step": 1.0,
                                  "tooltip": "Input frame rate; the fps output is this times the multiplier."}),
                "batch_size": ("INT", {"default": 8, "min": 1, "max": 64, "tooltip": "Frame pairs per GPU batch."}),
                "tile_size": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 64,
                                      "tooltip": "0: whole frames. Else RIFE runs on tiles this large (less memory "
                                      "on small cards; very large motions may suffer at tile seams)."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("IMAGE", "FLOAT", "STRING")
    RETURN_NAMES = ("images", "fps", "info")
    FUNCTION = "interpolate"
    CATEGORY = CATEGORY
    DESCRIPTION = "Doubles or quadruples the frame rate with RIFE (or ffmpeg's minterpolate when no weights are there)."

    def interpolate(
        self, images: torch.Tensor, multiplier: int, rife_model: str, fps: float, batch_size: int, tile_size: int,
        unique_id: str | None = None,
    ) -> dict:
        from wan_core.finite import check_finite_number
        from wan_core.interpolate import interpolate_frames, resolve_weights

        check_finite_number("fps", fps)
        weights = resolve_weights(rife_model, [Path(folder) for folder in rife_folders()])
        bar = host.Progress(max(1, images.shape[0] - 1), unique_id)

        def on_batch(done: int, total: int) -> None:
            bar.update(done)
            host.raise_if_interrupted()

        result = interpolate_frames(images, multiplier, fps=fps, weights=weights, device=host.default_torch_device(),
                                    batch_size=batch_size, tile_size=tile_size, progress=on_batch)
        info = f"{images.shape[0]} -> {result.frames.shape[0]} frames, {fps:g} -> {result.fps:g} fps: {result.method}"
        LOG.info("[Wan2.2] %s", info)
        return {"ui": {"text": [info]}, "result": (result.frames, result.fps, info)}
