"""One DiT forward: wan_core's WanDiT against diffusers' WanTransformer3DModel, same random weights, same process.

Default shapes are the A14B expert (dim 5120, 40 layers) at 480p 81 frames (latent 21x60x104 -> 32,760 tokens),
batch 1, 512 text tokens, bf16. A bf16 8192^3 matmul is measured as the ceiling. Prints one JSON object.

The two models share the weight tensors (diffusers' names are only a renaming of ours), so both fit on one 80 GB GPU.

    python bench/dit_step.py                                   # GPU, real shapes
    python bench/dit_step.py --device cpu --layers 2 --dim 256 --ffn-dim 512 --heads 2 --latent 3,8,8 --text-dim 64
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wan_core.configs import WanDiTConfig  # noqa: E402
from wan_core.dit import kernels  # noqa: E402
from wan_core.dit.attention import get_backend  # noqa: E402
from wan_core.dit.keymap import official_to_diffusers_key  # noqa: E402
from wan_core.dit.model import FP8, FP8Linear, WanDiT, fp8_capable, keeps_fp32  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--layers", type=int, default=40)
    p.add_argument("--dim", type=int, default=5120)
    p.add_argument("--ffn-dim", type=int, default=13824)
    p.add_argument("--heads", type=int, default=40)
    p.add_argument("--text-dim", type=int, default=4096)
    p.add_argument("--text-len", type=int, default=512)
    p.add_argument("--latent", default="21,60,104", help="latent frames,height,width (patch 1x2x2)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--backend", default="sdpa", help="our attention backend")
    p.add_argument("--also-backend", default="", help="also time ours with this attention backend (e.g. flash_attn)")
    p.add_argument("--skip-diffusers", action="store_true")
    p.add_argument("--fp8", action="store_true", help="also time ours with fp8 weights + fp8 matmuls")
    p.add_argument("--profile", default="", help="write the top kernels of one forward of each model here")
    p.add_argument("--json", default="", help="also write the JSON here")
    return p.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, runs: int) -> tuple[list[float], object]:
    out = fn()  # warm-up
    sync(device)
    times = []
    for _ in range(runs):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times, out


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def matmul_ceiling(device: torch.device) -> float:
    n = 8192 if device.type == "cuda" else 1024
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times, _ = timed(lambda: a @ b, device, 10)
    return 2 * n**3 / statistics.median(times) / 1e12


def forward_flops(cfg: WanDiTConfig, tokens: int, text: int) -> float:
    d, f, L, T = cfg.dim, cfg.ffn_dim, tokens, text
    per_block = 8 * L * d * d + 4 * L * d * d + 4 * T * d * d + 4 * L * d * f + 4 * L * L * d + 4 * L * T * d
    return per_block * cfg.num_layers


def random_weights(model: torch.nn.Module, device: torch.device, dtype: torch.dtype, seed: int) -> dict:
    """Random weights for every parameter, drawn on the device; the float32 ones are bf16-representable."""
    gen = torch.Generator(device=device).manual_seed(seed)
    out = {}
    for name, p in model.state_dict().items():
        shape = tuple(p.shape)
        if len(shape) >= 2 and "modulation" not in name:
            w = torch.randn(shape, device=device, generator=gen) / math.prod(shape[1:]) ** 0.5
        elif name.endswith(("norm_q.weight", "norm_k.weight", "norm3.weight")):
            w = 1 + 0.1 * torch.randn(shape, device=device, generator=gen)
        else:
            w = 0.1 * torch.randn(shape, device=device, generator=gen)
        w = w.to(dtype)
        out[name] = w.float() if keeps_fp32(name) else w
    return out


def build_ours(cfg: WanDiTConfig, device: torch.device, dtype: torch.dtype) -> WanDiT:
    with torch.device("meta"):
        model = WanDiT(cfg)
    model.requires_grad_(False)
    model.load_state_dict(random_weights(model, device, dtype, seed=0), strict=True, assign=True)
    return model.eval()


def build_diffusers(ours: WanDiT, device: torch.device, dtype: torch.dtype):
    """diffusers' model over the same weight tensors (dtypes as its from_pretrained(torch_dtype=dtype) gives)."""
    from diffusers import WanTransformer3DModel
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    cfg = ours.config
    kwargs = {k: v for k, v in cfg.to_diffusers_json().items() if not k.startswith("_")}
    with torch.device("meta"):
        model = WanTransformer3DModel(**kwargs)
    keep_fp32 = WanTransformer3DModel._keep_in_fp32_modules
    state = {}
    for name, tensor in ours.state_dict().items():
        key = official_to_diffusers_key(name)
        fp32 = any(part in key.split(".") for part in keep_fp32) or key.endswith("scale_shift_table")
        state[key] = tensor if tensor.dtype == (torch.float32 if fp32 else dtype) else tensor.to(
            torch.float32 if fp32 else dtype
        )
    model.requires_grad_(False)
    model.load_state_dict(state, strict=True, assign=True)
    model.rope = WanRotaryPosEmbed(cfg.head_dim, cfg.patch_size, 1024).to(device)
    return model.eval()


def to_fp8(model: WanDiT) -> None:
    """Swap the block Linears for FP8Linear (per-tensor scaled e4m3 weights), freeing the bf16 weights."""
    for name, module in list(model.named_modules()):
        if not isinstance(module, torch.nn.Linear) or not fp8_capable(name + ".weight"):
            continue
        w = module.weight
        scale = (w.float().abs().amax() / torch.finfo(FP8).max).clamp(min=1e-12)
        new = FP8Linear(module.in_features, module.out_features, bias=True).to(w.device)
        new.weight = torch.nn.Parameter((w.float() / scale).to(FP8), requires_grad=False)
        new.bias = torch.nn.Parameter(module.bias.data, requires_grad=False)
        new.weight_scale = scale.float()
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, new)


def profile_table(fn, device: torch.device, rows: int = 15) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    try:
        return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60)
    except Exception as err:  # a profiler quirk must not cost the measurement
        return f"(profile table failed: {err})"


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    f, h, w = (int(v) for v in args.latent.split(","))
    cfg = WanDiTConfig(model_type="t2v", dim=args.dim, ffn_dim=args.ffn_dim, num_heads=args.heads,
                       num_layers=args.layers, in_dim=16, out_dim=16, text_dim=args.text_dim, text_len=args.text_len)
    tokens = f * (h // 2) * (w // 2)
    flops = forward_flops(cfg, tokens, args.text_len)
    result: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "shape": {"dim": cfg.dim, "ffn_dim": cfg.ffn_dim, "heads": cfg.num_heads, "layers": cfg.num_layers,
                  "latent": [f, h, w], "tokens": tokens, "text_tokens": args.text_len, "batch": 1,
                  "dtype": str(dtype).replace("torch.", "")},
        "pflop_per_forward": flops / 1e15,
        "runs": args.runs,
    }
    torch.manual_seed(0)
    result["matmul_ceiling_tflops"] = matmul_ceiling(device)

    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(1, 16, f, h, w, device=device, generator=gen)
    t = torch.tensor([500.0], device=device)
    context = torch.randn(1, args.text_len, cfg.text_dim, device=device, generator=gen).to(dtype)

    ours = build_ours(cfg, device, dtype)
    attention = {"backend": get_backend(args.backend, device)}
    result["weights_gib"] = sum(p.numel() * p.element_size() for p in ours.parameters()) / 2**30

    def run_ours():
        with torch.inference_mode():
            return ours(x, t, context, attention=attention["backend"])

    peak_reset(device)
    times, out_ours = timed(run_ours, device, args.runs)
    sec = statistics.median(times)
    result["ours"] = {"seconds": sec, "all_seconds": times, "tflops": flops / sec / 1e12,
                      "peak_gib": peak_gib(device), "attention_backend": args.backend}
    out_ours = out_ours.float()
    result["ours"]["fused_kernels"] = kernels.usable(x)
    if kernels.usable(x):  # A/B: the same model with PyTorch ops instead of the fused Triton kernels
        kernels.ENABLED = False
        peak_reset(device)
        times, out_plain = timed(run_ours, device, args.runs)
        kernels.ENABLED = True
        psec = statistics.median(times)
        result["ours_without_fused_kernels"] = {
            "seconds": psec, "all_seconds": times, "tflops": flops / psec / 1e12, "peak_gib": peak_gib(device),
            "output_rel_l2_vs_fused": ((out_plain.float() - out_ours).norm() / out_ours.norm()).item()}
        del out_plain
    if args.also_backend:  # A/B: the same model and inputs with another attention backend
        attention["backend"] = get_backend(args.also_backend, device)
        peak_reset(device)
        times, out_other = timed(run_ours, device, args.runs)
        attention["backend"] = get_backend(args.backend, device)
        osec = statistics.median(times)
        result[f"ours_{args.also_backend}"] = {
            "seconds": osec, "all_seconds": times, "tflops": flops / osec / 1e12, "peak_gib": peak_gib(device),
            f"speedup_vs_{args.backend}": sec / osec,
            "output_rel_l2_vs_default": ((out_other.float() - out_ours).norm() / out_ours.norm()).item()}
        del out_other
    profiles = []
    if args.profile:
        profiles.append("== wan_core WanDiT ==\n" + profile_table(run_ours, device))

    if not args.skip_diffusers:
        reference = build_diffusers(ours, device, dtype)

        def run_diffusers():
            with torch.inference_mode():
                return reference(x.to(dtype), t, context, return_dict=False)[0]

        peak_reset(device)
        times, out_ref = timed(run_diffusers, device, args.runs)
        dsec = statistics.median(times)
        out_ref = out_ref.float()
        result["diffusers"] = {"seconds": dsec, "all_seconds": times, "tflops": flops / dsec / 1e12,
                               "peak_gib": peak_gib(device)}
        result["speedup_vs_diffusers"] = dsec / sec
        diff = (out_ours - out_ref).float()
        result["output_rel_l2_vs_diffusers"] = (diff.norm() / out_ref.norm()).item()
        result["output_rel_max_vs_diffusers"] = (diff.abs().max() / out_ref.abs().max()).item()
        if args.profile:
            profiles.append("== diffusers WanTransformer3DModel ==\n" + profile_table(run_diffusers, device))
        del reference, run_diffusers
        gc.collect()

    if args.fp8 and FP8 is not None:
        to_fp8(ours)
        gc.collect()
        peak_reset(device)
        times, out_fp8 = timed(run_ours, device, args.runs)
        fsec = statistics.median(times)
        result["ours_fp8"] = {"seconds": fsec, "all_seconds": times, "tflops": flops / fsec / 1e12,
                              "peak_gib": peak_gib(device),
                              "weights_gib": sum(p.numel() * p.element_size() for p in ours.parameters()) / 2**30,
                              "output_rel_l2_vs_bf16": ((out_fp8.float() - out_ours).norm() / out_ours.norm()).item()}

    result["ours"]["fraction_of_matmul_ceiling"] = result["ours"]["tflops"] / result["matmul_ceiling_tflops"]
    text = json.dumps(result, indent=2)
    if args.profile:
        Path(args.profile).write_text("\n\n".join(profiles))
        print("\n\n".join(profiles))
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
