"""Loading the Wan VAEs from every file layout, key maps, config detection, and the errors for bad files."""

from __future__ import annotations

import json
import re

import pytest
import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import save_file

from wan_core.errors import ConfigMismatchError, CorruptFileError, KeyMismatchError, MissingFileError
from wan_core.vae import VAE_CONFIGS, WanVAE, build_vae, load_vae, official_state_dict
from wan_core.vae.keymap import diffusers_config, diffusers_to_official, official_to_diffusers
from wan_core.vae.loader import infer_config
from wan_core.vae.network import WanVAENet

TINY = ["tiny-wan2.1", "tiny-wan2.2"]
FILE_NAMES = {
    "tiny-wan2.1": ("Wan2.1_VAE.pth", "wan_2.1_vae.safetensors"),
    "tiny-wan2.2": ("Wan2.2_VAE.pth", "wan2.2_vae.safetensors"),
}


def randomized(name: str, seed: int = 0) -> WanVAE:
    torch.manual_seed(seed)
    vae = build_vae(name)
    with torch.no_grad():
        for param in vae.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return vae


def write_diffusers_folder(state_dict: dict, name: str, folder) -> None:
    model = AutoencoderKLWan(**diffusers_config(VAE_CONFIGS[name]))
    model.load_state_dict(official_to_diffusers(state_dict), strict=True)
    model.save_pretrained(folder)


@pytest.fixture(scope="module", params=TINY)
def written(request, tmp_path_factory):
    """A random tiny VAE and the files of every layout holding its weights."""
    name = request.param
    vae = randomized(name)
    sd = official_state_dict(vae)
    root = tmp_path_factory.mktemp(name)
    pth, comfy = FILE_NAMES[name]
    torch.save(sd, root / pth)
    save_file(sd, str(root / comfy))
    write_diffusers_folder(sd, name, root / "diffusers")
    (root / "pipeline" / "vae").mkdir(parents=True)
    write_diffusers_folder(sd, name, root / "pipeline" / "vae")
    save_file(official_to_diffusers(sd), str(root / "vae_diffusers_single.safetensors"))
    paths = {
        "official .pth": root / pth,
        "ComfyUI safetensors": root / comfy,
        "diffusers folder": root / "diffusers",
        "diffusers pipeline folder": root / "pipeline",
        "diffusers single file": root / "vae_diffusers_single.safetensors",
    }
    return name, vae, sd, paths


def test_every_layout_loads_to_identical_outputs(written):
    name, vae, sd, paths = written
    torch.manual_seed(3)
    s = vae.stride[1]
    video = torch.rand(1, 3, 5, 2 * s, 2 * s) * 2 - 1
    latents = vae.encode(video)
    decoded = vae.decode(latents)
    for layout, path in paths.items():
        loaded = load_vae(path)
        assert loaded.config == VAE_CONFIGS[name], layout
        assert (loaded.variant, loaded.z_dim, loaded.stride) == (vae.variant, vae.z_dim, vae.stride), layout
        assert loaded.dtype == torch.float32
        assert not loaded.training
        assert not any(t.is_meta for t in loaded.state_dict().values()), layout
        assert set(official_state_dict(loaded)) == set(sd), layout
        assert torch.equal(loaded.encode(video), latents), layout
        assert torch.equal(loaded.decode(latents), decoded), layout


def test_dtype_choice(written):
    name, vae, sd, paths = written
    loaded = load_vae(paths["official .pth"], dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    # a bf16 file (as ComfyUI ships) keeps its dtype when none is asked for; results come back in fp32
    bf16 = paths["ComfyUI safetensors"].with_name("bf16.safetensors")
    save_file({k: v.to(torch.bfloat16) for k, v in sd.items()}, str(bf16))
    half = load_vae(bf16)
    assert half.dtype == torch.bfloat16
    s = vae.stride[1]
    video = torch.rand(1, 3, 1, 2 * s, 2 * s) * 2 - 1
    lat = half.encode(video)
    assert lat.dtype == torch.float32
    ref = vae.encode(video)
    assert ((lat - ref).abs().max() / ref.abs().max()).item() < 0.1  # bf16 rounding only
    assert half.decode(lat).dtype == torch.float32


@pytest.mark.parametrize("name", ["wan2.1", "wan2.2"])
def test_full_size_keymap_and_detection(name):
    """The real-size networks (built on meta) have exactly diffusers' keys and shapes once mapped, and the config
    read back from their shapes is the published one."""
    config = VAE_CONFIGS[name]
    with torch.device("meta"):
        ours = WanVAENet(config)
        ref = AutoencoderKLWan(**diffusers_config(config))
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    mapped = official_to_diffusers(ours_sd)
    assert set(mapped) == set(ref_sd)
    assert all(mapped[k].shape == ref_sd[k].shape for k in mapped)
    assert set(diffusers_to_official(ref_sd)) == set(ours_sd)
    assert infer_config(ours_sd) == config
    assert WanVAE(config).stride == ((4, 8, 8) if name == "wan2.1" else (4, 16, 16))
    params = sum(p.numel() for p in ours.parameters())
    assert params == (126_892_531 if name == "wan2.1" else 704_688_668)


OFFICIAL_KEYS_21 = [
    "encoder.conv1.weight",
    "encoder.downsamples.2.resample.1.weight",
    "encoder.downsamples.5.time_conv.bias",
    "encoder.middle.1.to_qkv.weight",
    "encoder.head.0.gamma",
    "conv1.weight",
    "conv2.bias",
    "decoder.upsamples.3.time_conv.weight",
    "decoder.upsamples.4.shortcut.weight",
    "decoder.head.2.weight",
]
OFFICIAL_KEYS_22 = [
    "encoder.downsamples.0.downsamples.2.resample.1.weight",
    "encoder.downsamples.1.downsamples.2.time_conv.weight",
    "decoder.upsamples.0.upsamples.3.time_conv.weight",
    "decoder.upsamples.2.upsamples.3.resample.1.weight",
    "decoder.upsamples.0.upsamples.0.residual.2.weight",
]


def test_wan21_keymap_agrees_with_diffusers_single_file_converter():
    """diffusers' own converter of the official Wan2.1 file maps every key as we do."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    with torch.device("meta"):
        keys = list(WanVAENet(VAE_CONFIGS["wan2.1"]).state_dict())
    theirs = convert_wan_vae_to_diffusers({k: k for k in keys})  # values carry the official name through
    ours = official_to_diffusers({k: k for k in keys})
    assert ours == theirs


def test_official_keys_are_the_reference_names():
    sd = WanVAENet(VAE_CONFIGS["tiny-wan2.1"]).state_dict()
    assert all(key in sd for key in OFFICIAL_KEYS_21)
    sd22 = WanVAENet(VAE_CONFIGS["tiny-wan2.2"]).state_dict()
    assert all(key in sd22 for key in OFFICIAL_KEYS_22)
    assert not any(k.startswith("decoder.upsamples.3.upsamples.3") for k in sd22)


# --- errors --------------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "Wan2.1_VAE.pth"
    with pytest.raises(MissingFileError, match=re.escape(str(path))):
        load_vae(path)
    with pytest.raises(MissingFileError, match="does not exist"):
        load_vae(tmp_path / "nowhere")


def test_corrupt_files_name_the_file(written, tmp_path):
    _, _, _, paths = written
    truncated = tmp_path / "wan_2.1_vae.safetensors"
    truncated.write_bytes(paths["ComfyUI safetensors"].read_bytes()[:1000])
    with pytest.raises(CorruptFileError, match=re.escape(str(truncated))):
        load_vae(truncated)
    garbage = tmp_path / "Wan2.1_VAE.pth"
    garbage.write_bytes(b"this is not a torch file" * 10)
    with pytest.raises(CorruptFileError, match=re.escape(str(garbage))):
        load_vae(garbage)
    cut_pth = tmp_path / "cut.pth"
    cut_pth.write_bytes(paths["official .pth"].read_bytes()[:5000])
    with pytest.raises(CorruptFileError, match="cut.pth"):
        load_vae(cut_pth)


def test_missing_and_unexpected_keys_are_named(written, tmp_path):
    _, _, sd, _ = written
    partial = dict(sd)
    del partial["decoder.head.2.bias"]
    partial["decoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.safetensors"
    save_file(partial, str(path))
    with pytest.raises(KeyMismatchError) as info:
        load_vae(path)
    message = str(info.value)
    assert "partial.safetensors" in message
    assert "missing 1: 'decoder.head.2.bias'" in message
    assert "unexpected 1: 'decoder.extra.weight'" in message


def test_missing_diffusers_key_is_named_as_in_the_file(written, tmp_path):
    _, _, sd, _ = written
    dsd = official_to_diffusers(sd)
    del dsd["decoder.mid_block.attentions.0.proj.bias"]
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file(dsd, str(path))
    with pytest.raises(KeyMismatchError, match=r"missing 1: 'decoder\.mid_block\.attentions\.0\.proj\.bias'"):
        load_vae(path)


def test_wrong_shape_is_named(written, tmp_path):
    _, _, sd, _ = written
    bad = dict(sd)
    bad["decoder.middle.1.proj.bias"] = torch.zeros(bad["decoder.middle.1.proj.bias"].shape[0] + 1)
    path = tmp_path / "bad_shape.safetensors"
    save_file(bad, str(path))
    with pytest.raises(ConfigMismatchError, match=r"decoder\.middle\.1\.proj\.bias"):
        load_vae(path)


def test_not_a_vae(tmp_path):
    path = tmp_path / "umt5_xxl_fp16.safetensors"
    save_file({"encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(KeyMismatchError, match="is not a Wan VAE"):
        load_vae(path)


def test_diffusers_folder_problems(written, tmp_path):
    name, _, sd, paths = written
    empty = tmp_path / "vae"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(MissingFileError, match="diffusion_pytorch_model"):
        load_vae(empty)

    folder = tmp_path / "bad_config"
    write_diffusers_folder(sd, name, folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match=re.escape(str(folder / "config.json"))):
        load_vae(folder)

    other = tmp_path / "other_config"
    write_diffusers_folder(sd, name, other)
    config = json.loads((other / "config.json").read_text())
    config["z_dim"] = 4
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigMismatchError, match="z_dim=4"):
        load_vae(other)
