"""Which Wan2.2 setup is the fastest that fits a device: GPU (and RAM) needs from parameter counts and the measured
activation and decode peaks of `wan_core.measured`.

- Weights. A14B expert 14.3e9 parameters (40 blocks of 351e6, the rest 0.26e9), TI2V-5B 5.0e9 (30 blocks of 164e6),
  UMT5-XXL encoder 5.7e9. The blocks' matmul weights are stored as the format says (bf16 2 bytes per parameter, fp8 1,
  GGUF Q8_0 1.06, Q6_K 0.82, Q5_K 0.69, Q4_K 0.56, Q3_K 0.43); the rest of the model stays bf16.
- Block swap keeps `resident` blocks on the GPU and two more in flight; the other blocks wait in pinned RAM.
- `offload_model`: one model on the GPU at a time (T5, then each expert, then the VAE); the inactive A14B expert waits
  in RAM. `t5_cpu`: the text encoder runs on the CPU. Tiled decode bounds the VAE's peak.
- Preference (fastest and most exact first): all resident in bf16, then fp8, then GGUF Q8_0; then block swap with
  fp8, Q8_0, Q6_K, Q5_K, Q4_K, Q3_K (block swap keeps each step within ~15% when transfers hide behind compute; a
  smaller quant needs less RAM and PCIe traffic).
"""

from __future__ import annotations

from dataclasses import dataclass

from .measured import ACTIVATIONS, BLOCK_SWAP_SLACK, BLOCK_SWAP_SLOWDOWN, RESERVE, TILED_VAE_DECODE, VAE_DECODE

GIB = 1024**3
BF16_CAPABILITY = (8, 0)  # Ampere
FP8_CAPABILITY = (8, 9)  # Ada / Hopper: e4m3 matmul

UMT5_XXL_ENCODER_PARAMS = 5.7e9
# Bytes per parameter of the blocks' matmul weights.
BYTES_PER_PARAM = {"bf16": 2.0, "fp8": 1.0, "Q8_0": 34 / 32, "Q6_K": 210 / 256, "Q5_K": 176 / 256,
                   "Q4_K": 144 / 256, "Q3_K": 110 / 256}
GGUF_FORMATS = ("Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K")


@dataclass(frozen=True)
class ModelShape:
    params: float
    blocks: int
    block_params: float
    experts: int
    other_gib: float  # the rest of the model as loaded (time embedding, modulation and head in float32, others bf16)

    def gib(self, weights: str, blocks: int | None = None) -> float:
        """GiB of one expert's weights with `blocks` of its blocks (None: all) on the GPU."""
        count = self.blocks if blocks is None else blocks
        return self.other_gib + count * self.block_params * BYTES_PER_PARAM[weights] / GIB


MODELS = {
    "A14B": ModelShape(14.3e9, 40, 8 * 5120**2 + 2 * 5120 * 13824, experts=2, other_gib=0.78),
    "5B": ModelShape(5.0e9, 30, 8 * 3072**2 + 2 * 3072 * 14336, experts=1, other_gib=0.29),
}
RESOLUTIONS = {"A14B": ("480p", "720p"), "5B": ("720p",)}

OFFLOAD = "offload_model"
T5_CPU = "t5_cpu"
TILED_DECODE = "tiled VAE decode"
FAMILIES = {"A14B": "T2V/I2V-A14B", "5B": "TI2V-5B"}


def weights_gib(params: float, weights: str) -> float:
    return params * BYTES_PER_PARAM[weights] / GIB


def activation_gib(model: str, weights: str, resolution: str) -> float:
    """Measured activation peak of one forward (fp8 matmuls for "fp8", bf16 compute for every other format)."""
    return ACTIVATIONS[model, "fp8" if weights == "fp8" else "bf16", resolution].gib


CPU_ONLY_REPORT = (
    "No CUDA GPU found: the nodes run on the CPU. Demo sizes only (tiny test models, a few small frames): one real "
    "denoising step takes minutes there, and the smallest real setup (TI2V-5B + T5, bf16) holds "
    f"{(MODELS['5B'].params * 2 + UMT5_XXL_ENCODER_PARAMS * 2) / GIB:.0f} GiB of weights in RAM."
)


@dataclass(frozen=True)
class Setup:
    """One way to run a model: weight format, resolution, block swap and the memory-saving settings it uses."""

    model: str  # "A14B" | "5B"
    weights: str  # "bf16" | "fp8" | a GGUF format
    resolution: str  # "480p" | "720p"
    settings: tuple[str, ...] = ()
    resident_blocks: int | None = None  # None: no block swap

    @property
    def label(self) -> str:
        extras = list(self.settings)
        if self.resident_blocks is not None:
            extras.insert(0, f"block swap ({self.resident_blocks} of {MODELS[self.model].blocks} blocks on the GPU)")
        weights = f"GGUF {self.weights}" if self.weights in GGUF_FORMATS else self.weights
        return f"{FAMILIES[self.model]} {weights} {self.resolution}: {' + '.join(extras) or 'all resident'}"

    @property
    def need_gib(self) -> float:
        """Peak GPU memory estimate, reserve included."""
        shape = MODELS[self.model]
        blocks = None if self.resident_blocks is None else min(shape.blocks, self.resident_blocks + 2)
        expert = shape.gib(self.weights, blocks)
        text_encoder = 0.0 if T5_CPU in self.settings else UMT5_XXL_ENCODER_PARAMS * 2 / GIB
        activations = activation_gib(self.model, self.weights, self.resolution)
        decode = (TILED_VAE_DECODE if TILED_DECODE in self.settings else VAE_DECODE)[self.model].gib
        if OFFLOAD in self.settings or self.resident_blocks is not None:
            peak = max(text_encoder, expert + activations, decode)
        else:
            peak = shape.experts * expert + text_encoder + max(activations, decode)
        slack = BLOCK_SWAP_SLACK.gib if self.resident_blocks is not None else 0.0
        return round(peak + RESERVE.gib + slack, 1)

    @property
    def ram_gib(self) -> float:
        """System RAM the setup holds beyond the process: swapped blocks (pinned), the waiting expert, T5 on CPU."""
        shape = MODELS[self.model]
        swapped = 0.0
        if self.resident_blocks is not None:
            swapped = shape.gib(self.weights) - shape.gib(self.weights, self.resident_blocks)
        waiting = (shape.experts - 1) * shape.gib(self.weights) if OFFLOAD in self.settings else 0.0
        text_encoder = UMT5_XXL_ENCODER_PARAMS * 2 / GIB if T5_CPU in self.settings else 0.0
        return round(swapped + waiting + text_encoder, 1)


def _with_savings(model: str, weights: str, resolution: str, total_gib: float, resident: int | None = None) -> Setup:
    """The setup with the fewest memory-saving settings that fits (the most frugal one when none does). Block swap
    goes with offload_model: one model's resident blocks on the GPU at a time."""
    steps = [(OFFLOAD,), (OFFLOAD, T5_CPU), (OFFLOAD, T5_CPU, TILED_DECODE)]
    if resident is None:
        steps.insert(0, ())
    for settings in steps:
        setup = Setup(model, weights, resolution, settings, resident)
        if setup.need_gib <= total_gib:
            break
    return setup


def _fastest_fit(model: str, weights: str, resolution: str, total_gib: float) -> Setup | None:
    """`weights` all resident if that fits, else with the most blocks on the GPU that block swap allows."""
    whole = _with_savings(model, weights, resolution, total_gib)
    if whole.need_gib <= total_gib:
        return whole
    for resident in range(MODELS[model].blocks - 1, -1, -1):
        setup = _with_savings(model, weights, resolution, total_gib, resident)
        if setup.need_gib <= total_gib:
            return setup
    return None


def candidates(model: str, resolution: str, total_gib: float) -> list[Setup]:
    """The setups of `model` at `resolution` that fit a `total_gib` GPU, fastest first: all resident in bf16, fp8,
    Q8_0; then with block swap in fp8 and the GGUF formats."""
    out = [_with_savings(model, weights, resolution, total_gib) for weights in ("bf16", "fp8", "Q8_0")]
    out += [_fastest_fit(model, weights, resolution, total_gib) for weights in ("fp8", *GGUF_FORMATS)]
    return [s for s in out if s is not None and s.need_gib <= total_gib]


@dataclass(frozen=True)
class Recommendation:
    family: str
    resolution: str
    setup: Setup | None  # None: no setup fits
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.setup is None:
            head = f"{self.family} {self.resolution}: does not fit this GPU (or this machine's RAM)"
        else:
            ram = f", ~{self.setup.ram_gib} GiB RAM" if self.setup.ram_gib else ""
            head = f"{self.setup.label} (~{self.setup.need_gib} GiB GPU{ram})"
        return "; ".join([head, *self.notes])


def recommend(total_gib: float, *, bf16: bool, fp8: bool, ram_gib: float | None = None) -> list[Recommendation]:
    """Per model family and resolution, the fastest setup that fits a GPU of `total_gib` (and `ram_gib` of RAM)."""
    no_bf16 = ("no native bf16 (needs compute capability 8.0+): expect fp32 compute, about twice as slow",)
    fp8_note = ("weight_dtype fp8_e4m3fn_fast (fp8 matmuls)" if fp8
                else "weight_dtype fp8_e4m3fn: fp8 weights upcast per layer (saves memory, no speed-up)")
    recommendations = []
    for model, family in FAMILIES.items():
        for resolution in RESOLUTIONS[model]:
            fits = [s for s in candidates(model, resolution, total_gib) if ram_gib is None or s.ram_gib <= ram_gib]
            chosen = fits[0] if fits else None
            notes = () if bf16 else no_bf16
            if chosen is not None and chosen.weights == "fp8":
                notes += (fp8_note,)
            if chosen is not None and chosen.weights in GGUF_FORMATS:
                notes += (f"a {chosen.weights}{'_M' if chosen.weights[-1] == 'K' else ''} .gguf file in "
                          "diffusion_models/ or unet/",)
            if chosen is not None and chosen.resident_blocks is not None:
                slowdown = BLOCK_SWAP_SLOWDOWN.get((model, resolution))
                measured = f"measured {slowdown.gib:.2f}x s/step" if slowdown else "up to ~15% slower per step"
                notes += (f"Model Loader blocks_on_gpu {chosen.resident_blocks} or auto ({measured})",)
            recommendations.append(Recommendation(family, resolution, chosen, notes))
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


def hardware_report(gpus: list[GPUSpec], ram_gib: float | None = None) -> str:
    """Text report: each GPU and its recommended Wan2.2 setups given `ram_gib` of RAM (CPU only when `gpus` is
    empty)."""
    if not gpus:
        return CPU_ONLY_REPORT
    lines = [f"RAM: {ram_gib:.1f} GiB"] if ram_gib is not None else []
    for gpu in gpus:
        lines.append(gpu.describe())
        recommendations = recommend(gpu.total_gib, bf16=gpu.bf16, fp8=gpu.fp8, ram_gib=ram_gib)
        lines += [f"  - {r.describe()}" for r in recommendations]
    if len(gpus) > 1:
        lines.append("Several GPUs: put T5 (and the styler) on one and the DiT and VAE on another with Wan22SetDevice.")
    return "\n".join(lines)
