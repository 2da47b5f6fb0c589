"""Where a forward's GPU time goes: matmuls, attention, fp8 activation quantization, everything else, from the
kernel names of one profiled call (CUDA; on the CPU the split is empty)."""

from __future__ import annotations

from collections.abc import Callable

import torch

# SageAttention's own q/k quantization kernels (int8, mean/scale, transpose-pad) count as attention
ATTENTION = ("fmha", "flash", "attn", "attention", "sdpa", "sage", "int8", "meanscale", "transposepad")
MATMUL = ("gemm", "nvjet", "xmma", "cutlass", "scaled_mm", "cublas", "matmul", "sm90_", "sm89_")


TOP_KERNELS = 16


def kind(name: str) -> str:
    low = name.lower()
    if any(k in low for k in ATTENTION):
        return "attention"
    if "quantize_rows" in low:  # our one-pass fp8 quantization (the norm kernels that write fp8 count as other)
        return "fp8_quant"
    if any(k in low for k in MATMUL):
        return "matmul"
    return "other"


def profile_split(fn: Callable[[], object], device: torch.device) -> dict:
    """Seconds of GPU kernel time per kind over one call of `fn`, their shares, and the top kernels (seconds and
    launches)."""
    if device.type != "cuda":
        return {}
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    seconds: dict[str, float] = {"matmul": 0.0, "attention": 0.0, "fp8_quant": 0.0, "other": 0.0}
    kernels = []
    for event in prof.key_averages():
        if event.device_type != DeviceType.CUDA or event.self_device_time_total <= 0:
            continue
        sec = event.self_device_time_total / 1e6
        seconds[kind(event.key)] += sec
        kernels.append((sec, event.key[:90], event.count))
    total = sum(seconds.values()) or 1.0
    return {
        "seconds": seconds,
        "share": {k: v / total for k, v in seconds.items()},
        "top_kernels": [{"seconds": s, "calls": c, "name": n, "kind": kind(n)}
                        for s, n, c in sorted(kernels, reverse=True)[:TOP_KERNELS]],
    }
