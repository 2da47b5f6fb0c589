"""LyCORIS LoHa and LoKr files, and DoRA: every key naming users have (ComfyUI, kohya / musubi-tuner, diffusers /
PEFT, SimpleTuner's `lycoris_`) merges to the weights PEFT's own LoHa / LoKr / DoRA layers merge on diffusers' Wan
transformer, and to a hand merge of the published formulas (LoHa (w1a w1b) * (w2a w2b), LoKr kron(w1, w2), DoRA
m * W' / ||W'||); removal restores the base bit for bit; incomplete or foreign files are clear errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from wan_core.configs import DIT_CONFIGS
from wan_core.dit.keymap import diffusers_to_official, official_to_diffusers_key
from wan_core.dit.loader import load_dit
from wan_core.errors import InputError
from wan_core.lora import LoraPatch, read_lora
from wan_core.lora.patch import dequantize_fp8
from wan_core.patching import set_patches

diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")

from test_dit_parity import _random_diffusers  # noqa: E402
from test_lora import assert_states_close  # noqa: E402

TARGETS = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_v", "ffn.net.0.proj",
           "ffn.net.2"]  # fmt: skip
RANK, ALPHA = 4, 6.0


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny diffusers transformer saved as a folder (our loader and diffusers read the same weights)."""
    path = tmp_path_factory.mktemp("dit") / "transformer"
    _random_diffusers(DIT_CONFIGS["tiny-t2v"], seed=11).save_pretrained(path)
    return path


def peft_model(folder, config, seed: int) -> torch.nn.Module:
    """diffusers' Wan transformer with `config`'s PEFT adapters on every block's `TARGETS`, factors random."""
    model = diffusers.WanTransformer3DModel.from_pretrained(folder).eval()
    model = peft.get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(part in name for part in ("hada_", "lokr_", "lora_A", "lora_B")):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
            elif "lora_magnitude_vector" in name:
                param.mul_(1 + 0.2 * torch.rand(param.shape, generator=gen))
    return model


def merged_by_peft(model: torch.nn.Module, strength: float = 1.0) -> dict[str, torch.Tensor]:
    if strength != 1.0:
        for module in model.modules():
            if hasattr(module, "scale_layer"):
                module.scale_layer(strength)
    return diffusers_to_official(model.merge_and_unload().state_dict())


def factors(model: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """Official module -> its adapter factors by LyCORIS part name (`hada_w1_a`, `lokr_w2_b`, `lora_A.weight`, ...)."""
    state = peft.get_peft_model_state_dict(model)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        key = key.removeprefix("base_model.model.")
        module = next(key[: key.index(f".{t}.") + len(t) + 1] for t in TARGETS if f".{t}." in key)
        official = diffusers_to_official({module + ".weight": value})
        out.setdefault(next(iter(official))[: -len(".weight")], {})[key[len(module) + 1 :]] = value.detach().clone()
    return out


def render(layers: dict[str, dict[str, torch.Tensor]], naming: str, alpha: float | None) -> dict[str, torch.Tensor]:
    """The factors under one key naming users have."""
    out = {}
    for module, parts in layers.items():
        diffusers_module = official_to_diffusers_key(module + ".weight")[: -len(".weight")]
        stem = {
            "comfyui": f"diffusion_model.{module}",
            "kohya": "lora_unet_" + module.replace(".", "_"),
            "diffusers": f"transformer.{diffusers_module}",
            "simpletuner": "lycoris_" + diffusers_module.replace(".", "_"),
        }[naming]
        out.update({f"{stem}.{part}": value for part, value in parts.items()})
        if alpha is not None:
            out[f"{stem}.alpha"] = torch.tensor(alpha)
    return out


def merged_by_us(folder, tmp_path, tensors: dict[str, torch.Tensor], strength: float = 1.0) -> dict:
    path = tmp_path / f"lora{len(list(tmp_path.iterdir()))}.safetensors"
    save_file(tensors, str(path))
    ours = load_dit(folder)
    set_patches(ours, [LoraPatch(str(path), strength)], "high_noise")
    return ours.state_dict()


@pytest.mark.parametrize("naming", ["comfyui", "kohya", "diffusers", "simpletuner"])
def test_loha_in_every_naming_merges_like_peft(folder, tmp_path, naming):
    model = peft_model(folder, peft.LoHaConfig(r=RANK, alpha=ALPHA, target_modules=TARGETS), seed=1)
    layers = factors(model)
    assert set(next(iter(layers.values()))) == {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"}
    ours = merged_by_us(folder, tmp_path, render(layers, naming, ALPHA), strength=0.6)
    assert_states_close(ours, merged_by_peft(model, strength=0.6))
    base = load_dit(folder).state_dict()
    assert not torch.equal(ours["blocks.1.ffn.2.weight"], base["blocks.1.ffn.2.weight"])


@pytest.mark.parametrize("naming", ["comfyui", "kohya", "simpletuner"])
def test_lokr_with_a_low_rank_second_factor_merges_like_peft(folder, tmp_path, naming):
    model = peft_model(folder, peft.LoKrConfig(r=2, alpha=ALPHA, target_modules=TARGETS), seed=2)
    layers = factors(model)
    assert set(layers["blocks.0.ffn.0"]) == {"lokr_w1", "lokr_w2_a", "lokr_w2_b"}
    assert_states_close(merged_by_us(folder, tmp_path, render(layers, naming, ALPHA)), merged_by_peft(model))


def hand_lokr(weight: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, scale: float) -> torch.Tensor:
    """W + scale * kron(w1, w2), the Kronecker product written out: block (i, j) is w1[i, j] * w2."""
    blocks = [[w1[i, j] * w2 for j in range(w1.shape[1])] for i in range(w1.shape[0])]
    return weight + scale * torch.cat([torch.cat(row, dim=1) for row in blocks], dim=0)


@pytest.mark.parametrize(("w1_pair", "w2_pair"), [(True, False), (False, False), (True, True)])
def test_lokr_factor_forms_and_which_rank_alpha_divides_by(folder, tmp_path, w1_pair, w2_pair):
    """ComfyUI and LyCORIS: alpha / the rank of the factor given as a pair (w2's when both are); both factors whole:
    alpha has no effect."""
    base = load_dit(folder).state_dict()
    gen = torch.Generator().manual_seed(3)
    module = "blocks.0.ffn.0"  # [128, 64] = kron([8, 4], [16, 16])
    w1, w2 = torch.randn(8, 4, generator=gen), torch.randn(16, 16, generator=gen) * 0.1
    parts: dict[str, torch.Tensor] = {}
    ranks = {}
    for name, whole, pair, rank in (("w1", w1, w1_pair, 2), ("w2", w2, w2_pair, 3)):
        if pair:
            a, b = torch.randn(whole.shape[0], rank, generator=gen), torch.randn(rank, whole.shape[1], generator=gen)
            parts[f"lokr_{name}_a"], parts[f"lokr_{name}_b"] = a, b
            whole.copy_(a @ b)
            ranks[name] = rank
        else:
            parts[f"lokr_{name}"] = whole
    ours = merged_by_us(folder, tmp_path, render({module: parts}, "comfyui", ALPHA), strength=0.5)
    rank = ranks.get("w2", ranks.get("w1"))
    scale = 0.5 * (ALPHA / rank if rank else 1.0)
    torch.testing.assert_close(ours[module + ".weight"], hand_lokr(base[module + ".weight"], w1, w2, scale))


def test_lokr_on_the_patch_embedding_convolution(folder, tmp_path):
    """A convolution's whole w2 carries the kernel: kron(w1, w2) over [out, in, 1, 2, 2]."""
    base = load_dit(folder).state_dict()
    weight = base["patch_embedding.weight"]  # [64, 16, 1, 2, 2]
    gen = torch.Generator().manual_seed(8)
    w1, w2 = torch.randn(4, 2, generator=gen), torch.randn(16, 8, 1, 2, 2, generator=gen) * 0.1
    ours = merged_by_us(folder, tmp_path, render({"patch_embedding": {"lokr_w1": w1, "lokr_w2": w2}}, "kohya", None))
    expected = hand_lokr(weight.reshape(64, -1), w1, w2.reshape(16, -1), 1.0).reshape(weight.shape)
    torch.testing.assert_close(ours["patch_embedding.weight"], expected)


def test_dora_from_peft_and_as_lycoris_dora_scale_merges_like_peft(folder, tmp_path):
    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, use_dora=True)
    model = peft_model(folder, config, seed=4)
    layers = factors(model)
    assert set(layers["blocks.1.cross_attn.q"]) == {
        "lora_A.weight", "lora_B.weight", "lora_magnitude_vector"}
    reference = merged_by_peft(model)
    assert_states_close(merged_by_us(folder, tmp_path, render(layers, "diffusers", ALPHA)), reference)
    lycoris = {module: {"lora_down.weight": parts["lora_A.weight"], "lora_up.weight": parts["lora_B.weight"],
                        "dora_scale": parts["lora_magnitude_vector"].reshape(-1, 1)}
               for module, parts in layers.items()}  # fmt: skip
    assert_states_close(merged_by_us(folder, tmp_path, render(lycoris, "kohya", ALPHA)), reference)


def hand_dora(weight, delta, magnitude, per_row: bool, strength: float) -> torch.Tensor:
    changed = weight + delta
    norms = changed.norm(dim=1, keepdim=True) if per_row else changed.norm(dim=0, keepdim=True)
    decomposed = changed * magnitude.reshape(norms.shape) / norms
    return weight + strength * (decomposed - weight)


@pytest.mark.parametrize(("form", "per_row", "strength"), [
    ("loha", False, 0.7), ("lokr", True, 0.7), ("lora", False, 1.0), ("lora", True, 1.3),
])  # fmt: skip
def test_dora_per_row_or_per_column_and_strength_blend_match_the_hand_formula(folder, tmp_path, form, per_row,
                                                                               strength):
    base = load_dit(folder).state_dict()
    gen = torch.Generator().manual_seed(5)
    module, (out, inp) = "blocks.1.self_attn.o", base["blocks.1.self_attn.o.weight"].shape
    r = torch.randn
    if form == "lora":
        parts = {"lora_A.weight": r(RANK, inp, generator=gen), "lora_B.weight": r(out, RANK, generator=gen) * 0.1}
        delta = parts["lora_B.weight"] @ parts["lora_A.weight"] * (ALPHA / RANK)
    elif form == "loha":
        parts = {"hada_w1_a": r(out, RANK, generator=gen), "hada_w1_b": r(RANK, inp, generator=gen) * 0.1,
                 "hada_w2_a": r(out, RANK, generator=gen), "hada_w2_b": r(RANK, inp, generator=gen) * 0.1}
        delta = (parts["hada_w1_a"] @ parts["hada_w1_b"]) * (parts["hada_w2_a"] @ parts["hada_w2_b"]) * (ALPHA / RANK)
    else:
        parts = {"lokr_w1": r(4, 4, generator=gen), "lokr_w2_a": r(16, RANK, generator=gen) * 0.1,
                 "lokr_w2_b": r(RANK, 16, generator=gen)}
        w2 = parts["lokr_w2_a"] @ parts["lokr_w2_b"]
        delta = hand_lokr(torch.zeros(out, inp), parts["lokr_w1"], w2, ALPHA / RANK)
    weight = base[module + ".weight"]
    natural = (weight + delta).norm(dim=1 if per_row else 0)
    magnitude = natural * (1 + 0.3 * torch.rand(natural.shape, generator=gen))
    parts["dora_scale"] = magnitude.reshape(-1, 1) if per_row else magnitude.reshape(1, -1)
    ours = merged_by_us(folder, tmp_path, render({module: parts}, "comfyui", ALPHA), strength=strength)
    torch.testing.assert_close(ours[module + ".weight"], hand_dora(weight, delta, magnitude, per_row, strength))


def test_removing_lycoris_and_dora_patches_restores_the_base_bit_for_bit(folder, tmp_path):
    loha = factors(peft_model(folder, peft.LoHaConfig(r=RANK, alpha=ALPHA, target_modules=TARGETS), seed=6))
    dora = factors(peft_model(folder, peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS,
                                                      use_dora=True), seed=7))
    paths = []
    for name, layers in (("loha", loha), ("dora", dora)):
        paths.append(tmp_path / f"{name}.safetensors")
        save_file(render(layers, "diffusers", ALPHA), str(paths[-1]))
    ours = load_dit(folder)
    base = {k: v.clone() for k, v in ours.state_dict().items()}
    set_patches(ours, [LoraPatch(str(paths[0]), 0.8), LoraPatch(str(paths[1]), 0.5)], "high_noise")
    assert not torch.equal(ours.state_dict()["blocks.0.self_attn.q.weight"], base["blocks.0.self_attn.q.weight"])
    set_patches(ours, [], "high_noise")
    assert all(torch.equal(v, base[k]) for k, v in ours.state_dict().items())
    set_patches(ours, [LoraPatch(str(paths[1]), 0.0)], "high_noise")
    assert all(torch.equal(v, base[k]) for k, v in ours.state_dict().items())


def save(tmp_path, name: str, tensors: dict[str, torch.Tensor]):
    path = tmp_path / f"{name}.safetensors"
    save_file(tensors, str(path))
    return path


def test_incomplete_mixed_and_foreign_lycoris_files_are_clear_errors(folder, tmp_path):
    stem = "lora_unet_blocks_0_ffn_0"
    w = {f"{stem}.hada_w1_a": torch.ones(128, 2), f"{stem}.hada_w1_b": torch.ones(2, 64),
         f"{stem}.hada_w2_a": torch.ones(128, 2)}  # fmt: skip
    with pytest.raises(InputError, match=r"LoHa product for blocks\.0\.ffn\.0 without its hada_w2_b: the file is "
                                         "incomplete"):
        read_lora(save(tmp_path, "loha", w))
    with pytest.raises(InputError, match=r"LoKr product for blocks\.0\.ffn\.0 without its lokr_w2 \(or lokr_w2_a "
                                         "and lokr_w2_b\\)"):
        read_lora(save(tmp_path, "lokr", {f"{stem}.lokr_w1": torch.ones(8, 4), f"{stem}.lokr_w2_a": torch.ones(16, 2)}))
    with pytest.raises(InputError, match="mixes LoRA and LoHa factors on blocks.0.ffn.0"):
        read_lora(save(tmp_path, "mixed", {**w, f"{stem}.hada_w2_b": torch.ones(2, 64),
                                           f"{stem}.lora_down.weight": torch.ones(2, 64),
                                           f"{stem}.lora_up.weight": torch.ones(128, 2)}))
    with pytest.raises(InputError, match="DoRA magnitude .* but no low-rank, LoHa or LoKr factors"):
        read_lora(save(tmp_path, "dora_only", {f"{stem}.dora_scale": torch.ones(128, 1)}))
    with pytest.raises(InputError, match="LoHa with Tucker factors cannot be merged"):
        read_lora(save(tmp_path, "tucker", {**w, f"{stem}.hada_w2_b": torch.ones(2, 64),
                                            f"{stem}.hada_t1": torch.ones(2, 2, 3, 3)}))
    foreign = save(tmp_path, "foreign", {f"{stem}.lokr_w1": torch.ones(8, 4), f"{stem}.lokr_w2": torch.ones(640, 1280)})
    with pytest.raises(InputError, match=r"LoKr product .* has shape \[5120, 5120\] but the model's is \[128, 64\]"):
        set_patches(load_dit(folder), [LoraPatch(str(foreign))], "high_noise")
    bad_dora = save(tmp_path, "bad_dora", {f"{stem}.lora_down.weight": torch.ones(2, 64),
                                           f"{stem}.lora_up.weight": torch.ones(128, 2),
                                           f"{stem}.dora_scale": torch.ones(1, 32)})
    with pytest.raises(InputError, match=r"dora_scale has shape \[1, 32\], which is neither one value per output row "
                                         r"\(128\) nor per input column \(64\)"):
        set_patches(load_dit(folder), [LoraPatch(str(bad_dora))], "high_noise")


def test_lokr_with_dora_on_fp8_weights_requantizes_within_one_e4m3_rounding(folder, tmp_path):
    ours = load_dit(folder, dtype=torch.bfloat16, fp8_weights=True)
    layer = ours.get_submodule("blocks.0.ffn.0")
    assert layer.weight.dtype == torch.float8_e4m3fn
    weight = dequantize_fp8(layer.weight, layer.weight_scale)
    gen = torch.Generator().manual_seed(9)
    w1, w2 = torch.randn(8, 4, generator=gen), torch.randn(16, 16, generator=gen) * 0.05
    magnitude = (weight + hand_lokr(torch.zeros_like(weight), w1, w2, 1.0)).norm(dim=1) * 1.2
    parts = {"lokr_w1": w1, "lokr_w2": w2, "dora_scale": magnitude.reshape(-1, 1)}
    set_patches(ours, [LoraPatch(str(save(tmp_path, "lokr", render({"blocks.0.ffn.0": parts}, "comfyui", None))))],
                "high_noise")
    exact = hand_dora(weight, hand_lokr(torch.zeros_like(weight), w1, w2, 1.0), magnitude, True, 1.0)
    merged = dequantize_fp8(layer.weight, layer.weight_scale)
    assert layer.weight.dtype == torch.float8_e4m3fn
    assert 0 < ((merged - exact).norm() / exact.norm()).item() < 0.035  # tests/test_lora.py: one e4m3 rounding
