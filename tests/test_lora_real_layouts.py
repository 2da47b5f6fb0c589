"""LoRA layouts of published Wan2.1 / Wan2.2 files, written small, merge where their makers' loaders put them.

Where each key name comes from:
- ComfyUI `comfy_extras/nodes_lora_extract.py` (LoraSave) and kijai ComfyUI-KJNodes `nodes/lora_nodes.py`
  (LoraExtractKJ, which made Kijai's extracted lightx2v LoRAs): `diffusion_model.<module>.lora_up/lora_down.weight`
  (no alpha) for 2-D weights, `.diff` for 1-D weights (norms) and for every weight of a "full_diff" file (the
  Conv3d `patch_embedding` too), `.diff_b` for every bias.
- lightx2v `Wan2.1-I2V-14B-480P-StepDistill-CfgDistill-Lightx2v/loras` (Comfy-Org/ComfyUI issue 8922):
  `diffusion_model.blocks.N.diff_m`; ModelTC/LightX2V `lightx2v/utils/lora_loader.py` adds `.diff_m` to
  `.modulation`, kijai ComfyUI-WanVideoWrapper renames it `.modulation.diff`.
- Wan2.1 I2V LoRAs on Wan2.2 ("lora key not loaded" logs in kijai/ComfyUI-WanVideoWrapper issues 940 and 1862,
  ostris/ai-toolkit issue 349): `cross_attn.{k_img,v_img}.{lora_down,lora_up,lora_A,lora_B}.weight`, `.diff_b`,
  `.alpha`, `cross_attn.norm_k_img.diff`; diffusers `_convert_non_diffusers_wan_lora_to_diffusers`: `img_emb.proj.1`,
  `attn2.add_k_proj`, `condition_embedder.image_embedder.ff.net.0.proj`; musubi-tuner `convert_lora.py`: kohya
  `lora_unet_blocks_N_cross_attn_k_img`. ComfyUI loads the rest and warns about these.
- Wan-Fun: `lora_unet__blocks_0_cross_attn_k.lora_down.weight` (ComfyUI `comfy/lora_convert.py`).
- DiffSynth-Studio (`diffsynth/diffusion/training_module.py`, `logger.py`): PEFT's adapter-named
  `blocks.N.self_attn.q.lora_A.default.weight` / `lora_B.default.weight` (also read by ComfyUI's
  `comfy/weight_adapter/lora.py`), with the `pipe.dit.` prefix when `--remove_prefix_in_ckpt` is not applied.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from wan_core.configs import DIT_CONFIGS
from wan_core.dit.loader import load_dit
from wan_core.dit.model import WanDiT, init_random_
from wan_core.errors import InputError
from wan_core.lora import LoraPatch, read_lora
from wan_core.patching import set_patches


@pytest.fixture(scope="module")
def base_file(tmp_path_factory) -> Path:
    """A tiny T2V DiT saved as one file; loaded in bf16 its norms and modulations stay float32 (as real ones)."""
    path = tmp_path_factory.mktemp("dit") / "tiny.safetensors"
    model = init_random_(WanDiT(DIT_CONFIGS["tiny-t2v"]), torch.Generator().manual_seed(3), std=0.1)
    save_file(model.state_dict(), str(path))
    return path


def save(tmp_path: Path, name: str, tensors: dict[str, torch.Tensor]) -> str:
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.clone() for k, v in tensors.items()}, str(path))
    return str(path)


def assert_merged(model: torch.nn.Module, base: dict, deltas: dict[str, torch.Tensor], strength: float) -> None:
    """Every parameter is base + strength * delta (deltas in float32), the others untouched."""
    for name, value in model.state_dict().items():
        expected = base[name].float() + strength * deltas[name] if name in deltas else base[name].float()
        tol = 1e-5 if value.dtype == torch.float32 else 2e-2
        torch.testing.assert_close(value.float(), expected, atol=tol, rtol=tol, msg=name)


def assert_restored(model: torch.nn.Module, base: dict) -> None:
    state = model.state_dict()
    assert all(torch.equal(state[k], base[k]) for k in base), [k for k in base if not torch.equal(state[k], base[k])]


def extracted_lora(model: torch.nn.Module, seed: int = 0) -> tuple[dict, dict]:
    """A LoraSave / LoraExtractKJ file of `model`'s shapes (fp16, ranks differing per module, no alpha), plus a
    "full_diff" `.diff` of the Conv3d patch embedding; returns (tensors, parameter -> float32 delta)."""
    gen = torch.Generator().manual_seed(seed)
    tensors, deltas = {}, {}
    for index, (name, param) in enumerate(model.named_parameters()):
        module, _, kind = name.rpartition(".")
        key = f"diffusion_model.{module}"
        if kind == "weight" and param.dim() == 2:
            rank = 2 + index % 3
            up = (torch.randn(param.shape[0], rank, generator=gen) * 0.1).half()
            down = (torch.randn(rank, param.shape[1], generator=gen) * 0.1).half()
            tensors[f"{key}.lora_up.weight"], tensors[f"{key}.lora_down.weight"] = up, down
            deltas[name] = up.float() @ down.float()
        elif kind in ("weight", "bias"):  # norms (1-D), the patch embedding (5-D, "full_diff"), biases
            diff = (torch.randn(param.shape, generator=gen) * 0.1).half()
            tensors[f"{key}.diff" if kind == "weight" else f"{key}.diff_b"] = diff
            deltas[name] = diff.float()
    return tensors, deltas


def test_extracted_lora_with_norm_diffs_merges_and_comes_off_exactly(base_file, tmp_path):
    """Norm and modulation weights stay float32 in the loaded model: their `.diff` must not change the weight in
    place before its original is kept (it did: a strength switch then added the diff again, removal kept it)."""
    model = load_dit(base_file, dtype=torch.bfloat16)
    assert model.blocks[0].norm3.weight.dtype == torch.float32
    base = {k: v.clone() for k, v in model.state_dict().items()}
    tensors, deltas = extracted_lora(model)
    assert {"diffusion_model.blocks.0.norm3.diff", "diffusion_model.blocks.0.self_attn.norm_q.diff",
            "diffusion_model.patch_embedding.diff", "diffusion_model.head.head.diff_b"} <= tensors.keys()
    path = save(tmp_path, "extracted", tensors)

    set_patches(model, [LoraPatch(path, 1.0)], "high_noise")
    assert_merged(model, base, deltas, 1.0)
    set_patches(model, [LoraPatch(path, 0.5)], "high_noise")
    assert_merged(model, base, deltas, 0.5)
    set_patches(model, [], "high_noise")
    assert_restored(model, base)


def test_a_conv3d_low_rank_pair_on_the_patch_embedding(base_file, tmp_path):
    """5-D down/up of the Conv3d patch embedding: up.flatten(1) @ down.flatten(1) reshaped to the weight (ComfyUI's
    `LoRAAdapter.calculate_weight`), times alpha / rank."""
    model = load_dit(base_file, dtype=torch.bfloat16)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    weight = model.patch_embedding.weight
    gen = torch.Generator().manual_seed(1)
    down = torch.randn(4, *weight.shape[1:], generator=gen).bfloat16()
    up = torch.randn(weight.shape[0], 4, 1, 1, 1, generator=gen).bfloat16()
    path = save(tmp_path, "conv", {"diffusion_model.patch_embedding.lora_down.weight": down,
                                   "diffusion_model.patch_embedding.lora_up.weight": up,
                                   "diffusion_model.patch_embedding.alpha": torch.tensor(2.0, dtype=torch.bfloat16)})
    set_patches(model, [LoraPatch(path, 0.8)], "single")
    delta = (up.float().flatten(1) @ down.float().flatten(1)).view(weight.shape) * 2.0 / 4
    assert_merged(model, base, {"patch_embedding.weight": delta}, 0.8)


def test_lightx2v_diff_m_is_the_delta_of_the_block_modulation(base_file, tmp_path):
    model = load_dit(base_file, dtype=torch.bfloat16)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(2)
    diff_m = torch.randn(1, 6, 64, generator=gen)
    path = save(tmp_path, "diff_m", {"diffusion_model.blocks.1.diff_m": diff_m.bfloat16()})
    assert list(read_lora(path).layers) == ["blocks.1.modulation"]
    set_patches(model, [LoraPatch(path, 0.5)], "single")
    assert_merged(model, base, {"blocks.1.modulation": diff_m.bfloat16().float()}, 0.5)
    set_patches(model, [], "single")
    assert_restored(model, base)


def i2v_pairs(gen: torch.Generator) -> dict[str, dict[str, torch.Tensor]]:
    """Image-branch keys of a Wan2.1 I2V LoRA in the three namings (official, kohya, diffusers)."""
    pair = {"down": torch.randn(4, 64, generator=gen), "up": torch.randn(64, 4, generator=gen)}
    return {
        "comfyui": {"diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight": pair["down"],
                    "diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight": pair["up"],
                    "diffusion_model.blocks.0.cross_attn.k_img.alpha": torch.tensor(4.0),
                    "diffusion_model.blocks.0.cross_attn.k_img.diff_b": torch.randn(64, generator=gen),
                    "diffusion_model.blocks.0.cross_attn.norm_k_img.diff": torch.randn(64, generator=gen),
                    "diffusion_model.blocks.1.cross_attn.v_img.lora_A.weight": pair["down"],
                    "diffusion_model.blocks.1.cross_attn.v_img.lora_B.weight": pair["up"],
                    "diffusion_model.img_emb.proj.1.lora_down.weight": pair["down"],
                    "diffusion_model.img_emb.proj.1.lora_up.weight": pair["up"]},
        "kohya": {"lora_unet_blocks_0_cross_attn_k_img.lora_down.weight": pair["down"],
                  "lora_unet_blocks_0_cross_attn_k_img.lora_up.weight": pair["up"],
                  "lora_unet_blocks_0_cross_attn_v_img.alpha": torch.tensor(4.0)},
        "diffusers": {"transformer.blocks.0.attn2.add_k_proj.lora_A.weight": pair["down"],
                      "transformer.blocks.0.attn2.add_k_proj.lora_B.weight": pair["up"],
                      "transformer.condition_embedder.image_embedder.ff.net.0.proj.lora_A.weight": pair["down"]},
    }


def text_pair(layout: str, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A rank-4 pair with alpha 8 on `blocks.0.cross_attn.k` in `layout`'s names."""
    stem, down, up = {"comfyui": ("diffusion_model.blocks.0.cross_attn.k", "lora_down", "lora_up"),
                      "kohya": ("lora_unet_blocks_0_cross_attn_k", "lora_down", "lora_up"),
                      "diffusers": ("transformer.blocks.0.attn2.to_k", "lora_A", "lora_B")}[layout]
    return {f"{stem}.{down}.weight": torch.randn(4, 64, generator=gen) * 0.1,
            f"{stem}.{up}.weight": torch.randn(64, 4, generator=gen) * 0.1, f"{stem}.alpha": torch.tensor(8.0)}


@pytest.mark.parametrize("layout", ["comfyui", "kohya", "diffusers"])
def test_a_wan21_i2v_lora_loads_without_its_image_branch_with_a_warning(base_file, tmp_path, caplog, layout):
    gen = torch.Generator().manual_seed(4)
    text, image = text_pair(layout, gen), i2v_pairs(gen)[layout]
    with_branch = save(tmp_path, "i2v", {**text, **image})
    without = save(tmp_path, "t2v", text)
    with caplog.at_level(logging.WARNING, logger="wan_core.lora.formats"):
        lora = read_lora(with_branch)
    assert (lora.layout, list(lora.layers)) == (layout, ["blocks.0.cross_attn.k"])
    assert f"left out {len(image)} key(s) of the CLIP image branch of Wan2.1 I2V" in caplog.text
    assert all(repr(k) in caplog.text for k in sorted(image)[:8])  # the first 8 names, then the count

    ours, reference = load_dit(base_file), load_dit(base_file)
    set_patches(ours, [LoraPatch(with_branch, 0.7)], "low_noise")
    set_patches(reference, [LoraPatch(without, 0.7)], "low_noise")
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in ours.state_dict().items())
    assert not torch.equal(ours.blocks[0].cross_attn.k.weight, load_dit(base_file).blocks[0].cross_attn.k.weight)


def test_a_file_of_image_branch_keys_only_and_truly_unknown_keys_are_errors(tmp_path):
    image_only = save(tmp_path, "image_only", i2v_pairs(torch.Generator().manual_seed(5))["comfyui"])
    with pytest.raises(InputError, match="changes only the CLIP image branch of Wan2.1 I2V"):
        read_lora(image_only)
    lycoris = save(tmp_path, "oft", {"lora_unet_blocks_0_self_attn_q.oft_blocks": torch.ones(4, 16, 16),
                                     "lora_unet_blocks_0_cross_attn_k_img.lora_down.weight": torch.ones(2, 64)})
    with pytest.raises(InputError, match=r"1 key\(s\).*'lora_unet_blocks_0_self_attn_q\.oft_blocks'\. OFT cannot"):
        read_lora(lycoris)


def test_wan_fun_double_underscore_kohya_names(base_file, tmp_path):
    gen = torch.Generator().manual_seed(6)
    kohya = text_pair("kohya", gen)
    fun = {k.replace("lora_unet_", "lora_unet__"): v for k, v in kohya.items()}
    assert "lora_unet__blocks_0_cross_attn_k.lora_down.weight" in fun
    ours, reference = load_dit(base_file), load_dit(base_file)
    set_patches(ours, [LoraPatch(save(tmp_path, "fun", fun), 1.0)], "single")
    set_patches(reference, [LoraPatch(save(tmp_path, "kohya", kohya), 1.0)], "single")
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in ours.state_dict().items())


@pytest.mark.parametrize("prefix", ["", "pipe.dit."])
def test_peft_adapter_named_keys_of_diffsynth_studio(base_file, tmp_path, prefix):
    """`lora_A.default.weight` / `lora_B.default.weight` without alpha (DiffSynth trains with lora_alpha = rank)."""
    model = load_dit(base_file)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(7)
    down, up = torch.randn(8, 64, generator=gen), torch.randn(128, 8, generator=gen)
    path = save(tmp_path, "diffsynth", {f"{prefix}blocks.1.ffn.0.lora_A.default.weight": down,
                                        f"{prefix}blocks.1.ffn.0.lora_B.default.weight": up})
    set_patches(model, [LoraPatch(path, 0.5)], "single")
    assert_merged(model, base, {"blocks.1.ffn.0.weight": up @ down}, 0.5)
