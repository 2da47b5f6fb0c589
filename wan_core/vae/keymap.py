"""Key names of the Wan VAE: official (Wan2.x_VAE.pth; ComfyUI's wan_2.1_vae / wan2.2_vae.safetensors use the same)
<-> diffusers' `AutoencoderKLWan`.

| official | diffusers |
|---|---|
| `conv1`, `conv2` | `quant_conv`, `post_quant_conv` |
| `{encoder,decoder}.conv1` | `{encoder,decoder}.conv_in` |
| `*.head.0.gamma`, `*.head.2` | `*.norm_out.gamma`, `*.conv_out` |
| `*.middle.{0,1,2}` | `*.mid_block.{resnets.0, attentions.0, resnets.1}` |
| residual block `residual.{0,2,3,6}`, `shortcut` | `norm1`, `conv1`, `norm2`, `conv2`, `conv_shortcut` |
| 2.1 `encoder.downsamples.N` (flat) | `encoder.down_blocks.N` (flat) |
| 2.1 `decoder.upsamples.N` (flat, nrb+2 per stage) | `decoder.up_blocks.i.{resnets.j, upsamplers.0}` |
| 2.2 `encoder.downsamples.i.downsamples.j` | `encoder.down_blocks.i.{resnets.j, downsampler}` |
| 2.2 `decoder.upsamples.i.upsamples.j` | `decoder.up_blocks.i.{resnets.j, upsampler}` |

Resamplers keep their inner names (`resample.1`, `time_conv`), attention blocks theirs (`norm`, `to_qkv`, `proj`).
Keys that match no rule pass through unchanged, so strict loading reports them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

# (official, diffusers) prefix pairs: of whole keys, of the rest after `encoder.`/`decoder.`, inside residual blocks.
_TOP_O2D = (("conv1.", "quant_conv."), ("conv2.", "post_quant_conv."))
_PART_O2D = (("conv1.", "conv_in."), ("head.0.", "norm_out."), ("head.2.", "conv_out."))
_RES_O2D = (
    ("residual.0.gamma", "norm1.gamma"),
    ("residual.2.", "conv1."),
    ("residual.3.gamma", "norm2.gamma"),
    ("residual.6.", "conv2."),
    ("shortcut.", "conv_shortcut."),
)

_OFFICIAL_MARKERS = ("decoder.middle.0.residual.0.gamma", "encoder.conv1.weight", "decoder.head.2.weight")
_DIFFUSERS_MARKERS = ("decoder.mid_block.resnets.0.norm1.gamma", "encoder.conv_in.weight", "post_quant_conv.weight")


def _swap_prefix(name: str, pairs: tuple[tuple[str, str], ...], to_diffusers: bool) -> str | None:
    """`name` with the first matching prefix of `pairs` swapped for its other-side twin; None when none matches."""
    for official, diffusers in pairs:
        old, new = (official, diffusers) if to_diffusers else (diffusers, official)
        if name.startswith(old):
            return new + name[len(old) :]
    return None


def _res_o2d(rest: str) -> str:
    return _swap_prefix(rest, _RES_O2D, to_diffusers=True) or rest


def _res_d2o(rest: str) -> str:
    return _swap_prefix(rest, _RES_O2D, to_diffusers=False) or rest


def detect_layout(keys: Iterable[str]) -> str | None:
    """'official', 'diffusers', or None when the keys are neither a Wan VAE's."""
    keys = set(keys)
    if any(k in keys for k in _OFFICIAL_MARKERS):
        return "official"
    if any(k in keys for k in _DIFFUSERS_MARKERS):
        return "diffusers"
    return None


def official_structure(keys: Iterable[str]) -> tuple[bool, int]:
    """(residual stages, num_res_blocks) read from official key names."""
    keys = list(keys)
    nested = [re.match(r"encoder\.downsamples\.0\.downsamples\.(\d+)\.residual\.", k) for k in keys]
    nested_j = {int(m[1]) for m in nested if m}
    if nested_j or any(re.match(r"encoder\.downsamples\.\d+\.downsamples\.", k) for k in keys):
        return True, len(nested_j)
    resamplers = {int(m[1]) for k in keys if (m := re.match(r"encoder\.downsamples\.(\d+)\.resample\.", k))}
    blocks = {int(m[1]) for k in keys if (m := re.match(r"encoder\.downsamples\.(\d+)\.residual\.", k))}
    first = min(resamplers) if resamplers else len(blocks)
    return False, sum(1 for n in blocks if n < first)


def diffusers_structure(keys: Iterable[str]) -> tuple[bool, int]:
    """(residual stages, num_res_blocks) read from diffusers key names."""
    keys = list(keys)
    residual = any(re.match(r"encoder\.down_blocks\.\d+\.resnets\.", k) for k in keys)
    up = {int(m[1]) for k in keys if (m := re.match(r"decoder\.up_blocks\.0\.resnets\.(\d+)\.", k))}
    return residual, max(len(up) - 1, 0)


def _rename_key(key: str, to_diffusers: bool, rename_stage: Callable[[str, str], str | None]) -> str:
    """`key` under the other layout's name: the fixed renames (`_TOP_O2D`, `_PART_O2D`) first, then
    `rename_stage(part, rest)` for `encoder.`/`decoder.` keys; unchanged when no rule applies."""
    if (renamed := _swap_prefix(key, _TOP_O2D, to_diffusers)) is not None:
        return renamed
    m = re.match(r"(encoder|decoder)\.(.*)", key)
    if m is None:
        return key
    part, rest = m[1], m[2]
    if (renamed := _swap_prefix(rest, _PART_O2D, to_diffusers)) is not None:
        return f"{part}.{renamed}"
    return rename_stage(part, rest) or key


def official_to_diffusers_key(key: str, residual: bool, num_res_blocks: int) -> str:
    """The diffusers name of one official key."""
    return _rename_key(key, True, lambda part, rest: _stage_o2d(part, rest, residual, num_res_blocks))


def _stage_o2d(part: str, rest: str, residual: bool, num_res_blocks: int) -> str | None:
    """The diffusers name of an official middle / down / up stage key; None when it is none of those."""
    if mm := re.match(r"middle\.([012])\.(.*)", rest):
        index, inner = int(mm[1]), mm[2]
        if index == 1:
            return f"{part}.mid_block.attentions.0.{inner}"
        return f"{part}.mid_block.resnets.{index // 2}.{_res_o2d(inner)}"
    if part == "encoder":
        if residual and (mm := re.match(r"downsamples\.(\d+)\.downsamples\.(\d+)\.(.*)", rest)):
            i, j, inner = int(mm[1]), int(mm[2]), mm[3]
            if j < num_res_blocks:
                return f"encoder.down_blocks.{i}.resnets.{j}.{_res_o2d(inner)}"
            return f"encoder.down_blocks.{i}.downsampler.{inner}"
        if not residual and (mm := re.match(r"downsamples\.(\d+)\.(.*)", rest)):
            return f"encoder.down_blocks.{mm[1]}.{_res_o2d(mm[2])}"
    else:
        if residual and (mm := re.match(r"upsamples\.(\d+)\.upsamples\.(\d+)\.(.*)", rest)):
            i, j, inner = int(mm[1]), int(mm[2]), mm[3]
            if j <= num_res_blocks:
                return f"decoder.up_blocks.{i}.resnets.{j}.{_res_o2d(inner)}"
            return f"decoder.up_blocks.{i}.upsampler.{inner}"
        if not residual and (mm := re.match(r"upsamples\.(\d+)\.(.*)", rest)):
            i, j = divmod(int(mm[1]), num_res_blocks + 2)
            if j <= num_res_blocks:
                return f"decoder.up_blocks.{i}.resnets.{j}.{_res_o2d(mm[2])}"
            return f"decoder.up_blocks.{i}.upsamplers.0.{mm[2]}"
    return None


def diffusers_to_official_key(key: str, residual: bool, num_res_blocks: int) -> str:
    """The official name of one diffusers key."""
    return _rename_key(key, False, lambda part, rest: _stage_d2o(part, rest, residual, num_res_blocks))


def _stage_d2o(part: str, rest: str, residual: bool, num_res_blocks: int) -> str | None:
    """The official name of a diffusers mid / down / up block key; None when it is none of those."""
    if mm := re.match(r"mid_block\.attentions\.0\.(.*)", rest):
        return f"{part}.middle.1.{mm[1]}"
    if mm := re.match(r"mid_block\.resnets\.([01])\.(.*)", rest):
        return f"{part}.middle.{2 * int(mm[1])}.{_res_d2o(mm[2])}"
    if part == "encoder":
        if mm := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", rest):
            return f"encoder.downsamples.{mm[1]}.downsamples.{mm[2]}.{_res_d2o(mm[3])}"
        if mm := re.match(r"down_blocks\.(\d+)\.downsampler\.(.*)", rest):
            return f"encoder.downsamples.{mm[1]}.downsamples.{num_res_blocks}.{mm[2]}"
        if mm := re.match(r"down_blocks\.(\d+)\.(.*)", rest):
            return f"encoder.downsamples.{mm[1]}.{_res_d2o(mm[2])}"
    else:
        if mm := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", rest):
            i, j, inner = int(mm[1]), int(mm[2]), _res_d2o(mm[3])
            if residual:
                return f"decoder.upsamples.{i}.upsamples.{j}.{inner}"
            return f"decoder.upsamples.{i * (num_res_blocks + 2) + j}.{inner}"
        if mm := re.match(r"up_blocks\.(\d+)\.upsampler\.(.*)", rest):
            return f"decoder.upsamples.{mm[1]}.upsamples.{num_res_blocks + 1}.{mm[2]}"
        if mm := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", rest):
            i = int(mm[1])
            return f"decoder.upsamples.{i * (num_res_blocks + 2) + num_res_blocks + 1}.{mm[2]}"
    return None


def official_to_diffusers(state_dict: dict) -> dict:
    """A state dict under official names renamed to diffusers' `AutoencoderKLWan` names."""
    residual, nrb = official_structure(state_dict)
    return {official_to_diffusers_key(k, residual, nrb): v for k, v in state_dict.items()}


def diffusers_to_official(state_dict: dict) -> dict:
    """A diffusers `AutoencoderKLWan` state dict renamed to the official names."""
    residual, nrb = diffusers_structure(state_dict)
    return {diffusers_to_official_key(k, residual, nrb): v for k, v in state_dict.items()}


def diffusers_config(config) -> dict:
    """The `AutoencoderKLWan` constructor arguments (its `config.json`, less `_class_name`) of a `VAEConfig`."""
    p = config.patch_size
    return {
        "base_dim": config.dim,
        "decoder_base_dim": config.dec_dim,
        "z_dim": config.z_dim,
        "dim_mult": list(config.dim_mult),
        "num_res_blocks": config.num_res_blocks,
        "attn_scales": [],
        "temperal_downsample": list(config.temperal_downsample),
        "dropout": 0.0,
        "latents_mean": list(config.latents_mean),
        "latents_std": list(config.latents_std),
        "is_residual": config.residual,
        "in_channels": 3 * p * p,
        "out_channels": 3 * p * p,
        "patch_size": p if p > 1 else None,
        "scale_factor_temporal": config.stride[0],
        "scale_factor_spatial": config.stride[1],
    }
