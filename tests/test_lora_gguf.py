"""LoRAs on GGUF experts (the small-card path: a Q4/Q8 expert with a Lightning LoRA pair). Quantized blocks cannot take
a merge, so each change runs with its layer, on the weight it dequantizes for each call (low-rank pairs in the
compute dtype, anything else in float32). The patched GGUF model must compute what a float model holding the same
dequantized weights computes with the LoRA merged (that merge is checked against PEFT and diffusers in
tests/test_lora*.py), under block swap too; removal gives the base outputs back bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from wan_core.dit.block_swap import enable_block_swap
from wan_core.dit.gguf_linear import GGUFLinear
from wan_core.dit.loader import load_dit
from wan_core.dit.model import WanDiT
from wan_core.errors import InputError
from wan_core.lora import LoraPatch
from wan_core.patching import set_patches

pytest.importorskip("gguf")
from test_gguf import CFG, _write_gguf  # noqa: E402


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    """(a city96-style GGUF expert, the float32 weights its blocks dequantize to, its quantized weight names)."""
    path = tmp_path_factory.mktemp("gguf") / "wan2.2_t2v_low_noise_14B_Q4_K_M.gguf"
    reference, quantized = _write_gguf(path, np.random.default_rng(0))
    return path, reference, sorted(name[: -len(".weight")] for name in quantized)


def lora_file(tmp_path, name: str, modules: list[str], shapes: dict[str, tuple[int, int]], form: str, seed: int):
    """A LoRA of `form` on `modules` (`lora`, `loha`, `lokr`, `dora`, `diff`), with `.diff_b` on the biases."""
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn
    tensors = {}
    for module in modules:
        out, inp = shapes[module]
        stem = f"diffusion_model.{module}"
        if form in ("lora", "dora"):
            tensors[f"{stem}.lora_A.weight"] = r(4, inp, generator=gen) * 0.2
            tensors[f"{stem}.lora_B.weight"] = r(out, 4, generator=gen) * 0.2
            tensors[f"{stem}.alpha"] = torch.tensor(2.0)
        if form == "dora":
            tensors[f"{stem}.dora_scale"] = r(out, 1, generator=gen).abs() + 0.5
        if form == "loha":
            for i in (1, 2):
                tensors[f"{stem}.hada_w{i}_a"] = r(out, 2, generator=gen) * 0.3
                tensors[f"{stem}.hada_w{i}_b"] = r(2, inp, generator=gen) * 0.3
        if form == "lokr":
            tensors[f"{stem}.lokr_w1"] = r(4, 4, generator=gen)
            tensors[f"{stem}.lokr_w2"] = r(out // 4, inp // 4, generator=gen) * 0.02
        if form == "diff":
            tensors[f"{stem}.diff"] = r(out, inp, generator=gen) * 0.02
        tensors[f"{stem}.diff_b"] = r(out, generator=gen) * 0.05
    path = tmp_path / f"{name}.safetensors"
    save_file(tensors, str(path))
    return str(path)


def float_model(reference: dict[str, torch.Tensor]) -> WanDiT:
    model = WanDiT(CFG)
    model.load_state_dict(reference, strict=True)
    return model.eval()


def forward(model: torch.nn.Module) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    inputs = (torch.randn(1, 16, 2, 4, 4, generator=gen), torch.tensor([500.0]), [torch.randn(5, 64, generator=gen)])
    with torch.no_grad():
        return model(*inputs)


def shapes_of(reference: dict[str, torch.Tensor], modules: list[str]) -> dict[str, tuple[int, int]]:
    return {m: tuple(reference[m + ".weight"].shape) for m in modules}


@pytest.mark.parametrize("forms", [("lora",), ("loha",), ("lokr",), ("dora",), ("diff",), ("lora", "lokr")])
def test_gguf_expert_with_loras_computes_what_the_merged_float_model_does(gguf_file, tmp_path, forms):
    path, reference, quantized = gguf_file
    modules = quantized[::2]  # every other quantized Linear, in several blocks
    patches = [LoraPatch(lora_file(tmp_path, form, modules, shapes_of(reference, modules), form, seed=i), 0.7 + i / 2)
               for i, form in enumerate(forms)]  # fmt: skip
    model = load_dit(path, dtype=torch.float32)
    base_out = forward(model)
    set_patches(model, patches, "low_noise")
    changed = [m for m in modules if len(model.get_submodule(m).changes)]
    assert changed == modules
    assert all([c.low_rank for c in model.get_submodule(m).changes] == [f == "lora" for f in forms] for m in modules)
    assert model.state_dict().keys() == load_dit(path, dtype=torch.float32).state_dict().keys()

    merged = float_model(reference)
    set_patches(merged, patches, "low_noise")
    out = forward(model)
    assert (out - base_out).norm() > 0.05 * base_out.norm()  # the LoRAs change the output
    torch.testing.assert_close(out, forward(merged), rtol=1e-5, atol=1e-5)

    set_patches(model, [], "low_noise")
    assert torch.equal(forward(model), base_out)
    assert not any(len(m.changes) for m in model.modules() if isinstance(m, GGUFLinear))


def test_a_strength_switch_and_block_swap_in_either_order(gguf_file, tmp_path):
    path, reference, quantized = gguf_file
    lora = lora_file(tmp_path, "lora", quantized, shapes_of(reference, quantized), "lora", seed=3)
    expected = {}
    for strength in (1.0, 0.4):
        merged = float_model(reference)
        set_patches(merged, [LoraPatch(lora, strength)], "low_noise")
        expected[strength] = forward(merged)

    swapped_first = load_dit(path, dtype=torch.float32)
    swap = enable_block_swap(swapped_first, 0)  # every block streamed: its changes must go with it
    set_patches(swapped_first, [LoraPatch(lora, 1.0)], "low_noise")
    changes = [c for m in swapped_first.modules() if isinstance(m, GGUFLinear) for c in m.changes]
    streamed = {id(module) for slot in swap._slots.values() for module, *_ in slot.masters}
    assert len(changes) == len(quantized) and all(id(c) in streamed for c in changes)
    torch.testing.assert_close(forward(swapped_first), expected[1.0], rtol=1e-5, atol=1e-5)
    set_patches(swapped_first, [LoraPatch(lora, 0.4)], "low_noise")
    torch.testing.assert_close(forward(swapped_first), expected[0.4], rtol=1e-5, atol=1e-5)
    assert swap.transfers > 0

    patched_first = load_dit(path, dtype=torch.float32)
    set_patches(patched_first, [LoraPatch(lora, 0.4)], "low_noise")
    enable_block_swap(patched_first, 1)
    torch.testing.assert_close(forward(patched_first), expected[0.4], rtol=1e-5, atol=1e-5)


def test_a_lora_for_another_model_is_refused_with_the_layers_real_shape(gguf_file, tmp_path):
    path, reference, quantized = gguf_file
    module = quantized[0]
    out, inp = reference[module + ".weight"].shape
    wrong = lora_file(tmp_path, "wrong", [module], {module: (out, inp * 2)}, "lora", seed=4)
    model = load_dit(path, dtype=torch.float32)
    with pytest.raises(InputError, match=rf"low-rank pair \(down/up\) has shape \[{out}, {inp * 2}\] but the "
                                         rf"model's is \[{out}, {inp}\]"):
        set_patches(model, [LoraPatch(wrong)], "low_noise")
    assert not any(len(m.changes) for m in model.modules() if isinstance(m, GGUFLinear))


class _Spy(torch.nn.Module):
    def __init__(self, low_rank: bool, seen: list) -> None:
        super().__init__()
        self.low_rank, self.seen = low_rank, seen

    def changed(self, weight: torch.Tensor) -> torch.Tensor:
        self.seen.append(weight.dtype)
        return weight


def test_changes_get_the_weight_in_the_compute_dtype_or_in_float32_when_one_needs_it(gguf_file):
    path, _, quantized = gguf_file
    layer = load_dit(path, dtype=torch.bfloat16).get_submodule(quantized[0])
    x = torch.randn(3, layer.in_features, dtype=torch.bfloat16)
    seen: list[torch.dtype] = []
    layer.changes.append(_Spy(True, seen))
    layer(x)
    layer.changes.append(_Spy(False, seen))
    assert layer(x).dtype == torch.bfloat16
    assert seen == [torch.bfloat16, torch.float32, torch.float32]
