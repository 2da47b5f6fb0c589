"""Block swap on the CPU (the device copies are plain copies): same numbers as the resident model, bit for bit."""

from __future__ import annotations

import pytest
import torch

from wan_core.configs import DIT_CONFIGS
from wan_core.dit.block_swap import GIB, choose_resident_blocks, disable_block_swap, enable_block_swap
from wan_core.dit.model import WanDiT, init_random_
from wan_core.errors import InputError

CFG = DIT_CONFIGS["tiny-t2v"].replace(num_layers=4)


def _model() -> WanDiT:
    return init_random_(WanDiT(CFG), torch.Generator().manual_seed(7)).eval()


def _inputs():
    gen = torch.Generator().manual_seed(2)
    return torch.randn(1, 16, 2, 4, 4, generator=gen), torch.tensor([700.0]), [torch.randn(6, 64, generator=gen)]


def _run(model: WanDiT) -> torch.Tensor:
    with torch.no_grad():
        return model(*_inputs())


@pytest.mark.parametrize("resident", [0, 1, 3])
def test_swapped_forward_equals_resident_forward(resident):
    model = _model()
    expected = _run(model)
    swap = enable_block_swap(model, resident)
    assert swap.swapped == list(range(resident, CFG.num_layers))
    masters = swap.masters()
    ran_on_copies = []
    for i in swap.swapped:
        master = masters[f"blocks.{i}.ffn.0.weight"]
        model.blocks[i].register_forward_pre_hook(  # runs after the swap's own hook
            lambda module, _args, master=master: ran_on_copies.append(module.ffn[0].weight.data_ptr()
                                                                      != master.data_ptr()))
    assert torch.equal(_run(model), expected)
    assert ran_on_copies == [True] * len(swap.swapped)
    assert torch.equal(_run(model), expected)
    assert swap.transfers == 2 * (CFG.num_layers - resident)
    for name, master in masters.items():  # after the forward every swapped tensor is its master copy again
        assert model.get_parameter(name).data_ptr() == master.data_ptr()
    assert sorted({n.split(".")[1] for n in masters}) == [str(i) for i in swap.swapped]


def test_moving_the_model_leaves_swapped_blocks_on_the_cpu():
    model = _model()
    swap = enable_block_swap(model, 2)
    model.to("meta")
    assert model.patch_embedding.weight.device.type == "meta"
    assert model.blocks[1].ffn[0].weight.device.type == "meta"
    assert {p.device.type for i in swap.swapped for p in model.blocks[i].parameters()} == {"cpu"}
    assert list(model.state_dict()) == list(_model().state_dict())  # names unchanged


def test_patches_of_the_master_copies_and_refresh():
    model, reference = _model(), _model()
    swap = enable_block_swap(model, 1)
    with torch.no_grad():
        delta = torch.randn(CFG.ffn_dim, CFG.dim, generator=torch.Generator().manual_seed(4)) * 0.1
        swap.masters()["blocks.2.ffn.0.weight"].add_(delta)  # a LoRA merge on the CPU master copy
        reference.blocks[2].ffn[0].weight.add_(delta)
    assert torch.equal(_run(model), _run(reference))
    with torch.no_grad():
        replaced = torch.randn(CFG.dim, CFG.dim, generator=torch.Generator().manual_seed(5)) * 0.1
        model.blocks[3].self_attn.o.weight.data = replaced.clone()  # a new tensor: refresh() takes it
        reference.blocks[3].self_attn.o.weight.copy_(replaced)
    swap.refresh()
    assert torch.equal(_run(model), _run(reference))
    disable_block_swap(model)
    assert swap.transfers and not model.block_swap
    assert torch.equal(_run(model), _run(reference))


def test_resident_count_checked_and_chosen_from_free_memory():
    with pytest.raises(InputError, match="0 to 4"):
        enable_block_swap(_model(), 5)
    assert enable_block_swap(_model(), None).swapped == []  # on the CPU every block stays
    # 40 blocks of 0.35 GiB (A14B fp8), 1 GiB other weights, 6 GiB activations
    block = int(0.35 * GIB)
    assert choose_resident_blocks(40, block, GIB, 24 * GIB, 6 * GIB) == 40
    assert choose_resident_blocks(40, block, GIB, 16 * GIB, 6 * GIB) == 23  # (16 - 1 - 6 - 0.7) / 0.35 = 23.7
    assert choose_resident_blocks(40, block, GIB, 7 * GIB, 6 * GIB) == 0


def test_fp8_weights_swap_with_their_scales(tmp_path):
    from wan_core.dit.loader import load_dit
    from wan_core.dit.model import FP8Linear
    from wan_core.io.writers import write_safetensors

    path = tmp_path / "tiny.safetensors"
    write_safetensors(_model().state_dict(), path)
    model = load_dit(path, dtype=torch.float32, fp8_weights=True)
    assert isinstance(model.blocks[3].ffn[0], FP8Linear)
    expected = _run(model)
    swap = enable_block_swap(model, 2)
    assert swap.masters()["blocks.3.ffn.0.weight"].dtype == torch.float8_e4m3fn
    assert torch.equal(_run(model), expected)


def test_model_patches_land_on_the_master_copies_and_come_off():
    from dataclasses import dataclass

    from wan_core.patching import set_patches

    @dataclass(frozen=True)
    class AddToFFN:  # a stand-in for a LoRA patch: changes one swapped block's weight through PatchedWeights
        scale: float

        def apply(self, module, expert, weights) -> None:
            weights.set("blocks.3.ffn.0.weight", weights.get("blocks.3.ffn.0.weight") * self.scale)

    model, reference = _model(), _model()
    original = _run(model)
    enable_block_swap(model, 1)
    set_patches(model, (AddToFFN(1.5),), "single")
    with torch.no_grad():
        reference.blocks[3].ffn[0].weight.mul_(1.5)
    assert torch.equal(_run(model), _run(reference))
    set_patches(model, (), "single")
    assert torch.equal(_run(model), original)
