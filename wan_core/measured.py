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
LOW_VRAM_BENCH = "bench/low_vram.py, H200, 2026-11-25: uncapped peak allocated minus weights"

# Activations of one DiT forward (CFG runs the two passes one after the other): the forward's peak GPU memory minus
# the weights on the GPU, by (model, compute, resolution); compute "fp8" = fp8 matmuls, "bf16" = everything else
# (bf16 weights, fp8 weights upcast per layer, GGUF dequantized per layer).
ACTIVATIONS: dict[tuple[str, str, str], Measured] = {
    ("A14B", "bf16", "480p"): Measured(3.4, PERF_FACTS),
    ("A14B", "bf16", "720p"): Measured(8.4, PERF_FACTS),
    ("A14B", "fp8", "480p"): Measured(3.8, LOW_VRAM_BENCH),
    ("A14B", "fp8", "720p"): Measured(8.2, LOW_VRAM_BENCH),
    ("5B", "bf16", "720p"): Measured(2.6, LOW_VRAM_BENCH + " of the fp8 run"),
    ("5B", "fp8", "720p"): Measured(2.6, LOW_VRAM_BENCH + " (121 frames)"),
}

# Activation bytes of one forward per token, per channel of the model width and per channel of the FFN's hidden layer:
# a fit to ACTIVATIONS (A14B: width 5120, FFN 13824, 32,760 / 75,600 tokens at 480p / 720p x 81 frames; 5B: 3072,
# 14336, 27,280 tokens at 1280x704 x 121 frames), rounded up so that it covers every entry (tests/test_activations.py).
ACTIVATION_BYTES_PER_TOKEN = (12.2, 4.7)

# VAE decode of the whole video, whole frames and in 256-pixel tiles: the Wan2.1 VAE at 1280x720 x 81 frames (A14B),
# the Wan2.2 VAE at 1280x704 x 121 frames (5B); peak allocated, the VAE's weights, the latent and the float32 video
# included.
VAE_BENCH = "bench/vae_decode.py, H100, 2026-11-23: peak allocated"
VAE_DECODE = {"A14B": Measured(9.7, VAE_BENCH + ", Wan2.1 VAE 9.69 GiB"),
              "5B": Measured(11.0, VAE_BENCH + ", Wan2.2 VAE 10.98 GiB")}
TILED_VAE_DECODE = {"A14B": Measured(1.8, VAE_BENCH + ", Wan2.1 VAE tiled 1.78 GiB"),
                    "5B": Measured(3.3, VAE_BENCH + ", Wan2.2 VAE tiled 3.29 GiB")}

# CUDA context, cuBLAS workspaces, allocator fragmentation.
RESERVE = Measured(1.0, "bench/low_vram.py, H200, 2026-11-25: reserved minus allocated, 22.87 - 21.92 GiB at 720p")

# Block swap frees and re-allocates each streamed block's GPU copy every forward (on a side stream, reused only after
# compute is done with it), which leaves more of the capped memory reserved but unused: the whole A14B 720p pipeline
# under a 16 GiB cap ran out of memory with 14.16 GiB allocated and 15.99 reserved (1.83 GiB slack, against the
# 0.95 of RESERVE without block swap). The difference is kept free on top of RESERVE when blocks are swapped.
BLOCK_SWAP_SLACK = Measured(0.9, "bench/low_vram_pipeline.py, H100, 2026-11-26: 1.83 - 0.95 GiB at 720p, 16 GiB cap")

# s/step with block swap over s/step all resident (bench/low_vram.py "slowdown"), by (model, resolution).
# (Measured.gib holds the ratio here.)
BLOCK_SWAP_SLOWDOWN: dict[tuple[str, str], Measured] = {
    ("A14B", "480p"): Measured(1.0, "bench/low_vram.py, H200, 2026-11-25: 20 of 40 blocks swapped, 4.67 vs 4.69 s"),
    ("5B", "720p"): Measured(1.0, "bench/low_vram.py, H200, 2026-11-25: 25 of 30 blocks swapped, 1.57 vs 1.58 s"),
}
