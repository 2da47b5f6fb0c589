"""LightX2V's own quantized DiT files (lightx2v/Wan2.2-Distill-Models `*_fp8_e4m3_lightx2v_4step.safetensors`,
`*_int8_lightx2v_4step.safetensors`), written here in their exact layout (`wan_core/io/lightx2v.py` cites the
LightX2V sources): the 2-D weights of the blocks' `self_attn`, `cross_attn` and `ffn` quantized per output channel
with a `<layer>.weight_scale` of shape `[out, 1]`, everything else in `--non_linear_dtype`, official key names, no
marker. Tiny random model; each load is checked against a dequantization done here (`weight * scale`, row by row).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from wan_core.configs import DIT_CONFIGS
from wan_core.dit.loader import load_dit
from wan_core.dit.model import FP8Linear, WanDiT, init_random_
from wan_core.errors import CheckpointError
from wan_core.io.writers import write_safetensors

CFG = DIT_CONFIGS["tiny-t2v"]
E4M3 = torch.float8_e4m3fn
TINY_ROW = ("blocks.1.self_attn.o.weight", 3)  # a row below LightX2V's 1e-5 clamp: its codes do not reach 448
# Forward bounds against the bf16 model, relative to its largest output. int8: a weight is off by at most half a step,
# max|row| / 254 (0.4% of the row's largest weight); the errors of the 20 quantized Linears add up (measured 0.43%),
# hence 2%. fp8 (e4m3, 3 mantissa bits): up to 2^-4 = 6.25% of each weight (measured 1.4%, and 1.8% for int8 weights
# quantized again to e4m3); 10% is the suite's bound for fp8 files (tests/test_dit_loading.py FP8_TOL).
INT8_TOL, FP8_TOL = 0.02, 0.1


@pytest.fixture(scope="module")
def reference():
    """(the bf16 state dict LightX2V quantizes, the inputs, the bf16 model's output)."""
    model = init_random_(WanDiT(CFG), torch.Generator().manual_seed(11)).eval()
    state = {k: v.bfloat16() for k, v in model.state_dict().items()}
    state[TINY_ROW[0]][TINY_ROW[1]] *= 3e-6 / state[TINY_ROW[0]][TINY_ROW[1]].abs().max()
    gen = torch.Generator().manual_seed(5)
    inputs = (torch.randn(1, 16, 3, 8, 8, generator=gen), torch.tensor([640.0]), [torch.randn(9, 64, generator=gen)])
    return state, inputs, _forward({k: v.float() for k, v in state.items()}, inputs)


def _forward(state: dict[str, torch.Tensor], inputs) -> torch.Tensor:
    model = WanDiT(CFG)
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        return model.eval()(*inputs)


def _output(model: WanDiT, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(*inputs)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _quantized(key: str, value: torch.Tensor) -> bool:
    """LightX2V's `wan_dit` selection: 2-D tensors whose third name part is self_attn, cross_attn or ffn."""
    parts = key.split(".")
    return value.dim() == 2 and len(parts) > 2 and parts[2] in ("self_attn", "cross_attn", "ffn")


def _lightx2v(state: dict[str, torch.Tensor], kind: str, non_linear: torch.dtype) -> dict[str, torch.Tensor]:
    """`converter.py --quantized --linear_type {kind} --non_linear_dtype {non_linear}` (quant.py's arithmetic, in the
    source weight's dtype as there)."""
    out = {}
    for key, weight in state.items():
        if not _quantized(key, weight):
            out[key] = weight.to(non_linear)
            continue
        amax = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-5)
        if kind == "int8":
            scale = amax / 127
            out[key] = torch.clamp(torch.round(weight / scale), -128, 127).to(torch.int8)
        else:
            scale = amax / torch.finfo(E4M3).max
            out[key] = torch.clip(weight / scale, -448, 448).to(E4M3)
        out[key + "_scale"] = scale.view(weight.shape[0], -1)
    return out


def _dequantized(stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the file stands for, in float32: each quantized weight times its `[out, 1]` scale."""
    return {k: v.float() * stored[k + "_scale"].float() if k + "_scale" in stored else v.float()
            for k, v in stored.items() if not k.endswith("_scale")}


def _split(stored: dict[str, torch.Tensor], folder, *, index: bool):
    """`converter.py --save_by_block`: `block_N.safetensors`, `non_block.safetensors` and the index."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in stored.items():
        block = re.search(r"blocks\.(\d+)\.", key)
        groups.setdefault(f"block_{block[1]}.safetensors" if block else "non_block.safetensors", {})[key] = value
    for name, tensors in groups.items():
        write_safetensors(tensors, folder / name)
    if index:
        weight_map = {key: name for name, tensors in groups.items() for key in tensors}
        (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


def _check_weights(model: WanDiT, expected: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value.float(), expected[key]), key


@pytest.mark.parametrize(("kind", "non_linear"), [("fp8", torch.bfloat16), ("int8", torch.bfloat16),
                                                  ("int8", torch.float32)], ids=["fp8", "int8", "int8-fp32-rest"])
def test_single_file_dequantizes_per_channel(reference, tmp_path, kind, non_linear):
    state, inputs, bf16_out = reference
    stored = _lightx2v(state, kind, non_linear)
    assert stored["blocks.0.ffn.0.weight_scale"].shape == (CFG.ffn_dim, 1)
    path = write_safetensors(stored, tmp_path / f"wan2.2_t2v_A14b_high_noise_{kind}_lightx2v_4step.safetensors")
    expected = _dequantized(stored)
    model = load_dit(path, dtype=torch.float32)
    _check_weights(model, expected)
    assert _rel(_output(model, inputs), _forward(expected, inputs)) < 1e-5
    assert _rel(_output(model, inputs), bf16_out) < (INT8_TOL if kind == "int8" else FP8_TOL)
    assert load_dit(path).dtype == torch.bfloat16


@pytest.mark.parametrize("options", [{"fp8_weights": None}, {"fp8_compute": True}], ids=["as-stored", "fp8-compute"])
def test_fp8_kept_as_stored_with_its_channel_scales(reference, tmp_path, options):
    """fp8 storage or compute keeps the file's e4m3 bytes and per-channel scales (quantizing them again would move
    the codes of rows whose scale LightX2V clamped, `TINY_ROW`)."""
    state, inputs, _ = reference
    stored = _lightx2v(state, "fp8", torch.bfloat16)
    path = write_safetensors(stored, tmp_path / "wan2.2_t2v_A14b_high_noise_fp8_e4m3_lightx2v_4step.safetensors")
    model = load_dit(path, dtype=torch.float32, **options)
    for name, module in model.named_modules():
        if isinstance(module, FP8Linear):
            assert torch.equal(module.weight.view(torch.uint8), stored[name + ".weight"].view(torch.uint8)), name
            assert torch.equal(module.weight_scale, stored[name + ".weight_scale"].float().view(-1)), name
    assert model.blocks[0].ffn[0].scaled_mm == bool(options.get("fp8_compute"))
    assert _rel(_output(model, inputs), _forward(_dequantized(stored), inputs)) < 1e-4


def test_int8_in_fp8_compute_is_requantized_per_channel(reference, tmp_path):
    """int8 codes do not fit e4m3: fp8 compute quantizes the dequantized weight again, one scale per output channel;
    each weight is then off by at most half an e4m3 step (2^-4 of it, or 2^-10 of its row's scale when subnormal)."""
    state, inputs, bf16_out = reference
    stored = _lightx2v(state, "int8", torch.bfloat16)
    model = load_dit(write_safetensors(stored, tmp_path / "int8.safetensors"), dtype=torch.float32, fp8_compute=True)
    expected = _dequantized(stored)
    for name, module in model.named_modules():
        if isinstance(module, FP8Linear):
            scale = module.weight_scale[:, None]
            assert scale.shape == (module.out_features, 1)
            error = (module.weight.float() * scale - expected[name + ".weight"]).abs()
            assert (error <= 2**-4 * expected[name + ".weight"].abs() + 2**-10 * scale * (1 + 1e-6)).all(), name
    assert _rel(_output(model, inputs), bf16_out) < FP8_TOL


@pytest.mark.parametrize("index", [True, False], ids=["with-index", "without-index"])
def test_split_by_block_folder(reference, tmp_path, index):
    """The published `*_split` folders (`--save_by_block`), with the index the converter writes or without it."""
    state, inputs, _ = reference
    stored = _lightx2v(state, "int8", torch.bfloat16)
    folder = _split(stored, tmp_path / "wan2.2_i2v_A14b_low_noise_int8_lightx2v_4step_split", index=index)
    model = load_dit(folder, dtype=torch.float32)
    _check_weights(model, _dequantized(stored))


def test_split_folder_is_one_model_choice(reference, tmp_path, monkeypatch):
    """In ComfyUI's `diffusion_models`, a `*_split` folder is offered as one choice, `folder/`, which loads."""
    from nodes import host
    from nodes.loaders import Wan22ModelLoader, diffusion_model_choices

    state, _, _ = reference
    monkeypatch.setenv(host.MODELS_DIR_ENV, str(tmp_path))
    stored = _lightx2v(state, "int8", torch.bfloat16)
    name = "wan2.2_t2v_A14b_high_noise_int8_lightx2v_4step_split"
    folder = _split(stored, tmp_path / "diffusion_models" / name, index=False)
    write_safetensors(stored, tmp_path / "diffusion_models" / "low.safetensors")
    assert diffusion_model_choices() == ["low.safetensors", name + "/"]
    (handle,) = Wan22ModelLoader().load("t2v-A14B", name + "/", "low.safetensors", "default", "auto", False)
    _check_weights(load_dit(handle.high_noise_path, dtype=torch.float32), _dequantized(stored))
    assert Path(handle.high_noise_path) == folder


def test_pth_output(reference, tmp_path):
    """`--output_ext .pth`: `torch.save` of the same dict."""
    state, _, _ = reference
    stored = _lightx2v(state, "fp8", torch.bfloat16)
    torch.save(stored, tmp_path / "wan_fp8.pth")
    _check_weights(load_dit(tmp_path / "wan_fp8.pth", dtype=torch.float32), _dequantized(stored))


def test_flat_channel_scale_is_per_row(reference, tmp_path):
    """A per-channel scale stored flat (`[out]`) scales rows too, also on square weights (q, k, v, o)."""
    state, _, _ = reference
    stored = _lightx2v(state, "int8", torch.bfloat16)
    expected = _dequantized(stored)
    flat = {k: v.view(-1) if k.endswith("_scale") else v for k, v in stored.items()}
    _check_weights(load_dit(write_safetensors(flat, tmp_path / "flat.safetensors"), dtype=torch.float32), expected)


def _kernel_layer(weight: torch.Tensor, fmt: str) -> dict[str, torch.Tensor]:
    """The tensors `lightx2v_kernel` quantization leaves for one layer (values irrelevant: only the layout)."""
    rows, cols = weight.shape
    padded_rows = -(-rows // 128) * 128
    if fmt == "mxfp8":
        return {"": torch.zeros(rows, cols, dtype=torch.uint8),
                "_scale": torch.zeros(padded_rows, -(-cols // 128) * 4, dtype=torch.uint8).view(torch.float8_e8m0fnu)}
    layer = {"": torch.zeros(rows, cols // 2, dtype=torch.uint8),
             "_scale": torch.zeros(padded_rows, -(-cols // 64) * 4, dtype=E4M3)}
    if fmt == "nvfp4":
        layer["_global_scale"] = 2688.0 / weight.abs().max().float()
    return layer


@pytest.mark.parametrize("fmt", ["nvfp4", "nvfp4+alpha", "mxfp8"])
def test_kernel_formats_are_refused_by_name(reference, tmp_path, fmt):
    """nvfp4 (`weight_global_scale`, or `input_global_scale` + `alpha` after `add_scale_to_models.py`) and the mx
    formats are laid out for LightX2V's own kernels: refused, naming the layer, the format and what to download."""
    state, _, _ = reference
    stored = {}
    for key, value in state.items():
        if not _quantized(key, value):
            stored[key] = value
            continue
        stored.update({key + suffix: tensor for suffix, tensor in _kernel_layer(value, fmt.split("+")[0]).items()})
        if fmt == "nvfp4+alpha":
            layer = key.removesuffix(".weight")
            stored[layer + ".input_global_scale"], stored[layer + ".alpha"] = torch.tensor(1.0), torch.tensor(1.0)
    with pytest.raises(CheckpointError) as err:
        load_dit(write_safetensors(stored, tmp_path / f"wan2.2_{fmt}.safetensors"))
    message = str(err.value)
    assert re.search(r"Layer 'blocks\.\d\.(self_attn|cross_attn|ffn)\.\w+'", message), message
    assert f"LightX2V's {'nvfp4' if fmt.startswith('nvfp4') else 'mxfp4, mxfp6 or mxfp8'} format" in message
    assert "_comfyui.safetensors" in message and "bf16 file" in message


def test_scale_that_fits_no_layout_is_named(reference, tmp_path):
    state, _, _ = reference
    stored = _lightx2v(state, "int8", torch.bfloat16)
    stored["blocks.0.ffn.2.weight_scale"] = torch.ones(3, 5)
    with pytest.raises(CheckpointError) as err:
        load_dit(write_safetensors(stored, tmp_path / "odd.safetensors"))
    message = str(err.value)
    assert "'blocks.0.ffn.2'" in message and "[3, 5]" in message and f"[{CFG.dim}, {CFG.ffn_dim}]" in message
