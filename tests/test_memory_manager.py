"""Our models under the host's memory manager, through `host`'s fallback (and its delegation inside ComfyUI)."""

from __future__ import annotations

import types

import pytest
import torch

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
