"""The fused Triton kernels of the DiT against their PyTorch definitions (Triton's CPU interpreter; skipped
where triton is not installed). On CUDA the same kernels run compiled."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("triton")

SCRIPT = textwrap.dedent(
    """
    import torch, torch.nn.functional as F
    from wan_core.dit import kernels
    from wan_core.dit.rope import rope_freqs, apply_rope
    assert kernels.usable(torch.zeros(1))
    torch.manual_seed(0)
    B, L, D, H = 2, 24, 96, 2
    x = torch.randn(B, L, D) * 3 + 1
    cases = {
        "per-sample": (torch.randn(B, 1, D), torch.randn(B, 1, D), True),
        "per-token": (torch.randn(B, L, D), torch.randn(B, L, D), True),
        "affine": (torch.randn(D), torch.randn(D), False),
    }
    for name, (scale, shift, plus_one) in cases.items():
        ref = F.layer_norm(x, (D,), eps=1e-6) * (float(plus_one) + scale) + shift
        out = kernels.modulated_layer_norm(x, scale, shift, 1e-6, torch.float32, plus_one=plus_one)
        assert (out - ref).abs().max() < 1e-5, name
    freqs = rope_freqs(D // H, (2, 3, 4), "cpu")
    w, q = torch.randn(D), torch.randn(B, L, D)
    ref = apply_rope(F.rms_norm(q, (D,), w, 1e-6).view(B, L, H, D // H), freqs).reshape(B, L, D)
    assert (kernels.rms_norm_rope(q, w, 1e-6, freqs, D // H) - ref).abs().max() < 1e-5
    assert (kernels.rms_norm_rope(q, w, 1e-6, None, D // H) - F.rms_norm(q, (D,), w, 1e-6)).abs().max() < 1e-5

    # bf16 stores: float32 math, one rounding on the store, so within one bf16 ulp (2^-7 relative; the interpreter
    # truncates where CUDA rounds to nearest)
    def bf16_close(out, ref):
        assert out.dtype == torch.bfloat16, out.dtype
        assert ((out.float() - ref).abs() <= ref.abs() * 2**-7 + 1e-6).all(), (out.float() - ref).abs().max()
    xb, qb = x.bfloat16(), q.bfloat16()
    scale, shift, _ = cases["per-token"]
    ref = F.layer_norm(xb.float(), (D,), eps=1e-6) * (1 + scale) + shift
    bf16_close(kernels.modulated_layer_norm(xb, scale, shift, 1e-6, torch.bfloat16), ref)
    ref = apply_rope(F.rms_norm(qb.float(), (D,), w, 1e-6).view(B, L, H, D // H), freqs).reshape(B, L, D)
    bf16_close(kernels.rms_norm_rope(qb, w, 1e-6, freqs, D // H), ref)
    print("ok")
    """
)


def test_fused_kernels_match_pytorch():
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
