"""The shared weight-file layer: shard discovery, corrupt files, ComfyUI quantized formats."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from wan_core.errors import CorruptFileError, MissingFileError
from wan_core.io.files import find_weight_files
from wan_core.io.quant import dequantize, quantize_fp8_scaled
from wan_core.io.state_dict import read_safetensors, read_torch_file, strip_prefix


def _write_shards(folder, names, with_index=True):
    folder.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for i, name in enumerate(names):
        save_file({f"w{i}": torch.full((2,), float(i))}, str(folder / name))
        weight_map[f"w{i}"] = name
    if with_index:
        (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


SHARDS = [f"diffusion_pytorch_model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]


def test_index_lists_shards_in_order(tmp_path):
    _write_shards(tmp_path, SHARDS)
    assert [p.name for p in find_weight_files(tmp_path)] == SHARDS


def test_renamed_shards_match_index_by_number(tmp_path):
    renamed = [n.replace(".safetensors", "-bf16.safetensors") for n in SHARDS]
    _write_shards(tmp_path, renamed, with_index=False)
    index = {"weight_map": {f"w{i}": n for i, n in enumerate(SHARDS)}}
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    assert [p.name for p in find_weight_files(tmp_path)] == renamed


def test_shards_without_index_are_found(tmp_path):
    renamed = [n.replace(".safetensors", "-bf16.safetensors") for n in SHARDS]
    _write_shards(tmp_path, renamed, with_index=False)
    files = find_weight_files(tmp_path)
    assert [p.name for p in files] == renamed
    assert sorted(read_safetensors(files)) == ["w0", "w1", "w2"]


def test_missing_shard_is_named(tmp_path):
    _write_shards(tmp_path, SHARDS)
    (tmp_path / SHARDS[1]).unlink()
    with pytest.raises(MissingFileError, match="00002-of-00003") as info:
        find_weight_files(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_missing_shard_without_index_is_named(tmp_path):
    _write_shards(tmp_path, [SHARDS[0], SHARDS[2]], with_index=False)
    with pytest.raises(MissingFileError, match="00002-of-00003"):
        find_weight_files(tmp_path)


def test_empty_folder_says_what_it_holds(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(MissingFileError, match="notes.txt"):
        find_weight_files(tmp_path)


def test_truncated_safetensors_names_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match="model.safetensors"):
        read_safetensors(path)


def test_legacy_format_pth_loads(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.arange(4.0)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(read_torch_file(path)["w"], torch.arange(4.0))


class ArbitraryObject:
    """A pickled class a malicious .pth could carry: weights_only loading must refuse it."""


def test_pth_is_loaded_weights_only(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"w": torch.ones(3)}, good)
    assert torch.equal(read_torch_file(good)["w"], torch.ones(3))

    bad = tmp_path / "pickle.pth"
    torch.save({"w": ArbitraryObject()}, bad)
    with pytest.raises(CorruptFileError, match="pickle.pth"):
        read_torch_file(bad)


def test_strip_prefix():
    sd = {"model.diffusion_model.a": torch.zeros(1), "model.diffusion_model.b": torch.zeros(1)}
    assert sorted(strip_prefix(sd, ["model.diffusion_model."])) == ["a", "b"]
    assert sorted(strip_prefix({"a": torch.zeros(1)}, ["model.diffusion_model."])) == ["a"]


@pytest.mark.parametrize("new_format", [False, True])
def test_fp8_round_trip(new_format):
    torch.manual_seed(0)
    sd = {"layer.weight": torch.randn(32, 16), "layer.bias": torch.randn(32), "norm.weight": torch.randn(16, 16)}
    quantized = quantize_fp8_scaled(sd, new_format=new_format)
    assert quantized["layer.weight"].dtype == torch.float8_e4m3fn
    restored = dequantize(quantized, torch.float32)
    assert sorted(restored) == sorted(sd)
    err = (restored["layer.weight"] - sd["layer.weight"]).abs().max() / sd["layer.weight"].abs().max()
    assert err < 0.07  # e4m3 keeps 3 mantissa bits: relative step 2^-4 at most
    assert torch.equal(restored["layer.bias"], sd["layer.bias"])


def test_int8_blockwise_metadata_format():
    weight = torch.randint(-127, 127, (4, 6), dtype=torch.int8)
    scale = torch.tensor([[0.5, 2.0, 1.0], [1.0, 3.0, 0.25]])
    header = {"_quantization_metadata": json.dumps({"layers": {"lin": {"format": "int8_blockwise", "group_size": 2}}})}
    out = dequantize({"lin.weight": weight, "lin.weight_scale": scale}, torch.float32, header)
    expected = weight.float() * scale.repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.equal(out["lin.weight"], expected)
