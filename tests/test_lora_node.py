"""Wan22LoraLoader: chainable per-expert patches on the model handle; the base weights are read once whatever LoRA
and strength the handle carries, and a handle without LoRA gets the exact base back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nodes import NODE_CLASS_MAPPINGS, handles, host
from nodes.loaders import Wan22ModelLoader
from nodes.lora_loader import Wan22LoraLoader
from wan_core.configs import DIT_CONFIGS
from wan_core.dit.model import WanDiT
from wan_core.errors import InputError
from wan_core.lora import LoraPatch


def write_tiny_lora(path: Path, seed: int = 0) -> None:
    """A lightx2v-layout rank-2 LoRA on every block Linear of the tiny (dim 64) configs."""
    gen = torch.Generator().manual_seed(seed)
    model = WanDiT(DIT_CONFIGS["tiny-t2v"])
    tensors = {}
    for name, param in model.named_parameters():
        if name.startswith("blocks.") and name.endswith(".weight") and param.dim() == 2:
            module = name[: -len(".weight")]
            tensors[f"diffusion_model.{module}.lora_down.weight"] = torch.randn(2, param.shape[1], generator=gen) * 0.1
            tensors[f"diffusion_model.{module}.lora_up.weight"] = torch.randn(param.shape[0], 2, generator=gen) * 0.1
            tensors[f"diffusion_model.{module}.alpha"] = torch.tensor(2.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))


@pytest.fixture
def models(tmp_path, monkeypatch):
    monkeypatch.setenv(host.MODELS_DIR_ENV, str(tmp_path))
    torch.manual_seed(0)
    folder = tmp_path / "diffusion_models"
    folder.mkdir()
    for expert in ("high", "low"):
        save_file(WanDiT(DIT_CONFIGS["tiny-t2v"]).state_dict(), str(folder / f"{expert}.safetensors"))
    save_file(WanDiT(DIT_CONFIGS["tiny-ti2v"]).state_dict(), str(folder / "5b.safetensors"))
    write_tiny_lora(tmp_path / "loras" / "fast_high.safetensors", seed=1)
    write_tiny_lora(tmp_path / "loras" / "fast_low.safetensors", seed=2)
    handles.MODEL_CACHE.clear()
    yield tmp_path
    handles.MODEL_CACHE.clear()


def test_chained_loaders_give_each_expert_its_patches(models):
    assert NODE_CLASS_MAPPINGS["Wan22LoraLoader"] is Wan22LoraLoader
    choices = Wan22LoraLoader.INPUT_TYPES()["required"]["lora_name"][0]
    assert choices == ["fast_high.safetensors", "fast_low.safetensors"]
    (base,) = Wan22ModelLoader().load("t2v-A14B", "high.safetensors", "low.safetensors", "default", "sdpa", False)
    (one,) = Wan22LoraLoader().load(base, "fast_high.safetensors", 1.0, 0.0)
    (two,) = Wan22LoraLoader().load(one, "fast_low.safetensors", 0.0, 0.75)
    high_file, low_file = (str(models / "loras" / f"fast_{e}.safetensors") for e in ("high", "low"))
    assert two.patches_high == (LoraPatch(high_file, 1.0),)
    assert two.patches_low == (LoraPatch(low_file, 0.75),)
    assert two != base and two.high_noise_path == base.high_noise_path


def test_one_model_tasks_take_strength_high_only(models):
    (base,) = Wan22ModelLoader().load("ti2v-5B", "5b.safetensors", "none", "default", "sdpa", False)
    (patched,) = Wan22LoraLoader().load(base, "fast_high.safetensors", 0.5, 1.0)
    assert len(patched.patches_high) == 1 and patched.patches_low == ()


def test_base_weights_are_read_once_and_restored_exactly(models, monkeypatch):
    import wan_core.dit.loader as loader

    reads = []
    real = loader.load_dit
    monkeypatch.setattr(loader, "load_dit", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    (base,) = Wan22ModelLoader().load("t2v-A14B", "high.safetensors", "low.safetensors", "default", "sdpa", False)
    high, low = base.load()
    original = {k: v.clone() for k, v in high.state_dict().items()}
    for strength in (1.0, 0.3):
        (patched,) = Wan22LoraLoader().load(base, "fast_high.safetensors", strength, strength)
        patched_high, patched_low = patched.load()
        assert patched_high is high and not torch.equal(high.blocks[0].ffn[0].weight, original["blocks.0.ffn.0.weight"])
    base.load()
    assert all(torch.equal(high.state_dict()[k], v) for k, v in original.items())
    assert len(reads) == 2  # one per expert file


def test_a_foreign_file_fails_on_the_loader_node(models):
    save_file({"diffusion_model.vision_tower.lora_A.weight": torch.ones(2, 2)}, str(models / "loras" / "x.safetensors"))
    (base,) = Wan22ModelLoader().load("t2v-A14B", "high.safetensors", "low.safetensors", "default", "sdpa", False)
    with pytest.raises(InputError, match="vision_tower"):
        Wan22LoraLoader().load(base, "x.safetensors", 1.0, 1.0)
