"""The measured memory numbers that `wan_core.hardware` recommends setups from, in one place.

Update them from `bench/low_vram.py` (GPU peaks under emulated caps) and `bench/dit_step.py`; each entry names its
source. GiB = 2**30 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Measured:
    gib: float
    source: str


PERF_FACTS = "H100, peak minus weights of one forward (docs: shared perf facts)"
ESTIMATE = "estimate (not measured yet)"

# Activations of one DiT forward (CFG runs the two passes one after the other): the forward's peak GPU memory minus
# the weights on the GPU, by (model, compute, resolution); compute "fp8" = fp8 matmuls, "bf16" = everything else
# (bf16 weights, fp8 weights upcast per layer, GGUF dequantized per layer).
ACTIVATIONS: dict[tuple[str, str, str], Measured] = {
    ("A14B", "bf16", "480p"): Measured(3.4, PERF_FACTS),
    ("A14B", "bf16", "720p"): Measured(8.4, PERF_FACTS),
    ("A14B", "fp8", "480p"): Measured(3.3, PERF_FACTS),
    ("A14B", "fp8", "720p"): Measured(6.7, PERF_FACTS),
    ("5B", "bf16", "720p"): Measured(6.0, ESTIMATE + ": A14B 480p scaled by tokens x width + fp32 modulation"),
    ("5B", "fp8", "720p"): Measured(6.0, ESTIMATE + ": as bf16"),
}

# VAE decode of the whole video: Wan2.1 VAE at 720p x 81 frames (A14B), Wan2.2 VAE at 1280x704 x 121 frames (5B).
VAE_DECODE = {"A14B": Measured(10.0, ESTIMATE), "5B": Measured(16.0, ESTIMATE)}
TILED_VAE_DECODE = Measured(3.0, ESTIMATE)

# CUDA context, cuBLAS workspaces, allocator fragmentation.
RESERVE = Measured(2.0, ESTIMATE)

# s/step with block swap over s/step all resident (bench/low_vram.py "slowdown"), by (model, resolution).
BLOCK_SWAP_SLOWDOWN: dict[tuple[str, str], Measured] = {}
