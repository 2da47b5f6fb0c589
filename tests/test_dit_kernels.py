"""The fused Triton kernels of the DiT against their PyTorch definitions (Triton's CPU interpreter; skipped
where triton is not installed). On CUDA the same kernels run compiled."""

from __future__ import annotations

import textwrap

import pytest

from tests.triton_interpreter import assert_runs_in_interpreter

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

    # a pending residual made in the norm's pass: `x += y * gate` written back into x, the norm of the updated x
    y = torch.randn(B, L, D)
    scale, shift, _ = cases["per-sample"]
    for name, gate in {"per-sample": torch.randn(B, 1, D), "per-token": torch.randn(B, L, D), "none": None}.items():
        stream = x.clone()
        updated = x + (y if gate is None else y * gate)
        ref = F.layer_norm(updated, (D,), eps=1e-6) * (1 + scale) + shift
        out = kernels.modulated_layer_norm(stream, scale, shift, 1e-6, torch.float32,
                                           residual=kernels.Residual(y, gate))
        assert (stream - updated).abs().max() < 1e-5, name
        assert (out - ref).abs().max() < 1e-4, name

    # a whole DiT without autograd (each residual made by the next norm in its kernel, the FFN's by the next block's
    # or the head's) against the same DiT with
    # autograd on PyTorch ops alone (each residual made on its own, out of place)
    from wan_core.configs import DIT_CONFIGS
    from wan_core.dit.model import WanDiT, init_random_
    model = init_random_(WanDiT(DIT_CONFIGS["tiny-t2v"]), torch.Generator().manual_seed(0)).eval()
    inputs = (torch.randn(1, 16, 2, 4, 4), torch.tensor([600.0]), [torch.randn(7, 64)])
    with torch.no_grad():
        fused = model(*inputs)
    kernels.ENABLED = False
    plain = model(*inputs).detach()
    assert ((fused - plain).norm() / plain.norm()) < 1e-5, ((fused - plain).norm() / plain.norm())
    print("ok")
    """
)


def test_fused_kernels_match_pytorch():
    assert_runs_in_interpreter(SCRIPT)
