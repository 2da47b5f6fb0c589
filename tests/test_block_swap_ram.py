"""Block swap's RAM: staged (pinned) master copies only while the model is on the GPU, back to the memory-mapped file
views when it is parked, patches made meanwhile kept; the packing of host buffers; the resident-block choice of the
measured numbers under an emulated 16 GiB card."""

from __future__ import annotations

import pytest
import torch
from test_block_swap import _run

from wan_core.configs import DIT_CONFIGS
from wan_core.dit.block_swap import GIB, enable_block_swap
from wan_core.dit.loader import load_dit
from wan_core.dit.model import WanDiT, fp8_capable, init_random_, keeps_fp32
from wan_core.hardware import MODELS, RESERVE, activation_gib, candidates
from wan_core.host_buffers import host_buffers
from wan_core.io.writers import write_safetensors
from wan_core.measured import BLOCK_SWAP_SLACK
from wan_core.patching import PatchedWeights

CFG = DIT_CONFIGS["tiny-t2v"].replace(num_layers=3)


def _in_map(tensor: torch.Tensor, model: WanDiT) -> bool:
    ptr = tensor.data_ptr()
    for region in model.mapped_files:
        base = torch.frombuffer(region, dtype=torch.uint8, count=1).data_ptr()
        if base <= ptr < base + len(region):
            return True
    return False


@pytest.fixture
def mapped_model(tmp_path) -> WanDiT:
    model = init_random_(WanDiT(CFG), torch.Generator().manual_seed(7))
    write_safetensors(model.state_dict(), tmp_path / "expert.safetensors")
    return load_dit(tmp_path / "expert.safetensors", device="cpu")


def test_masters_are_staged_while_pinned_and_back_to_the_file_after(mapped_model):
    expected = _run(mapped_model)
    swap = enable_block_swap(mapped_model, 1)
    swap.pin = True  # as on a CUDA machine (plain buffers here)
    before = swap.masters()
    assert all(_in_map(t, mapped_model) for t in before.values())  # not pinned: the file's own pages
    swap.pin_masters()
    staged = swap.masters()
    assert swap.pinned and staged.keys() == before.keys()
    assert not any(_in_map(t, mapped_model) for t in staged.values())
    assert all(torch.equal(staged[k], before[k]) for k in before)
    assert torch.equal(_run(mapped_model), expected)
    swap.unpin_masters()
    after = swap.masters()
    assert not swap.pinned
    assert all(after[k].data_ptr() == before[k].data_ptr() for k in before)  # the views of the file again
    assert torch.equal(_run(mapped_model), expected)


@pytest.mark.parametrize("as_comfyui", [False, True], ids=["plain", "loaded-in-inference-mode"])
def test_a_patch_made_while_pinned_survives_unpinning(tmp_path, as_comfyui):
    """ComfyUI runs nodes under torch.inference_mode: the expert's tensors are then inference tensors (no version
    counter), and the batch queue's threads pin and unpin outside that mode."""
    model = init_random_(WanDiT(CFG), torch.Generator().manual_seed(7))
    write_safetensors(model.state_dict(), tmp_path / "expert.safetensors")
    with torch.inference_mode(as_comfyui):
        mapped_model = load_dit(tmp_path / "expert.safetensors", device="cpu")
    assert mapped_model.blocks[2].ffn[0].weight.is_inference() == as_comfyui
    swap = enable_block_swap(mapped_model, 1)
    swap.pin = True
    swap.pin_masters()
    weight = mapped_model.blocks[2].ffn[0].weight
    patched = weight.detach().clone() + 0.5
    untouched = mapped_model.blocks[1].ffn[0].weight.detach().clone()
    with torch.inference_mode(as_comfyui):
        PatchedWeights(mapped_model).set("blocks.2.ffn.0.weight", patched)  # what a LoRA patch does
    swap.unpin_masters()
    assert _in_map(mapped_model.blocks[2].ffn[0].weight, mapped_model)
    assert torch.equal(mapped_model.blocks[2].ffn[0].weight, patched)
    assert torch.equal(mapped_model.blocks[1].ffn[0].weight, untouched)
    swap.pin_masters()  # and again: a second round sees no new patch
    swap.unpin_masters()
    assert torch.equal(mapped_model.blocks[2].ffn[0].weight, patched)


def test_a_model_swapped_on_the_device_gets_cpu_sources_when_unpinned():
    model = init_random_(WanDiT(CFG), torch.Generator().manual_seed(7)).eval()
    expected = _run(model)
    swap = enable_block_swap(model, 0)
    swap.pin = True
    for slot in swap._slots.values():  # as refresh() leaves them for a model on the GPU: no CPU source
        slot.sources = [None] * len(slot.sources)
    swap.pin_masters()
    staged = swap.masters()
    swap.unpin_masters()
    after = swap.masters()
    assert all(after[k].data_ptr() != staged[k].data_ptr() and torch.equal(after[k], staged[k]) for k in staged)
    assert torch.equal(_run(model), expected)


def test_host_buffers_pack_without_rounding():
    like = [torch.randn(40, 7), torch.ones(()), torch.randn(5).to(torch.float8_e4m3fn),
            torch.empty(0), torch.randn(300, 10).bfloat16()]
    out = host_buffers(like, pin=False, chunk_bytes=4096)
    for buffer, tensor in zip(out, like, strict=True):
        assert buffer.shape == tensor.shape and buffer.dtype == tensor.dtype and buffer.is_contiguous()
        buffer.copy_(tensor)
    for buffer, tensor in zip(out, like, strict=True):  # no two views overlap
        assert torch.equal(buffer.float(), tensor.float())
    small = {t.untyped_storage().data_ptr() for t in out[:3]}
    assert len(small) == 1 and out[0].untyped_storage().nbytes() == 1152 + 64 + 64  # one buffer, the bytes they use
    assert out[4].untyped_storage().nbytes() == 6016  # larger than a chunk: its own buffer (64-byte aligned)


def _a14b_fp8_bytes() -> tuple[int, int]:
    """(bytes of one block, bytes of the rest) of an A14B expert as `load_dit` keeps an fp8 file: fp8 block matmul
    weights with a float32 scale each, float32 where `keeps_fp32`, bf16 elsewhere."""
    with torch.device("meta"):
        state = WanDiT(DIT_CONFIGS["t2v-A14B"]).state_dict()
    sizes = {k: t.numel() * (1 if fp8_capable(k) else 4 if keeps_fp32(k) else 2) + 4 * fp8_capable(k)
             for k, t in state.items()}
    block = sum(v for k, v in sizes.items() if k.startswith("blocks.0."))
    return block, sum(v for k, v in sizes.items() if not k.startswith("blocks."))


def test_resident_blocks_for_a14b_720p_under_16_gib_leave_room_for_the_measured_activations():
    setup = next(s for s in candidates("A14B", "720p", 16) if s.weights == "fp8")
    assert setup.resident_blocks is not None and 0 < setup.resident_blocks < 40
    block, rest = _a14b_fp8_bytes()
    # Peak of a forward: the rest of the model, the resident blocks and two in flight, the measured activations,
    # and the measured allocator reserve and block-swap slack, with the real byte counts of the loader's model.
    kept_free = RESERVE.gib + BLOCK_SWAP_SLACK.gib
    peak = rest + (setup.resident_blocks + 2) * block + (activation_gib("A14B", "fp8", "720p") + kept_free) * GIB
    assert peak <= 16 * GIB
    assert peak + block > 16 * GIB - 0.2 * GIB  # not needlessly few blocks: one more nearly fills the card
    assert abs(block - MODELS["A14B"].block_params) / block < 0.01  # hardware's estimates are the real sizes
    assert abs(rest / GIB - MODELS["A14B"].other_gib) < 0.01
    assert setup.resident_blocks < 16  # 22 (old 6.7 GiB estimate) and 16 (no slack) ran out of memory under 16 GiB


def test_an_unpinned_model_hands_its_buffers_to_the_next_pinning():
    """At the MoE switch the parked expert's pinned buffers go to the expert that starts sampling, instead of both
    experts holding pinned RAM (seen on an H100: 17 GB pinned for one expert's 8.5 GB of swapped blocks)."""
    from wan_core import host_buffers as hb

    like = [torch.randn(40, 7), torch.randn(300, 10).bfloat16()]
    first = hb.host_buffers(like, pin=False, chunk_bytes=4096)
    pointers = {t.untyped_storage().data_ptr() for t in first}
    hb.give_back(first, pinned=False)
    second = hb.host_buffers(like, pin=False, chunk_bytes=4096)
    assert {t.untyped_storage().data_ptr() for t in second} == pointers and not hb._SPARE
    for buffer, tensor in zip(second, like, strict=True):
        buffer.copy_(tensor)
    assert all(torch.equal(b.float(), t.float()) for b, t in zip(second, like, strict=True))
    third = hb.host_buffers(like, pin=False, chunk_bytes=4096)  # nothing given back: new buffers
    assert not pointers & {t.untyped_storage().data_ptr() for t in third}


def test_the_second_expert_pins_into_the_first_ones_buffers(tmp_path):
    models = []
    for seed in (7, 8):
        model = init_random_(WanDiT(CFG), torch.Generator().manual_seed(seed))
        write_safetensors(model.state_dict(), tmp_path / f"expert{seed}.safetensors")
        models.append(load_dit(tmp_path / f"expert{seed}.safetensors", device="cpu"))
    high, low = models
    expected = _run(low)
    swaps = [enable_block_swap(m, 1) for m in models]
    for swap in swaps:
        swap.pin = True  # as on a CUDA machine (plain buffers here)
    swaps[0].pin_masters()
    held = list(swaps[0].masters().values())  # kept alive here, so that no allocator can hand out their addresses
    high_buffers = {t.untyped_storage().data_ptr() for t in held}
    swaps[0].unpin_masters()  # the MoE switch parks the high-noise expert ...
    swaps[1].pin_masters()  # ... and moves the low-noise one
    assert {t.untyped_storage().data_ptr() for t in swaps[1].masters().values()} == high_buffers
    assert torch.equal(_run(low), expected)
