"""Our preparation of SageAttention 2's sm_90 kernel inputs (`wan_core.dit.sage_sm90`) against the layout written
out in plain PyTorch here (Triton's CPU interpreter; on a GPU `tests/test_gpu.py` compares it bit for bit with
SageAttention's own preparation). The interpreter truncates float-to-bf16 and float-to-fp8 conversions where CUDA
rounds to nearest: k is compared within one int8 step and one bf16 rounding of its scales, and v is built from values
whose fp8 images are exact."""

from __future__ import annotations

import textwrap

import pytest

from tests.triton_interpreter import assert_runs_in_interpreter

pytest.importorskip("triton")

SCRIPT = textwrap.dedent(
    """
    import math, torch
    from wan_core.dit import sage_sm90 as s

    def rounded_int8(x, scale):
        y = x / scale
        return (y + 0.5 * torch.where(y >= 0, 1.0, -1.0)).trunc().to(torch.int8)

    def want_q(q):  # rows 16w + 8i + t of a head share scale 8w + t
        B, L, H, D = q.shape
        Lp = math.ceil(L / 64) * 64
        x = torch.zeros(B, Lp, H, D)
        x[:, :L] = q.float()
        groups = x.view(B, Lp // 16, 2, 8, H, D)
        scale = groups.abs().amax(dim=(2, 5)) / 127 + 1e-7
        out = rounded_int8(groups, scale[:, :, None, :, :, None]).view(B, Lp, H, D)[:, :L]
        return out, scale.permute(0, 3, 1, 2).reshape(B, H, -1)

    def want_k(k):  # k - mean; rows 8j + 2t + i of each 128 share scale 4 * block + t
        B, L, H, D = k.shape
        Lp = math.ceil(L / 128) * 128
        x = torch.zeros(B, Lp, H, D)
        x[:, :L] = (k - k.mean(dim=1, keepdim=True)).float()
        groups = x.view(B, Lp // 128, 16, 4, 2, H, D)
        scale = groups.abs().amax(dim=(2, 4, 6)) / 127 + 1e-7
        out = rounded_int8(groups, scale[:, :, None, :, None, :, None]).view(B, Lp, H, D)[:, :L]
        return out, scale.permute(0, 3, 1, 2).reshape(B, H, -1)

    def want_v(v):  # [B, D, H, L padded to 128], tokens of each 16 at positions 0, 1, 8, 9, 2, 3, ...
        B, L, H, D = v.shape
        Lp = math.ceil(L / 128) * 128
        amax = v.float().abs().amax(dim=1)
        x = torch.zeros(B, Lp, H, D)
        x[:, :L] = v.float() * (448 / amax)[:, None]
        order = torch.tensor([0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15])
        x = x[:, (torch.arange(Lp // 16)[:, None] * 16 + order).reshape(-1)]
        return x.permute(0, 3, 2, 1).to(torch.float8_e4m3fn), amax / 448

    torch.manual_seed(0)
    for length, dim in ((200, 64), (128, 128), (77, 64)):
        q = (torch.randn(2, length, 3, dim) * 2).bfloat16()
        got, scale = s.quantize_q(q)
        want, want_scale = want_q(q)
        assert torch.equal(got, want) and torch.equal(scale, want_scale), length

        got, scale = s.quantize_k(q + 3)
        want, want_scale = want_k(q + 3)
        assert ((scale - want_scale).abs() <= want_scale * 2**-7).all(), (scale - want_scale).abs().max()
        assert (got.int() - want.int()).abs().max() <= 1 and (got == want).float().mean() > 0.9, length

        # multiples of 0.5 with |max| 3.5 per channel: times 448 / 3.5 = 128 each is exact in e4m3
        v = torch.randint(-7, 8, (2, length, 3, dim)) * 0.5
        v[:, 0] = 3.5
        v = v[:, torch.randperm(length)].bfloat16()
        got, scale = s.quantize_v(v)
        want, want_scale = want_v(v)
        assert got.dtype == torch.float8_e4m3fn and torch.equal(got.float(), want.float()), length
        assert torch.equal(scale, want_scale), length
    print("ok")
    """
)


def test_sage_inputs_have_the_kernels_layout():
    assert_runs_in_interpreter(SCRIPT)


NORMED_Q_SCRIPT = textwrap.dedent(
    """
    import torch
    from wan_core.dit import kernels, sage_sm90 as s
    from wan_core.dit.rope import rope_freqs

    torch.manual_seed(0)
    for length, heads, dim, grid in ((200, 3, 64, (2, 10, 10)), (128, 2, 128, (2, 8, 8)), (77, 3, 64, (1, 7, 11))):
        x = (torch.randn(2, length, heads * dim) * 3 + torch.linspace(-2, 2, heads * dim)).bfloat16()
        weight = 1 + 0.2 * torch.randn(heads * dim)
        for freqs in (rope_freqs(dim, grid, "cpu"), None):
            got, scale = s.quantize_normed_q(x, weight, 1e-6, freqs, heads)
            q = kernels.rms_norm_rope(x, weight, 1e-6, freqs, dim).unflatten(-1, (heads, dim))
            want, want_scale = s.quantize_q(q)
            steps = (got.int() - want.int()).abs()  # the norm's sum may differ in its last bit: one step at most
            assert steps.max() <= 1 and (steps == 0).float().mean() > 0.999, (length, steps.max())
            assert ((scale - want_scale).abs() <= want_scale * 2**-7).all(), length
    print("ok")
    """
)


def test_q_normed_in_its_quantization_pass_is_the_unfused_q_quantized():
    assert_runs_in_interpreter(NORMED_Q_SCRIPT)
