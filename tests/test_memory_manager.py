"""Our models under the host's memory manager, through `host`'s fallback (and its delegation inside ComfyUI)."""

from __future__ import annotations

import json
import types

import pytest
import torch
from comfyui_checkout import needs_comfyui, run_probe

from nodes import host
from nodes.memory_manager import ManagedModel, load_on_device, managed
from wan_core.configs import DIT_CONFIGS
from wan_core.dit.block_swap import module_bytes
from wan_core.dit.model import WanDiT, init_random_

CPU, META = torch.device("cpu"), torch.device("meta")


@pytest.fixture(autouse=True)
def empty_manager():
    host.FALLBACK_MEMORY.unload_all_models()
    yield
    host.FALLBACK_MEMORY.loaded.clear()


def _patcher(module: torch.nn.Module) -> ManagedModel:
    """Loads onto the CPU and unloads to the meta device, so that an unload is visible on a machine without GPU."""
    return ManagedModel(module, CPU, offload_device=META)


def test_registration_unload_all_and_eviction_order():
    first, second = torch.nn.Linear(8, 8), torch.nn.Linear(8, 4)
    a, b = _patcher(first), _patcher(second)
    host.load_models_gpu([a])
    host.load_models_gpu([b])
    assert host.FALLBACK_MEMORY.loaded == [b, a]
    assert (a.model_size(), a.loaded_size()) == (module_bytes(first), module_bytes(first))

    assert host.free_memory(1, CPU) == [a]  # the least recently loaded goes first, and only as much as needed
    assert first.weight.device == META and second.weight.device == CPU
    assert a.loaded_size() == 0 and host.FALLBACK_MEMORY.loaded == [b]

    host.unload_all_models()  # ComfyUI's "Unload models"
    assert second.weight.device == META and host.FALLBACK_MEMORY.loaded == []


def test_one_managed_model_per_module_and_cpu_is_not_managed():
    module = torch.nn.Linear(4, 4)
    assert managed(module, META) is managed(module, META)
    assert load_on_device(module, CPU) is module and host.FALLBACK_MEMORY.loaded == []


def test_a_text_encoder_on_a_gpu_is_registered_so_it_can_be_evicted(tmp_path):
    """The T5 wrapper is no module: its network is what the manager gets, so loading a DiT can evict it and Unload
    Models frees it (it used to sit on the GPU unregistered: 11 GB that ComfyUI neither counted nor could free)."""
    from nodes.handles import move_module
    from wan_core.text.demo import build_tiny_umt5
    from wan_core.text.encoder import TextEncoder
    from wan_core.text.tokenizer import build_demo_tokenizer, load_tokenizer

    encoder = TextEncoder(build_tiny_umt5(), load_tokenizer(build_demo_tokenizer(tmp_path)))
    assert move_module(encoder, META) is encoder  # the meta device stands in for a GPU: not the CPU, so managed
    (registered,) = host.FALLBACK_MEMORY.loaded
    assert registered.model is encoder.model and encoder.device == META
    registered.offload_device = META  # nothing to copy back from the meta device
    assert host.free_memory(1, META) == [registered] and host.FALLBACK_MEMORY.loaded == []


def test_dit_over_budget_loads_with_block_swap():
    cfg = DIT_CONFIGS["tiny-t2v"].replace(num_layers=6)
    model = init_random_(WanDiT(cfg), torch.Generator().manual_seed(0)).eval()
    patcher = ManagedModel(model, META)  # the "GPU" is the meta device here
    patcher.activation_reserve = 0
    block = module_bytes(model.blocks[0])
    others = module_bytes(model) - 6 * block
    # room for the other weights, 2 blocks in flight and 3 resident blocks
    assert patcher.partially_load(META, others + 5 * block) == others + 3 * block
    assert model.block_swap.swapped == [3, 4, 5]
    assert model.patch_embedding.weight.device == META and model.blocks[2].ffn[0].weight.device == META
    assert {p.device for i in (3, 4, 5) for p in model.blocks[i].parameters()} == {CPU}  # streamed from the CPU


@pytest.mark.parametrize("budget_blocks", [None, 5], ids=["resident", "block-swap"])
def test_an_evicted_model_comes_back_to_its_kept_cpu_copy_unless_patched(caplog, budget_blocks):
    """Two experts under one budget are evicted for each other every run: each eviction copied the whole expert
    (14 GB) off the GPU into new RAM. After the first, the CPU copy is kept and an unpatched return copies nothing.
    The meta device stands in for the GPU: a return from it can only work without a copy."""
    from wan_core.patching import _weights_changed

    model = init_random_(WanDiT(DIT_CONFIGS["tiny-t2v"].replace(num_layers=6)), torch.Generator().manual_seed(0))
    expected = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    patcher = ManagedModel(model, META)
    patcher.activation_reserve = 0
    block = module_bytes(model.blocks[0])
    # the whole model, or the other weights, 2 blocks in flight and 3 resident blocks (the rest streamed by block swap)
    budget = 1e12 if budget_blocks is None else module_bytes(model) - 6 * block + budget_blocks * block
    on_device = module_bytes(model) - (0 if budget_blocks is None else 3 * block)
    patcher.partially_unload(META)  # the first eviction (here on the CPU already: nothing moves)
    addresses = {name: tensor.data_ptr() for name, tensor in model.state_dict().items()}
    caplog.set_level("INFO", logger="nodes.memory_manager")
    for _ in range(2):
        assert patcher.partially_load(META, budget) == on_device
        assert patcher.partially_unload(META) == on_device
        state = model.state_dict()
        assert {name: t.data_ptr() for name, t in state.items()} == addresses  # the same RAM: nothing copied
        assert all(torch.equal(state[name], value) for name, value in expected.items())
    assert sum("Wan22: loaded WanDiT onto meta" in line for line in caplog.messages) == 2

    patcher.partially_load(META, budget)
    _weights_changed(model)  # a LoRA merged on the device: the kept copy is stale
    with pytest.raises(NotImplementedError, match="meta"):  # so it is copied back (meta has no data to copy)
        patcher.partially_unload(META)


def test_inside_comfyui_the_host_manager_gets_the_calls(monkeypatch):
    calls = []
    fake = types.SimpleNamespace(
        load_models_gpu=lambda models, memory_required=0: calls.append(("load", models, memory_required)),
        free_memory=lambda required, device: calls.append(("free", required, device)) or [],
        unload_all_models=lambda: calls.append(("unload_all",)),
    )
    monkeypatch.setitem(__import__("sys").modules, "comfy.model_management", fake)
    module = torch.nn.Linear(2, 2)
    load_on_device(module, META, memory_required=5)
    host.free_memory(7, META)
    host.unload_all_models()
    assert calls == [("load", [managed(module, META)], 5), ("free", 7, META), ("unload_all",)]
    assert host.FALLBACK_MEMORY.loaded == []


def test_answers_what_newer_comfyui_asks_before_loading_or_evicting():
    """ComfyUI >= 0.13 asks every registered model whether it loads page by page and how much host RAM it has pinned
    or mapped, and under RAM pressure asks it to give RAM back; without these a GPU load fails with AttributeError."""
    module = torch.nn.Linear(8, 8)
    patcher = _patcher(module)
    host.load_models_gpu([patcher])
    assert patcher.is_dynamic() is False  # so ComfyUI frees VRAM for it instead of leaving that to comfy-aimdo
    assert patcher.pinned_memory_size() == patcher.loaded_ram_size() == 0
    assert patcher.model_mmap_residency() == patcher.model_mmap_residency(free=True) == (0, 0)
    assert patcher.partially_unload_ram(1 << 40) == 0
    assert module.weight.device == CPU and patcher.loaded_size() == module_bytes(module)  # RAM pressure moved nothing
    # native multi-GPU sampling unloads a model's clones by comparing this id with every loaded model's (0.3x)
    assert patcher.clone_base_uuid != _patcher(torch.nn.Linear(2, 2)).clone_base_uuid


@needs_comfyui
def test_a_real_comfyui_memory_manager_loads_and_evicts_our_models():
    run = run_probe("host_memory_probe.py")
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["loaded"] == [["b", "a"], ["cpu", "cpu"]]
    assert report["freed"] == [2, [], ["meta", "meta"]]
    assert report.get("unload_clones", [["a"], ["cpu", "meta"]]) == [["a"], ["cpu", "meta"]]
    assert report["unload_all"] == [[], ["meta", "meta"]]
