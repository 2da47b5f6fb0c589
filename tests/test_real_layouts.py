"""DiT checkpoints in the layouts of published files that the other loading tests do not write, each made here in
that exact layout (tiny model, random weights):

- ComfyUI's mixed-precision format (`comfy/ops.py` `_load_quantized_module`, `comfy/quant_ops.py` `QUANT_ALGOS`):
  `<layer>.comfy_quant` JSON tensors and/or the `_quantization_metadata` header, `weight_scale`, `input_scale`,
  and the `nvfp4` (Kijai/WanVideo_comfy_nvfp4) and `mxfp8` layers, packed and tiled as comfy_kitchen stores them
  (`quantize_nvfp4`, `quantize_mxfp8`, `to_blocked`);
- fp8 files without scales (Kijai's `*_fp8_e4m3fn` / `*_fp8_e5m2`);
- GGUF files whose 5-D `patch_embedding.weight` is an F32 tensor with 5 dims, as city96's `tools/fix_5d_tensors.py`
  writes it, and files with an upper-case `.GGUF` suffix.
"""

from __future__ import annotations

import json

import pytest
import torch

from wan_core.configs import DIT_CONFIGS
from wan_core.dit.loader import load_dit
from wan_core.dit.model import WanDiT, init_random_
from wan_core.errors import CheckpointError
from wan_core.io.writers import write_safetensors

CFG = DIT_CONFIGS["tiny-t2v"]
PREFIX = "model.diffusion_model."
E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])


@pytest.fixture(scope="module")
def reference():
    model = init_random_(WanDiT(CFG), torch.Generator().manual_seed(11)).eval()
    gen = torch.Generator().manual_seed(5)
    inputs = (torch.randn(1, 16, 3, 8, 8, generator=gen), torch.tensor([640.0]), [torch.randn(9, 64, generator=gen)])
    return {k: v.clone() for k, v in model.state_dict().items()}, inputs


def _output(model: WanDiT, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(*inputs)


def _expected(state: dict[str, torch.Tensor], inputs) -> torch.Tensor:
    model = WanDiT(CFG)
    model.load_state_dict(state, strict=True)
    return _output(model.eval(), inputs)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _block_linear(key: str, value: torch.Tensor) -> bool:
    return key.startswith("blocks.") and key.endswith(".weight") and value.dim() == 2


def _comfy_quant(config: dict) -> torch.Tensor:
    return torch.tensor(list(json.dumps(config).encode()), dtype=torch.uint8)


def _tiled(scales: torch.Tensor) -> torch.Tensor:
    """comfy_kitchen `to_blocked(..., flatten=False)`: rows padded to 128, columns to 4, 128 x 4 tiles reordered."""
    rows, cols = scales.shape
    padded = torch.zeros(-(-rows // 128) * 128, -(-cols // 4) * 4, dtype=scales.dtype)
    padded[:rows, :cols] = scales
    blocks = padded.view(padded.shape[0] // 128, 128, padded.shape[1] // 4, 4).permute(0, 2, 1, 3)
    return blocks.reshape(-1, 4, 32, 4).transpose(1, 2).reshape(padded.shape)


def _nvfp4(weight: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(the tensors ComfyUI stores for an nvfp4 layer, the weight they stand for)."""
    tensor_scale = weight.abs().amax() / (448.0 * 6.0)
    blocks = weight.view(weight.shape[0], -1, 16)
    block_scale = (blocks.abs().amax(-1) / 6.0 / tensor_scale).to(torch.float8_e4m3fn)
    total = tensor_scale * block_scale.float()
    codes = ((blocks / total[..., None]).unsqueeze(-1) - E2M1).abs().argmin(-1).view(weight.shape).to(torch.uint8)
    packed = (codes[:, 0::2] << 4) | codes[:, 1::2]  # the even value in the high nibble (hi_first)
    stands_for = (E2M1[codes.long()].view_as(blocks) * total[..., None]).view(weight.shape)
    stored = {"weight": packed, "weight_scale": _tiled(block_scale), "weight_scale_2": tensor_scale.float(),
              "input_scale": torch.tensor(1.0)}
    return stored, stands_for


def _mxfp8(weight: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(the tensors ComfyUI stores for an mxfp8 layer, the weight they stand for)."""
    blocks = weight.view(weight.shape[0], -1, 32)
    exponent = torch.ceil(torch.log2(blocks.abs().amax(-1) / 448.0)).to(torch.int32) + 127
    values = (blocks / torch.exp2(exponent - 127.0)[..., None]).view(weight.shape).to(torch.float8_e4m3fn)
    stands_for = (values.float().view_as(blocks) * torch.exp2(exponent - 127.0)[..., None]).view(weight.shape)
    scales = _tiled(exponent.to(torch.uint8)).view(torch.float8_e8m0fnu)
    return {"weight": values, "weight_scale": scales}, stands_for


def _mixed_file(state: dict[str, torch.Tensor], fmt: str, path, *, per_layer_configs: bool):
    """A ComfyUI mixed-precision file: the block linears in `fmt`, the rest bf16, keys prefixed; the layer configs
    in the header and (`per_layer_configs`) as `.comfy_quant` tensors. Returns (path, the weights it stands for)."""
    quantize = {"nvfp4": _nvfp4, "mxfp8": _mxfp8}[fmt]
    tensors, stands_for, layers = {}, {}, {}
    for key, value in state.items():
        if not _block_linear(key, value):
            tensors[PREFIX + key] = value.bfloat16()
            stands_for[key] = value.bfloat16().float()
            continue
        layer = key.removesuffix(".weight")
        stored, stands_for[key] = quantize(value)
        tensors.update({f"{PREFIX}{layer}.{suffix}": tensor for suffix, tensor in stored.items()})
        layers[PREFIX + layer] = {"format": fmt}
        if per_layer_configs:
            tensors[f"{PREFIX}{layer}.comfy_quant"] = _comfy_quant({"format": fmt})
    header = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})}
    return write_safetensors(tensors, path, header), stands_for


@pytest.mark.parametrize("per_layer_configs", [True, False], ids=["comfy_quant", "header-only"])
@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp8"])
def test_comfy_mixed_precision_file(reference, tmp_path, fmt, per_layer_configs):
    state, inputs = reference
    path, stands_for = _mixed_file(state, fmt, tmp_path / f"wan2.2_t2v_high_noise_14B_{fmt}.safetensors",
                                   per_layer_configs=per_layer_configs)
    expected = _expected(stands_for, inputs)
    model = load_dit(path, dtype=torch.float32)
    assert model.config == CFG
    assert model.blocks[0].ffn[0].weight.shape == (CFG.ffn_dim, CFG.dim)
    assert _rel(_output(model, inputs), expected) < 1e-5
    as_stored = load_dit(path, dtype=torch.float32, fp8_weights=None)
    assert _rel(_output(as_stored, inputs), expected) < (1e-5 if fmt == "nvfp4" else 0.05)


def test_nvfp4_packing_is_high_nibble_first():
    """One hand-made nvfp4 row: bytes 0x2C, 0x70 hold 1.0, -2.0, 6.0, 0.0 (codes 2, 12, 7, 0) and 12 zeros; block
    scale 0.5 (e4m3), tensor scale 3.0."""
    from wan_core.io.quant import dequantize

    packed = torch.zeros(1, 8, dtype=torch.uint8)
    packed[0, :2] = torch.tensor([0x2C, 0x70], dtype=torch.uint8)
    block_scale = torch.zeros(1, 1).to(torch.float8_e4m3fn)
    block_scale[0, 0] = 0.5
    state = {"l.weight": packed, "l.weight_scale": _tiled(block_scale), "l.weight_scale_2": torch.tensor(3.0),
             "l.comfy_quant": _comfy_quant({"format": "nvfp4"})}
    weight = dequantize(state, torch.float32)["l.weight"]
    assert weight.shape == (1, 16)
    assert weight[0, :4].tolist() == [1.5, -3.0, 9.0, 0.0] and not weight[0, 4:].any()


@pytest.mark.parametrize("config", [{"format": "convrot_w4a4"}, {"format": "int8_tensorwise", "convrot": True},
                                    {"format": "awq_w4a16", "group_size": 64}])
def test_unreadable_comfy_format_is_named(reference, tmp_path, config):
    state, _ = reference
    tensors = {PREFIX + k: v for k, v in state.items()}
    layer = f"{PREFIX}blocks.1.ffn.2"
    tensors[layer + ".weight"] = torch.zeros(CFG.dim, CFG.ffn_dim // 2, dtype=torch.int8)  # packed int4, as stored
    tensors[layer + ".weight_scale"] = torch.ones(CFG.dim, 1)
    tensors[layer + ".comfy_quant"] = _comfy_quant(config)
    path = write_safetensors(tensors, tmp_path / "w4.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_dit(path)
    message = str(err.value)
    assert "'blocks.1.ffn.2'" in message and config["format"] in message and "fp8_scaled or GGUF" in message


@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e5m2], ids=["e4m3fn", "e5m2"])
def test_unscaled_fp8_file(reference, tmp_path, fp8):
    """Kijai's `*_fp8_e4m3fn.safetensors` / `*_fp8_e5m2.safetensors`: block linears in fp8 with no scale tensors."""
    state, inputs = reference
    stored = {k: (v.to(fp8) if _block_linear(k, v) else v.bfloat16()) for k, v in state.items()}
    path = write_safetensors(stored, tmp_path / "Wan2_2-T2V-A14B-HIGH_fp8.safetensors")
    expected = _expected({k: v.float() for k, v in stored.items()}, inputs)
    assert _rel(_output(load_dit(path, dtype=torch.float32), inputs), expected) < 1e-5
    as_stored = load_dit(path, dtype=torch.float32, fp8_weights=None)
    assert (as_stored.blocks[0].self_attn.q.weight.dtype == torch.float8_e4m3fn) == (fp8 == torch.float8_e4m3fn)
    assert _rel(_output(as_stored, inputs), expected) < 0.05


def _gguf_with_5d_patch_embedding(state: dict[str, torch.Tensor], path) -> None:
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), arch="wan")
    for key, value in state.items():  # fix_5d_tensors.py: add_tensor of the 5-D array, F32, no orig_shape entry
        writer.add_tensor(key, value.float().numpy(), raw_dtype=gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_5d_patch_embedding_and_upper_case_suffix(reference, tmp_path):
    state, inputs = reference
    expected = _expected(state, inputs)
    for name in ("wan2.2_t2v_high_noise_14B_F32.gguf", "Wan2.2-T2V-A14B-HighNoise-F32.GGUF"):
        _gguf_with_5d_patch_embedding(state, tmp_path / name)
        model = load_dit(tmp_path / name, dtype=torch.float32)
        assert model.patch_embedding.weight.shape == state["patch_embedding.weight"].shape
        assert _rel(_output(model, inputs), expected) < 1e-6


def test_sft_suffix_counts_as_memory_mapped(reference, tmp_path, monkeypatch):
    """ComfyUI's short `.sft` suffix is safetensors: a load in the stored dtype copies nothing more than for
    `.safetensors` (the RAM check must not ask for the whole file again)."""
    import wan_core.dit.loader as loader

    state, _ = reference
    asked = []
    monkeypatch.setattr(loader, "check_ram", lambda needed, *args: asked.append(needed))
    for name in ("model.safetensors", "model.sft"):
        load_dit(write_safetensors(state, tmp_path / name))
    assert asked[0] == asked[1]
