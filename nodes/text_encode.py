"""Wan22T5Encode: prompt and negative prompt -> embeddings, on the text encoder's device."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .devices import announce_device
from .handles import T5Handle, require_handle

CATEGORY = "Wan2.2"


@dataclass(frozen=True)
class WanConditioning:
    """Prompt embeddings (`[L_i, 4096]` each, trimmed to the real token count); `to()` carries them to another GPU."""

    positive: tuple[torch.Tensor, ...]
    negative: tuple[torch.Tensor, ...]

    def to(self, device: torch.device) -> WanConditioning:
        return WanConditioning(
            positive=tuple(t.to(device) for t in self.positive), negative=tuple(t.to(device) for t in self.negative)
        )


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

    RETURN_TYPES = ("WAN22_CONDITIONING",)
    RETURN_NAMES = ("conditioning",)
    FUNCTION = "encode"
    CATEGORY = CATEGORY
    DESCRIPTION = "Encodes the prompt and negative prompt with UMT5-XXL on the text encoder's device."

    def encode(self, t5: T5Handle, positive: str, negative: str, unique_id: str | None = None) -> tuple:
        handle = require_handle(t5, T5Handle, "t5")
        announce_device(unique_id, handle.target_device())
        encoder = handle.load()
        with torch.no_grad():
            cond, uncond = encoder.encode([positive, negative])
        return (WanConditioning(positive=(cond,), negative=(uncond,)),)
