"""Which Wan2.2 setups fit a device: GPU memory estimates from parameter counts and measured activation peaks.

How the numbers are derived (GiB = 2**30 bytes; bf16 = 2 bytes per parameter, fp8 = 1):
- Weights. A14B expert 14.3e9 parameters -> 26.6 GiB bf16, 13.3 GiB fp8; T2V/I2V-A14B has two experts (high-noise
  and low-noise), so both resident are 53.3 GiB bf16. TI2V-5B 5.0e9 -> 9.3 GiB bf16, 4.7 GiB fp8. UMT5-XXL encoder
  5.7e9 -> 10.6 GiB bf16 (runs once per prompt; `t5_cpu` keeps it off the GPU).
- DiT activations, one forward of one expert (CFG runs the conditional and unconditional passes one after the other):
  measured peak minus weights on an H100 at A14B shape (docs: shared perf facts): bf16 30 GiB at 480p x 81 frames
  (32,760 tokens) -> 3.4 GiB; 35 GiB at 720p (75,600 tokens) -> 8.4 GiB; fp8 weights 16.6 / 20 GiB -> 3.3 / 6.7 GiB.
  TI2V-5B at 1280x704 x 121 frames has 27,280 tokens of width 3072: hidden states scaled by tokens x width from the
  A14B 480p figure give ~1.7 GiB, plus its per-token timestep modulation held in fp32 ([L, 6, dim] = 1.9 GiB, held
  twice in the reference forward) -> ~6 GiB.
- VAE decode (estimates consistent with the official single-GPU guidance: A14B on 80 GB, TI2V-5B on 24 GB with
  offload and t5_cpu): Wan2.1 VAE at 720p x 81 frames ~10 GiB untiled; Wan2.2 VAE at 1280x704 x 121 frames
  ~16 GiB untiled; tiled decode ~3 GiB. With `offload_model` the DiT leaves the GPU before the decode, so the peak is
  the larger of sampling and decoding; resident, the decode adds to the weights.
- A reserve of 2 GiB for the CUDA context, cuBLAS workspaces and allocator fragmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3
RESERVE_GIB = 2.0
BF16_CAPABILITY = (8, 0)  # Ampere
FP8_CAPABILITY = (8, 9)  # Ada / Hopper: e4m3 matmul

A14B_EXPERT_PARAMS = 14.3e9
TI2V_5B_PARAMS = 5.0e9
UMT5_XXL_ENCODER_PARAMS = 5.7e9
BYTES_PER_PARAM = {"bf16": 2, "fp8": 1}

# Activation peaks of one DiT forward in GiB, by (model, weights, resolution); see the module docstring.
ACTIVATIONS_GIB = {
    ("A14B", "bf16", "480p"): 3.4, ("A14B", "bf16", "720p"): 8.4,
    ("A14B", "fp8", "480p"): 3.3, ("A14B", "fp8", "720p"): 6.7,
    ("5B", "bf16", "720p"): 6.0, ("5B", "fp8", "720p"): 6.0,
}
VAE_DECODE_GIB = {"A14B": 10.0, "5B": 16.0}
TILED_VAE_DECODE_GIB = 3.0

OFFLOAD = "offload_model"
T5_CPU = "t5_cpu"
TILED_DECODE = "tiled VAE decode"
FAMILIES = {"A14B": "T2V/I2V-A14B", "5B": "TI2V-5B"}


def weights_gib(params: float, weights: str) -> float:
    return params * BYTES_PER_PARAM[weights] / GIB


CPU_ONLY_REPORT = (
    "No CUDA GPU found: the nodes run on the CPU. Demo sizes only (tiny test models, a few small frames): one real "
    "denoising step takes minutes there, and the smallest real setup (TI2V-5B + T5, bf16) holds "
    f"{weights_gib(TI2V_5B_PARAMS + UMT5_XXL_ENCODER_PARAMS, 'bf16'):.0f} GiB of weights in RAM."
)


@dataclass(frozen=True)
class Setup:
    """One way to run a model: weight dtype, resolution and the memory-saving settings it needs."""

    model: str  # "A14B" | "5B"
    weights: str  # "bf16" | "fp8"
    resolution: str  # "480p" | "720p"
    settings: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        extras = " + ".join(self.settings) if self.settings else "all resident"
        return f"{FAMILIES[self.model]} {self.weights} {self.resolution}: {extras}"

    @property
    def need_gib(self) -> float:
        """Peak GPU memory estimate, reserve included."""
        expert = weights_gib(A14B_EXPERT_PARAMS if self.model == "A14B" else TI2V_5B_PARAMS, self.weights)
        text_encoder = 0.0 if T5_CPU in self.settings else weights_gib(UMT5_XXL_ENCODER_PARAMS, "bf16")
        activations = ACTIVATIONS_GIB[self.model, self.weights, self.resolution]
        decode = TILED_VAE_DECODE_GIB if TILED_DECODE in self.settings else VAE_DECODE_GIB[self.model]
        if OFFLOAD in self.settings:  # one model on the GPU at a time: encode, then each expert, then decode
            peak = max(text_encoder, expert + activations, decode)
        else:
            experts = 2 if self.model == "A14B" else 1
            peak = experts * expert + text_encoder + max(activations, decode)
        return round(peak + RESERVE_GIB, 1)


# Per family, from the fastest (most resident, bf16) to the most frugal; the first that fits is recommended.
SETUPS: tuple[Setup, ...] = (
    Setup("A14B", "bf16", "720p"),
    Setup("A14B", "bf16", "720p", (OFFLOAD,)),
    Setup("A14B", "bf16", "480p", (OFFLOAD, T5_CPU)),
    Setup("A14B", "fp8", "720p", (OFFLOAD, T5_CPU)),
    Setup("A14B", "fp8", "480p", (OFFLOAD, T5_CPU)),
    Setup("5B", "bf16", "720p"),
    Setup("5B", "bf16", "720p", (OFFLOAD, T5_CPU)),
    Setup("5B", "fp8", "720p", (OFFLOAD, T5_CPU, TILED_DECODE)),
)


@dataclass(frozen=True)
class Recommendation:
    family: str
    setup: Setup | None  # None: no listed setup fits
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.setup is None:
            smallest = min((s for s in SETUPS if FAMILIES[s.model] == self.family), key=lambda s: s.need_gib)
            head = f"{self.family}: does not fit (the smallest setup, {smallest.label}, needs ~{smallest.need_gib} GiB)"
        else:
            head = f"{self.setup.label} (~{self.setup.need_gib} GiB)"
        return "; ".join([head, *self.notes])


def recommend(total_gib: float, *, bf16: bool, fp8: bool) -> list[Recommendation]:
    """The setup to use per model family on a GPU with `total_gib` of memory and the given dtype support."""
    no_bf16 = ("no native bf16 (needs compute capability 8.0+): expect fp32 compute, about twice as slow",)
    fp8_note = "fp8 matmul available" if fp8 else "fp8 weights are upcast per layer (saves memory, no speed-up)"
    recommendations = []
    for model, family in FAMILIES.items():
        chosen = next((s for s in SETUPS if s.model == model and s.need_gib <= total_gib), None)
        notes = () if bf16 else no_bf16
        if chosen is not None and chosen.weights == "fp8":
            notes += (fp8_note,)
        recommendations.append(Recommendation(family, chosen, notes))
    return recommendations


@dataclass(frozen=True)
class GPUSpec:
    index: int
    name: str
    total_gib: float
    free_gib: float | None
    capability: tuple[int, int]

    @property
    def bf16(self) -> bool:
        return self.capability >= BF16_CAPABILITY

    @property
    def fp8(self) -> bool:
        return self.capability >= FP8_CAPABILITY

    def describe(self) -> str:
        free = f", {self.free_gib:.1f} GiB free" if self.free_gib is not None else ""
        major, minor = self.capability
        return (f"GPU {self.index}: {self.name}, {self.total_gib:.1f} GiB{free}, compute capability {major}.{minor}, "
                f"bf16 {'yes' if self.bf16 else 'no'}, fp8 e4m3 {'yes' if self.fp8 else 'no'}")


def list_gpus() -> list[GPUSpec]:
    """The CUDA GPUs of this machine (empty without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        try:
            free = torch.cuda.mem_get_info(index)[0] / GIB
        except RuntimeError:  # a GPU busy in exclusive mode still reports its properties
            free = None
        gpus.append(GPUSpec(index, properties.name, properties.total_memory / GIB, free,
                            (properties.major, properties.minor)))
    return gpus


def hardware_report(gpus: list[GPUSpec]) -> str:
    """Text report: each GPU and its recommended Wan2.2 setups (CPU only when `gpus` is empty)."""
    if not gpus:
        return CPU_ONLY_REPORT
    lines = []
    for gpu in gpus:
        lines.append(gpu.describe())
        lines += [f"  - {r.describe()}" for r in recommend(gpu.total_gib, bf16=gpu.bf16, fp8=gpu.fp8)]
    if len(gpus) > 1:
        lines.append("Several GPUs: put T5 (and the styler) on one and the DiT and VAE on another with Wan22SetDevice.")
    return "\n".join(lines)
