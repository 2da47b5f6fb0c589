"""LoRA: every file layout merges to the weights diffusers' own LoRA loader fuses (and to a hand merge
W + s*alpha/r*B@A), removal restores the base bit for bit, fp8 weights merge within a stated bound, clear errors
for foreign files."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from wan_core.configs import DIT_CONFIGS
from wan_core.dit.keymap import diffusers_to_official, official_to_diffusers_key
from wan_core.dit.loader import load_dit
from wan_core.errors import InputError
from wan_core.lora import LoraPatch, read_lora
from wan_core.lora import files as lora_files
from wan_core.lora.formats import detect_layout
from wan_core.lora.patch import dequantize_fp8
from wan_core.patching import PatchedWeights, set_patches

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")  # diffusers' LoRA loading needs it

from test_dit_parity import _random_diffusers  # noqa: E402

LINEARS = [f"{attn}.{p}" for attn in ("self_attn", "cross_attn") for p in "qkvo"] + ["ffn.0", "ffn.2"]
RANK, ALPHA, STRENGTH = 4, 8.0, 0.7


def random_lora(model: torch.nn.Module, seed: int = 0, bias: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """Official module -> {down, up, (diff_b)} for every block Linear of `model`."""
    gen = torch.Generator().manual_seed(seed)
    layers = {}
    for block in range(len(model.blocks)):
        for name in LINEARS:
            module = f"blocks.{block}.{name}"
            out, inp = model.get_parameter(module + ".weight").shape
            layer = {"down": torch.randn(RANK, inp, generator=gen) * 0.1, "up": torch.randn(out, RANK, generator=gen)}
            if bias:
                layer["diff_b"] = torch.randn(out, generator=gen) * 0.1
            layers[module] = layer
    return layers


def render(layers: dict, layout: str, alpha: float | None) -> dict[str, torch.Tensor]:
    """The layers as a file of `layout` would hold them."""
    names = {
        "lightx2v": ("diffusion_model.{m}", ".lora_A.weight", ".lora_B.weight"),
        "comfy_down_up": ("diffusion_model.{m}", ".lora_down.weight", ".lora_up.weight"),
        "comfy_dot": ("{m}", ".lora.down.weight", ".lora.up.weight"),
        "kohya": ("lora_unet_{k}", ".lora_down.weight", ".lora_up.weight"),
        "diffusers": ("transformer.{d}", ".lora_A.weight", ".lora_B.weight"),
    }[layout]
    out = {}
    for module, layer in layers.items():
        diffusers_module = official_to_diffusers_key(module + ".weight")[: -len(".weight")]
        stem = names[0].format(m=module, k=module.replace(".", "_"), d=diffusers_module)
        out[stem + names[1]] = layer["down"]
        out[stem + names[2]] = layer["up"]
        if alpha is not None:
            out[stem + ".alpha"] = torch.tensor(alpha)
        if "diff_b" in layer:
            out[stem + ".diff_b"] = layer["diff_b"]
    return out


def hand_merge(state: dict[str, torch.Tensor], layers: dict, strength: float, alpha: float | None) -> dict:
    scale = strength * (alpha / RANK if alpha is not None else 1.0)
    merged = {k: v.clone() for k, v in state.items()}
    for module, layer in layers.items():
        weight = merged[module + ".weight"]
        merged[module + ".weight"] = (weight.float() + scale * layer["up"] @ layer["down"]).to(weight.dtype)
        if "diff_b" in layer:
            merged[module + ".bias"] = (merged[module + ".bias"].float() + strength * layer["diff_b"]).to(weight.dtype)
    return merged


def assert_states_close(ours: dict, ref: dict, atol: float = 1e-5) -> None:
    assert ours.keys() == ref.keys()
    for key in ours:
        torch.testing.assert_close(ours[key].float(), ref[key].float(), atol=atol, rtol=1e-5, msg=key)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny diffusers transformer and our model loaded from its saved folder (the same weights)."""
    folder = tmp_path_factory.mktemp("dit") / "transformer"
    reference = _random_diffusers(DIT_CONFIGS["tiny-t2v"], seed=5)
    reference.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(("layout", "alpha", "bias"), [
    ("lightx2v", ALPHA, True), ("comfy_down_up", None, False), ("kohya", ALPHA, False), ("diffusers", None, False),
])  # fmt: skip
def test_each_layout_merges_like_diffusers_fuse_lora_and_the_hand_merge(pair, tmp_path, layout, alpha, bias):
    ours = load_dit(pair)
    base = {k: v.clone() for k, v in ours.state_dict().items()}
    layers = random_lora(ours, bias=bias)
    path = tmp_path / f"{layout}.safetensors"
    save_file(render(layers, layout, alpha), str(path))

    set_patches(ours, [LoraPatch(str(path), STRENGTH)], "high_noise")
    merged = ours.state_dict()
    assert_states_close(merged, hand_merge(base, layers, STRENGTH, alpha))
    assert not torch.equal(merged["blocks.1.ffn.2.weight"], base["blocks.1.ffn.2.weight"])

    from diffusers.loaders import WanLoraLoaderMixin

    reference = diffusers.WanTransformer3DModel.from_pretrained(pair).eval()
    reference.load_lora_adapter(WanLoraLoaderMixin.lora_state_dict(str(path)), prefix="transformer",
                                adapter_name="test")
    reference.fuse_lora(lora_scale=STRENGTH)
    reference.unload_lora()
    assert_states_close(merged, diffusers_to_official(reference.state_dict()))


def test_dotted_layout_diffs_and_bare_names_match_the_hand_merge(pair, tmp_path):
    """`lora.down`/`lora.up` without prefix, `.diff` on a norm and on a bare parameter (modulation), `.diff_b`."""
    ours = load_dit(pair)
    base = {k: v.clone() for k, v in ours.state_dict().items()}
    layers = random_lora(ours, seed=2, bias=True)
    tensors = render(layers, "comfy_dot", ALPHA)
    gen = torch.Generator().manual_seed(9)
    diffs = {"blocks.0.self_attn.norm_q.weight": torch.randn(64, generator=gen),
             "blocks.1.modulation": torch.randn(1, 6, 64, generator=gen), "head.head.weight": None}
    tensors["blocks.0.self_attn.norm_q.diff"] = diffs["blocks.0.self_attn.norm_q.weight"]
    tensors["blocks.1.modulation.diff"] = diffs["blocks.1.modulation"]
    path = tmp_path / "dot.safetensors"
    save_file(tensors, str(path))
    assert read_lora(path).layout == "comfyui"

    set_patches(ours, [LoraPatch(str(path), STRENGTH)], "single")
    expected = hand_merge(base, layers, STRENGTH, ALPHA)
    for name in ("blocks.0.self_attn.norm_q.weight", "blocks.1.modulation"):
        expected[name] = base[name] + STRENGTH * diffs[name]
    assert_states_close(ours.state_dict(), expected)


def test_layout_detection():
    assert detect_layout(["lora_unet_blocks_0_ffn_0.lora_down.weight"]) == "kohya"
    assert detect_layout(["transformer.blocks.0.attn1.to_q.lora_A.weight"]) == "diffusers"
    assert detect_layout(["blocks.0.attn1.to_q.lora_A.weight"]) == "diffusers"
    assert detect_layout(["diffusion_model.blocks.0.self_attn.q.lora_up.weight"]) == "comfyui"


def test_removal_restores_the_base_bit_for_bit_and_strength_switch_matches_a_fresh_merge(pair, tmp_path):
    ours = load_dit(pair, dtype=torch.bfloat16)
    base = {k: v.clone() for k, v in ours.state_dict().items()}
    path = tmp_path / "l.safetensors"
    save_file(render(random_lora(ours, bias=True), "lightx2v", ALPHA), str(path))
    set_patches(ours, [LoraPatch(str(path), 1.0)], "high_noise")
    set_patches(ours, [LoraPatch(str(path), 0.5)], "high_noise")
    switched = {k: v.clone() for k, v in ours.state_dict().items()}
    set_patches(ours, [], "high_noise")
    state = ours.state_dict()
    assert all(torch.equal(state[k], base[k]) and state[k].dtype == base[k].dtype for k in base)
    set_patches(ours, [LoraPatch(str(path), 0.5)], "high_noise")
    assert all(torch.equal(ours.state_dict()[k], switched[k]) for k in base)


def test_a_switch_keeps_the_originals_and_restores_what_the_next_patches_leave_alone(pair, tmp_path, monkeypatch):
    """Switching strength or LoRA copies no original again (a 14B expert's are 14 GB off the GPU); weights the new
    patches do not change are back at their base bits; removal drops the originals."""
    ours = load_dit(pair, dtype=torch.bfloat16)
    base = {k: v.clone() for k, v in ours.state_dict().items()}
    lora = random_lora(ours)
    everywhere, block0 = tmp_path / "all.safetensors", tmp_path / "block0.safetensors"
    save_file(render(lora, "lightx2v", ALPHA), str(everywhere))
    save_file(render({k: v for k, v in lora.items() if k.startswith("blocks.0.")}, "lightx2v", ALPHA), str(block0))
    taken = []
    real = PatchedWeights._original
    monkeypatch.setattr(PatchedWeights, "_original", lambda self, name, param: taken.append(name) or real(
        self, name, param))

    set_patches(ours, [LoraPatch(str(everywhere), 1.0)], "high_noise")
    assert sorted(taken) == sorted(f"{m}.weight" for m in lora)
    taken.clear()
    set_patches(ours, [LoraPatch(str(everywhere), 0.5)], "high_noise")
    set_patches(ours, [LoraPatch(str(block0), 0.5)], "high_noise")
    assert taken == []
    expected = hand_merge(base, {k: v for k, v in lora.items() if k.startswith("blocks.0.")}, 0.5, ALPHA)
    state = ours.state_dict()
    assert all(torch.equal(state[k], expected[k]) for k in base if not k.startswith("blocks.0."))
    assert_states_close(state, expected, atol=2e-2)  # bf16 rounding of the merged block-0 weights

    set_patches(ours, [], "high_noise")
    state = ours.state_dict()
    assert all(torch.equal(state[k], base[k]) for k in base)
    assert ours._wan_patched_weights._originals == {}
    set_patches(ours, [LoraPatch(str(block0), 1.0)], "high_noise")
    assert sorted(taken) == sorted(f"blocks.0.{m}.weight" for m in LINEARS)


def test_fp8_merge_requantizes_within_the_stated_bound(pair, tmp_path):
    """fp8 weights: dequantize, merge in float32, quantize with a fresh scale. The merged weight's error against the
    exact float merge is one e4m3 rounding: at most 2^-4 of each value (relative), ~2-3 % in norm (docs/lora.md)."""
    ours = load_dit(pair, dtype=torch.bfloat16, fp8_weights=True)
    layer = ours.get_submodule("blocks.0.ffn.0")
    assert layer.weight.dtype == torch.float8_e4m3fn
    base_bits = {k: v.clone() for k, v in list(ours.state_dict().items()) + [("scale", layer.weight_scale)]}
    dequantized = dequantize_fp8(layer.weight, layer.weight_scale)
    lora = random_lora(ours)
    path = tmp_path / "l.safetensors"
    save_file(render(lora, "lightx2v", ALPHA), str(path))

    set_patches(ours, [LoraPatch(str(path), 1.0)], "low_noise")
    exact = dequantized + ALPHA / RANK * lora["blocks.0.ffn.0"]["up"] @ lora["blocks.0.ffn.0"]["down"]
    merged = dequantize_fp8(layer.weight, layer.weight_scale)
    assert layer.weight.dtype == torch.float8_e4m3fn
    assert not torch.equal(layer.weight_scale, base_bits["scale"])  # a fresh scale for the merged range
    error = (merged - exact).norm() / exact.norm()
    assert 0 < error < 0.035
    # per value: one rounding of a 3-bit mantissa (values above e4m3's smallest normal number)
    normal = exact.abs() > 2**-6 * layer.weight_scale.reshape(-1, 1)  # per output channel
    assert ((merged - exact).abs()[normal] <= exact.abs()[normal] * 2**-4 + 1e-7).all()

    set_patches(ours, [], "low_noise")
    assert torch.equal(layer.weight_scale, base_bits["scale"])
    state = ours.state_dict()
    assert all(torch.equal(bits(state[k]), bits(base_bits[k])) for k in state)


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(torch.uint8) if tensor.dtype == torch.float8_e4m3fn else tensor


def test_unknown_keys_are_listed(tmp_path):
    """Keys of Wan2.1 I2V's image branch are left out (tests/test_lora_real_layouts.py), the others are errors."""
    path = tmp_path / "bad.safetensors"
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.ones(2, 64),
               "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.ones(64, 2),
               "diffusion_model.blocks.0.cross_attn.k_img.lora_A.weight": torch.ones(2, 64),
               "diffusion_model.unet.something.lora_B.weight": torch.ones(2, 2),
               "diffusion_model.blocks.0.self_attn.q.lora_mid.weight": torch.ones(2, 2)}, str(path))
    with pytest.raises(InputError, match=r"2 key\(s\) that name no part of the Wan2\.2 DiT: "
                                         r"'diffusion_model\.blocks\.0\.self_attn\.q\.lora_mid\.weight', "
                                         r"'diffusion_model\.unet\.something\.lora_B\.weight'\. LoCon with "
                                         r"Tucker factors cannot be merged into the Wan2\.2 DiT\. Use a LoRA"):
        read_lora(path)


def test_incomplete_pair_and_foreign_shapes_are_clear_errors(pair, tmp_path):
    half = tmp_path / "half.safetensors"
    save_file({"blocks.0.ffn.0.lora_A.weight": torch.ones(2, 64)}, str(half))
    with pytest.raises(InputError, match=r"low-rank pair for blocks.0.ffn.0 without its up \(B\) matrix"):
        read_lora(half)
    wide = tmp_path / "wide.safetensors"
    save_file({"blocks.0.ffn.0.lora_A.weight": torch.ones(2, 5120),
               "blocks.0.ffn.0.lora_B.weight": torch.ones(13824, 2)}, str(wide))
    with pytest.raises(InputError, match=r"none of its 1 layer\(s\) fits this model: its blocks.0.ffn.0 low-rank pair "
                                         r"\(down/up\) has shape \[13824, 5120\] but the model's is \[128, 64\]\. "
                                         r"The LoRA was made for another Wan model"):
        set_patches(load_dit(pair), [LoraPatch(str(wide))], "high_noise")
    deep = tmp_path / "deep.safetensors"
    save_file({"blocks.39.ffn.0.lora_A.weight": torch.ones(2, 64), "blocks.39.ffn.0.lora_B.weight": torch.ones(128, 2)},
              str(deep))
    with pytest.raises(InputError, match="blocks.39.ffn.0, which this model does not have"):
        set_patches(load_dit(pair), [LoraPatch(str(deep))], "high_noise")


def test_a_lora_that_fits_in_part_is_applied_without_the_rest(pair, tmp_path, caplog):
    """As ComfyUI does: an I2V LoRA's patch embedding (36 input channels) on a T2V model and a block this model lacks
    are left out with one warning (not repeated at a strength switch); the rest merges as the hand merge of the
    layers that fit. A LoRA none of whose layers fits stays an error (above)."""
    ours = load_dit(pair)
    base = {k: v.clone() for k, v in ours.state_dict().items()}
    layers = random_lora(ours)
    tensors = render(layers, "lightx2v", ALPHA)
    dim, channels = ours.patch_embedding.weight.shape[:2]
    assert channels != 36
    tensors["diffusion_model.patch_embedding.lora_A.weight"] = torch.ones(RANK, 36 * 4)
    tensors["diffusion_model.patch_embedding.lora_B.weight"] = torch.ones(dim, RANK)
    tensors["diffusion_model.blocks.39.ffn.0.lora_A.weight"] = torch.ones(RANK, dim)
    tensors["diffusion_model.blocks.39.ffn.0.lora_B.weight"] = torch.ones(128, RANK)
    path = tmp_path / "i2v_on_t2v.safetensors"
    save_file(tensors, str(path))

    with caplog.at_level("WARNING", logger="wan_core.lora.patch"):
        set_patches(ours, [LoraPatch(str(path), STRENGTH)], "high_noise")
    assert_states_close(ours.state_dict(), hand_merge(base, layers, STRENGTH, ALPHA))
    assert torch.equal(ours.patch_embedding.weight, base["patch_embedding.weight"])
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert f"2 of its {len(layers) + 2} layers do not fit this model and are left out" in warnings[0]
    assert f"patch_embedding low-rank pair (down/up) has shape [{dim}, 144] but the model's is [{dim}, " in warnings[0]
    assert "blocks.39.ffn.0, which this model does not have" in warnings[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="wan_core.lora.patch"):
        set_patches(ours, [LoraPatch(str(path), 0.5)], "high_noise")
    assert caplog.records == []
    assert_states_close(ours.state_dict(), hand_merge(base, layers, 0.5, ALPHA))


def test_the_file_is_read_once_for_any_number_of_strengths(pair, tmp_path, monkeypatch):
    path = tmp_path / "l.safetensors"
    ours = load_dit(pair)
    save_file(render(random_lora(ours), "kohya", ALPHA), str(path))
    reads = []
    real = lora_files.read_safetensors
    monkeypatch.setattr(lora_files, "read_safetensors", lambda p: reads.append(p) or real(p))
    lora_files.clear_cache()
    for strength in (1.0, 0.5, 0.25):
        set_patches(ours, [LoraPatch(str(path), strength)], "high_noise")
    assert len(reads) == 1
    assert hash(LoraPatch(str(path), 0.5)) == hash(LoraPatch(str(path), 0.5))
