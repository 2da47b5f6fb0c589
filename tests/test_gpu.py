"""Paths that only exist on a CUDA GPU: fp8 files loaded straight onto the GPU (with `torch._scaled_mm` where the
GPU has fp8 tensor cores) and the whole CLI demo on CUDA with offloading. Skipped on machines without CUDA."""

from __future__ import annotations

import pytest
import torch

from wan_core.configs import DIT_CONFIGS
from wan_core.dit.loader import load_dit
from wan_core.dit.model import WanDiT
from wan_core.io.quant import dequantize, quantize_fp8_scaled
from wan_core.io.writers import write_safetensors

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Wide enough (multiples of 16) for torch._scaled_mm, small enough for a second.
GPU_CONFIG = DIT_CONFIGS["tiny-t2v"].replace(dim=256, ffn_dim=512, num_heads=2, text_dim=64)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize(
    ("options", "tolerance"),
    [({"fp8_weights": False}, 0.02), ({"fp8_weights": None}, 0.02), ({"fp8_compute": True}, 0.1)],
    ids=["dequantized", "as-stored", "fp8-compute"],
)
def test_fp8_scaled_file_onto_cuda(tmp_path, options, tolerance):
    torch.manual_seed(0)
    quantized = quantize_fp8_scaled(WanDiT(GPU_CONFIG).state_dict())
    path = write_safetensors({f"model.diffusion_model.{k}": v for k, v in quantized.items()},
                             tmp_path / "wan2.2_fp8_scaled.safetensors")
    model = load_dit(path, device="cuda", dtype=torch.bfloat16, **options)
    assert all(p.device.type == "cuda" for p in model.parameters())
    reference = WanDiT(GPU_CONFIG)
    reference.load_state_dict(dequantize(quantized, torch.float32))
    reference = reference.cuda()
    x = torch.randn(1, 16, 3, 16, 16, device="cuda")
    t = torch.tensor([700.0], device="cuda")
    context = [torch.randn(20, 64, device="cuda")]
    with torch.no_grad():
        want = reference(x, t, context)
        got = model(x.bfloat16(), t, [c.bfloat16() for c in context])
    assert torch.isfinite(got).all()
    assert _rel(got, want) < tolerance


def test_demo_on_cuda_with_offload_leaves_the_gpu_free(tmp_path, monkeypatch):
    from wan_core.generate import main
    from wan_core.video_io import load_tensor

    monkeypatch.setenv("WAN22_DEMO_DIR", str(tmp_path / "demo"))
    tensor_path = tmp_path / "video.safetensors"
    before = torch.cuda.memory_allocated()
    code = main(["--demo", "--device", "cuda", "--offload_model", "True", "--base_seed", "3",
                 "--save_file", str(tmp_path / "demo.mp4"), "--save_tensor", str(tensor_path)])
    assert code == 0
    video = load_tensor(tensor_path)
    assert video.shape[0] == 3 and torch.isfinite(video).all()
    assert video.abs().max() <= 1.0
    assert torch.cuda.memory_allocated() - before < 64 * 2**20  # the models went back to the CPU


def test_fused_kernel_path_matches_diffusers_on_cuda(tmp_path):
    """Our DiT on CUDA (fused Triton LayerNorm-modulation and RMSNorm+RoPE kernels) against diffusers' model, both
    float32 with TF32 off; then our bf16 run against the same float32 reference."""
    diffusers = pytest.importorskip("diffusers")
    from test_dit_parity import SENSITIVE, SENSITIVE_GRID, TOL, _contexts, _random_diffusers
    from test_dit_parity import _rel as max_rel

    from wan_core.dit import kernels
    from wan_core.runtime import Runtime

    assert kernels.usable(torch.zeros(1, device="cuda")), "the fused kernels do not run here (triton missing?)"
    _random_diffusers(SENSITIVE, seed=7).save_pretrained(tmp_path / "transformer")
    reference = diffusers.WanTransformer3DModel.from_pretrained(tmp_path / "transformer").eval().cuda()
    ours = load_dit(tmp_path / "transformer", device="cuda")
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(1, 16, *SENSITIVE_GRID, generator=gen).cuda()
    items, padded = _contexts(1, SENSITIVE.text_dim, gen)
    t = torch.tensor([500.0], device="cuda")
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            ref = reference(x, t, padded.cuda(), return_dict=False)[0]
            out = ours(x, t, [c.cuda() for c in items])
            with Runtime.create("cuda", compute_dtype=torch.bfloat16).autocast():
                out_bf16 = load_dit(tmp_path / "transformer", device="cuda", dtype=torch.bfloat16)(
                    x, t, [c.cuda().bfloat16() for c in items])
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    assert max_rel(out, ref) < 10 * TOL  # GPU reductions differ in order from the CPU's
    assert _rel(out_bf16.float(), ref) < 0.02  # norm-relative: bf16 keeps 8 bits
