"""Small cards emulated on one big GPU: DiT denoising steps under a memory cap, against the same model uncapped.

Each case caps this process's GPU memory with `torch.cuda.set_per_process_memory_fraction` (a 12 GiB card on an
80 GB H100), builds the expert with random weights of the real shape (A14B: dim 5120, 40 blocks; TI2V-5B: dim 3072,
30 blocks) in the case's weight format (bf16, fp8 with fp8 matmuls, or a GGUF quant as raw ggml blocks), picks the
block-swap resident count from the cap (or none), and times `--steps` denoising steps (each step = the conditional and
the unconditional forward, as with CFG). The uncapped reference of the same weights runs in the same process, before
and after the capped run (order alternated), and s/step of the case is compared to their mean.

Per case it prints: peak GPU memory (allocated and reserved), peak resident RAM of the process during the case
(VmHWM, reset per case), s/step capped and uncapped and the slowdown, the resident block count. One JSON object.

    python bench/low_vram.py                       # all cases, 2 steps each (about 5 minutes on an H100)
    python bench/low_vram.py --cases a14b-16gib-720p --steps 3
    python bench/low_vram.py --device cpu --tiny   # wiring check on a CPU with a tiny model
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dit_step import sync  # noqa: E402  (bench/ is this script's folder)
from report import emit  # noqa: E402

from wan_core import ram  # noqa: E402
from wan_core.configs import DIT_CONFIGS, WanDiTConfig  # noqa: E402
from wan_core.dit.block_swap import (  # noqa: E402
    GIB,
    choose_resident_blocks,
    disable_block_swap,
    enable_block_swap,
    module_bytes,
)
from wan_core.dit.gguf_linear import GGUFLinear  # noqa: E402
from wan_core.dit.model import FP8, FP8Linear, WanDiT, fp8_capable, keeps_fp32  # noqa: E402
from wan_core.hardware import activation_gib  # noqa: E402
from wan_core.io.gguf_dequant import GGML_TYPES  # noqa: E402

GGUF_IDS = {name: qtype for qtype, (name, _, _) in GGML_TYPES.items()}
# Where each k-quant block keeps its fp16 scales (random bytes there could be inf / nan).
SCALE_OFFSETS = {"Q8_0": (0,), "Q6_K": (208,), "Q5_K": (0, 2), "Q4_K": (0, 2), "Q3_K": (108,)}


@dataclass(frozen=True)
class Case:
    name: str
    cap_gib: float | None
    model: str  # "A14B" | "5B"
    resolution: str  # "480p" | "720p"
    latent: tuple[int, int, int]  # frames, height, width of the latent
    weights: str  # "bf16" | "fp8" | a GGUF type name
    swap: bool  # block swap allowed (resident count from the cap)


CASES = (
    Case("a14b-12gib-480p-fp8", 12, "A14B", "480p", (21, 60, 104), "fp8", True),
    Case("a14b-12gib-480p-q4_k", 12, "A14B", "480p", (21, 60, 104), "Q4_K", True),
    Case("a14b-16gib-720p-fp8", 16, "A14B", "720p", (21, 90, 160), "fp8", True),
    Case("a14b-24gib-720p-fp8-noswap", 24, "A14B", "720p", (21, 90, 160), "fp8", False),
    Case("ti2v5b-8gib-720p-121f-fp8", 8, "5B", "720p", (31, 44, 80), "fp8", True),
)


def case_parser(description: str, steps_help: str) -> argparse.ArgumentParser:
    """The options the small-card benches share (`--dir` etc. added by each)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    p.add_argument("--steps", type=int, default=2, help=steps_help)
    p.add_argument("--tiny", action="store_true", help="tiny models and sizes (wiring check)")
    p.add_argument("--json", default="", help="also write the JSON here")
    return p


def parse_args() -> argparse.Namespace:
    return case_parser(__doc__, "timed denoising steps per run").parse_args()


def config_for(case: Case, tiny: bool) -> WanDiTConfig:
    if tiny:
        return DIT_CONFIGS["tiny-t2v"].replace(dim=256, ffn_dim=512, num_heads=2, num_layers=4)
    return DIT_CONFIGS["t2v-A14B" if case.model == "A14B" else "ti2v-5B"]


def random_raw_blocks(qtype_name: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    _, block, size = GGML_TYPES[GGUF_IDS[qtype_name]]
    blocks = torch.randint(0, 256, (shape[0] * shape[1] // block, size), dtype=torch.uint8, device=device)
    for offset in SCALE_OFFSETS[qtype_name]:
        scale = torch.empty(blocks.shape[0], dtype=torch.float16, device=device).uniform_(2e-4, 1e-3)
        blocks[:, offset : offset + 2] = scale.view(torch.uint8).view(-1, 2)
    return blocks.view(shape[0], -1)


def build_model(cfg: WanDiTConfig, weights: str, device: torch.device) -> WanDiT:
    """An expert of `cfg`'s shape with random weights built on `device` (fast: no CPU random numbers)."""
    with torch.device("meta"):
        model = WanDiT(cfg)
    for name, _ in list(model.named_parameters()):
        if not fp8_capable(name) or weights == "bf16":
            continue
        parent_path, _, attr = name[: -len(".weight")].rpartition(".")
        parent = model.get_submodule(parent_path)
        old = getattr(parent, attr)
        with torch.device("meta"):
            new = (FP8Linear(old.in_features, old.out_features, scaled_mm=True) if weights == "fp8"
                   else GGUFLinear(old.in_features, old.out_features, GGUF_IDS[weights]))
        setattr(parent, attr, new)
    for name, p in model.named_parameters():  # still on meta: the loader's dtypes before any memory is taken
        if p.dtype == torch.float32 and not keeps_fp32(name):
            p.data = torch.empty_like(p, dtype=torch.bfloat16)
    model = model.to_empty(device=device).requires_grad_(False).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dtype == FP8:
                p.copy_((torch.randn(p.shape, device=device, dtype=torch.bfloat16) * 100).to(FP8))
            elif p.dtype != torch.uint8 and p.dim() >= 2 and "modulation" not in name:
                p.normal_(0, p[0].numel() ** -0.5)
            elif p.dtype != torch.uint8:
                p.normal_(0, 0.1)
        for module in model.modules():
            if isinstance(module, FP8Linear):
                module.weight_scale = torch.tensor(module.in_features ** -0.5 / 100, device=device)
            if isinstance(module, GGUFLinear):
                shape = (module.out_features, module.in_features)
                module.weight.copy_(random_raw_blocks(weights, shape, device))
    return model


def time_steps(model: WanDiT, latent: torch.Tensor, context: torch.Tensor, steps: int) -> float:
    """Seconds per denoising step (two forwards, as CFG runs them)."""
    device = latent.device
    with torch.no_grad():
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            for _ in range(2):
                model(latent, torch.tensor([900.0], device=device), [context])
        sync(device)
    return (time.perf_counter() - start) / steps


def set_cap(device: torch.device, cap_gib: float | None) -> None:
    if device.type != "cuda":
        return
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(1.0 if cap_gib is None else min(1.0, cap_gib * GIB / total), device)


def reset_peaks(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    ram.reset_peak_resident()


def peaks(device: torch.device) -> dict:
    out = {"peak_resident_ram_gib": round(ram.peak_resident_bytes() / GIB, 2)}
    if device.type == "cuda":
        out["peak_gpu_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / GIB, 2)
        out["peak_gpu_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / GIB, 2)
    return out


def capped_run(case: Case, model: WanDiT, latent: torch.Tensor, context: torch.Tensor, args: argparse.Namespace
               ) -> dict:
    """One case on the already built model: block swap as the cap allows, timed under the cap, swap undone."""
    device = latent.device
    blocks = list(model.blocks)
    block = max(module_bytes(b) for b in blocks)
    other = module_bytes(model) - len(blocks) * block
    reserve = int(activation_gib(case.model, case.weights, case.resolution) * GIB)
    resident = len(blocks)
    if case.swap:
        resident = 1 if args.tiny else choose_resident_blocks(len(blocks), block, other,
                                                               int((case.cap_gib - 0.5) * GIB), reserve)
    result = {"case": case.name, "cap_gib": case.cap_gib, "resident_blocks": resident, "num_blocks": len(blocks)}
    if resident < len(blocks):
        enable_block_swap(model, resident)  # the swapped blocks' weights go to pinned CPU memory
    reset_peaks(device)
    set_cap(device, case.cap_gib)
    try:
        result["s_per_step"] = round(time_steps(model, latent, context, args.steps), 3)
    except torch.cuda.OutOfMemoryError as error:
        result["error"] = f"out of memory: {str(error).splitlines()[0]}"
    result.update(peaks(device))
    set_cap(device, None)
    if resident < len(blocks):
        disable_block_swap(model)
        model.to(device)
    return result


def run_group(cases: list[Case], args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Cases of one model, weight format and latent: the model is built once, the uncapped reference timed before
    and after the capped runs."""
    first = cases[0]
    cfg = config_for(first, args.tiny)
    frames, height, width = (1, 4, 4) if args.tiny else first.latent
    set_cap(device, None)
    reset_peaks(device)
    model = build_model(cfg, first.weights, device)
    gen = torch.Generator(device).manual_seed(0)
    latent = torch.randn(1, cfg.in_dim, frames, height, width, device=device, generator=gen)
    context = torch.randn(cfg.text_len, cfg.text_dim, device=device, generator=gen, dtype=torch.bfloat16)
    time_steps(model, latent[:, :, :1, :8, :8].contiguous(), context, 1)  # compile kernels outside the timed runs

    uncapped = [time_steps(model, latent, context, args.steps)]
    reference_peaks = peaks(device)
    capped = [capped_run(case, model, latent, context, args) for case in cases]
    uncapped.append(time_steps(model, latent, context, args.steps))
    shared = {"model": first.model, "weights": first.weights, "resolution": first.resolution,
              "latent": [frames, height, width], "tokens": frames * height * width // 4,
              "weights_gib": round(module_bytes(model) / GIB, 2),
              "uncapped": {"s_per_step": [round(t, 3) for t in uncapped], **reference_peaks}}
    results = []
    for result in capped:
        if "s_per_step" in result:
            result["slowdown"] = round(result["s_per_step"] / statistics.mean(uncapped), 3)
        results.append({**result, **shared})
    del model, latent, context
    reset_peaks(device)
    return results


def bench_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def select_cases(all_cases: tuple, names: str) -> list:
    """The cases named in the comma-separated `names` (all when empty), in their order."""
    wanted = [c.strip() for c in names.split(",") if c.strip()]
    unknown = set(wanted) - {c.name for c in all_cases}
    if unknown:
        raise SystemExit(f"unknown case(s) {sorted(unknown)}; cases: {[c.name for c in all_cases]}")
    return [c for c in all_cases if not wanted or c.name in wanted]


def report_head(device: torch.device) -> dict:
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "date": datetime.date.today().isoformat(), "torch": torch.__version__}


def main() -> None:
    args = parse_args()
    device = bench_device(args.device)
    cases = select_cases(CASES, args.cases)
    report = {
        **report_head(device), "steps": args.steps,
        "note": "one expert, DiT steps only (T5 and VAE not included); s/step = 2 forwards (CFG); the uncapped "
                "reference of each model runs before and after its capped runs; peak RAM and GPU per run",
        "cases": [],
    }
    groups: dict[tuple, list[Case]] = {}
    for case in cases:
        groups.setdefault((case.model, case.weights, case.latent), []).append(case)
    for group in groups.values():
        for result in run_group(group, args, device):
            report["cases"].append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
    emit(report, args.json)


if __name__ == "__main__":
    main()
