"""Wan22GPUCheck: reports each GPU (memory, compute capability, bf16 / fp8) and which Wan2.2 setups fit it."""

from __future__ import annotations

from wan_core.hardware import GIB, hardware_report, list_gpus
from wan_core.ram import available_ram


class Wan22GPUCheck:
    """Shows the report on the node and returns it as text; reads the GPUs when it runs, never at import."""

    CATEGORY = "Wan2.2"
    FUNCTION = "check"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("report",)
    DESCRIPTION = "Lists each GPU with its memory, compute capability, bf16 and fp8 support, and per model and " \
                  "resolution the fastest Wan2.2 setup that fits it and the machine's RAM (bf16, fp8 or a GGUF " \
                  "quant, block swap, offload, tiled decode)."

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {}}

    @classmethod
    def IS_CHANGED(cls) -> float:
        return float("nan")  # free memory changes between runs: never reuse a cached report

    def check(self) -> dict:
        ram = available_ram()
        report = hardware_report(list_gpus(), ram[1] / GIB if ram else None)
        return {"ui": {"text": [report]}, "result": (report,)}
