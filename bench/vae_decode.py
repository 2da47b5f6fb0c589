"""VAE decode and encode: wan_core's WanVAE against diffusers' AutoencoderKLWan, same random weights, same process.

Real shapes, bf16: the Wan2.1 VAE on a 720x1280 81-frame video (latent [1, 16, 21, 90, 160]) and the Wan2.2 VAE on a
704x1280 121-frame video (latent [1, 48, 31, 44, 80]). Each model runs untiled and in 256x256-pixel tiles (ours with
`tile_size`, diffusers with its own `enable_tiling()`); for each case the peak CUDA memory and the seconds are
recorded, and the outputs are compared. diffusers' model is built over our weight tensors (its key names are a
renaming of ours: `wan_core.vae.keymap`), so the weights are on the GPU once. A case that fails (out of memory, say)
is recorded and the others still run. Prints one JSON object; `--json` also writes it after every case.

    python bench/vae_decode.py                               # GPU, real shapes
    python bench/vae_decode.py --tiny                        # CPU smoke check with the tiny configs
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dit_step import peak_gib, peak_reset, sync  # noqa: E402

from wan_core.vae import build_vae, official_state_dict  # noqa: E402
from wan_core.vae.keymap import diffusers_config, official_to_diffusers  # noqa: E402
from wan_core.vae.model import WanVAE  # noqa: E402

# name -> (config, latent frames/height/width), real and tiny
SHAPES = {
    "wan2.1": {"real": ("wan2.1", (21, 90, 160)), "tiny": ("tiny-wan2.1", (3, 8, 8))},
    "wan2.2": {"real": ("wan2.2", (31, 44, 80)), "tiny": ("tiny-wan2.2", (3, 4, 4))},
}
WARMUP_LATENT = (2, 4, 4)  # a small pass per model and mode before timing: CUDA context, cuDNN, allocator
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vaes", default="wan2.1,wan2.2", help="comma-separated: wan2.1, wan2.2")
    p.add_argument("--ops", default="decode,encode", help="comma-separated: decode, encode")
    p.add_argument("--tiny", action="store_true", help="tiny configs and latents (CPU smoke check)")
    p.add_argument("--device", default=None, help="default: cuda, or cpu with --tiny")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16, or fp32 with --tiny")
    p.add_argument("--tile", type=int, default=None, help="tile size in pixels (default 256, or 32 with --tiny)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per case (after a small-shape warm-up)")
    p.add_argument("--budget-s", type=float, default=0.0, help="start no new case after this many seconds (0: none)")
    p.add_argument("--json", default="", help="also write the JSON here (rewritten after every case)")
    return p.parse_args()


class FallbackLog(logging.Handler):
    """Collects our VAE's warnings: an untiled pass that ran out of memory retries in tiles and only logs it."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def build_pair(config: str, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """Our random `WanVAE` and diffusers' `AutoencoderKLWan` over the same weight tensors."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    with device:
        ours = build_vae(config)
    ours = ours.to(dtype).requires_grad_(False)
    with torch.device("meta"):
        ref = AutoencoderKLWan(**diffusers_config(ours.config))
    ref.load_state_dict(official_to_diffusers(official_state_dict(ours)), strict=True, assign=True)
    return ours, ref.eval().requires_grad_(False)


def tile_runner(ref, tile: int, tiled: bool) -> None:
    if tiled:
        ref.enable_tiling(tile, tile, tile * 3 // 4, tile * 3 // 4)  # diffusers' defaults: 256, stride 192
    else:
        ref.disable_tiling()


def model_fns(ours: WanVAE, ref, op: str, tile: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Case name -> function of the op's input (normalized latents, or a video in [-1, 1]) giving a float32 result
    comparable across models (decode: video clamped to [-1, 1]; encode: normalized latents)."""
    shape = (1, ours.z_dim, 1, 1, 1)
    mean = ours.latents_mean.view(shape)
    std = ours.latents_std.view(shape)
    dtype = ours.dtype

    def diffusers_case(tiled: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(x: torch.Tensor) -> torch.Tensor:
            tile_runner(ref, tile, tiled)
            with torch.no_grad():
                if op == "decode":  # as our decode: z / (1 / std) + mean, in the weights' dtype
                    return ref.decode((x.float() / (1.0 / std) + mean).to(dtype)).sample.float()
                return (ref.encode(x.to(dtype)).latent_dist.mode().float() - mean) * (1.0 / std)

        return run

    ours_op = ours.decode if op == "decode" else ours.encode
    return {
        "ours": lambda x: ours_op(x),
        "diffusers": diffusers_case(False),
        "ours_tiled": lambda x: ours_op(x, tile_size=(tile, tile)),
        "diffusers_tiled": diffusers_case(True),
    }


def op_input(op: str, z_dim: int, stride: tuple[int, int, int], latent: tuple[int, int, int], device, dtype):
    frames, height, width = latent
    if op == "decode":
        return torch.randn(1, z_dim, frames, height, width, device=device)
    st, ss = stride[0], stride[1]
    return torch.rand(1, 3, (frames - 1) * st + 1, height * ss, width * ss, device=device, dtype=dtype) * 2 - 1


def run_case(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, device: torch.device, repeats: int, log):
    """{'seconds', 'peak_gib'} of `repeats` timed runs, and the last output moved to the CPU (None on failure)."""
    log.messages.clear()
    times, peaks, out = [], [], None
    try:
        for _ in range(repeats):
            out = None
            peak_reset(device)
            sync(device)
            start = time.perf_counter()
            out = fn(x)
            sync(device)
            times.append(time.perf_counter() - start)
            peaks.append(peak_gib(device))
            out = out.cpu()
    except torch.cuda.OutOfMemoryError as error:
        out = None
        result = {"error": f"out of memory: {str(error).splitlines()[0]}", "peak_gib": peak_gib(device)}
    except Exception as error:  # a benchmark records the failure of one case and runs the others
        out = None
        result = {"error": f"{type(error).__name__}: {error}"}
    else:
        result = {"seconds": round(statistics.median(times), 3), "runs_s": [round(t, 3) for t in times]}
        if peaks[0] is not None:
            result["peak_gib"] = round(max(peaks), 3)
    if log.messages:
        result["warnings"] = list(log.messages)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result, out


def max_abs_diff(a: torch.Tensor | None, b: torch.Tensor | None) -> float | None:
    return None if a is None or b is None else (a.float() - b.float()).abs().max().item()


def measure(
    name: str,
    op: str,
    args: argparse.Namespace,
    device: torch.device,
    dtype: torch.dtype,
    *,
    over_budget: Callable[[], bool],
    log: FallbackLog,
    result: dict,
    save: Callable[[], None],
) -> None:
    """Fill `result` with the cases of one VAE and op, calling `save` after each."""
    config, latent = SHAPES[name]["tiny" if args.tiny else "real"]
    ours, ref = build_pair(config, device, dtype)
    weights_gib = sum(p.numel() * p.element_size() for p in ours.parameters()) / 2**30
    fns = model_fns(ours, ref, op, args.tile)
    x = op_input(op, ours.z_dim, ours.stride, latent, device, dtype)
    small = op_input(op, ours.z_dim, ours.stride, WARMUP_LATENT, device, dtype)
    result.update(
        vae=name,
        op=op,
        input_shape=list(x.shape),
        dtype=str(dtype).removeprefix("torch."),
        weights_gib=round(weights_gib, 3),
        tile=args.tile,
        cases={},
    )
    outputs = {}
    for case, fn in fns.items():
        if over_budget():
            result["cases"][case] = {"skipped": "time budget"}
            continue
        fn(small)  # warm-up
        sync(device)
        result["cases"][case], outputs[case] = run_case(fn, x, device, args.repeats, log)
        if outputs[case] is not None:
            result["output_shape"] = list(outputs[case].shape)
        print(f"{name} {op} {case}: {result['cases'][case]}", file=sys.stderr, flush=True)
        save()
    ref_out = outputs.get("diffusers")
    result["max_abs_diff"] = {
        "ours_vs_diffusers": max_abs_diff(outputs.get("ours"), ref_out),
        "ours_tiled_vs_ours": max_abs_diff(outputs.get("ours_tiled"), outputs.get("ours")),
        "diffusers_tiled_vs_diffusers": max_abs_diff(outputs.get("diffusers_tiled"), ref_out),
    }
    if ref_out is not None:
        result["reference_max_abs"] = ref_out.abs().max().item()
        if op == "decode":  # a comparison of clamped values says little: how much of the video lies inside (-1, 1)
            result["reference_inside_fraction"] = round((ref_out.abs() < 1).float().mean().item(), 4)
    del ours, ref, fns, x, small, outputs
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    save()


def main() -> None:
    args = parse_args()
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    dtype = DTYPES[args.dtype or ("fp32" if args.tiny else "bf16")]
    args.tile = args.tile or (32 if args.tiny else 256)
    start = time.perf_counter()

    def over_budget() -> bool:
        return args.budget_s > 0 and time.perf_counter() - start > args.budget_s

    import diffusers

    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "diffusers": diffusers.__version__, "shapes": "tiny" if args.tiny else "real",
        "repeats": args.repeats, "warmup": f"one pass per case at latent {list(WARMUP_LATENT)}", "results": [],
    }  # fmt: skip
    log = FallbackLog()
    logging.getLogger("wan_core.vae.model").addHandler(log)

    def save() -> None:  # after every case, so that a run stopped at its time limit still leaves its figures
        report["total_s"] = round(time.perf_counter() - start, 1)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")

    for op in args.ops.split(","):
        for name in args.vaes.split(","):
            report["results"].append(result := {})
            measure(name.strip(), op.strip(), args, device, dtype, over_budget=over_budget, log=log, result=result,
                    save=save)  # fmt: skip
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
