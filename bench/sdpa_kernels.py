"""PyTorch's own attention kernels at Wan2.2 self-attention shapes: which one `F.scaled_dot_product_attention`
should run (its default on Hopper is FlashAttention-2; cuDNN's fused attention is another built-in choice), with
SageAttention 2 where installed as the outside reference, in the variants its sm_90 entry point takes (`sage` is
its default: per-thread q/k scales, K smoothed; `sage_per_warp`, `sage_unsmoothed`), and our `flash_attn` backend
where a FlashAttention build imports (FA3 from `pip install fa3-fwd` on Hopper), and our own 8-bit Triton kernel
(`int8_triton`, Ada and Hopper).
Prints one JSON object: seconds per call (median of `--runs`, order rotated each round), TFLOP/s
(4 * L^2 * heads * head_dim per call) and the largest difference to an fp32 reference on the first 256 queries.

    python bench/sdpa_kernels.py --json sdpa.json
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from report import cuda_seconds, emit
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KERNELS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}
SAGE_VARIANTS = {
    "sage": {},
    "sage_per_warp": {"qk_quant_gran": "per_warp"},
    "sage_unsmoothed": {"smooth_k": False},
}
# wan_core's FlashAttention backend (the newest FlashAttention that imports) and our own 8-bit Triton kernel
OUR_BACKENDS = ("flash_attn", "int8_triton")
SHAPES = {"480p 81f": 32760, "720p 81f": 75600}


def run_kernel(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`[B, H, L, D]` in, same out."""
    if name in OUR_BACKENDS:
        from wan_core.dit.attention import get_backend

        return get_backend(name, q.device)(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    if name in SAGE_VARIANTS:
        from sageattention import sageattn, sageattn_qk_int8_pv_fp8_cuda_sm90

        if not SAGE_VARIANTS[name]:
            return sageattn(q, k, v, tensor_layout="HND", is_causal=False)
        return sageattn_qk_int8_pv_fp8_cuda_sm90(q, k, v, tensor_layout="HND", is_causal=False,
                                                  pv_accum_dtype="fp32+fp32", **SAGE_VARIANTS[name])
    with sdpa_kernel([KERNELS[name]]):
        return F.scaled_dot_product_attention(q, k, v)


def measure_shape(names: list[str], length: int, args: argparse.Namespace, gen: torch.Generator) -> dict:
    q, k, v = (torch.randn(1, args.heads, length, args.head_dim, device="cuda", generator=gen, dtype=torch.bfloat16)
               for _ in range(3))
    reference = F.scaled_dot_product_attention(q[:, :, :256].float(), k.float(), v.float())
    flops = 4 * length * length * args.heads * args.head_dim
    errors: dict[str, float | str] = {}
    for name in names:
        try:
            out = run_kernel(name, q, k, v)
        except RuntimeError as err:
            errors[name] = f"not run: {str(err).splitlines()[0][:200]}"
            continue
        errors[name] = float((out[:, :, :256].float() - reference).abs().max())
    runnable = [n for n in names if not isinstance(errors[n], str)]
    times: dict[str, list[float]] = {n: [] for n in runnable}
    for round_ in range(args.runs):
        shift = round_ % len(runnable)
        for name in runnable[shift:] + runnable[:shift]:
            times[name].append(cuda_seconds(lambda name=name: run_kernel(name, q, k, v)))
    return {name: {"seconds": statistics.median(times[name]), "tflops": flops / statistics.median(times[name]) / 1e12,
                   "max_abs_err_vs_fp32": errors[name]} if name in runnable else {"error": errors[name]}
            for name in names}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heads", type=int, default=40)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--json", default="")
    args = p.parse_args()
    names = list(KERNELS)
    try:
        import sageattention  # noqa: F401

        names.append("sage")
        if torch.cuda.get_device_capability() == (9, 0):
            names += [n for n in SAGE_VARIANTS if n != "sage"]
    except ImportError:
        pass
    from wan_core.dit.attention import BACKENDS

    names += [n for n in OUR_BACKENDS if BACKENDS[n].available() and BACKENDS[n].runs_on(torch.device("cuda"))]
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "cudnn": torch.backends.cudnn.version(),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), "shapes": {}}
    gen = torch.Generator(device="cuda").manual_seed(0)
    for label, length in SHAPES.items():
        result["shapes"][label] = measure_shape(names, length, args, gen)
    emit(result, args.json)


if __name__ == "__main__":
    main()
