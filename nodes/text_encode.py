"""Wan22T5Encode: prompt and negative prompt -> embeddings, on the text encoder's device; also as ComfyUI
CONDITIONING for native samplers."""

from __future__ import annotations

import torch

from .conditioning import WanConditioning, to_comfy
from .devices import announce_device
from .handles import T5Handle, require_handle

CATEGORY = "Wan2.2"


class Wan22T5Encode:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "t5": ("WAN22_T5",),
                "positive": ("STRING", {"forceInput": True, "tooltip": "The prompt (Chinese or English)."}),
                "negative": ("STRING", {"forceInput": True, "tooltip": "What the video should not show."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("WAN22_CONDITIONING", "CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("conditioning", "positive", "negative")
    OUTPUT_TOOLTIPS = (
        "Both prompts, for the Wan2.2 DiT Sampler.",
        "The prompt as ComfyUI CONDITIONING (native KSampler with a Wan model), padded to 512 tokens.",
        "The negative prompt as ComfyUI CONDITIONING.",
    )
    FUNCTION = "encode"
    CATEGORY = CATEGORY
    DESCRIPTION = "Encodes the prompt and negative prompt with UMT5-XXL on the text encoder's device."

    def encode(self, t5: T5Handle, positive: str, negative: str, unique_id: str | None = None) -> tuple:
        handle = require_handle(t5, T5Handle, "t5")
        announce_device(unique_id, handle.target_device())
        encoder = handle.load()
        with torch.no_grad():
            cond, uncond = encoder.encode([positive, negative])
        return (WanConditioning(positive=(cond,), negative=(uncond,)), to_comfy(cond), to_comfy(uncond))
