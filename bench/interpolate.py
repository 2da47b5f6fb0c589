"""RIFE frame interpolation of a Wan clip: 81 frames at 720p (1280x720) doubled to 161, on one GPU.

The IFNet has the rife47.pth/rife49.pth layout (RIFE 4.7-4.9, what ComfyUI users run) with random weights of the
published shapes: the convolutions cost the same as with the real file; the warps gather from wherever the random
flows point, which may differ a little from real motion. Cases, run in the same process in alternating order:
`pairwise` (batch 1: one pair at a time, as ComfyUI-Frame-Interpolation's loop), `batched` (8 pairs per call), and
`tiled` (8 pairs, 512-pixel tiles with 64 overlap: the small-card setting). Each records seconds (frames on the CPU
in and out, as the node sees them) and the peak CUDA memory. `--ffmpeg` adds the no-weights fallback (CPU).

    python bench/interpolate.py --json bench_interpolate.json     # GPU, 81 x 1280x720, fp16
    python bench/interpolate.py --tiny                            # CPU smoke check
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dit_step import peak_gib, peak_reset, sync  # noqa: E402
from report import emit  # noqa: E402

from wan_core.interpolate.ifnet import IFNet, IFNetArch  # noqa: E402
from wan_core.interpolate.rife import rife_interpolate  # noqa: E402

# rife47.pth / rife49.pth (RIFE 4.7-4.9)
RIFE47 = IFNetArch(encoder_names=("0", "1"), encoder_activations=False, encoder_width=16, feature_channels=4,
                   block_widths=(192, 128, 96, 64), carried_channels=0, head_outputs=6)
CASES = {"pairwise": {"batch_size": 1}, "batched": {"batch_size": 8}, "tiled": {"batch_size": 8, "tile_size": 512}}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT")
    p.add_argument("--multiplier", type=int, default=2)
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per case, order alternated between rounds")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp16 on CUDA, fp32 on the CPU")
    p.add_argument("--device", default=None)
    p.add_argument("--ffmpeg", action="store_true", help="also time the ffmpeg minterpolate fallback (CPU)")
    p.add_argument("--tiny", action="store_true", help="9 frames at 96x64 (CPU smoke check)")
    p.add_argument("--json", default="", help="also write the JSON here")
    return p.parse_args()


def random_rife47(seed: int = 0) -> IFNet:
    torch.manual_seed(seed)
    model = IFNet(RIFE47)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.randn_like(param) * (0.02 if name.endswith(("weight", "bias")) else 0.5))
    return model.eval().requires_grad_(False)


def main() -> None:
    args = parse_args()
    if args.tiny:
        args.frames, args.size, args.repeats = 9, "96x64", 1
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    width, height = (int(v) for v in args.size.split("x"))
    frames = torch.rand(args.frames, height, width, 3, generator=torch.Generator().manual_seed(0))
    model = random_rife47()
    cases = [c for c in args.cases.split(",") if c]
    report: dict = {
        "bench": "interpolate", "when": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
        "dtype": str(dtype).removeprefix("torch."), "frames_in": args.frames, "size": f"{width}x{height}",
        "multiplier": args.multiplier, "model": "RIFE 4.7 layout (rife47/rife49), random weights", "cases": {},
    }
    rife_interpolate(model, frames[:2, :64, :64], 2, device=device, dtype=dtype)  # warm-up: context, cuDNN
    for round_index in range(args.repeats):
        for name in cases if round_index % 2 == 0 else reversed(cases):
            peak_reset(device)
            sync(device)
            started = time.perf_counter()
            out = rife_interpolate(model, frames, args.multiplier, device=device, dtype=dtype, **CASES[name])
            sync(device)
            seconds = time.perf_counter() - started
            entry = report["cases"].setdefault(name, {"settings": CASES[name], "seconds": [], "frames_out":
                                                      out.shape[0]})
            entry["seconds"].append(round(seconds, 3))
            entry["peak_gib"] = None if peak_gib(device) is None else round(peak_gib(device), 2)
            entry["frames_per_s"] = round((out.shape[0] - args.frames) / min(entry["seconds"]), 2)
            del out
    if args.ffmpeg:
        from wan_core.interpolate.ffmpeg import ffmpeg_interpolate

        started = time.perf_counter()
        out = ffmpeg_interpolate(frames, args.multiplier)
        report["cases"]["ffmpeg_minterpolate_cpu"] = {"seconds": [round(time.perf_counter() - started, 3)],
                                                      "frames_out": out.shape[0]}
    emit(report, args.json)


if __name__ == "__main__":
    main()
