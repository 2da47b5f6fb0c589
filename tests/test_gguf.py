"""GGUF experts: our torch dequantization against the `gguf` package's numpy reference, and a GGUF file written with
`gguf.GGUFWriter` (city96's layout: ComfyUI key names, 5-D shape in metadata) loaded and run through `load_dit`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wan_core.configs import DIT_CONFIGS
from wan_core.dit.gguf_linear import GGUFLinear
from wan_core.dit.loader import load_dit
from wan_core.dit.model import WanDiT, fp8_capable, init_random_
from wan_core.errors import CheckpointError
from wan_core.io.gguf_dequant import GGML_TYPES, dequantize
from wan_core.io.gguf_file import ORIG_SHAPE_KEY

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType
# Block types whose quantizer the gguf package implements; the k-quants are synthesized as random blocks.
QUANTIZABLE = {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"}
# Byte offsets of the fp16 scales in each k-quant block (random bytes there could be inf/nan).
K_SCALE_OFFSETS = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def _synthesized(name: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Raw bytes `[rows, row bytes]` of a `name` tensor of `shape`."""
    if name in QUANTIZABLE:
        data = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        return gguf.quants.quantize(data, Q[name]).view(np.uint8).reshape(shape[0], -1)
    block, size = gguf.GGML_QUANT_SIZES[Q[name]]
    blocks = rng.integers(0, 256, (shape[0] * shape[1] // block, size), dtype=np.uint8)
    for offset in K_SCALE_OFFSETS[name]:
        scales = (rng.uniform(1e-4, 2e-3, blocks.shape[0]) * rng.choice([-1, 1], blocks.shape[0])).astype(np.float16)
        blocks[:, offset : offset + 2] = scales.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(shape[0], -1)


@pytest.mark.parametrize("name", [name for name, _, _ in GGML_TYPES.values()])
def test_dequantize_equals_gguf_reference(name):
    rng = np.random.default_rng(sum(map(ord, name)))
    shape = (6, 512)
    raw = _synthesized(name, shape, rng)
    expected = gguf.quants.dequantize(raw, Q[name])
    got = dequantize(torch.from_numpy(raw.copy()), int(Q[name]), shape, torch.float32)
    assert got.shape == shape
    assert np.isfinite(expected).all()
    np.testing.assert_array_equal(got.numpy().view(np.uint32), expected.view(np.uint32))


def test_unsupported_type_is_named():
    from wan_core.io.gguf_dequant import check_supported

    with pytest.raises(CheckpointError, match="IQ2_XXS|ggml type 16.*supported: F32"):
        check_supported(int(Q.IQ2_XXS), "x.gguf: tensor 'blocks.0.ffn.0.weight'")


# --- a whole file ----------------------------------------------------------------------------------------------
CFG = DIT_CONFIGS["tiny-t2v"].replace(dim=256, ffn_dim=512, num_heads=2)
BLOCK_TYPES = ("Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "F16")


def _write_gguf(path, rng: np.random.Generator) -> tuple[dict[str, torch.Tensor], set[str]]:
    """A city96-style file of a random tiny DiT: (the float32 weights the reference dequantization gives, the names of
    the quantized ones)."""
    model = init_random_(WanDiT(CFG), torch.Generator().manual_seed(3))
    writer = gguf.GGUFWriter(str(path), arch="wan")
    reference, quantized = {}, set()
    for i, (key, value) in enumerate(model.state_dict().items()):
        if fp8_capable(key):
            name = BLOCK_TYPES[i % len(BLOCK_TYPES)]
            raw = _synthesized(name, tuple(value.shape), rng)
            writer.add_tensor(key, raw, raw_dtype=Q[name])
            reference[key] = torch.from_numpy(gguf.quants.dequantize(raw, Q[name]).copy())
            if name != "F16":
                quantized.add(key)
            continue
        data = value.float().numpy()
        if data.ndim == 5:  # ggml holds at most 4 dims: stored flat, the shape in metadata, as ComfyUI-GGUF does
            writer.add_array(ORIG_SHAPE_KEY + key, list(data.shape))
            data = data.reshape(data.shape[0], -1)
        writer.add_tensor(key, data, raw_dtype=Q.F32)
        reference[key] = value.float()
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return reference, quantized


def test_gguf_file_loads_and_runs(tmp_path):
    path = tmp_path / "wan2.2_t2v_high_noise_14B_Q4_K_M.gguf"
    reference_state, quantized = _write_gguf(path, np.random.default_rng(0))
    model = load_dit(path, dtype=torch.float32)
    linears = {name + ".weight" for name, m in model.named_modules() if isinstance(m, GGUFLinear)}
    assert linears == quantized and len(quantized) > 10  # F16 blocks load as plain Linears
    assert {model.get_parameter(k).dtype for k in linears} == {torch.uint8}

    reference = WanDiT(CFG)
    reference.load_state_dict(reference_state, strict=True)
    gen = torch.Generator().manual_seed(1)
    inputs = (torch.randn(1, 16, 2, 4, 4, generator=gen), torch.tensor([500.0]), [torch.randn(5, 64, generator=gen)])
    with torch.no_grad():
        expected = reference.eval()(*inputs)
        got = model(*inputs)
    assert torch.equal(got, expected)

    from wan_core.dit.block_swap import enable_block_swap

    swap = enable_block_swap(model, 0)  # raw ggml blocks stream like any weight
    assert swap.masters()["blocks.1.ffn.0.weight"].dtype == torch.uint8
    with torch.no_grad():
        assert torch.equal(model(*inputs), expected)


def test_model_loader_lists_gguf_files_of_diffusion_models_and_unet(tmp_path, monkeypatch):
    from nodes import host
    from nodes.loaders import Wan22ModelLoader, diffusion_model_choices

    monkeypatch.setenv(host.MODELS_DIR_ENV, str(tmp_path))
    for kind, name in (("unet", "wan2.2_t2v_high_noise_14B_Q4_K_M.gguf"), ("diffusion_models", "low_Q8_0.gguf")):
        (tmp_path / kind).mkdir()
        (tmp_path / kind / name).write_bytes(b"GGUF")
    assert diffusion_model_choices() == ["low_Q8_0.gguf", "wan2.2_t2v_high_noise_14B_Q4_K_M.gguf"]
    (handle,) = Wan22ModelLoader().load("t2v-A14B", "wan2.2_t2v_high_noise_14B_Q4_K_M.gguf", "low_Q8_0.gguf",
                                        "default", "auto", False)
    assert handle.high_noise_path == str(tmp_path / "unet" / "wan2.2_t2v_high_noise_14B_Q4_K_M.gguf")
    assert handle.low_noise_path == str(tmp_path / "diffusion_models" / "low_Q8_0.gguf")


TRITON_SCRIPT = """
import sys
import numpy as np
import torch
sys.path.insert(0, "tests")
from test_gguf import _synthesized, Q
from wan_core.io import gguf_dequant, gguf_triton

for name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"):
    qtype = int(Q[name])
    for shape in ((6, 512), (3, 2304)):  # block counts that leave a program's last blocks empty
        raw = torch.from_numpy(_synthesized(name, shape, np.random.default_rng(shape[1])).copy())
        assert gguf_triton.handles(raw, qtype, torch.float32)
        expected = gguf_dequant._BLOCK_DEQUANT[qtype](raw.reshape(-1, gguf_dequant.GGML_TYPES[qtype][2]))
        got = gguf_dequant.dequantize(raw, qtype, shape, torch.float32)
        assert torch.equal(got.view(torch.int32), expected.reshape(shape).view(torch.int32)), name
print("ok")
"""


def test_triton_dequantization_is_the_torch_arithmetic_bit_for_bit():
    """Every block format through the Triton kernel (CPU interpreter) give the torch path's float32 bits (which
    equal the `gguf` package's, above). bf16 output is checked on a GPU (`test_gpu_small_cards.py`): the interpreter
    rounds to bf16 otherwise than the GPU does."""
    pytest.importorskip("triton")
    from tests.triton_interpreter import assert_runs_in_interpreter

    assert_runs_in_interpreter(TRITON_SCRIPT)
