"""The Lightning path on A14B shapes: 4 euler steps (2 high-noise + 2 low-noise), CFG 1 (one forward per step), 81
frames, a random rank-64 LoRA merged into each expert; the experts are random A14B-shaped weights drawn on the GPU
(fp8 weights + fp8 matmuls and the fastest attention by default: the pack's fastest setting). Prints one JSON object:
denoising seconds per size, and the LoRA apply (first merge, with the originals' backup), strength switch and
remove times per expert. Target on one H100: 480p <= 8 s, 720p <= 30 s of denoising; the whole run < 8 minutes.

    python bench/lightning.py --json bench_lightning.json                     # GPU, real shapes
    python bench/lightning.py --device cpu --layers 2 --dim 256 --ffn-dim 512 --heads 2 --text-dim 64 \\
        --sizes 64*48 --frames 5 --rank 4 --no-fp8                             # CPU smoke run
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dit_shape import add_shape_args, shape_config  # noqa: E402
from dit_step import build_ours, sync  # noqa: E402
from report import emit  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from wan_core.dit.fp8 import to_fp8_compute  # noqa: E402
from wan_core.dit.model import fp8_capable  # noqa: E402
from wan_core.lora import LoraPatch  # noqa: E402
from wan_core.patching import set_patches  # noqa: E402
from wan_core.pipeline.denoise import HIGH_NOISE, LOW_NOISE, sample_latents  # noqa: E402
from wan_core.pipeline.forwards import step_forwards  # noqa: E402
from wan_core.pipeline.request import SamplingRequest  # noqa: E402
from wan_core.pipeline.tasks import parse_size  # noqa: E402
from wan_core.runtime import Runtime  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(p)
    p.add_argument("--sizes", default="832*480,1280*720")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--attention", default="auto")
    p.add_argument("--no-fp8", action="store_true", help="bf16 weights and matmuls instead of fp8")
    p.add_argument("--compile", action="store_true", help="torch.compile'd blocks (compiled in the warm-up)")
    p.add_argument("--json", default="", help="also write the JSON here")
    return p.parse_args()


def write_random_lora(model: torch.nn.Module, rank: int, path: Path, seed: int) -> None:
    """A lightx2v-layout LoRA (bf16, alpha = rank) on every block Linear of `model`."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, param in model.named_parameters():
        if not fp8_capable(name):
            continue
        module = name[: -len(".weight")]
        out, inp = param.shape
        down = torch.randn(rank, inp, generator=gen) / inp**0.5
        tensors[f"diffusion_model.{module}.lora_A.weight"] = down.bfloat16()
        tensors[f"diffusion_model.{module}.lora_B.weight"] = (torch.randn(out, rank, generator=gen) * 0.01).bfloat16()
        tensors[f"diffusion_model.{module}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, str(path))


def seconds(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def lora_switch_times(model: torch.nn.Module, expert: str, path: Path, device: torch.device) -> dict[str, float]:
    """Seconds to merge the LoRA first (file read + originals kept), switch its strength, remove it, merge again."""
    def to(*patches: LoraPatch) -> float:
        return seconds(lambda: set_patches(model, patches, expert), device)

    return {"apply_first_s": to(LoraPatch(str(path), 1.0)), "switch_strength_s": to(LoraPatch(str(path), 0.8)),
            "remove_s": to(), "apply_again_s": to(LoraPatch(str(path), 1.0))}


def time_denoise(request: SamplingRequest, experts: dict, context: list, runtime: Runtime) -> dict:
    """One timed 4-step denoise after a warm-up forward of each expert at this size (kernels, autotuning)."""
    device = runtime.device
    x = torch.randn(1, 16, *request.latent_shape[1:], device=device)
    with torch.inference_mode(), runtime.autocast():
        for model in experts.values():  # through the sampler's forward call, so --compile compiles here
            step_forwards(model, x, torch.tensor([500.0], device=device), [context], None, runtime)
    calls = []

    def denoise() -> None:
        with torch.inference_mode():
            sample_latents(request, high_noise_model=experts[HIGH_NOISE], low_noise_model=experts[LOW_NOISE],
                           cond=context, uncond=context, runtime=runtime,
                           progress=lambda info: calls.append(info.expert))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return {"seconds": seconds(denoise, device), "latent": list(request.latent_shape), "experts_per_step": calls,
            "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = shape_config(args)
    fp8 = not args.no_fp8
    runtime = Runtime.create(device, attention=args.attention, compile=args.compile)
    result: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "setting": {"weights": "fp8 e4m3 + fp8 matmuls (scaled_mm)" if fp8 else str(dtype).replace("torch.", ""),
                    "attention": runtime.attention.name, "compiled": args.compile,
                    "steps": "4 euler (2 high + 2 low), shift 5, CFG 1",
                    "frames": args.frames, "lora_rank": args.rank, "layers": args.layers, "dim": args.dim},
    }
    experts = {}
    for name in (HIGH_NOISE, LOW_NOISE):
        model = build_ours(cfg, device, dtype)
        if fp8:
            to_fp8_compute(model)
        experts[name] = model
    result["weights_gib_per_expert"] = sum(
        t.numel() * t.element_size() for t in experts[HIGH_NOISE].state_dict().values()) / 2**30

    result["lora"] = {}
    with tempfile.TemporaryDirectory() as folder:
        for index, (name, model) in enumerate(experts.items()):
            path = Path(folder) / f"{name}.safetensors"
            write_random_lora(model, args.rank, path, seed=10 + index)
            result["lora"][name] = lora_switch_times(model, name, path, device)

    gen = torch.Generator(device=device).manual_seed(0)
    context = [torch.randn(120, cfg.text_dim, device=device, generator=gen).to(dtype)]
    result["denoise"] = {}
    for size in args.sizes.split(","):
        width, height = parse_size(size)
        request = SamplingRequest.create("t2v-A14B", width=width, height=height, frame_num=args.frames, seed=0,
                                         solver="euler", steps=4, shift=5.0, guide_scale=1.0, boundary_step=2)
        result["denoise"][size] = time_denoise(request, experts, context, runtime)
    result["total_bench_seconds"] = time.perf_counter() - started
    emit(result, args.json)


if __name__ == "__main__":
    main()
