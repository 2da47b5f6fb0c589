"""An A14B-shaped fp8 expert (random weights, 14.9 GB) parked on the CPU and loaded back onto the GPU: torch's
`module.to` against the pack's `move_weights` (copies through two pinned stages, `wan_core/host_copy.py`), in one
process, order alternated each round. These are the copies ComfyUI's memory manager and `--offload_model` make when
an expert leaves or rejoins the GPU, and the ones a LoRA's originals take. Prints one JSON object (seconds, GB/s).

    python bench/weight_moves.py --json weight_moves.json
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dit_shape import add_shape_args, shape_config  # noqa: E402
from dit_step import build_ours  # noqa: E402
from report import emit  # noqa: E402

from wan_core.dit.fp8 import to_fp8_compute  # noqa: E402
from wan_core.mapped_weights import move_weights  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(p)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", default="")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("weight_moves.py measures copies between a CUDA GPU and the CPU: run it on a GPU machine")
    model = to_fp8_compute(build_ours(shape_config(args), torch.device("cuda"), torch.bfloat16))
    gigabytes = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e9
    ways = {"module.to": lambda device: model.to(device), "move_weights": lambda device: move_weights(model, device)}
    times: dict[str, dict[str, list[float]]] = {way: {"to_cpu": [], "to_gpu": []} for way in ways}
    for round_ in range(args.rounds):
        for way in list(ways) if round_ % 2 == 0 else list(ways)[::-1]:
            for direction, device in (("to_cpu", "cpu"), ("to_gpu", "cuda")):
                torch.cuda.synchronize()
                start = time.perf_counter()
                ways[way](device)
                torch.cuda.synchronize()
                times[way][direction].append(time.perf_counter() - start)
    emit({
        "device": torch.cuda.get_device_name(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "weights_gb": round(gigabytes, 2),
        "seconds": {way: {d: [round(s, 3) for s in runs] for d, runs in t.items()} for way, t in times.items()},
        "median_gb_per_s": {way: {d: round(gigabytes / statistics.median(runs), 2) for d, runs in t.items()}
                            for way, t in times.items()},
    }, args.json)


if __name__ == "__main__":
    main()
