"""One DiT forward: wan_core's WanDiT against ComfyUI native's WanModel (and diffusers' WanTransformer3DModel where
installed), same random weights, same process.

Default shapes are the A14B expert (dim 5120, 40 layers) at 480p 81 frames (latent 21x60x104 -> 32,760 tokens;
720p: --latent 21,90,160 -> 75,600), batch 1, 512 text tokens, bf16. A bf16 8192^3 matmul is measured as the
ceiling. Variants: ours / ComfyUI for each attention backend in --backends (SDPA, SageAttention 2 where it imports;
our own `int8_triton`: ours only), bf16 then (--fp8) fp8 (ours: fp8 compute with rowwise scales; ComfyUI: fp8
weights + fp8 matmul, `comfy_fp8_*`; in ComfyUI >= 0.1x also its run of the templates' fp8_scaled files,
`comfy_fp8scaled_*`), (--compile) ours with compiled blocks. Every variant is warmed up once, then timed in --runs
rounds, the order reversed every other round; the median is reported with the output's relative L2 distance to ours
bf16 and (--profile) the GPU time split into matmul / attention / fp8 quantization / other. `summary` holds the
issue's target ratios. Prints one JSON object.

The models share the weight tensors (ComfyUI's and diffusers' names are the official ones or a renaming of them), so
they fit on one 80 GB GPU; the fp8 phase drops the bf16 block weights first. ComfyUI's comfy/ package comes from
.comfyui/ (bench/export_comfyui.sh), skipped with a note where absent.

    python bench/dit_step.py                                   # GPU, real shapes
    python bench/dit_step.py --device cpu --layers 2 --dim 256 --ffn-dim 512 --heads 2 --latent 3,8,8 --text-dim 64
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from comfy_native import (  # noqa: E402
    NATIVE_BACKENDS,
    build_comfy,
    build_comfy_scaled,
    comfy_forward,
    load_comfy,
    set_attention,
)
from dit_shape import add_shape_args, shape_config  # noqa: E402
from profile_split import profile_split  # noqa: E402
from report import emit  # noqa: E402

from wan_core.configs import WanDiTConfig  # noqa: E402
from wan_core.dit.attention import get_backend  # noqa: E402
from wan_core.dit.compiled import compilable, compile_blocks  # noqa: E402
from wan_core.dit.fp8 import to_fp8_compute  # noqa: E402
from wan_core.dit.keymap import official_to_diffusers_key  # noqa: E402
from wan_core.dit.model import WanDiT, keeps_fp32  # noqa: E402
from wan_core.errors import InputError  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(p)
    p.add_argument("--latent", default="21,60,104", help="latent frames,height,width (patch 1x2x2); 720p: 21,90,160")
    p.add_argument("--runs", type=int, default=3, help="timed rounds; each round runs every variant, order alternated")
    p.add_argument("--backends", default="sdpa,sage", help="attention backends to time (missing ones are noted)")
    p.add_argument("--fp8", action="store_true", help="also time fp8 compute (ours) and fp8 weights + matmul (ComfyUI)")
    p.add_argument("--compile", action="store_true", help="also time ours with torch.compile'd blocks")
    p.add_argument("--skip-comfy", action="store_true", help="leave out ComfyUI native (.comfyui/)")
    p.add_argument("--skip-diffusers", action="store_true")
    p.add_argument("--profile", action="store_true", help="GPU time split (matmul / attention / quant / other)")
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


def share_weights(model: WanDiT) -> WanDiT:
    """A second WanDiT over the same weight tensors (to compile or convert without touching `model`)."""
    with torch.device("meta"):
        twin = WanDiT(model.config)
    twin.requires_grad_(False)
    twin.load_state_dict(model.state_dict(), strict=True, assign=True)
    return twin.eval()


def twin_for_compile(model: WanDiT) -> WanDiT:
    """`model` with block objects of its own over the same layers (bf16 or fp8), to compile without touching it."""
    twin = copy.copy(model)
    twin._modules = dict(model._modules)
    twin.blocks = torch.nn.ModuleList(copy.copy(block) for block in model.blocks)
    return twin


def available_backends(names: list[str], device: torch.device) -> tuple[list[str], dict]:
    ok, notes = [], {}
    for name in names:
        try:
            get_backend(name, device)
            ok.append(name)
        except InputError as err:
            notes[name] = str(err)
    return ok, notes


def time_variants(variants: dict, device: torch.device, runs: int, flops: float, profile: bool) -> dict:
    """Warm each variant up once (compiles happen here), then `runs` rounds over all of them, the order reversed
    every other round; the median per variant. Outputs stay for the error comparison."""
    results, outputs = {}, {}
    for name, fn in variants.items():
        peak_reset(device)
        start = time.perf_counter()
        outputs[name] = fn().float()
        sync(device)
        results[name] = {"first_call_seconds": time.perf_counter() - start, "all_seconds": []}
        results[name]["peak_gib"] = peak_gib(device)
    names = list(variants)
    for round_ in range(runs):
        for name in names if round_ % 2 == 0 else names[::-1]:
            sync(device)
            start = time.perf_counter()
            variants[name]()
            sync(device)
            results[name]["all_seconds"].append(time.perf_counter() - start)
    for name, entry in results.items():
        entry["seconds"] = statistics.median(entry["all_seconds"])
        entry["tflops"] = flops / entry["seconds"] / 1e12
        if profile:
            entry["profile"] = profile_split(variants[name], device)
    return results, outputs


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    f, h, w = (int(v) for v in args.latent.split(","))
    cfg = shape_config(args)
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
        "notes": {},
    }
    torch.manual_seed(0)
    result["matmul_ceiling_tflops"] = matmul_ceiling(device)
    backends, result["notes"]["backends"] = available_backends(args.backends.split(","), device)

    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(1, 16, f, h, w, device=device, generator=gen)
    t = torch.tensor([500.0], device=device)
    context = torch.randn(1, args.text_len, cfg.text_dim, device=device, generator=gen).to(dtype)
    ours = build_ours(cfg, device, dtype)
    result["weights_gib"] = sum(p.numel() * p.element_size() for p in ours.parameters()) / 2**30

    comfy, comfy_note = (None, "--skip-comfy") if args.skip_comfy else load_comfy(device)
    if comfy is None:
        result["notes"]["comfyui"] = f"ComfyUI native not timed: {comfy_note}"
    else:
        result["comfyui_version"] = comfy_note

    def ours_variant(model: WanDiT, backend: str):
        attention = get_backend(backend, device)
        attention = compilable(attention) if getattr(model, "_blocks_compiled", False) else attention
        return lambda: model(x, t, context, attention=attention)

    def comfy_variant(model: torch.nn.Module, backend: str):
        def run():
            set_attention(comfy, backend)
            return comfy_forward(model, x, t, context, dtype)
        return run

    def phase(label: str, model: WanDiT, references: dict[str, torch.nn.Module | None]) -> dict:
        """`references`: ComfyUI's models by variant label."""
        variants = {}
        compiled = compile_blocks(twin_for_compile(model)) if args.compile else None
        for backend in backends:
            variants[f"ours_{label}_{backend}"] = ours_variant(model, backend)
            for reference_label, reference_model in references.items():
                if reference_model is not None and backend in NATIVE_BACKENDS:
                    variants[f"comfy_{reference_label}_{backend}"] = comfy_variant(reference_model, backend)
            if compiled is not None:
                variants[f"ours_{label}_{backend}_compiled"] = ours_variant(compiled, backend)
        with torch.inference_mode():
            return time_variants(variants, device, args.runs, flops, args.profile)

    comfy_bf16 = None if comfy is None else build_comfy(comfy, ours, dtype, fp8=False)
    timings, outputs = phase("bf16", ours, {"bf16": comfy_bf16})
    del comfy_bf16  # it shares the bf16 weights, which the fp8 phase drops
    reference = outputs[f"ours_bf16_{backends[0]}"]
    if not args.skip_diffusers:
        try:
            diffusers_model = build_diffusers(ours, device, dtype)
        except ImportError as err:
            result["notes"]["diffusers"] = f"diffusers not timed: {err}"
        else:
            with torch.inference_mode():
                more, more_out = time_variants(
                    {"diffusers_bf16_sdpa": lambda: diffusers_model(x.to(dtype), t, context, return_dict=False)[0]},
                    device, args.runs, flops, args.profile)
            timings.update(more)
            outputs.update(more_out)
            del diffusers_model
    gc.collect()
    if args.fp8:
        comfy_fp8 = {} if comfy is None else {"fp8": build_comfy(comfy, ours, dtype, fp8=True),
                                              "fp8scaled": build_comfy_scaled(comfy, ours, dtype)}
        ours_fp8 = to_fp8_compute(share_weights(ours))
        del ours
        gc.collect()
        peak_reset(device)
        more, more_out = phase("fp8", ours_fp8, comfy_fp8)
        timings.update(more)
        outputs.update(more_out)
    for name, entry in timings.items():
        entry["output_rel_l2_vs_ours_bf16"] = rel_l2(outputs[name], reference)
    result["variants"] = timings
    result["summary"] = summarize(timings)
    emit(result, args.json)


def summarize(timings: dict) -> dict:
    """The issue's target ratios (each > 1 means ours is faster)."""
    def best(prefix: str) -> tuple[str, float] | None:
        found = [(v["seconds"], k) for k, v in timings.items() if k.startswith(prefix)]
        return (min(found)[1], min(found)[0]) if found else None

    out: dict = {}
    ours_best, comfy_best = best("ours_"), best("comfy_")
    if ours_best and comfy_best:
        out["best_vs_best"] = {"ours": ours_best[0], "comfy": comfy_best[0], "speedup": comfy_best[1] / ours_best[1],
                               "target": 1.25}
    if "comfy_bf16_sdpa" in timings:
        base = timings["comfy_bf16_sdpa"]["seconds"]
        ours = ("ours_bf16_sdpa", "ours_bf16_sdpa_compiled")
        out["bf16_sdpa_vs_comfy"] = {k: base / timings[k]["seconds"] for k in ours if k in timings}
        out["bf16_sdpa_vs_comfy"]["target"] = 1.15
    for name, entry in timings.items():
        twin = name.replace("_fp8_", "_bf16_")
        if name.startswith("ours_fp8_") and "profile" in entry and entry["profile"] and twin in timings:
            bf16, fp8 = timings[twin]["profile"]["seconds"], entry["profile"]["seconds"]
            out.setdefault("fp8_matmul_speedup", {})[name] = {
                "matmul_only": bf16["matmul"] / max(fp8["matmul"], 1e-12),
                "matmul_plus_quant": bf16["matmul"] / max(fp8["matmul"] + fp8["fp8_quant"], 1e-12),
                "target": 1.5,
            }
    return out


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
