"""Wan22LoraLoader: a LoRA file from ComfyUI's `loras` folder on the Wan2.2 model, a strength per expert; chainable."""

from __future__ import annotations

import dataclasses

from wan_core.lora import LoraPatch, read_lora

from . import host
from .handles import DiTHandle, require_handle

CATEGORY = "Wan2.2"
STRENGTH = {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}


class Wan22LoraLoader:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": ("WAN22_MODEL",),
                "lora_name": (host.list_models("loras"), {"tooltip": "A LoRA in ComfyUI/models/loras/ (ComfyUI, "
                                                          "lightx2v, kohya, diffusers or SimpleTuner layout; LoRA, "
                                                          "LoHa, LoKr, DoRA)."}),
                "strength_high": ("FLOAT", {**STRENGTH, "tooltip": "On the high-noise expert (TI2V-5B: the model); "
                                            "0 leaves it out."}),
                "strength_low": ("FLOAT", {**STRENGTH, "tooltip": "On the low-noise expert (unused by TI2V-5B); "
                                           "0 leaves it out."}),
            }
        }

    RETURN_TYPES = ("WAN22_MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Adds a LoRA to the Wan2.2 model (merged into the weights when the sampler runs, or applied as each "
                   "layer of a GGUF model dequantizes; the base weights are read once and restored exactly when the "
                   "LoRA is removed). Chain several for several LoRAs.")

    def load(self, model: DiTHandle, lora_name: str, strength_high: float, strength_low: float) -> tuple:
        dit = require_handle(model, DiTHandle, "model")
        path = host.model_path("loras", lora_name)
        read_lora(path)  # a missing or foreign file fails on this node, not in the sampler
        changes = {}
        if strength_high:
            changes["patches_high"] = (*dit.patches_high, LoraPatch(path, float(strength_high)))
        if strength_low and dit.low_noise_path:
            changes["patches_low"] = (*dit.patches_low, LoraPatch(path, float(strength_low)))
        return (dataclasses.replace(dit, **changes),)
