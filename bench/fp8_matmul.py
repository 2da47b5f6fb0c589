"""fp8 matmul variants at the DiT's Linear shapes: which `torch._scaled_mm` call pays on this GPU.

Per shape (M tokens x K in -> N out; the A14B block's q/k/v/o, the fused q|k|v, the two FFN Linears), in one process,
order rotated each round: bf16 `F.linear`; `_scaled_mm` with per-row activation and per-channel weight scales (what
`wan_core.dit.fp8` runs); the same with `use_fast_accum`; per-tensor scales (ComfyUI native's call); per-tensor with
fast accumulation; and unit per-tensor scales with the row and channel scales applied after the matmul in one
elementwise pass (`tensorwise + epilogue`). Seconds are medians of `--runs` rounds; TFLOP/s = 2 M K N / s; the error
is the relative L2 to a float32 matmul of the dequantized fp8 operands (so it measures the kernel's accumulation and
output rounding, not the quantization, which all fp8 variants share) and, for bf16, to float32 of the bf16 operands.

    python bench/fp8_matmul.py --json fp8_matmul.json
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from report import cuda_seconds, emit  # noqa: E402

from wan_core.dit import fp8  # noqa: E402

SHAPES = {  # name: (K, N)
    "q/k/v/o 5120->5120": (5120, 5120),
    "q|k|v fused 5120->15360": (5120, 15360),
    "ffn.0 5120->13824": (5120, 13824),
    "ffn.2 13824->5120": (13824, 5120),
}


def variants(x: torch.Tensor, w: torch.Tensor) -> tuple[dict[str, Callable[[], torch.Tensor]], tuple]:
    """The timed calls, and the fp8 operands `(a, row_scale, wq, col_scale)` they share."""
    rows = fp8.quantize_rows(x)
    wq, wscale = fp8.quantize_weight(w)
    a, b = rows.data, wq.t()
    row_scale, col_scale = rows.scale.reshape(-1, 1), wscale.reshape(1, -1).contiguous()
    one = torch.ones((), device=x.device)
    tensor_a = (rows.scale.amax() * 1.0).reshape(())
    a_tensor = (x.float() / tensor_a).to(fp8.FP8)

    def rowwise(fast: bool) -> Callable[[], torch.Tensor]:
        return lambda: torch._scaled_mm(
            a, b, scale_a=row_scale, scale_b=col_scale, out_dtype=torch.bfloat16, use_fast_accum=fast
        )

    def tensorwise(fast: bool) -> Callable[[], torch.Tensor]:
        return lambda: torch._scaled_mm(
            a_tensor,
            b,
            scale_a=tensor_a,
            scale_b=col_scale.amax().reshape(()),
            out_dtype=torch.bfloat16,
            use_fast_accum=fast,
        )

    def tensorwise_epilogue() -> torch.Tensor:
        out = torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16, use_fast_accum=True)
        return out.mul_(row_scale).mul_(col_scale)

    return {
        "bf16": lambda: F.linear(x, w),
        "rowwise": rowwise(False),
        "rowwise fast_accum": rowwise(True),
        "tensorwise": tensorwise(False),
        "tensorwise fast_accum": tensorwise(True),
        "tensorwise fast_accum + epilogue": tensorwise_epilogue,
    }, (a, row_scale, wq, col_scale)


def measure(m: int, k: int, n: int, runs: int, gen: torch.Generator) -> dict:
    x = torch.randn(m, k, device="cuda", generator=gen, dtype=torch.bfloat16)
    w = (torch.randn(n, k, device="cuda", generator=gen) / k**0.5).to(torch.bfloat16)
    fns, (a, row_scale, wq, col_scale) = variants(x, w)
    reference_fp8 = (a[:4096].float() * row_scale[:4096]) @ (wq.float() * col_scale.reshape(-1, 1)).t()
    reference_bf16 = x[:4096].float() @ w.float().t()
    errors = {}
    for name, fn in fns.items():
        out = fn()[:4096].float()
        ref = reference_bf16 if name == "bf16" else reference_fp8
        if name.startswith("tensorwise") and "epilogue" not in name:
            ref = reference_bf16  # its own activation quantization differs from the rowwise one
        errors[name] = float((out - ref).norm() / ref.norm())
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for round_ in range(runs):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            times[name].append(cuda_seconds(fns[name], 5))
    flops = 2 * m * k * n
    return {
        name: {
            "ms": round(statistics.median(ts) * 1e3, 3),
            "tflops": round(flops / statistics.median(ts) / 1e12, 1),
            "rel_l2": round(errors[name], 5),
        }
        for name, ts in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="32760,75600", help="M values (480p and 720p 81 frames)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    gen = torch.Generator("cuda").manual_seed(0)
    results = {}
    for m in (int(v) for v in args.tokens.split(",")):
        for name, (k, n) in SHAPES.items():
            results[f"M={m} {name}"] = measure(m, k, n, args.runs, gen)
            torch.cuda.empty_cache()
    emit(
        {
            "bench": "fp8_matmul",
            "device": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "date": datetime.date.today().isoformat(),
            "results": results,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
