"""One A14B-shape video on 1 and N GPUs: seconds per denoising step (cond + uncond forward) of the DiT with sequence
parallelism (Ulysses, ring attention, or both compared) against one GPU, random weights, 480p and 720p 81 frames.
Prints one JSON object (rank 0).

It starts `torchrun --standalone --nproc_per_node=N` on itself. Inside, every rank builds the same random bf16 DiT
(dim 5120, 40 layers, 40 heads); for each size the one-GPU step (rank 0 alone, the others wait) and the N-GPU step
of each mode (all ranks) alternate in the same process, the order reversed every run, after one warm-up each.
Modes: `ulysses` (`UlyssesAttention` around the chosen backend), `ring` (`RingAttention`, `--ulysses_size`
N / ring_size x `--ring_size`, default ring_size N: pure ring; its blocks run PyTorch's SDPA flash kernel whatever
`--attention` says). `rel_diff_to_1gpu` is the relative difference of the N-GPU flow prediction to the one-GPU one
(bf16 rounding only).

    python bench/sequence_parallel.py --gpus 2                                  # two H100: about 4 minutes
    python bench/sequence_parallel.py --gpus 2 --modes ulysses,ring             # ring vs Ulysses: about 6 minutes
    python bench/sequence_parallel.py --gpus 2 --layers 2 --sizes 480p          # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wan_core.configs import WanDiTConfig  # noqa: E402
from wan_core.dit.attention import get_backend  # noqa: E402
from wan_core.dit.model import WanDiT, init_random_, keeps_fp32  # noqa: E402
from wan_core.parallel.ring import RingAttention  # noqa: E402
from wan_core.parallel.ulysses import UlyssesAttention  # noqa: E402

LATENTS = {"480p": (21, 60, 104), "720p": (21, 90, 160)}  # 81 frames at 832x480 and 1280x720 (VAE stride 4, 8, 8)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--sizes", default="480p,720p")
    p.add_argument("--layers", type=int, default=40)
    p.add_argument("--runs", type=int, default=2, help="timed steps per setting (alternating 1 GPU / N GPUs)")
    p.add_argument("--attention", default="auto", help="the backend inside the Ulysses wrapper")
    p.add_argument("--modes", default="ulysses", help="comma list of ulysses, ring: the N-GPU settings timed")
    p.add_argument("--ring_size", type=int, default=0, help="ring mode's ring degree (0: --gpus, pure ring)")
    p.add_argument("--text-len", type=int, default=512)
    p.add_argument("--json", default="", help="also write the JSON here")
    return p.parse_args()


def build_model(layers: int, device: torch.device) -> WanDiT:
    config = WanDiTConfig(model_type="t2v", dim=5120, ffn_dim=13824, num_heads=40, num_layers=layers, in_dim=16,
                          out_dim=16)
    with torch.device("meta"):
        model = WanDiT(config)
    for name, param in model.named_parameters():
        if not keeps_fp32(name):
            param.data = param.data.to(torch.bfloat16)
    model.to_empty(device=device)
    return init_random_(model, torch.Generator(device).manual_seed(0)).eval()


def timed_step(model: WanDiT, inputs: tuple, attention: object, device: torch.device) -> tuple[float, torch.Tensor]:
    """Seconds of one CFG step (two forwards) and its cond prediction."""
    x, t, cond, uncond = inputs
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x, t, cond, attention=attention)
        model(x, t, uncond, attention=attention)
    torch.cuda.synchronize(device)
    return time.perf_counter() - start, out.float()


def rank_main(args: argparse.Namespace) -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", device_id=device)
    model = build_model(args.layers, device)
    local = get_backend(args.attention, device)
    ring_size = args.ring_size or world
    parallel = {"ulysses": lambda: UlyssesAttention(local),
                "ring": lambda: RingAttention(local, world // ring_size, ring_size)}
    backends = {mode: parallel[mode]() for mode in args.modes.split(",")}
    results = {}
    for size in args.sizes.split(","):
        generator = torch.Generator(device).manual_seed(1)
        x = torch.randn(1, 16, *LATENTS[size], device=device, generator=generator)
        text = [torch.randn(args.text_len, 4096, device=device, generator=generator) for _ in range(2)]
        inputs = (x, torch.tensor([900.0], device=device), text[:1], text[1:])
        order = ["one", *backends]
        times = {which: [] for which in order}
        outputs = {}
        for run in range(args.runs + 1):  # run 0 warms up
            for which in order if run % 2 else order[::-1]:
                if which == "one" and rank != 0:
                    dist.barrier()
                    continue
                attention = local if which == "one" else backends[which]
                seconds, outputs[which] = timed_step(model, inputs, attention, device)
                if which == "one":
                    dist.barrier()
                if run:
                    times[which].append(seconds)
        if rank == 0:
            one = statistics.median(times["one"])
            results[size] = {
                "tokens": LATENTS[size][0] * LATENTS[size][1] * LATENTS[size][2] // 4,
                "s_per_step_1gpu": round(one, 3), "runs_1gpu": [round(s, 3) for s in times["one"]],
            }  # fmt: skip
            for mode, backend in backends.items():
                many = statistics.median(times[mode])
                diff = ((outputs[mode] - outputs["one"]).norm() / outputs["one"].norm()).item()
                results[size][mode] = {
                    "attention": backend.name, f"s_per_step_{world}gpu": round(many, 3),
                    "speedup": round(one / many, 3), "efficiency": round(one / many / world, 3),
                    "rel_diff_to_1gpu": diff, f"runs_{world}gpu": [round(s, 3) for s in times[mode]],
                }  # fmt: skip
        del x, text, inputs, outputs
        torch.cuda.empty_cache()
    if rank == 0:
        report = {
            "bench": "sequence_parallel", "gpus": world, "gpu": torch.cuda.get_device_name(device),
            "layers": args.layers, "attention": local.name, "torch": torch.__version__,
            "step": "cond + uncond forward, bf16 autocast, batch 1", "results": results,
        }  # fmt: skip
        text = json.dumps(report, indent=2)
        print(text, flush=True)
        if args.json:
            Path(args.json).write_text(text)
    dist.destroy_process_group()


def main() -> None:
    args = parse_args()
    if "RANK" in os.environ:
        rank_main(args)
        return
    if torch.cuda.device_count() < args.gpus:
        sys.exit(f"--gpus {args.gpus}: this machine has {torch.cuda.device_count()} GPU(s).")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.gpus}",
               __file__, *sys.argv[1:]]
    sys.exit(subprocess.call(command))


if __name__ == "__main__":
    main()
