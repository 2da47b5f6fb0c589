"""Paths that only exist on a CUDA GPU: fp8 files loaded straight onto the GPU (with `torch._scaled_mm` where the
GPU has fp8 tensor cores) and the whole CLI demo on CUDA with offloading. Skipped on machines without CUDA."""

from __future__ import annotations

import copy
import math

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
    assert _rel_to_float32_model(model, dequantize(quantized, torch.float32)) < tolerance


def _rel_to_float32_model(model: WanDiT, state: dict[str, torch.Tensor]) -> float:
    """Relative error of `model` (bf16 inputs, on CUDA) against a float32 model holding `state`."""
    reference = WanDiT(GPU_CONFIG)
    reference.load_state_dict(state)
    reference = reference.cuda()
    x = torch.randn(1, 16, 3, 16, 16, device="cuda")
    t = torch.tensor([700.0], device="cuda")
    context = [torch.randn(20, 64, device="cuda")]
    with torch.no_grad():
        want = reference(x, t, context)
        got = model(x.bfloat16(), t, [c.bfloat16() for c in context])
    assert torch.isfinite(got).all()
    return _rel(got, want)


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


# --- issue 14: rowwise fp8, attention backends, compiled blocks on CUDA -------------------------------------------

def _tiny_pair(fp8_compute: bool = False):
    """The GPU_CONFIG DiT in bf16 (fp8 block Linears with `fp8_compute`) and its float32 twin, on CUDA."""
    from wan_core.dit.fp8 import to_fp8_compute
    from wan_core.dit.model import init_random_

    torch.manual_seed(0)
    reference = init_random_(WanDiT(GPU_CONFIG), torch.Generator().manual_seed(0)).eval().cuda()
    model = WanDiT(GPU_CONFIG).eval()
    model.load_state_dict(reference.state_dict())
    model = model.bfloat16().cuda()
    return (to_fp8_compute(model) if fp8_compute else model), reference


def _inputs():
    gen = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(1, 16, 3, 16, 16, device="cuda", generator=gen)
    return x, torch.tensor([700.0], device="cuda"), [torch.randn(20, 64, device="cuda", generator=gen)]


def _fp8_rows_capable() -> bool:
    from wan_core.dit.fp8 import rowwise_supported

    return rowwise_supported(torch.device("cuda"))


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="fp8 tensor cores (sm_89+)")
def test_fused_fp8_kernels_match_their_pytorch_definition():
    import torch.nn.functional as F

    from wan_core.dit import kernels
    from wan_core.dit.fp8 import FP8_MAX

    torch.manual_seed(0)
    x = torch.randn(2, 300, 5120, device="cuda") * 3 + 1
    scale, shift = torch.randn(2, 1, 5120, device="cuda"), torch.randn(2, 1, 5120, device="cuda")
    want = F.layer_norm(x, (5120,), eps=1e-6) * (1 + scale) + shift
    data, row_scale = kernels.modulated_layer_norm_fp8(x, scale, shift, 1e-6)
    torch.testing.assert_close(row_scale, want.abs().amax(-1, keepdim=True) / FP8_MAX, rtol=1e-5, atol=0)
    error = (data.float() * row_scale - want).abs()
    assert (error <= want.abs() / 16 + row_scale * 2**-9 + 1e-6).all()
    y = want.bfloat16()
    data, row_scale = kernels.quantize_rows(y)
    reference = (y.float() / row_scale).to(data.dtype)
    assert (data.float() == reference.float()).float().mean() > 0.999
    # the FFN's hidden layer: GELU-tanh in the quantizing pass
    data, row_scale = kernels.quantize_rows(y, gelu=True)
    gelu = F.gelu(y.float(), approximate="tanh")
    torch.testing.assert_close(row_scale, gelu.abs().amax(-1, keepdim=True) / FP8_MAX, rtol=1e-5, atol=0)
    assert ((data.float() * row_scale - gelu).abs() <= gelu.abs() / 16 + row_scale * 2**-9 + 1e-6).all()
    # a pending gated residual made in the norm's pass, the float32 stream updated in place
    stream, update, gate = x.clone(), torch.randn_like(y), torch.randn(2, 1, 5120, device="cuda")
    data, row_scale = kernels.modulated_layer_norm_fp8(stream, scale, shift, 1e-6,
                                                      residual=kernels.Residual(update, gate))
    torch.testing.assert_close(stream, x + update.float() * gate)
    want = F.layer_norm(stream, (5120,), eps=1e-6) * (1 + scale) + shift
    torch.testing.assert_close(row_scale, want.abs().amax(-1, keepdim=True) / FP8_MAX, rtol=1e-5, atol=0)


def test_linear_gelu_is_the_ffn_hidden_layer_with_gelu_tanh():
    import torch.nn.functional as F

    from wan_core.dit.model import linear_gelu

    torch.manual_seed(0)
    layer = torch.nn.Linear(512, 1536, device="cuda")
    x = torch.randn(3, 700, 512, device="cuda")
    with torch.no_grad():
        # float32 (no TF32): only the exact GELU-tanh passes; erf GELU differs by up to 5e-4
        torch.testing.assert_close(linear_gelu(layer, x), F.gelu(layer(x), approximate="tanh"), rtol=1e-5,
                                   atol=2e-5)
        want = F.gelu(layer(x), approximate="tanh")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = linear_gelu(layer, x)
        assert got.dtype == torch.bfloat16 and got.shape == (3, 700, 1536)
        # one bf16 rounding of the result (2**-8 relative) on top of the bf16 matmul's
        assert _rel(got, want) < 4e-3
        plain = F.gelu(F.linear(x.bfloat16(), layer.weight.bfloat16(), layer.bias.bfloat16()), approximate="tanh")
        assert _rel(got, want) < _rel(plain, want)  # equal if GELU ran after a rounding matmul
    with torch.enable_grad():  # autograd: the plain path, which has a backward
        assert linear_gelu(layer, x).grad_fn is not None


@pytest.mark.parametrize("fp8_compute", [False, True], ids=["bf16", "fp8-rowwise"])
def test_tiny_dit_on_cuda_within_tolerance_of_float32(fp8_compute):
    if fp8_compute and not _fp8_rows_capable():
        pytest.skip("rowwise fp8 needs sm_89+")
    model, reference = _tiny_pair(fp8_compute)
    x, t, context = _inputs()
    with torch.no_grad():
        want = reference(x, t, context)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = model(x, t, [c.bfloat16() for c in context])
    assert _rel(got, want) < (0.04 if fp8_compute else 0.01)


def _skip_unless_runs(backend: str) -> None:
    from wan_core.dit.attention import BACKENDS

    if not BACKENDS[backend].available():
        pytest.skip(f"{backend} is not installed")
    if not BACKENDS[backend].runs_on(torch.device("cuda")):
        pytest.skip(f"{backend} does not run on this GPU")


@pytest.mark.parametrize("backend", ["flash_attn", "sage", "int8_triton"])
def test_attention_backends_within_tolerance_of_sdpa(backend):
    from wan_core.dit.attention import get_backend

    _skip_unless_runs(backend)
    model, _ = _tiny_pair()
    x, t, context = _inputs()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        want = model(x, t, context, attention=get_backend("sdpa", "cuda"))
        got = model(x, t, context, attention=get_backend(backend, "cuda"))
    assert _rel(got, want) < (0.01 if backend == "flash_attn" else 0.05)  # the others: 8-bit q/k


def test_int8_triton_attention_is_its_algorithm_and_as_close_as_sage():
    from torch.nn.functional import scaled_dot_product_attention

    from wan_core.dit import attention8 as a8
    from wan_core.dit import sage_sm90

    _skip_unless_runs("int8_triton")
    gen = torch.Generator("cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 1000, 4, 128, device="cuda", generator=gen).bfloat16() for _ in range(3))
    k = (k.float() + 2 * torch.randn(1, 1, 4, 128, device="cuda", generator=gen)).bfloat16()

    # one partial key block: the kernel against the algorithm in PyTorch on the same quantized inputs
    length = 100
    q8, q_scale = a8.quantize_q(q, 128**-0.5)
    k8, k_scale = a8.quantize_k(k[:, :length])
    vt, v_scale = a8.quantize_v(v[:, :length])
    scores = torch.einsum("blhd,bmhd->bhlm", q8.float(), k8.float()) * (q_scale * k_scale[..., :1])[..., None]
    weights = torch.exp2(scores - scores.amax(dim=-1, keepdim=True) + math.log2(448))
    acc = torch.einsum("bhlm,bhdm->bhld", weights.to(torch.float8_e4m3fn).float(), vt[..., :length].float())
    want = (acc * v_scale[:, :, None] / weights.sum(dim=-1, keepdim=True)).transpose(1, 2)
    got = a8.attention(q, k[:, :length], v[:, :length])
    assert _rel(got, want) < 3e-3

    # eight blocks: as close to float32 attention as SageAttention's own kernel (where installed)
    reference = scaled_dot_product_attention(*(x.transpose(1, 2).float() for x in (q, k, v))).transpose(1, 2)
    error = _rel(a8.attention(q, k, v), reference)
    assert error < 0.05
    if sage_sm90.supported(q, k, v):
        assert error < 1.1 * _rel(sage_sm90.attention(q, k, v), reference)


def test_int8_triton_gives_a_head_the_same_output_whatever_the_other_heads():
    """A video split over GPUs by heads (Ulysses) must attend as on one GPU. With k's mean over tokens summed by torch
    in float32, whose order depends on the head count, 477-30,247 outputs of 10 heads out of 40 differed (H100)."""
    from wan_core.dit import attention8 as a8

    _skip_unless_runs("int8_triton")
    gen = torch.Generator("cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 32760, 40, 128, device="cuda", generator=gen).bfloat16() for _ in range(3))
    ten = [x[:, :, :10].contiguous() for x in (q, k, v)]
    assert torch.equal(a8.attention(*ten), a8.attention(q, k, v)[:, :, :10])


def test_our_sage_preparation_is_sageattentions_bit_for_bit():
    pytest.importorskip("sageattention")
    from wan_core.dit import sage_sm90

    gen = torch.Generator("cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 1000, 4, 128, device="cuda", generator=gen).bfloat16() * 3 for _ in range(3))
    if not sage_sm90.supported(q, k, v):
        pytest.skip("needs SageAttention 2's sm_90 kernel on a Hopper GPU")
    from sageattention import sageattn
    from sageattention.quant import per_channel_fp8
    from sageattention.triton.quant_per_thread import per_thread_int8

    theirs = per_thread_int8(q, k, k.mean(dim=1, keepdim=True), BLKQ=64, WARPQ=16, BLKK=128, WARPK=128,
                             tensor_layout="NHD")
    ours = (*sage_sm90.quantize_q(q), *sage_sm90.quantize_k(k))
    for name, a, b in zip(("q", "q_scale", "k", "k_scale"), ours, theirs, strict=True):
        assert torch.equal(a, b), name
    padded = torch.cat([v, v.new_zeros(2, 1024 - 1000, 4, 128)], dim=1)  # sageattn pads v to 128 tokens
    v_theirs, scale_theirs, _ = per_channel_fp8(padded, tensor_layout="NHD", smooth_v=False)
    v_ours, scale_ours = sage_sm90.quantize_v(v)
    assert torch.equal(v_ours.view(torch.uint8), v_theirs.view(torch.uint8)) and torch.equal(scale_ours, scale_theirs)
    assert torch.equal(sage_sm90.attention(q, k, v), sageattn(q, k, v, tensor_layout="NHD", is_causal=False))


def test_sage_with_q_normed_in_its_quantization_pass_is_the_two_pass_q():
    pytest.importorskip("sageattention")
    from wan_core.dit import kernels, sage_sm90
    from wan_core.dit.rope import rope_freqs

    heads, dim, grid = 8, 128, (3, 20, 34)  # 2,040 tokens: the last 64-row block partly padded
    length = math.prod(grid)
    gen = torch.Generator("cuda").manual_seed(0)
    x = (torch.randn(2, length, heads * dim, device="cuda", generator=gen) * 3).bfloat16()
    k, v = (torch.randn(2, length, heads, dim, device="cuda", generator=gen).bfloat16() for _ in range(2))
    weight = 1 + 0.2 * torch.randn(heads * dim, device="cuda", generator=gen)
    if not sage_sm90.supported(x.unflatten(-1, (heads, dim)), k, v):
        pytest.skip("needs SageAttention 2's sm_90 kernel on a Hopper GPU")
    for freqs in (rope_freqs(dim, grid, "cuda"), None):
        q = kernels.rms_norm_rope(x, weight, 1e-6, freqs, dim).unflatten(-1, (heads, dim))
        got, scale = sage_sm90.quantize_normed_q(x, weight, 1e-6, freqs, heads)
        want, want_scale = sage_sm90.quantize_q(q)
        steps = (got.int() - want.int()).abs()  # the norm's sum in another order: one step, rarely
        assert steps.max() <= 1 and (steps == 0).float().mean() > 0.9999
        assert ((scale - want_scale).abs() <= want_scale * 2**-7).all()
        fused = sage_sm90.attention_normed_q(x, weight, 1e-6, freqs, k, v)
        assert _rel(fused, sage_sm90.attention(q, k, v)) < 1e-3


def test_sage_keeps_order_on_a_stream_of_its_own():
    """SageAttention 2's kernels launch on the legacy default stream; a batch lane works on a stream of its own, busy
    here when the attention is called, and reads the output right after it."""
    from wan_core.dit.attention import get_backend

    _skip_unless_runs("sage")
    attention = get_backend("sage", "cuda")
    gen = torch.Generator("cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 8192, 8, 128, device="cuda", generator=gen).bfloat16() for _ in range(3))
    want = attention(q, k, v)
    lane = torch.cuda.Stream()
    lane.wait_stream(torch.cuda.current_stream())
    got = []
    with torch.cuda.stream(lane):
        for _ in range(3):
            torch.cuda._sleep(50_000_000)  # the lane's earlier work, still running when the attention is issued
            got.append(attention(q + 0, k + 0, v + 0) + 0)
    lane.synchronize()
    assert all(torch.equal(g, want) for g in got)

    # and frees as it goes: 100 calls hold no more than a few calls' own tensors (int8 q and k, fp8 v, the output)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with torch.cuda.stream(lane):
        for _ in range(100):
            attention(q + 0, k, v)
    lane.synchronize()
    one_call = 5 * q.numel()
    assert torch.cuda.max_memory_allocated() - base < 4 * one_call


@pytest.mark.parametrize("backend", ["sdpa", "sage", "int8_triton"])
def test_compiled_blocks_match_eager_on_cuda(backend):
    import torch._dynamo

    from wan_core.dit.attention import get_backend
    from wan_core.dit.compiled import compilable, compile_blocks

    _skip_unless_runs(backend)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # reset() leaves them: the earlier parameter's graph would count here
    model, _ = _tiny_pair(fp8_compute=_fp8_rows_capable())
    x, t, context = _inputs()
    attention = compilable(get_backend(backend, "cuda"))
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        eager = model(x, t, context, attention=attention)
        compile_blocks(model)
        compiled = model(x, t, context, attention=attention)
        with torch._dynamo.config.patch(error_on_recompile=True):
            model(x * 0.5, t * 0.5, context, attention=attention)
    assert _rel(compiled, eager) < 0.02
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("fp8_compute", [False, True], ids=["bf16", "fp8-compute"])
def test_a_model_on_the_second_gpu_runs_right_while_the_first_is_current(fp8_compute):
    """ComfyUI's thread keeps cuda:0 current while Set Device puts the DiT on cuda:1: the Triton kernels must still
    launch on cuda:1 (else they race with, or fault on, the other GPU's memory)."""
    from wan_core.dit.fp8 import to_fp8_compute

    torch.manual_seed(0)
    base = WanDiT(GPU_CONFIG)
    models = []
    for device in ("cuda:0", "cuda:1"):
        model = copy.deepcopy(base).to(device, torch.bfloat16)
        models.append(to_fp8_compute(model) if fp8_compute else model)
    x = torch.randn(1, 16, 3, 32, 32)
    t = torch.tensor([700.0])
    context = [torch.randn(20, 64)]
    outputs = []
    torch.cuda.set_device(0)
    for model, device in zip(models, ("cuda:0", "cuda:1"), strict=True):
        with torch.no_grad():
            for _ in range(3):  # repeated: a race shows up as a difference between the runs
                out = model(x.to(device, torch.bfloat16), t.to(device), [context[0].to(device, torch.bfloat16)])
                torch.cuda.synchronize(device)
                outputs.append(out.cpu())
    assert all(torch.isfinite(o).all() for o in outputs)
    first, second = outputs[:3], outputs[3:]
    assert all(torch.equal(out, first[0]) for out in first) and all(torch.equal(out, second[0]) for out in second)
    assert _rel(second[0], first[0]) < 1e-2  # same weights, same kernels on another GPU of the same kind


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
def test_lora_loha_lokr_and_dora_merge_on_cuda_as_on_the_cpu(tmp_path, fp8):
    """The node merges into weights already on the GPU: the same file gives the CPU's merged weights (float32 math on
    both; the GPU's float32 matmuls are not TF32 unless a host turns that on)."""
    from wan_core.dit.model import FP8Linear
    from wan_core.lora import LoraPatch
    from wan_core.lora.patch import dequantize_fp8
    from wan_core.patching import set_patches

    torch.manual_seed(1)
    path = write_safetensors(WanDiT(GPU_CONFIG).state_dict(), tmp_path / "dit.safetensors")
    gen = torch.Generator().manual_seed(2)
    dim, ffn = GPU_CONFIG.dim, GPU_CONFIG.ffn_dim
    tensors = {
        "diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.randn(8, dim, generator=gen) * 0.1,
        "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.randn(dim, 8, generator=gen) * 0.1,
        "diffusion_model.blocks.0.self_attn.q.dora_scale": torch.rand(dim, 1, generator=gen) + 0.5,
        **{f"lora_unet_blocks_1_ffn_0.hada_w{i}_{p}": torch.randn(*shape, generator=gen) * 0.3
           for i in (1, 2) for p, shape in (("a", (ffn, 4)), ("b", (4, dim)))},
        "lora_unet_blocks_1_ffn_0.alpha": torch.tensor(2.0),
        "lora_unet_blocks_1_ffn_2.lokr_w1": torch.randn(16, 32, generator=gen),
        "lora_unet_blocks_1_ffn_2.lokr_w2_a": torch.randn(dim // 16, 4, generator=gen) * 0.1,
        "lora_unet_blocks_1_ffn_2.lokr_w2_b": torch.randn(4, ffn // 32, generator=gen) * 0.1,
    }  # fmt: skip
    lora = write_safetensors(tensors, tmp_path / "lycoris.safetensors")
    merged = {}
    for device in ("cpu", "cuda"):
        model = load_dit(path, dtype=torch.bfloat16, fp8_weights=fp8).to(device)  # the base quantized on the CPU
        set_patches(model, [LoraPatch(str(lora), 0.8)], "high_noise")
        merged[device] = {name: (dequantize_fp8(m.weight, m.weight_scale) if isinstance(m, FP8Linear) else
                                 m.weight.float()).cpu()
                          for name, m in model.named_modules() if isinstance(getattr(m, "weight", None), torch.Tensor)}
    base = load_dit(path, dtype=torch.bfloat16).state_dict()
    for name in ("blocks.0.self_attn.q", "blocks.1.ffn.0", "blocks.1.ffn.2"):
        cpu, cuda = merged["cpu"][name], merged["cuda"][name]
        assert _rel(cpu, base[name + ".weight"]) > 0.01, name  # the patch changed it
        # float32 sums in another order: a bf16 value may round to its neighbour, rarely; fp8 rows take a scale from
        # their maximum, which may differ in its last bit (every value of the row then moves by ~1e-7), and an e4m3
        # value that flips moves the weight by ~3e-4 here
        if fp8:
            assert _rel(cuda, cpu) < 1e-3, name
        else:
            assert _rel(cuda, cpu) < 1e-4 and (cuda != cpu).float().mean() < 1e-3, name
    assert all(torch.equal(merged["cuda"][k], merged["cpu"][k]) for k in merged["cpu"]
               if k not in ("blocks.0.self_attn.q", "blocks.1.ffn.0", "blocks.1.ffn.2"))


@pytest.mark.parametrize("kind", ["fp8", "int8"])
def test_lightx2v_per_channel_file_with_fp8_matmuls_on_cuda(tmp_path, kind):
    """LightX2V's per-channel files (`[out, 1]` scales) kept as fp8 with their channel scales and run through
    `torch._scaled_mm` rowwise: within the fp8 compute tolerance of the float32 model they stand for."""
    from test_lightx2v_checkpoints import _dequantized, _lightx2v

    torch.manual_seed(0)
    state = WanDiT(GPU_CONFIG).state_dict()
    for key, value in state.items():  # rows of very different sizes: a channel scale read wrongly shows
        if key.startswith("blocks.") and value.dim() == 2:
            state[key] = value * torch.logspace(-1, 1, value.shape[0])[:, None]
    stored = _lightx2v(state, kind, torch.bfloat16)
    path = write_safetensors(stored, tmp_path / f"wan2.2_t2v_{kind}_lightx2v.safetensors")
    model = load_dit(path, device="cuda", dtype=torch.bfloat16, fp8_compute=True)
    layer = model.get_submodule("blocks.0.ffn.0")
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight_scale.shape == (GPU_CONFIG.ffn_dim,)
    if kind == "fp8":
        assert torch.equal(layer.weight.cpu().view(torch.uint8), stored["blocks.0.ffn.0.weight"].view(torch.uint8))
    # as test_fp8_scaled_file_onto_cuda's fp8-compute case
    assert _rel_to_float32_model(model, _dequantized(stored)) < 0.1
