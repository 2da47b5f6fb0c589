"""Every checkpoint layout `load_dit` accepts, written by the test itself, and the broken variants' errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import wan_core
from wan_core.configs import DIT_CONFIGS, WanDiTConfig
from wan_core.dit.keymap import official_to_diffusers
from wan_core.dit.loader import load_dit
from wan_core.dit.model import WanDiT, init_random_
from wan_core.errors import ConfigMismatchError, CorruptFileError, KeyMismatchError, MissingFileError
from wan_core.io.quant import dequantize, quantize_fp8_scaled
from wan_core.io.writers import write_safetensors, write_sharded

CFG = DIT_CONFIGS["tiny-t2v"]
TOL = 1e-5  # fp32; memory-mapped tensors may take other (equally exact) BLAS paths
FP8_TOL = 0.1  # e4m3 keeps 3 mantissa bits: a few percent per weight


@pytest.fixture(scope="module")
def reference():
    model = init_random_(WanDiT(CFG), torch.Generator().manual_seed(11)).eval()
    gen = torch.Generator().manual_seed(5)
    inputs = (torch.randn(1, 16, 3, 8, 8, generator=gen), torch.tensor([640.0]), [torch.randn(9, 64, generator=gen)])
    with torch.no_grad():
        out = model(*inputs)
    return {k: v.clone() for k, v in model.state_dict().items()}, inputs, out


def _output(model: WanDiT, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(*inputs)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _reference_from(state: dict[str, torch.Tensor], inputs) -> torch.Tensor:
    model = WanDiT(CFG)
    model.load_state_dict(state, strict=True)
    return _output(model.eval(), inputs)


def _official_folder(state, folder: Path, **kwargs) -> Path:
    write_sharded(state, folder, num_shards=3, **kwargs)
    (folder / "config.json").write_text(json.dumps(CFG.to_official_json(), indent=2))
    return folder


# --- layouts ---------------------------------------------------------------------------------------------------
def test_official_folder_with_shards_and_index(reference, tmp_path):
    state, inputs, out = reference
    folder = _official_folder(state, tmp_path / "high_noise_model")
    assert (folder / "diffusion_pytorch_model.safetensors.index.json").is_file()
    model = load_dit(folder)
    assert model.config == CFG
    assert _rel(_output(model, inputs), out) < TOL


def test_public_entry_point(reference, tmp_path):
    state, inputs, out = reference
    folder = _official_folder(state, tmp_path / "low_noise_model")
    assert _rel(_output(wan_core.load_dit(folder), inputs), out) < TOL


def test_renamed_bf16_shards_without_index(reference, tmp_path):
    state, inputs, _ = reference
    bf16 = {k: v.to(torch.bfloat16) for k, v in state.items()}
    folder = tmp_path / "mirror"
    paths = write_sharded(bf16, folder, num_shards=3, suffix="-bf16", write_index=False)
    assert paths[0].name == "diffusion_pytorch_model-00001-of-00003-bf16.safetensors"
    (folder / "config.json").write_text(json.dumps(CFG.to_official_json()))
    model = load_dit(folder, dtype=torch.float32)
    expected = _reference_from({k: v.float() for k, v in bf16.items()}, inputs)
    assert _rel(_output(model, inputs), expected) < TOL
    # as stored: bf16 compute, float32 time embedding / modulation / norms
    stored = load_dit(folder)
    assert stored.dtype == torch.bfloat16
    assert stored.blocks[0].ffn[0].weight.dtype == torch.bfloat16
    assert stored.blocks[0].modulation.dtype == torch.float32
    assert stored.time_projection[1].weight.dtype == torch.float32
    assert _rel(_output(stored, inputs), expected) < 0.05


def test_index_naming_plain_shards_that_a_mirror_renamed(reference, tmp_path):
    state, inputs, out = reference
    folder = _official_folder(state, tmp_path / "renamed")
    for path in folder.glob("*-of-*.safetensors"):
        path.rename(path.with_name(path.name.replace(".safetensors", "-bf16.safetensors")))
    assert _rel(_output(load_dit(folder), inputs), out) < TOL


def test_comfyui_prefixed_single_file(reference, tmp_path):
    state, inputs, out = reference
    path = write_safetensors({f"model.diffusion_model.{k}": v.half() for k, v in state.items()},
                             tmp_path / "wan2.2_t2v_high_noise_14B_fp16.safetensors")
    model = load_dit(path, dtype=torch.float32)  # no config.json: the config comes from the shapes
    assert model.config == CFG
    expected = _reference_from({k: v.half().float() for k, v in state.items()}, inputs)
    assert _rel(_output(model, inputs), expected) < TOL


def test_comfyui_bare_single_file(reference, tmp_path):
    state, inputs, out = reference
    path = write_safetensors(state, tmp_path / "bare.safetensors")
    assert _rel(_output(load_dit(path), inputs), out) < TOL


FP8_MODES = {  # load_dit options -> (block weights stay fp8, fp8 matmuls where the GPU has them)
    "dequantized": ({"fp8_weights": False}, False, False),
    "as-stored": ({"fp8_weights": None}, True, False),
    "fp8-weights": ({"fp8_weights": True}, True, False),
    "fp8-compute": ({"fp8_compute": True}, True, True),
}


@pytest.mark.parametrize("new_format", [False, True], ids=["scale_weight", "weight_scale+comfy_quant"])
@pytest.mark.parametrize("mode", list(FP8_MODES))
def test_fp8_scaled_single_file(reference, tmp_path, new_format, mode):
    state, inputs, out = reference
    options, keeps_fp8, scaled_mm = FP8_MODES[mode]
    quantized = quantize_fp8_scaled(state, new_format=new_format)
    assert ("scaled_fp8" in quantized) != new_format
    path = write_safetensors({f"model.diffusion_model.{k}": v for k, v in quantized.items()},
                             tmp_path / "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors")
    model = load_dit(path, dtype=torch.float32, **options)
    q_layer = model.blocks[0].self_attn.q
    assert q_layer.weight.dtype == (torch.float8_e4m3fn if keeps_fp8 else torch.float32)
    assert getattr(q_layer, "scaled_mm", False) == scaled_mm
    assert model.time_projection[1].weight.dtype == torch.float32
    got = _output(model, inputs)
    dequantized = _reference_from(dequantize(quantized, torch.float32), inputs)
    assert _rel(got, dequantized) < 1e-4
    assert _rel(got, out) < FP8_TOL
    default = load_dit(path)  # fp8 files load as bf16 unless told otherwise
    assert default.dtype == torch.bfloat16


@pytest.mark.parametrize("mode", ["fp8-weights", "fp8-compute"])
def test_fp8_modes_quantize_plain_weights(reference, tmp_path, mode):
    state, inputs, out = reference
    path = write_safetensors(state, tmp_path / "plain.safetensors")
    model = load_dit(path, dtype=torch.float32, **FP8_MODES[mode][0])
    assert model.blocks[1].ffn[2].weight.dtype == torch.float8_e4m3fn
    assert _rel(_output(model, inputs), out) < FP8_TOL


def test_as_stored_keeps_a_plain_file_plain(reference, tmp_path):
    state, inputs, out = reference
    model = load_dit(write_safetensors(state, tmp_path / "plain.safetensors"), fp8_weights=None)
    assert model.blocks[1].ffn[2].weight.dtype == torch.float32
    assert _rel(_output(model, inputs), out) < 1e-6


def test_diffusers_folder_and_single_file(reference, tmp_path):
    state, inputs, out = reference
    folder = tmp_path / "transformer"
    write_safetensors(official_to_diffusers(state), folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text(json.dumps(CFG.to_diffusers_json()))
    assert _rel(_output(load_dit(folder), inputs), out) < TOL
    sharded = tmp_path / "transformer_2"
    write_sharded(official_to_diffusers(state), sharded, num_shards=2)
    (sharded / "config.json").write_text(json.dumps(CFG.to_diffusers_json()))
    assert _rel(_output(load_dit(sharded), inputs), out) < TOL
    single = write_safetensors(official_to_diffusers(state), tmp_path / "wan_diffusers.safetensors")
    assert _rel(_output(load_dit(single), inputs), out) < TOL


def test_official_pth(reference, tmp_path):
    state, inputs, out = reference
    torch.save(state, tmp_path / "model.pth")
    assert _rel(_output(load_dit(tmp_path / "model.pth"), inputs), out) < TOL


def test_loads_without_second_copy(reference, tmp_path):
    state, _, _ = reference
    folder = _official_folder(state, tmp_path / "m")
    model = load_dit(folder, dtype=torch.bfloat16)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert not any(p.requires_grad for p in model.parameters())


# --- configs -----------------------------------------------------------------------------------------------------
def test_official_config_json_round_trip():
    for cfg in DIT_CONFIGS.values():
        assert WanDiTConfig.from_official_json(cfg.to_official_json()) == cfg
        assert WanDiTConfig.from_official_json(cfg.to_diffusers_json()) == cfg
    assert DIT_CONFIGS["t2v-A14B"].to_official_json() == {
        "_class_name": "WanModel", "_diffusers_version": "0.33.0", "dim": 5120, "eps": 1e-06, "ffn_dim": 13824,
        "freq_dim": 256, "in_dim": 16, "model_type": "t2v", "num_heads": 40, "num_layers": 40, "out_dim": 16,
        "text_len": 512,
    }
    assert DIT_CONFIGS["ti2v-5B"].to_official_json()["in_dim"] == 48


def test_official_parameter_names():
    names = dict(WanDiT(DIT_CONFIGS["tiny-i2v"]).state_dict())
    assert names["patch_embedding.weight"].shape == (64, 36, 1, 2, 2)
    assert names["blocks.1.modulation"].shape == (1, 6, 64)
    assert names["head.modulation"].shape == (1, 2, 64)
    assert names["head.head.weight"].shape == (4 * 16, 64)
    for key in ("blocks.0.self_attn.q.weight", "blocks.0.self_attn.norm_q.weight", "blocks.0.cross_attn.o.bias",
                "blocks.0.norm3.weight", "blocks.0.ffn.2.weight", "text_embedding.2.weight", "time_embedding.0.bias",
                "time_projection.1.weight"):
        assert key in names


# --- broken variants ---------------------------------------------------------------------------------------------
def test_missing_shard_is_named(reference, tmp_path):
    state, _, _ = reference
    folder = _official_folder(state, tmp_path / "high_noise_model")
    os.remove(folder / "diffusion_pytorch_model-00002-of-00003.safetensors")
    with pytest.raises(MissingFileError) as err:
        load_dit(folder)
    message = str(err.value)
    assert "diffusion_pytorch_model-00002-of-00003.safetensors" in message
    assert "missing" in message and str(folder) in message


def test_missing_renamed_shard_without_index_is_named(reference, tmp_path):
    state, _, _ = reference
    folder = tmp_path / "mirror"
    write_sharded(state, folder, num_shards=3, suffix="-bf16", write_index=False)
    os.remove(folder / "diffusion_pytorch_model-00003-of-00003-bf16.safetensors")
    with pytest.raises(MissingFileError, match="00003-of-00003"):
        load_dit(folder)


def test_truncated_file_is_named(reference, tmp_path):
    state, _, _ = reference
    folder = _official_folder(state, tmp_path / "m")
    shard = folder / "diffusion_pytorch_model-00001-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CorruptFileError) as err:
        load_dit(folder)
    assert shard.name in str(err.value) and "download it again" in str(err.value)
    single = write_safetensors(state, tmp_path / "single.safetensors")
    single.write_bytes(single.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match="single.safetensors"):
        load_dit(single)


def test_wrong_config_names_the_field(reference, tmp_path):
    state, _, _ = reference
    folder = _official_folder(state, tmp_path / "m")
    (folder / "config.json").write_text(json.dumps({**CFG.to_official_json(), "num_layers": 3}))
    with pytest.raises(ConfigMismatchError) as err:
        load_dit(folder)
    assert "num_layers=3" in str(err.value) and "config.json" in str(err.value)
    with pytest.raises(ConfigMismatchError, match="in_dim=36"):
        load_dit(folder, config=DIT_CONFIGS["tiny-i2v"])
    (folder / "config.json").write_text(json.dumps({**CFG.to_official_json(), "ffn_dim": 256}))
    with pytest.raises(ConfigMismatchError, match="ffn_dim=256"):
        load_dit(folder)


def test_missing_and_unexpected_keys_are_listed(reference, tmp_path):
    state, _, _ = reference
    broken = dict(state)
    broken.pop("blocks.1.ffn.2.bias")
    broken.pop("blocks.0.self_attn.norm_k.weight")
    broken["img_emb.proj.0.weight"] = torch.zeros(2)
    path = write_safetensors(broken, tmp_path / "broken.safetensors")
    with pytest.raises(KeyMismatchError) as err:
        load_dit(path)
    message = str(err.value)
    assert "missing 2:" in message and "'blocks.1.ffn.2.bias'" in message
    assert "unexpected 1:" in message and "img_emb" in message and "Wan2.1" in message


def test_not_a_dit(tmp_path):
    path = write_safetensors({"encoder.conv1.weight": torch.zeros(2, 2)}, tmp_path / "vae.safetensors")
    with pytest.raises(KeyMismatchError, match="does not hold a Wan DiT"):
        load_dit(path)
    with pytest.raises(MissingFileError, match="does not exist"):
        load_dit(tmp_path / "nowhere")
    (tmp_path / "root" / "high_noise_model").mkdir(parents=True)
    (tmp_path / "root" / "low_noise_model").mkdir()
    with pytest.raises(MissingFileError, match="high_noise_model"):
        load_dit(tmp_path / "root")
