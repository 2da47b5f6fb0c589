"""LoRA state dicts in the layouts users have, read into one form: per official module, its weight change
(`wan_core.lora.adapters`: a low-rank pair, a LoHa or a LoKr product) and full-tensor deltas.

The layout is detected from the keys:
- ComfyUI / lightx2v: `diffusion_model.<module>.lora_A.weight` / `.lora_B.weight` (or `lora_down` / `lora_up`,
  `lora.down` / `lora.up`, PEFT's `lora_A.default` / `lora_B.default` of DiffSynth-Studio), optional
  `<module>.alpha`, full-tensor deltas `<module>.diff` (weights, e.g. norms) and `<module>.diff_b` (biases), and
  lightx2v's `blocks.N.diff_m` (the delta of `blocks.N.modulation`); the `diffusion_model.` prefix is optional;
- kohya / musubi-tuner: `lora_unet_<module with dots as underscores>.lora_down.weight` / `.lora_up.weight` / `.alpha`
  (Wan-Fun files write `lora_unet__`);
- diffusers / PEFT: `transformer.blocks.N.attn1.to_q.lora_A.weight` (diffusers module names, `wan_core.dit.keymap`);
- SimpleTuner's LyCORIS files: `lycoris_<diffusers module with dots as underscores>.lokr_w1`.
In each layout a module may instead hold LyCORIS factors: LoHa `hada_w1_a`, `hada_w1_b`, `hada_w2_a`, `hada_w2_b`;
LoKr `lokr_w1` (or `lokr_w1_a` / `lokr_w1_b`) and `lokr_w2` (or `lokr_w2_a` / `lokr_w2_b`); and DoRA's magnitude
(`dora_scale`, or PEFT's `lora_magnitude_vector`) beside any of the three.
Module names are official (`blocks.N.self_attn.q`, `head.head`, ...) in the result, whatever the layout. Keys of the
CLIP image branch of Wan2.1 I2V (which Wan2.2 lacks) are left out with a warning, as ComfyUI does.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch

from ..dit.keymap import diffusers_to_official_key, flat_to_official_module, is_diffusers_layout, is_official_module
from ..errors import InputError, describe_keys
from .adapters import Adapter, Hadamard, Kronecker, LowRank

log = logging.getLogger(__name__)

KOHYA_PREFIX = "lora_unet_"
LYCORIS_PREFIX = "lycoris_"  # SimpleTuner: diffusers module names with dots as underscores
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.", "pipe.dit.")
# key suffix -> which part of a layer it is
_PARTS = {
    ".lora_A.weight": "down", ".lora_B.weight": "up",
    ".lora_A.default.weight": "down", ".lora_B.default.weight": "up",
    ".lora_down.weight": "down", ".lora_up.weight": "up",
    ".lora.down.weight": "down", ".lora.up.weight": "up",
    ".alpha": "alpha", ".diff": "diff", ".diff_b": "diff_b",
    ".dora_scale": "dora_scale", ".lora_magnitude_vector": "dora_scale",
    **{f".{name}": name for name in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "lokr_w1", "lokr_w1_a",
                                     "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")},
}  # fmt: skip
# lightx2v's `blocks.N.diff_m`: the full delta of `blocks.N.modulation` (lightx2v's and kijai's loaders add it there)
_MODULATION_DIFF = ".diff_m"
# The CLIP image branch of Wan2.1 I2V in official, kohya and diffusers names (`cross_attn.k_img`, `..._v_img`,
# `attn2.add_k_proj`, `img_emb.proj.1`, `condition_embedder.image_embedder.*`): no Wan2.2 model has it.
_IMAGE_BRANCH = re.compile(
    r"(^|[._])(k_img|v_img|norm_k_img|img_emb|add_k_proj|add_v_proj|norm_added_k|image_embedder)([._]|$)"
)
# LyCORIS forms no Wan2.2 trainer writes: Tucker factors (for convolutions; the DiT's only one is the patch embedding),
# GLoRA, (B)OFT
_UNSUPPORTED = {
    "hada_t1": "LoHa with Tucker factors", "hada_t2": "LoHa with Tucker factors", "lokr_t2": "LoKr with Tucker factors",
    "lora_mid": "LoCon with Tucker factors", ".a1.weight": "GLoRA", ".b1.weight": "GLoRA", "oft_": "OFT",
    "boft_": "BOFT",
}  # fmt: skip


@dataclass(frozen=True)
class LoraLayer:
    """What a LoRA changes in one official module (or bare parameter) `module`."""

    module: str
    adapter: Adapter | None = None  # the weight change: a low-rank pair, a LoHa or a LoKr product
    alpha: float | None = None
    diff: torch.Tensor | None = None  # full delta of the weight (or of the bare parameter)
    diff_b: torch.Tensor | None = None  # full delta of the bias
    dora_scale: torch.Tensor | None = None  # DoRA: the merged weight's norms (per output row or per input column)

    def scale(self, strength: float) -> float:
        """The adapter's factor: strength x alpha / rank (alpha or rank absent: strength, as ComfyUI)."""
        rank = None if self.adapter is None else self.adapter.rank
        return strength if self.alpha is None or rank is None else strength * self.alpha / rank


@dataclass(frozen=True)
class LoraWeights:
    """A parsed LoRA file: its layout name and its layers by official module name."""

    source: str
    layout: str  # "comfyui", "kohya" or "diffusers"
    layers: dict[str, LoraLayer]


def _strip_prefix(key: str) -> str:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _split_part(key: str) -> tuple[str, str] | None:
    """(the module a key belongs to, which part of its layer the key is), or None for an unknown suffix."""
    if key.endswith(_MODULATION_DIFF):
        return key[: -len(_MODULATION_DIFF)] + ".modulation", "diff"
    for suffix, part in _PARTS.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    return None


def _official_module(module: str, diffusers: bool) -> str | None:
    """The official name of a key's module (any prefix; kohya, diffusers or official names), or None."""
    if module.startswith(KOHYA_PREFIX):
        return flat_to_official_module(module[len(KOHYA_PREFIX):].lstrip("_"))  # Wan-Fun: `lora_unet__blocks_0_...`
    if module.startswith(LYCORIS_PREFIX):
        return flat_to_official_module(module[len(LYCORIS_PREFIX):], diffusers=True)
    module = _strip_prefix(module)
    if diffusers:
        as_weight = diffusers_to_official_key(module + ".weight")
        module = as_weight[: -len(".weight")] if as_weight != module + ".weight" else diffusers_to_official_key(module)
    return module if is_official_module(module) else None


def detect_layout(keys: list[str]) -> str:
    """`kohya`, `simpletuner`, `diffusers` or `comfyui` (which also covers lightx2v and bare official names)."""
    if any(k.startswith(KOHYA_PREFIX) for k in keys):
        return "kohya"
    if any(k.startswith(LYCORIS_PREFIX) for k in keys):
        return "simpletuner"
    modules = [split[0] for k in keys if (split := _split_part(_strip_prefix(k))) is not None]
    return "diffusers" if is_diffusers_layout(modules) else "comfyui"


def parse_lora(state_dict: dict[str, torch.Tensor], source: str) -> LoraWeights:
    """The layers of a LoRA state dict; raises `InputError` listing every key that names no part of the Wan2.2 DiT
    (keys of Wan2.1 I2V's image branch are left out with a warning)."""
    keys = list(state_dict)
    if not keys:
        raise InputError(f"The LoRA file {source} holds no tensors: download it again.")
    layout = detect_layout(keys)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    image_branch: list[str] = []
    for key in keys:
        split = _split_part(key)
        module = None if split is None else _official_module(split[0], layout == "diffusers")
        if split is not None and module is not None:
            parts.setdefault(module, {})[split[1]] = state_dict[key]
        else:
            (image_branch if _IMAGE_BRANCH.search(key) else unknown).append(key)
    _check_left_out(unknown, image_branch, bool(parts), f"The LoRA file {source} ({layout} layout)")
    layers = {module: _layer(module, found, source) for module, found in parts.items()}
    return LoraWeights(source=source, layout=layout, layers=layers)


def _check_left_out(unknown: list[str], image_branch: list[str], usable: bool, what: str) -> None:
    """Raise listing the keys that name no part of the Wan2.2 DiT. Keys of Wan2.1 I2V's CLIP image branch are left
    out with a warning, as ComfyUI does (raise when nothing else is `usable`)."""
    if unknown:
        forms = sorted({form for k in unknown for marker, form in _UNSUPPORTED.items() if marker in k})
        hint = f" {', '.join(forms)} cannot be merged into the Wan2.2 DiT." if forms else ""
        raise InputError(f"{what} has {len(unknown)} key(s) that name no part of the Wan2.2 DiT: "
                         f"{describe_keys(unknown)}.{hint} Use a LoRA made for Wan2.2 (or Wan2.1).")
    branch = "the CLIP image branch of Wan2.1 I2V (k_img, v_img, img_emb), which Wan2.2 does not have"
    if not usable:
        raise InputError(f"{what} changes only {branch}: it would change nothing.")
    if image_branch:
        log.warning("%s: left out %d key(s) of %s: %s.", what, len(image_branch), branch, describe_keys(image_branch))


def _incomplete(source: str, module: str, form: str, missing: list[str]) -> InputError:
    return InputError(f"The LoRA file {source} has a {form} for {module} without its {', '.join(missing)}: the file "
                      "is incomplete, download it again.")


def _factor(found: dict[str, torch.Tensor], name: str) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None:
    """A LoKr factor: whole (`lokr_w1`) or as a low-rank pair (`lokr_w1_a` @ `lokr_w1_b`)."""
    if name in found:
        return found[name]
    pair = found.get(name + "_a"), found.get(name + "_b")
    return pair if None not in pair else None


def _adapter(module: str, found: dict[str, torch.Tensor], source: str) -> Adapter | None:
    forms = [form for form, prefix in (("LoRA", ("down", "up")), ("LoHa", ("hada_",)), ("LoKr", ("lokr_",)))
             if any(part.startswith(prefix) for part in found)]
    if len(forms) > 1:
        raise InputError(f"The LoRA file {source} mixes {' and '.join(forms)} factors on {module}; one module takes "
                         "one form. The file is damaged or was merged wrongly: use the original file.")
    if forms == ["LoRA"]:
        down, up = found.get("down"), found.get("up")
        if down is None or up is None:
            raise _incomplete(source, module, "low-rank pair", ["down (A) matrix" if down is None else "up (B) matrix"])
        if down.dim() < 2 or up.dim() < 2 or down.shape[0] != up.shape[1]:
            raise InputError(f"The LoRA file {source}: {module} has down {list(down.shape)} and up {list(up.shape)}, "
                             "whose ranks do not match (down [rank, in], up [out, rank]).")
        return LowRank(down=down, up=up)
    if forms == ["LoHa"]:
        names = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
        missing = [name for name in names if name not in found]
        if missing:
            raise _incomplete(source, module, "LoHa product", missing)
        return Hadamard(*(found[name] for name in names))
    if forms == ["LoKr"]:
        w1, w2 = _factor(found, "lokr_w1"), _factor(found, "lokr_w2")
        if w1 is None or w2 is None:
            raise _incomplete(source, module, "LoKr product", [f"lokr_{n} (or lokr_{n}_a and lokr_{n}_b)"
                                                                for n, f in (("w1", w1), ("w2", w2)) if f is None])
        return Kronecker(w1=w1, w2=w2)
    return None


def _layer(module: str, found: dict[str, torch.Tensor], source: str) -> LoraLayer:
    adapter = _adapter(module, found, source)
    alpha = found.get("alpha")
    if alpha is not None and (adapter is None or alpha.numel() != 1):
        raise InputError(f"The LoRA file {source}: {module}.alpha must be one number beside a down/up pair (or LoHa / "
                         "LoKr factors).")
    if "dora_scale" in found and adapter is None:
        raise InputError(f"The LoRA file {source}: {module} has a DoRA magnitude (dora_scale) but no low-rank, LoHa "
                         "or LoKr factors to go with it: the file is incomplete, download it again.")
    return LoraLayer(
        module=module, adapter=adapter, alpha=None if alpha is None else float(alpha.float().item()),
        diff=found.get("diff"), diff_b=found.get("diff_b"), dora_scale=found.get("dora_scale"),
    )  # fmt: skip
