"""Copies between a GPU and pageable RAM through the pinned stages (`wan_core.host_copy`): bit for bit both ways, at
every size around the stage boundaries, after work still queued on the GPU; modules moved with shared weights kept
shared; a LoRA on a GPU model switched and removed. The staged path needs CUDA; on the CPU the plain copies run."""

from __future__ import annotations

import pytest
import torch

from wan_core import host_copy
from wan_core.host_copy import MIN_BYTES, STAGE_BYTES, copy_tensors, move_module, to_host

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
SIZES = [MIN_BYTES - 1, MIN_BYTES, STAGE_BYTES - 1, STAGE_BYTES, 2 * STAGE_BYTES + 13, 5 * STAGE_BYTES + 4096]


@pytest.fixture
def stage_calls(monkeypatch) -> list[tuple[torch.device, int]]:
    """(device, number of tensors) of every copy through the stages while the test runs."""
    calls: list[tuple[torch.device, int]] = []
    real = host_copy._through_stages
    monkeypatch.setattr(host_copy, "_through_stages", lambda device, pairs: calls.append((device, len(pairs))) or real(
        device, pairs))
    return calls


def test_cpu_pairs_and_conversions_are_plain_copies():
    src = torch.arange(MIN_BYTES, dtype=torch.float32)
    dst, converted = torch.empty_like(src), torch.empty(src.shape, dtype=torch.bfloat16)
    copy_tensors([(dst, src), (converted, src)])
    assert torch.equal(dst, src) and torch.equal(converted, src.bfloat16())
    copy = to_host(src)
    assert torch.equal(copy, src) and copy.data_ptr() != src.data_ptr()


@pytest.mark.parametrize("param_mode", [False, True], ids=["param", "inference-param"])
@pytest.mark.parametrize("value_mode", [False, True], ids=["value", "inference-value"])
def test_set_parameter_never_leaves_a_parameter_without_a_version_counter(param_mode, value_mode):
    """`param.data = value` of an inference-mode parameter with ordinary data succeeds but leaves a tensor no view of
    which works ("Inference tensors do not track version counter"); that case gets a new Parameter."""
    with torch.inference_mode(param_mode):
        layer = torch.nn.Linear(4, 4)
    with torch.inference_mode(value_mode):
        value = torch.ones(4, 4)
    before = layer.weight
    param = host_copy.set_parameter(layer, "weight", value)
    assert layer.weight is param and torch.equal(param, value)
    assert (param is before) == (not param_mode or value_mode)
    for mode in (False, True):
        with torch.inference_mode(mode):
            param.reshape(-1)


def _random_bytes(nbytes: int, device: str, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=device, generator=generator)


@cuda
@pytest.mark.parametrize("dtype", [torch.uint8, torch.bfloat16, torch.float8_e4m3fn])
def test_staged_copies_are_bit_exact_both_ways(dtype, stage_calls):
    gen = torch.Generator("cuda").manual_seed(0)
    size = torch.empty((), dtype=dtype).element_size()
    on_gpu = [_random_bytes(n - n % size, "cuda", gen).view(dtype) for n in SIZES]
    on_gpu = [t * 1 if dtype == torch.bfloat16 else t for t in on_gpu]  # work still queued when the copy starts
    on_cpu = [to_host(t) for t in on_gpu]
    assert all(not c.is_pinned() and torch.equal(c.view(torch.uint8), g.cpu().view(torch.uint8))
               for c, g in zip(on_cpu, on_gpu, strict=True))
    back = [torch.empty_like(t) for t in on_gpu]
    copy_tensors(list(zip(back, on_cpu, strict=True)))
    assert all(torch.equal(b.view(torch.uint8), g.view(torch.uint8)) for b, g in zip(back, on_gpu, strict=True))
    assert [pairs for _, pairs in stage_calls] == [1] * (len(SIZES) - 1) + [len(SIZES) - 1]  # from MIN_BYTES up


@cuda
def test_pinned_memory_takes_the_plain_copy_and_strided_tensors_arrive_whole(monkeypatch):
    pinned = torch.ones(MIN_BYTES, dtype=torch.uint8).pin_memory()
    gpu = torch.zeros(MIN_BYTES, dtype=torch.uint8, device="cuda")
    with monkeypatch.context() as patched:
        patched.setattr(host_copy, "_through_stages", lambda device, pairs: pytest.fail("pinned memory was staged"))
        copy_tensors([(gpu, pinned)])
    assert bool(gpu.all())
    strided = torch.arange(2 * MIN_BYTES, dtype=torch.int32).view(2, MIN_BYTES)[:, ::2]
    on_gpu = torch.empty(strided.shape, dtype=torch.int32, device="cuda")
    copy_tensors([(on_gpu, strided)])
    assert torch.equal(on_gpu.cpu(), strided)
    assert torch.equal(to_host(on_gpu.t()), strided.t())


class Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(1024, 1024)
        self.b = torch.nn.Linear(1024, 1024)
        self.b.weight = self.a.weight
        self.register_buffer("table", torch.randn(512, 1024))
        self.register_buffer("step", torch.tensor(3))


@cuda
@pytest.mark.parametrize("inference", [False, True], ids=["plain", "inference-mode"])
def test_a_module_moves_both_ways_with_shared_weights_kept_shared(inference):
    torch.manual_seed(0)
    with torch.inference_mode(inference):
        model = Tied()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    weight = model.a.weight
    for device in ("cuda", "cpu", "cuda:0"):
        move_module(model, device)
        assert {t.device.type for t in (*model.parameters(), *model.buffers())} == {torch.device(device).type}
        assert model.a.weight is weight and model.b.weight is weight  # kept, and still shared, as `module.to` does
        assert all(torch.equal(v.cpu(), state[k]) for k, v in model.state_dict().items())
        with torch.inference_mode(inference):
            model.b(model.table[:2].to(torch.device(device)))  # views of the moved weights work


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_the_second_gpu_while_the_first_is_current(stage_calls):
    torch.manual_seed(0)
    model = Tied()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.cuda.device(0):
        move_module(model, "cuda:1")
        assert {t.device for t in (*model.parameters(), *model.buffers())} == {torch.device("cuda", 1)}
        model.table.mul_(2)  # queued on cuda:1 when the copy off it starts
        assert torch.equal(to_host(model.table), state["table"] * 2)
        move_module(model, "cpu")
        assert torch.cuda.current_device() == 0
    assert all(torch.equal(v, state[k] * (2 if k == "table" else 1)) for k, v in model.state_dict().items())
    assert stage_calls and {device for device, _ in stage_calls} == {torch.device("cuda", 1)}


@cuda
def test_a_lora_on_a_gpu_model_switches_and_removes_bit_for_bit(tmp_path):
    from safetensors.torch import save_file

    from wan_core.configs import DIT_CONFIGS
    from wan_core.dit.model import WanDiT
    from wan_core.lora import LoraPatch
    from wan_core.patching import set_patches

    torch.manual_seed(0)
    config = DIT_CONFIGS["tiny-t2v"].replace(dim=512, ffn_dim=1024, num_heads=4, text_dim=64)
    model = WanDiT(config).to("cuda", torch.bfloat16)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    name = "blocks.0.ffn.0"
    down, up = torch.randn(8, 512), torch.randn(1024, 8)
    path = tmp_path / "l.safetensors"
    save_file({f"diffusion_model.{name}.lora_A.weight": down, f"diffusion_model.{name}.lora_B.weight": up}, str(path))
    for strength in (1.0, 0.25):
        set_patches(model, [LoraPatch(str(path), strength)], "single")
        want = torch.addmm(base[f"{name}.weight"].float(), up.cuda(), down.cuda(), alpha=strength).bfloat16()
        assert torch.equal(model.get_parameter(f"{name}.weight"), want)
    set_patches(model, [], "single")
    assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())
