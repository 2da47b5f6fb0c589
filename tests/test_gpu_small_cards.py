"""Small-card paths that only exist on CUDA: block swap with its side stream and pinned masters, GGUF dequantization
on the GPU, the memory manager loading a DiT over budget. Skipped on machines without CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nodes.memory_manager import ManagedModel
from wan_core.configs import DIT_CONFIGS
from wan_core.dit.block_swap import disable_block_swap, enable_block_swap, module_bytes
from wan_core.dit.model import WanDiT, init_random_
from wan_core.io.gguf_dequant import GGML_TYPES, dequantize

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CFG = DIT_CONFIGS["tiny-t2v"].replace(dim=256, ffn_dim=1024, num_heads=2, num_layers=8)


def _model() -> WanDiT:
    return init_random_(WanDiT(CFG), torch.Generator().manual_seed(0)).to(torch.bfloat16).eval()


def _inputs():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 4, 16, 16, generator=gen).cuda()
    return x, torch.tensor([800.0], device="cuda"), [torch.randn(7, 64, generator=gen).to("cuda", torch.bfloat16)]


@pytest.mark.parametrize("resident", [0, 3])
def test_block_swap_on_cuda_equals_resident_and_holds_less(resident):
    model = _model().cuda()
    with torch.no_grad():
        expected = model(*_inputs())
    swap = enable_block_swap(model, resident)
    model.cuda()
    torch.cuda.synchronize()
    assert all(m.is_pinned() for m in swap.masters().values())
    on_gpu = sum(t.numel() * t.element_size() for t in model.parameters() if t.is_cuda)
    assert on_gpu < module_bytes(model) - (CFG.num_layers - resident - 1) * module_bytes(model.blocks[0])
    with torch.no_grad():
        for _ in range(3):
            assert torch.equal(model(*_inputs()), expected)
    disable_block_swap(model)


def test_gguf_dequantization_on_cuda_equals_cpu():
    rng = np.random.default_rng(0)
    for qtype, (name, block, size) in GGML_TYPES.items():
        raw = torch.from_numpy(rng.integers(0, 256, (4, 512 // block * size), dtype=np.uint8))
        if name in ("F32", "F16", "BF16"):
            raw = torch.randn(4, 512).to({"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[name])
            raw = raw.view(torch.uint8)
        for dtype in (torch.float32, torch.bfloat16, torch.float16):  # Q8_0 and the k-quants: the Triton kernel
            cpu = dequantize(raw, qtype, (4, 512), dtype)
            gpu = dequantize(raw.cuda(), qtype, (4, 512), dtype).cpu()
            assert torch.equal(cpu.nan_to_num(), gpu.nan_to_num()), (name, dtype)


def test_memory_manager_loads_a_dit_over_budget_with_block_swap():
    model = _model()
    patcher = ManagedModel(model, torch.device("cuda"))
    patcher.activation_reserve = 0
    block = module_bytes(model.blocks[0])
    others = module_bytes(model) - CFG.num_layers * block
    patcher.partially_load(torch.device("cuda"), others + 6 * block)
    assert model.block_swap.swapped == [4, 5, 6, 7]
    with torch.no_grad():
        out = model(*_inputs())
    patcher.detach()
    assert patcher.loaded_size() == 0 and torch.isfinite(out).all()


@pytest.mark.parametrize("order", ["swap-then-lora", "lora-then-swap", "swap-on-gpu-then-lora"])
def test_gguf_expert_with_a_lora_under_block_swap_on_cuda(tmp_path, order):
    """The small-card path: a GGUF expert, a LoRA on every quantized Linear (run with each layer), blocks streamed
    from pinned masters on a side stream. Equals the same patched model with every block resident."""
    pytest.importorskip("gguf")
    from test_gguf import _write_gguf
    from test_lora_gguf import lora_file

    from wan_core.dit.loader import load_dit
    from wan_core.lora import LoraPatch
    from wan_core.patching import set_patches

    path = tmp_path / "expert_Q4_K_M.gguf"
    reference, quantized = _write_gguf(path, np.random.default_rng(0))
    modules = sorted(name[: -len(".weight")] for name in quantized)
    lora = lora_file(tmp_path, "lora", modules, {m: tuple(reference[m + ".weight"].shape) for m in modules}, "lora", 2)
    gen = torch.Generator().manual_seed(1)
    inputs = (torch.randn(1, 16, 2, 4, 4, generator=gen).cuda(), torch.tensor([500.0], device="cuda"),
              [torch.randn(5, 64, generator=gen).cuda()])
    outputs = []
    for swapped in (False, True):
        model = load_dit(path, dtype=torch.float32)
        if swapped and order != "lora-then-swap":
            enable_block_swap(model, 0)
        if order == "swap-on-gpu-then-lora":
            model.cuda()  # the masters are pinned copies now
            set_patches(model, [LoraPatch(lora, 0.3)], "low_noise")
        set_patches(model, [LoraPatch(lora, 0.8)], "low_noise")
        if swapped and order == "lora-then-swap":
            enable_block_swap(model, 0)
        model.cuda()
        with torch.no_grad():
            outputs.append(model(*inputs))
        if swapped:
            swap = model.block_swap
            assert swap.transfers > 0 and swap.pinned
            # parking the model returns the masters to the file's tensors, not to pinned copies
            model.cpu()
            assert not any(t.is_pinned() for _, _, _, t in swap._slots[1].masters)
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)
