"""Our 8-bit Triton attention (`wan_core.dit.attention8`) in Triton's CPU interpreter: the quantized inputs against
plain PyTorch, and the attention kernel on inputs whose answer is known, through pointers and through Hopper's TMA
descriptors (on a GPU, `tests/test_gpu.py` compares it with an emulation of the algorithm and with SageAttention).

The interpreter truncates float-to-fp8 conversions where CUDA rounds to nearest, so the softmax weights it feeds the
fp8 product are up to one e4m3 step low: the random-input check allows 0.1 relative L2 against float32 attention
(0.068 here; 0.21 when the partial key block is not masked), and the exact checks use weights that the conversion
keeps exactly, up to two interpreter artefacts: the bf16 output is truncated too (one bf16 step, 2**-7 of
the value), and weights below e4m3's smallest subnormal become small subnormals instead of 0 (5e-4 here, against 2e-3
allowed; a wrong key's value is 0.5 or more away)."""

from __future__ import annotations

import textwrap

import pytest

from tests.triton_interpreter import assert_runs_in_interpreter

pytest.importorskip("triton")

SCRIPT = textwrap.dedent(
    """
    import math, torch
    import torch.nn.functional as F
    from wan_core.dit import attention8 as a8

    def rounded_int8(x, scale):
        y = x / scale
        return (y + 0.5 * torch.where(y >= 0, 1.0, -1.0)).trunc().to(torch.int8)

    torch.manual_seed(0)
    B, H, D = 2, 3, 64

    # q: one int8 scale per row, times the softmax scale in log2 units
    q = (torch.randn(B, 150, H, D) * 2).bfloat16()
    got, scale = a8.quantize_q(q, 0.125)
    want_scale = q.float().abs().amax(dim=-1, keepdim=True) / 127 + 1e-7
    assert torch.equal(got, rounded_int8(q.float(), want_scale)), "q int8"
    assert torch.allclose(scale, (want_scale[..., 0] * 0.125 * a8.LOG2E).transpose(1, 2), rtol=1e-6, atol=0)

    # k: the mean over tokens subtracted, one scale per block of 128 keys (the last one partial)
    k = (torch.randn(B, 300, H, D) + 3).bfloat16()
    got, scale = a8.quantize_k(k)
    centred = k.float() - k.float().mean(dim=1, keepdim=True)
    padded = torch.zeros(B, 384, H, D)
    padded[:, :300] = centred
    want_scale = padded.view(B, 3, 128, H, D).abs().amax(dim=(2, 4)) / 127 + 1e-7  # [B, blocks, H]
    assert torch.allclose(scale, want_scale.transpose(1, 2), rtol=1e-5, atol=0), "k scales"
    want = rounded_int8(padded.view(B, 3, 128, H, D), scale.transpose(1, 2)[:, :, None, :, None])
    assert (got.int() - want.view(B, 384, H, D)[:, :300].int()).abs().max() <= 1, "k int8"

    # k's mean over tokens: float64 sums (exact for bf16 and fp16), so a head's mean does not depend on the other heads
    # (on a GPU, torch's float32 mean does: a video split over GPUs by heads got other int8 keys)
    for dtype in (torch.bfloat16, torch.float16):
        wide = (torch.randn(B, 700, 5, D) * 4 + 1).to(dtype)  # 700 tokens: 2 full blocks of 256 rows and a partial one
        mean = a8.token_mean(wide)
        assert mean.dtype == torch.float32 and torch.equal(mean, wide.double().mean(dim=1).float()), "k mean"
        assert torch.equal(a8.token_mean(wide[:, :, 1:3].contiguous()), mean[:, 1:3]), "k mean of a head slice"

    # v: multiples of 0.5 with |max| 3.5 per channel, exact in e4m3 once scaled by 448 / 3.5; transposed, padded
    v = torch.randint(-7, 8, (B, 300, H, D)) * 0.5
    v[:, 0] = 3.5
    v = v[:, torch.randperm(300)].bfloat16()
    got, scale = a8.quantize_v(v)
    assert got.shape == (B, H, D, 384) and got.dtype == torch.float8_e4m3fn
    assert torch.equal(got[..., :300].float(), (v.float() * 128).permute(0, 2, 3, 1)), "v fp8"
    assert not got[..., 300:].float().any(), "v padding"
    assert torch.equal(scale, torch.full((B, H, D), 3.5 / 448)), "v scales"

    # one key dominates each query: its weight is exactly 448 in fp8 and every other weight rounds to 0, so the
    # output is that key's value; targets in later blocks make the earlier blocks' sums be rescaled away
    keys = torch.randn(B, 300, H, D)
    targets = torch.randint(0, 300, (B, 70, H))
    qd = 16 * torch.gather(keys, 1, targets[..., None].expand(B, 70, H, D))
    out = a8.attention(qd.bfloat16(), keys.bfloat16(), v)
    want = torch.gather(v.float(), 1, targets[..., None].expand(B, 70, H, D))
    assert ((out.float() - want).abs() <= want.abs() * 2**-7 + 2e-3).all(), (out.float() - want).abs().max()
    # Hopper's path, k and v through TMA descriptors over the whole tensors: the same numbers
    assert torch.equal(a8.attention(qd.bfloat16(), keys.bfloat16(), v, tma=True), out), "TMA path"

    # random inputs, three key blocks with a partial one, a head offset in k's mean: close to float32 attention
    kr = (torch.randn(B, 300, H, D) + 2 * torch.randn(1, 1, H, D)).bfloat16()
    qr = (torch.randn(B, 70, H, D) * 0.5).bfloat16()  # scores of a few units: no key dominates
    out = a8.attention(qr, kr, v)
    ref = F.scaled_dot_product_attention(*(x.transpose(1, 2).float() for x in (qr, kr, v))).transpose(1, 2)
    err = float((out.float() - ref).norm() / ref.norm())
    assert err < 0.1, err
    print("ok")
    """
)


def test_8bit_attention_in_the_interpreter():
    assert_runs_in_interpreter(SCRIPT)


def test_the_attention_kernel_compiles_to_int8_and_fp8_tensor_core_instructions():
    """Ahead of time, without a GPU (Triton's own ptxas): Ada (sm_89) and RTX 50xx (sm_120), where no GPU of this
    project's ran it, get `mma.sync` on int8 and e4m3 operands; Hopper (sm_90) gets the same as `wgmma`."""
    mma = ("mma.sync.aligned.m16n8k32.row.col.satfinite.s32.s8.s8.s32", "mma.sync.aligned.m16n8k32.row.col.f32.e4m3")
    wgmma = ("wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8", "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3")
    for capability, (int8_mma, fp8_mma) in ((89, mma), (90, wgmma), (120, mma)):
        ptx = compile_attention_kernel(capability, tma=False).asm["ptx"]
        assert int8_mma in ptx and fp8_mma in ptx, capability


def test_three_programs_fit_on_a_hopper_sm():
    """The Hopper (TMA) kernel's shared memory lets three programs share an SM (228 KB, 1 KB of it reserved per
    program): that occupancy made 2 pipeline stages 5-12% faster than 3 on an H100 (docs/benchmarks.md)."""
    from wan_core.dit import attention8

    shared = compile_attention_kernel(90, tma=True, stages=attention8.STAGES).metadata.shared
    assert 3 * (shared + 1024) <= 228 * 1024, shared


def compile_attention_kernel(capability: int, tma: bool, stages: int | None = None):
    """The attention kernel compiled ahead of time for `capability` (head dim 128), skipped where this Triton has no
    ahead-of-time compile API or (`tma`) takes no tensor descriptors in it."""
    import triton

    from wan_core.dit import attention8

    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as err:
        pytest.skip(f"this Triton has no ahead-of-time compile API: {err}")
    kernel = attention8._attention_kernel
    pointers = {"Q": "*i8", "QS": "*fp32", "K": "*i8", "KS": "*fp32", "VT": "*fp8e4nv", "VS": "*fp32", "O": "*bf16"}
    if tma:
        pointers.update(K=f"tensordesc<i8[{attention8.BLOCK_N}, 128]>",
                        VT=f"tensordesc<fp8e4nv[128, {attention8.BLOCK_N}]>")
    constants = {"D": 128, "BLOCK_M": attention8.BLOCK_M, "BLOCK_N": attention8.BLOCK_N, "TMA": tma}
    signature = {name: pointers.get(name, "constexpr" if name in constants else "i32") for name in kernel.arg_names}
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(kernel.arg_names.index(k),): v for k, v in constants.items()})
    options = {"num_warps": 4, **({} if stages is None else {"num_stages": stages})}
    try:
        return triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)
    except Exception as err:  # signature strings differ across Triton versions
        if tma and "tensordesc" in str(err):
            pytest.skip(f"this Triton takes no tensor descriptors ahead of time: {err}")
        raise
