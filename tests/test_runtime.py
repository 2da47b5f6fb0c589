"""The core seams: the float32 regions under autocast, the attention registry, the Runtime and model patches."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from nodes import handles
from wan_core.configs import DIT_CONFIGS
from wan_core.dit import attention as attention_module
from wan_core.dit import model as model_module
from wan_core.dit.attention import AttentionBackend, SdpaAttention, get_backend
from wan_core.dit.model import WanDiT, init_random_
from wan_core.errors import InputError, WanError
from wan_core.patching import set_patches
from wan_core.runtime import Runtime

FP32_LINEARS = ("time_embedding.0", "time_embedding.2", "time_projection.1", "head.head")


def tiny_dit(seed: int = 0) -> WanDiT:
    model = WanDiT(DIT_CONFIGS["tiny-t2v"]).eval()
    return init_random_(model, torch.Generator().manual_seed(seed))


def inputs(seed: int = 1) -> tuple:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, 2, 8, 8, generator=g)
    context = [torch.randn(7, DIT_CONFIGS["tiny-t2v"].text_dim, generator=g)]
    return x, torch.tensor([937.0]), context


class LinearDtypes(TorchFunctionMode):
    """Records the output dtype of every `F.linear` by the name of the weight it used."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.names = {id(p): n[: -len(".weight")] for n, p in model.named_parameters() if n.endswith(".weight")}
        self.dtypes: dict[str, set[torch.dtype]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is F.linear:
            name = self.names.get(id(args[1]))
            if name is not None:
                self.dtypes.setdefault(name, set()).add(out.dtype)
        return out


def test_float32_regions_stay_float32_under_the_pipelines_autocast():
    model = tiny_dit()
    x, t, context = inputs()
    recorder = LinearDtypes(model)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16), recorder:
        model(x, t, context)
    for name in FP32_LINEARS:
        assert recorder.dtypes[name] == {torch.float32}, name
    # autocast is on for the blocks' matmuls: the test would not see a difference otherwise
    assert recorder.dtypes["blocks.0.self_attn.q"] == {torch.bfloat16}


def test_autocast_output_is_closer_to_float32_with_the_float32_regions(monkeypatch):
    model = tiny_dit()
    x, t, context = inputs()
    with torch.no_grad():
        reference = model(x, t, context)

        def under_autocast() -> torch.Tensor:
            with torch.autocast("cpu", torch.bfloat16):
                return model(x, t, context)

        fixed = under_autocast()
        monkeypatch.setattr(model_module, "float32_region", lambda device: contextlib.nullcontext())
        unfixed = under_autocast()
    err_fixed = ((fixed - reference).norm() / reference.norm()).item()
    err_unfixed = ((unfixed - reference).norm() / reference.norm()).item()
    assert err_fixed < 0.7 * err_unfixed, (err_fixed, err_unfixed)


def test_attention_registry():
    assert isinstance(get_backend("sdpa"), SdpaAttention)
    assert get_backend("auto", "cpu") == SdpaAttention()  # no GPU kernel runs on the CPU
    with pytest.raises(InputError, match="Unknown attention backend 'xformers'; choose one of auto, sdpa"):
        get_backend("xformers")
    backend = SdpaAttention()
    assert get_backend(backend) is backend  # an object (a wrapper) passes through


def test_explicit_backend_that_does_not_import_says_what_to_install(monkeypatch):
    monkeypatch.setattr(attention_module, "_flash_fn", lambda capability=None: None)
    with pytest.raises(InputError, match=r"attention 'flash_attn' .* does not import here\. Install .*flash-attn"):
        get_backend("flash_attn")


def test_flash_attention_3_is_used_on_hopper_only(monkeypatch):
    import sys
    import types

    fa3 = types.ModuleType("fa3_fwd_interface")
    fa3.flash_attn_func = lambda q, k, v: (q, None)
    for module in ("flash_attn", "flash_attn.cute", "flash_attn_interface"):  # as where none of them is installed
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setitem(sys.modules, "fa3_fwd_interface", fa3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(attention_module, "_sage_fn", lambda: None)
    monkeypatch.setattr(attention_module.Int8TritonAttention, "available", staticmethod(lambda: False))
    attention_module._flash_fn.cache_clear()
    try:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
        assert get_backend("flash_attn", "cuda:0") == attention_module.FlashAttention()
        assert get_backend("auto", "cuda:0").name == "flash_attn"
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
        assert get_backend("auto", "cuda:0") == SdpaAttention()  # FA3 would fail on an Ada GPU
        with pytest.raises(InputError, match=r"'flash_attn': the FlashAttention build installed here does not run "
                                             r"on this GPU \(FlashAttention-3 is for Hopper only; .*\), and this GPU "
                                             r"is sm_89\. Use 'auto'"):
            get_backend("flash_attn", "cuda:0")
    finally:
        attention_module._flash_fn.cache_clear()


def test_auto_prefers_sage_then_our_8bit_kernel_then_flash_attention(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(attention_module, "_flash_fn", lambda capability=None: lambda q, k, v: q)
    monkeypatch.setattr(attention_module.Int8TritonAttention, "available", staticmethod(lambda: True))
    monkeypatch.setattr(attention_module, "_sage_version", lambda: (2, 2))
    monkeypatch.setattr(attention_module, "_sage_fn", lambda: lambda q, k, v, **kw: q)
    for capability, sage, want in (
        ((9, 0), True, "sage"),
        ((9, 0), False, "int8_triton"),
        ((8, 9), False, "flash_attn"),  # runs there when asked for by name, but was not measured there
        ((12, 0), False, "flash_attn"),  # the same on RTX 50xx
        ((8, 6), False, "flash_attn"),  # no fp8 tensor cores
    ):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        monkeypatch.setattr(attention_module.SageAttention, "available", staticmethod(lambda s=sage: s))
        assert get_backend("auto", "cuda:0").name == want, (capability, sage)
        if capability in ((8, 9), (12, 0)):
            assert get_backend("int8_triton", "cuda:0").name == "int8_triton"
    with pytest.raises(InputError, match=r"'int8_triton': it needs fp8 tensor cores: an Ada \(sm_89\), Hopper "
                                         r"\(sm_90\) or RTX 50xx \(sm_120\) GPU, and this GPU is sm_86"):
        get_backend("int8_triton", "cuda:0")


def test_a_wrapping_backend_sees_every_attention_call_and_changes_nothing():
    class Counting(AttentionBackend):
        name = "counting"

        def __init__(self, inner: AttentionBackend):
            self.inner, self.calls = inner, 0

        def __call__(self, q, k, v):
            self.calls += 1
            return self.inner(q, k, v)

    model = tiny_dit()
    x, t, context = inputs()
    wrapper = Counting(SdpaAttention())
    with torch.no_grad():
        plain = model(x, t, context)
        wrapped = model(x, t, context, attention=wrapper)
    assert torch.equal(plain, wrapped)
    assert wrapper.calls == 2 * model.config.num_layers  # self- and cross-attention of every block


class Movable:
    """A model stand-in that records where it is sent."""

    def __init__(self, moves: list[str]):
        self.device, self.moves = torch.device("cpu"), moves

    def to(self, device):
        self.device = torch.device(device)
        self.moves.append(str(device))
        return self


def test_runtime_on_device_parks_with_offload_only():
    moves: list[str] = []
    module = Movable(moves)
    meta = torch.device("meta")
    with Runtime(device=meta, offload=True).on_device(module):
        pass
    assert moves == ["meta", "cpu"]
    moves.clear()
    with Runtime(device=meta, offload=False).on_device(module):
        pass
    assert moves == ["meta"]


def test_runtime_autocast_is_cuda_only_and_compute_dtype_follows_the_weight_choice(monkeypatch):
    assert not Runtime(device=torch.device("cpu")).autocast()._enabled
    runtime = handles.DiTHandle(task="ti2v-5B", high_noise_path="/m/x", weight_dtype="fp16", device="cpu").runtime()
    assert runtime.compute_dtype == torch.float16 and runtime.attention == SdpaAttention()
    compute = handles.DIT_COMPUTE_DTYPES
    assert compute["fp32"] is None and compute["fp8_e4m3fn_fast"] == compute["default"] == torch.bfloat16
    monkeypatch.setattr(attention_module, "_sage_fn", lambda: None)  # as on a machine without SageAttention
    with pytest.raises(InputError, match="attention 'sage' was asked for, but it does not import here"):
        handles.DiTHandle(task="ti2v-5B", high_noise_path="/m/x", attention="sage", device="cpu").runtime()


@dataclasses.dataclass(frozen=True)
class AddToBias:
    """A test patch: adds `value` to one bias."""

    name: str
    value: float

    def apply(self, module, expert, weights):
        weights.set(self.name, weights.get(self.name) + self.value)


def test_patches_swap_without_reloading_and_removal_restores_the_exact_bits(monkeypatch):
    reads = []

    def fake_load_dit(path, *, device, **options):
        reads.append(path)
        return tiny_dit(len(reads))

    monkeypatch.setattr("wan_core.dit.loader.load_dit", fake_load_dit)
    handles.MODEL_CACHE.clear()
    base = handles.DiTHandle(task="ti2v-5B", high_noise_path="/m/5b.safetensors", device="cpu")
    module, _ = base.load()
    original = module.head.head.bias.detach().clone()
    patched = dataclasses.replace(base, patches_high=(AddToBias("head.head.bias", 0.5),))
    assert patched != base and hash(patched) != hash(base)  # the patches are part of the handle's identity
    assert patched.load()[0] is module
    assert torch.allclose(module.head.head.bias, original + 0.5)
    stronger = dataclasses.replace(base, patches_high=(AddToBias("head.head.bias", 2.0),))
    stronger.load()
    assert torch.allclose(module.head.head.bias, original + 2.0)  # re-patched from the base, not stacked
    base.load()
    assert torch.equal(module.head.head.bias, original)  # bit for bit
    assert reads == ["/m/5b.safetensors"]  # the base weights were read once
    handles.MODEL_CACHE.clear()


def test_set_patches_is_a_no_op_when_nothing_changes():
    module = torch.nn.Linear(2, 2)
    patch = AddToBias("bias", 1.0)
    before = module.bias.detach().clone()
    set_patches(module, (patch,), "single")
    set_patches(module, (patch,), "single")
    assert torch.allclose(module.bias, before + 1.0)
    set_patches(module, (), "single")
    assert torch.equal(module.bias, before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_float32_regions_under_cuda_autocast():
    model = tiny_dit().cuda()
    x, t, context = inputs()
    x, t, context = x.cuda(), t.cuda(), [c.cuda() for c in context]
    recorder = LinearDtypes(model)
    with torch.no_grad():
        reference = model(x, t, context)
        with Runtime(device=torch.device("cuda")).autocast(), recorder:
            out = model(x, t, context)
    for name in FP32_LINEARS:
        assert recorder.dtypes[name] == {torch.float32}, name
    assert recorder.dtypes["blocks.0.ffn.0"] == {torch.bfloat16}
    assert ((out - reference).norm() / reference.norm()).item() < 0.05


def test_int8_triton_says_what_to_do_when_triton_cannot_build_its_kernel(monkeypatch):
    errors = pytest.importorskip("triton.runtime.errors")

    def out_of_shared_memory(q, k, v):
        raise errors.OutOfResources(232448, 101376, "shared memory")

    monkeypatch.setattr(attention_module.attention8, "supported", lambda q, k, v: True)
    monkeypatch.setattr(attention_module.attention8, "attention", out_of_shared_memory)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    q = torch.zeros(1, 4, 2, 64)
    with pytest.raises(WanError, match=r"attention 'int8_triton' could not build its kernel for this GPU \(sm_89, "
                                       r"Triton [0-9.]+\): .*shared memory.*\. Use attention 'auto' or 'sdpa'\."):
        attention_module.Int8TritonAttention().kernel(q, q, q)
