"""Running out of GPU memory: errors that name the stage and the settings that would avoid it, models freed for the
retry, and offloaded experts that stay in CPU RAM."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import torch

from nodes import handles
from wan_core.configs import DIT_CONFIGS
from wan_core.dit.model import WanDiT
from wan_core.memory import GPUOutOfMemoryError
from wan_core.pipeline.denoise import sample_latents
from wan_core.pipeline.request import SamplingRequest
from wan_core.runtime import Runtime
from wan_core.text.demo import build_tiny_umt5
from wan_core.text.encoder import load_text_encoder
from wan_core.text.keymap import to_official
from wan_core.text.tokenizer import build_demo_tokenizer


class OutOfMemoryModel(torch.nn.Module):
    """A DiT stand-in whose forward fails the way CUDA does."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(4, 4, dtype=dtype), requires_grad=False)

    def forward(self, x, t, context, y=None, attention=None):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def _sample(high, low, *, offload_model):
    context = torch.zeros(3, 64)
    request = SamplingRequest.create("t2v-A14B", width=64, height=48, frame_num=5, seed=1, steps=2)
    return sample_latents(
        request, high_noise_model=high, low_noise_model=low, cond=context, uncond=context,
        runtime=Runtime(offload=offload_model),
    )


def test_denoising_out_of_memory_names_the_settings_that_need_less():
    with pytest.raises(GPUOutOfMemoryError) as info:
        _sample(OutOfMemoryModel(), OutOfMemoryModel(), offload_model=False)
    message = str(info.value)
    assert isinstance(info.value, torch.cuda.OutOfMemoryError)  # ComfyUI still treats it as an OOM
    assert message.startswith("CUDA out of memory while denoising on cpu")
    assert "offload_model" in message and "fp8 weights" in message and "t5_cpu" in message
    assert "now 64x48, 5 frames" in message
    assert isinstance(info.value.__cause__, torch.cuda.OutOfMemoryError)


def test_out_of_memory_advice_leaves_out_what_is_already_on():
    with pytest.raises(GPUOutOfMemoryError) as info:
        _sample(OutOfMemoryModel(torch.float8_e4m3fn), OutOfMemoryModel(torch.float8_e4m3fn), offload_model=True)
    message = str(info.value)
    assert "offload_model" not in message and "fp8 weights" not in message
    assert "now 64x48, 5 frames" in message


def test_text_encoder_out_of_memory_suggests_the_cpu(tmp_path, monkeypatch):
    tokenizer = build_demo_tokenizer(tmp_path / "google" / "umt5-xxl")
    torch.save(to_official(build_tiny_umt5().state_dict()), tmp_path / "t5.pth")
    encoder = load_text_encoder(tmp_path / "t5.pth", tokenizer=tokenizer)

    def fail(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(encoder.model, "forward", fail)
    with pytest.raises(GPUOutOfMemoryError, match="while encoding prompts with the text encoder.*t5_cpu"):
        encoder.encode(["a cat"])


@pytest.mark.parametrize("offload", [False, True])
def test_offloaded_experts_wait_in_cpu_ram(monkeypatch, offload):
    """With offload the sampler moves the active expert to the GPU itself; loading both there would defeat it."""
    moves = []
    monkeypatch.setattr(handles, "move_module",
                        lambda module, device, memory_required=0: moves.append(torch.device(device)) or module)
    monkeypatch.setattr(handles.DiTHandle, "target_device", lambda self: torch.device("cuda", 1))
    experts = {"/high": WanDiT(DIT_CONFIGS["tiny-t2v"]), "/low": WanDiT(DIT_CONFIGS["tiny-t2v"])}
    cache = handles.ModelCache({"dit": 2})
    for path, module in experts.items():
        cache.get(("dit", path, "default", "all"), lambda module=module: module)  # weight_dtype, blocks_on_gpu
    handle = handles.DiTHandle(task="t2v-A14B", high_noise_path="/high", low_noise_path="/low", offload=offload)
    high, low = handle.load(cache)
    assert (high, low) == (experts["/high"], experts["/low"])
    assert moves == [torch.device("cpu") if offload else torch.device("cuda", 1)] * 2


@dataclass(frozen=True)
class AddToFirstWeight:
    """A stand-in LoRA: adds `value` to the expert's first parameter."""

    value: float

    def apply(self, module, expert, weights):
        name = next(iter(dict(module.named_parameters())))
        weights.set(name, weights.get(name) + self.value)


def test_experts_load_unplaced_unless_new_patches_need_merging(monkeypatch):
    """The sampler places each expert at its first step. Placing both at the load as well made two experts under one
    budget evict each other twice per run (4 moves of 14 GB instead of 2); only new patches need the expert on its
    device at the load (merged there)."""
    moves = []
    monkeypatch.setattr(handles, "move_module",
                        lambda module, device, memory_required=0: moves.append(module) or module)
    experts = {"/high": WanDiT(DIT_CONFIGS["tiny-t2v"]), "/low": WanDiT(DIT_CONFIGS["tiny-t2v"])}
    cache = handles.ModelCache({"dit": 2})
    for path, module in experts.items():
        cache.get(("dit", path, "default", "all"), lambda module=module: module)  # weight_dtype, blocks_on_gpu
    plain = handles.DiTHandle(task="t2v-A14B", high_noise_path="/high", low_noise_path="/low", device="cpu")
    high, low = plain.load(cache, place=False)
    assert moves == []
    patched = dataclasses.replace(plain, patches_high=(AddToFirstWeight(1.0),), patches_low=(AddToFirstWeight(2.0),))
    first = next(high.parameters()).detach().clone()
    assert patched.load(cache, place=False) == (high, low) and moves == [high, low]  # merged on their device
    assert torch.equal(next(high.parameters()), first + 1.0)
    moves.clear()
    patched.load(cache, place=False)  # the same patches: nothing to merge, nothing moves
    assert moves == [] and torch.equal(next(high.parameters()), first + 1.0)
    patched.load(cache)
    assert moves == [high, low]


def test_an_empty_replica_cache_gets_its_own_copies(monkeypatch):
    """A second GPU's cache starts empty (falsy by its length): its loads must go there, not to the shared cache,
    or two GPUs would share (and move back and forth) one module."""
    monkeypatch.setattr(handles, "move_module", lambda module, device, memory_required=0: module)
    shared = handles.ModelCache({"vae": 1})
    monkeypatch.setattr(handles, "MODEL_CACHE", shared)
    shared.get(("vae", "/vae", "default"), lambda: torch.nn.Linear(2, 2))
    replica = handles.ModelCache({"vae": 1})
    handle = handles.VAEHandle(path="/vae", device="cpu")
    copy = handle._load_cached("/vae", ("default",), lambda: torch.nn.Linear(2, 2), replica)
    assert len(replica) == 1 and replica.get(("vae", "/vae", "default"), lambda: None) is copy
    assert shared.get(("vae", "/vae", "default"), lambda: None) is not copy


def test_park_moves_modules_back_to_cpu():
    module = torch.nn.Linear(2, 2).to(torch.device("meta"))
    moved = []
    module.to = lambda device: moved.append(torch.device(device)) or module
    Runtime(device=torch.device("meta")).park(module, None)
    assert moved == [torch.device("cpu")]


def test_cli_prints_the_advice_without_a_traceback(monkeypatch, capsys):
    from wan_core import generate

    def run_out_of_memory(args):
        raise GPUOutOfMemoryError("CUDA out of memory while denoising on cuda:0. To fit, try: offload_model.")

    monkeypatch.setattr(generate, "run", run_out_of_memory)
    assert generate.main(["--demo"]) == generate.EXIT_FAILED
    err = capsys.readouterr().err
    assert "error: CUDA out of memory while denoising" in err and "Traceback" not in err
