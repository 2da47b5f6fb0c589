"""fp8 compute with rowwise activation scales and per-channel weight scales (`wan_core.dit.fp8`): the quantization
and the matmul it stands for, computed on the CPU against float32; the fused CUDA kernels are in test_gpu.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wan_core.dit.fp8 import FP8, FP8_MAX, Fp8Rows, quantize_rows, quantize_weight
from wan_core.dit.model import FP8Linear


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _activations(tokens: int = 256, dim: int = 512) -> torch.Tensor:
    """Normed activations with a few large channels and tokens, as DiT activations have."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, dim, generator=gen)
    x[:, :4] *= 20
    x[:8] *= 10
    return x


def test_rows_scale_is_the_row_abs_max_over_448():
    x = _activations()
    rows = quantize_rows(x.bfloat16())
    assert rows.data.dtype == FP8 and rows.scale.shape == (256, 1) and rows.dtype == torch.bfloat16
    torch.testing.assert_close(rows.scale, x.bfloat16().float().abs().amax(1, keepdim=True) / FP8_MAX)
    assert rows.data.float().abs().amax(1).eq(FP8_MAX).all()  # each row uses the whole e4m3 range
    # e4m3 keeps 3 mantissa bits: each value within 1/16 relative (plus the subnormal step near zero)
    error = (rows.dequantize().float() - x.bfloat16().float()).abs()
    assert (error <= x.abs() / 16 + rows.scale * 2**-9).all()


def test_rowwise_matmul_error_against_float32():
    """The stated error: rowwise activations and per-channel weights, 4% relative L2 at most (3.3% here, from e4m3's
    3 mantissa bits), no worse than per-tensor activation scaling (the previous FP8Linear, 3.8%)."""
    x = _activations()
    w = torch.randn(384, 512, generator=torch.Generator().manual_seed(1)) / 512**0.5
    w[:3] *= 8
    want = x @ w.t()
    rows = quantize_rows(x)
    wq, w_scale = quantize_weight(w)
    got = (rows.data.float() * rows.scale) @ (wq.float() * w_scale[:, None]).t()  # what _scaled_mm computes
    rowwise = _rel(got, want)
    tensor_scale = x.abs().amax() / FP8_MAX
    per_tensor = ((x / tensor_scale).to(FP8).float() * tensor_scale) @ (wq.float() * w_scale[:, None]).t()
    small = slice(8, None)  # the ordinary tokens
    assert rowwise < 0.04
    assert _rel(got[small], want[small]) < 0.04
    assert _rel(per_tensor[small], want[small]) > _rel(got[small], want[small])


def test_fp8_linear_without_scaled_mm_uses_the_per_channel_scales():
    w = torch.randn(32, 48)
    layer = FP8Linear(48, 32)
    layer.weight.data, layer.weight_scale = quantize_weight(w)
    layer.bias.data = torch.randn(32)
    x = torch.randn(2, 5, 48)
    want = F.linear(x, layer.weight.float() * layer.weight_scale[:, None], layer.bias)
    torch.testing.assert_close(layer(x), want)
    assert _rel(layer(x), F.linear(x, w, layer.bias)) < 0.04
    rows = quantize_rows(x)
    assert isinstance(rows, Fp8Rows)
    dequantized = layer.weight.float() * layer.weight_scale[:, None]
    torch.testing.assert_close(layer(rows), F.linear(rows.dequantize(), dequantized, layer.bias))


def cpu_rowwise_scaled_mm() -> bool:
    """Whether this torch's CPU `_scaled_mm` takes rowwise scales (2.13 does; older CPU builds are per-tensor)."""
    a = torch.ones(16, 16).to(torch.float8_e4m3fn)
    try:
        torch._scaled_mm(a, a.t(), scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16), out_dtype=torch.bfloat16)
    except RuntimeError:
        return False
    return True


def fp8_tiny_dit(monkeypatch):
    """The tiny DiT in bf16 with fp8 block Linears, the rowwise `_scaled_mm` path enabled on the CPU (torch's CPU
    `_scaled_mm` takes rowwise scales; on CUDA the GPU decides), and its float32 twin."""
    from wan_core.configs import DIT_CONFIGS
    from wan_core.dit import fp8
    from wan_core.dit.model import WanDiT, init_random_

    if not cpu_rowwise_scaled_mm():
        pytest.skip("this torch's CPU _scaled_mm takes only per-tensor scales (the GPU path is in test_gpu.py)")
    monkeypatch.setattr(fp8, "rowwise_supported", lambda device: True)
    reference = init_random_(WanDiT(DIT_CONFIGS["tiny-t2v"]), torch.Generator().manual_seed(0)).eval()
    model = WanDiT(DIT_CONFIGS["tiny-t2v"]).eval()
    model.load_state_dict(reference.state_dict())
    return fp8.to_fp8_compute(model.bfloat16()), reference


def test_fp8_dit_forward_within_tolerance_of_float32(monkeypatch):
    from wan_core.dit import fp8

    model, reference = fp8_tiny_dit(monkeypatch)
    calls = []
    real = fp8.rowwise_linear
    monkeypatch.setattr(fp8, "rowwise_linear", lambda x, *a: calls.append(isinstance(x, Fp8Rows)) or real(x, *a))
    x, t = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(2)), torch.tensor([600.0])
    context = [torch.randn(7, 64, generator=torch.Generator().manual_seed(3))]
    with torch.no_grad():
        want = reference(x, t, context)
        got = model(x, t, [context[0].bfloat16()])
        bf16 = reference.bfloat16()(x, t, [context[0].bfloat16()])
    assert len(calls) == 2 * 10  # every block Linear ran as a rowwise fp8 matmul
    assert sum(calls) == 2 * 6  # q, k, v, cross q, ffn.0 got their rows from the norm, ffn.2 from the GELU pass
    assert _rel(bf16, want) < 0.01  # 0.35% measured
    assert _rel(got, want) < 0.04  # stated: fp8 compute within 4% of float32 on the tiny random DiT (2.0% measured)
