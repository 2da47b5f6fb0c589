"""Whole denoising runs at A14B shape with random weights: the 40-step CFG run and the 4-step CFG-1 run (distilled
LoRA style, boundary at step 2), each with the step cache off and on; the VAE decode of the result timed apart.

Both experts are one random model (one A14B fits beside the activations); the loop still switches experts at the
boundary (and the cache resets there). For each cache setting: denoising
seconds, skipped forwards, seconds per computed forward, and the latents' relative L2 distance to the uncached run
of the same settings. With random weights EasyCache's decisions follow random-model dynamics; MagCache's follow its
published ratio table and are the same as with real weights. Prints one JSON object.

    python bench/generate.py --fp8 --attention auto                   # GPU, 480p 81 frames
    python bench/generate.py --device cpu --tiny --size 64*64 --frame_num 5 --steps 8   # CPU smoke check
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dit_step import build_ours, peak_gib, peak_reset, sync  # noqa: E402
from profile_split import profile_split  # noqa: E402
from report import emit  # noqa: E402

from wan_core.configs import DIT_CONFIGS  # noqa: E402
from wan_core.dit.fp8 import to_fp8_compute  # noqa: E402
from wan_core.pipeline.denoise import sample_latents  # noqa: E402
from wan_core.pipeline.request import SamplingRequest  # noqa: E402
from wan_core.runtime import Runtime  # noqa: E402
from wan_core.vae import build_vae  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="the tiny DiT and VAE configs (CPU smoke check)")
    p.add_argument("--size", default="832*480", help="width*height")
    p.add_argument("--frame_num", type=int, default=81)
    p.add_argument("--steps", type=int, default=40, help="steps of the CFG run")
    p.add_argument("--attention", default="auto")
    p.add_argument("--fp8", action="store_true", help="fp8 compute (rowwise scales)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--cfg_batch", action="store_true")
    p.add_argument("--cuda_graphs", action="store_true", help="DiT forwards replayed from CUDA graphs")
    p.add_argument("--caches", default="off,easycache,magcache", help="cache settings to run, off first")
    p.add_argument("--cache_threshold", type=float, default=None, help="default: each method's")
    p.add_argument("--skip-few-step", action="store_true", help="leave out the 4-step CFG-1 run")
    p.add_argument("--skip-decode", action="store_true")
    p.add_argument("--profile", action="store_true", help="GPU time split of one forward")
    p.add_argument("--json", default="")
    return p.parse_args()


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    width, height = (int(v) for v in args.size.split("*"))
    cfg = DIT_CONFIGS["tiny-t2v" if args.tiny else "t2v-A14B"]
    runtime = Runtime.create(device, compute_dtype=dtype if device.type == "cuda" else None,
                             attention=args.attention, compile=args.compile, cfg_batch=args.cfg_batch,
                             cuda_graphs=args.cuda_graphs)
    high = build_ours(cfg, device, dtype)
    if args.fp8:
        high = to_fp8_compute(high)
    low = high  # one set of weights for both experts (the loop still switches, and the cache resets, at the boundary)
    result: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "model": "tiny-t2v" if args.tiny else "t2v-A14B (random weights)",
        "size": [width, height, args.frame_num],
        "attention": runtime.attention.name, "fp8": args.fp8, "compile": args.compile, "cfg_batch": args.cfg_batch,
        "cuda_graphs": args.cuda_graphs, "runs": {},
    }
    gen = torch.Generator(device="cpu").manual_seed(0)
    cond, uncond = torch.randn(512, cfg.text_dim, generator=gen), torch.randn(512, cfg.text_dim, generator=gen)
    cond, uncond = cond.to(device, dtype), uncond.to(device, dtype)

    def denoise(name: str, **request_args) -> torch.Tensor:
        request = SamplingRequest.create("t2v-A14B", width=width, height=height, frame_num=args.frame_num, seed=7,
                                         **request_args)
        infos = []
        peak_reset(device)
        sync(device)
        start = time.perf_counter()
        latents = sample_latents(request, high_noise_model=high, low_noise_model=low, cond=cond, uncond=uncond,
                                 runtime=runtime, progress=infos.append)
        sync(device)
        seconds = time.perf_counter() - start
        forwards = request.steps * (1 if request.guide_scale == (1.0, 1.0) else 2)
        skipped = infos[-1].skipped_forwards
        counts = [0] + [i.skipped_forwards for i in infos]
        result["runs"][name] = {
            "steps": request.steps, "guide_scale": request.guide_scale, "cache": request.cache,
            "cache_threshold": request.cache_threshold, "denoise_seconds": seconds, "forwards": forwards,
            "skipped_forwards": skipped, "seconds_per_computed_forward": seconds / max(forwards - skipped, 1),
            "skipped_steps": [i.step for i, before in zip(infos, counts, strict=False) if i.skipped_forwards > before],
            "peak_gib": peak_gib(device),
        }
        if args.json:  # after every run, so a run cut short by a time limit still leaves its numbers
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return latents

    with torch.no_grad():
        warm = SamplingRequest.create("t2v-A14B", width=width, height=height, frame_num=args.frame_num, steps=1)
        sample_latents(warm, high_noise_model=high, low_noise_model=low, cond=cond, uncond=uncond, runtime=runtime)
    caches = args.caches.split(",")
    plans = [("cfg", {"steps": args.steps})]
    if not args.skip_few_step:
        plans.append(("few_step_cfg1", {"steps": 4, "guide_scale": 1.0, "boundary_step": 2}))
    final = None
    for label, plan in plans:
        base = None
        for cache in caches:
            latents = denoise(f"{label}_{cache}", cache=cache, cache_threshold=args.cache_threshold, **plan)
            if cache == "off":
                base = latents
            elif base is not None:
                result["runs"][f"{label}_{cache}"]["latents_rel_l2_vs_uncached"] = rel_l2(latents, base)
            final = base if base is not None else latents
            gc.collect()
    if args.profile and device.type == "cuda":
        x = torch.randn(1, cfg.in_dim, *SamplingRequest.create("t2v-A14B", width=width, height=height,
                                                                frame_num=args.frame_num).latent_shape[1:],
                        device=device)
        with torch.no_grad(), runtime.autocast():
            result["forward_profile"] = profile_split(
                lambda: high(x, torch.tensor([500.0], device=device), [cond], attention=runtime.attention), device)

    if not args.skip_decode:
        del high, low
        gc.collect()
        with device:
            vae = build_vae("tiny-wan2.1" if args.tiny else "wan2.1")
        vae = vae.to(dtype).requires_grad_(False)
        latents = final[None].to(device)
        vae.decode(latents[:, :, :2])  # warm-up
        peak_reset(device)
        sync(device)
        start = time.perf_counter()
        video = vae.decode(latents)
        sync(device)
        result["vae_decode"] = {"seconds": time.perf_counter() - start, "video_shape": list(video.shape),
                                "peak_gib": peak_gib(device)}
    emit(result, args.json)


if __name__ == "__main__":
    main()
