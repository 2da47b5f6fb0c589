"""GGUF dequantization on the GPU: the Triton kernel (`wan_core/io/gguf_triton.py`) against the torch path, per layer
and in a whole GGUF expert forward, in one process, order alternated.

- Per layer: the A14B block Linear shapes (5120x5120, 13824x5120, 5120x13824) in Q8_0, Q4_K, Q5_K and Q6_K, random
  blocks, bf16 output; median milliseconds of `--runs` rounds, and the bytes moved (raw read + bf16 written) per second.
- Forward: one A14B expert at real shape with random `--forward-type` blocks (`low_vram.build_model`), bf16 compute,
  81 frames at `--latent`, one forward per variant per round (the kernel on, then off, order swapped each round).

    python bench/gguf_dequant.py                    # about 2 minutes on an H100
    python bench/gguf_dequant.py --device cpu --tiny  # wiring check (the torch path only)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from low_vram import GGUF_IDS, bench_device, build_model, random_raw_blocks, report_head, time_steps  # noqa: E402
from report import emit  # noqa: E402

from wan_core.configs import DIT_CONFIGS  # noqa: E402
from wan_core.io import gguf_triton  # noqa: E402
from wan_core.io.gguf_dequant import dequantize, raw_shape  # noqa: E402

SHAPES = ((5120, 5120), (13824, 5120), (5120, 13824))
TYPES = ("Q8_0", "Q4_K", "Q5_K", "Q6_K")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _layer_ms(raw: torch.Tensor, qtype: int, shape: tuple[int, int], kernel: bool) -> float:
    gguf_triton._ENABLED = kernel
    dequantize(raw, qtype, shape, torch.bfloat16)
    _sync(raw.device)
    start = time.perf_counter()
    for _ in range(10):
        dequantize(raw, qtype, shape, torch.bfloat16)
    _sync(raw.device)
    return (time.perf_counter() - start) / 10 * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--latent", default="21,60,104")
    p.add_argument("--forward-type", default="Q4_K")
    p.add_argument("--forward-rounds", type=int, default=2)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--json", default="")
    args = p.parse_args()
    device = bench_device(args.device)
    enabled = gguf_triton._ENABLED
    layers = []
    shapes = ((256, 512),) if args.tiny else SHAPES
    for name in TYPES:
        qtype = GGUF_IDS[name]
        for shape in shapes:
            raw = random_raw_blocks(name, shape, device)
            assert raw.shape == raw_shape(qtype, shape)
            times: dict[str, list[float]] = {"torch": [], "triton": []}
            served = enabled and gguf_triton.handles(raw, qtype, torch.bfloat16)
            for run in range(args.runs):
                for kernel in ((False, True) if run % 2 == 0 else (True, False)):
                    if kernel and not served:
                        continue
                    times["triton" if kernel else "torch"].append(_layer_ms(raw, qtype, shape, kernel))
            moved = raw.numel() + shape[0] * shape[1] * 2
            row = {"type": name, "shape": list(shape)}
            for variant, values in times.items():
                if values:
                    ms = statistics.median(values)
                    row[f"{variant}_ms"] = round(ms, 3)
                    row[f"{variant}_gb_per_s"] = round(moved / ms / 1e6, 1)
            layers.append(row)
    forward = {}
    if not args.tiny:
        cfg = DIT_CONFIGS["t2v-A14B"]
        model = build_model(cfg, args.forward_type, device)
        frames, height, width = (int(v) for v in args.latent.split(","))
        gen = torch.Generator(device).manual_seed(0)
        latent = torch.randn(1, cfg.in_dim, frames, height, width, device=device, generator=gen)
        context = torch.randn(cfg.text_len, cfg.text_dim, device=device, generator=gen, dtype=torch.bfloat16)
        times = {"torch": [], "triton": []}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            time_steps(model, latent[:, :, :1, :8, :8].contiguous(), context, 1)
            for run in range(args.forward_rounds):
                for kernel in ((False, True) if run % 2 == 0 else (True, False)):
                    gguf_triton._ENABLED = kernel
                    times["triton" if kernel else "torch"].append(time_steps(model, latent, context, 1) / 2)
        forward = {"type": args.forward_type, "latent": [frames, height, width],
                   **{f"{k}_s": [round(t, 3) for t in v] for k, v in times.items()}}
    gguf_triton._ENABLED = enabled
    emit({**report_head(device), "layers": layers, "forward": forward}, args.json)


if __name__ == "__main__":
    main()
