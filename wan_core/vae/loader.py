"""Loading a Wan VAE from the files people have:

- the official `Wan2.1_VAE.pth` / `Wan2.2_VAE.pth` (read with `weights_only=True`),
- ComfyUI's `wan_2.1_vae.safetensors` / `wan2.2_vae.safetensors` (the official key names, fp32/fp16/bf16),
- a diffusers `AutoencoderKLWan` folder (`config.json` + `diffusion_pytorch_model*.safetensors`, or the pipeline
  folder holding it as `vae/`) or its single weight file.

The variant, widths, depth and z_dim are read from the weights' shapes; the network is built on the meta device and
the tensors are assigned to it (no random init, no second copy). Loading is strict: missing, unexpected and misshapen
tensors are named in the error.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..errors import (
    ConfigMismatchError,
    CorruptFileError,
    InputError,
    KeyMismatchError,
    describe_key_mismatch,
    describe_keys,
)
from ..finite import check_weight_dtypes, scan_weights
from ..io.files import find_weight_files
from ..io.state_dict import is_torch_file, read_safetensors, read_torch_file, strip_prefix
from .config import VAEConfig, published_stats
from .keymap import detect_layout, diffusers_to_official, official_structure, official_to_diffusers_key
from .model import WanVAE
from .network import WanVAENet

__all__ = ["infer_config", "load_vae", "load_vae_state_dict", "read_vae_weights"]

_PREFIXES = ("first_stage_model.", "vae.", "model.")


def _is_diffusers_folder(path: Path) -> Path | None:
    if path.is_dir() and any(path.glob("diffusion_pytorch_model*.safetensors")):
        return path
    if (path / "vae").is_dir() and any((path / "vae").glob("diffusion_pytorch_model*.safetensors")):
        return path / "vae"
    return None


def _read_config_json(folder: Path) -> dict | None:
    config_path = folder / "config.json"
    if not config_path.is_file():
        return None
    try:
        data = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise CorruptFileError(f"{config_path} is not valid JSON ({err}): download it again.") from err
    if not isinstance(data, dict):
        raise CorruptFileError(f"{config_path} does not hold a JSON object: download it again.")
    return data


def read_vae_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None, str]:
    """(state dict under the file's own names, diffusers config.json or None, description of the source)."""
    path = Path(path)
    folder = _is_diffusers_folder(path) if path.is_dir() else None
    if folder is not None:
        files = find_weight_files(folder)
        return read_safetensors(files), _read_config_json(folder), str(folder)
    if path.is_dir():
        files = find_weight_files(path)  # raises MissingFileError listing what the folder holds
        return read_safetensors(files), _read_config_json(path), str(path)
    if is_torch_file(path):
        return read_torch_file(path), None, str(path)
    return read_safetensors(path), None, str(path)


def infer_config(state_dict: dict[str, torch.Tensor], source: str = "the weights") -> VAEConfig:
    """The `VAEConfig` of official-layout weights, read from their shapes."""

    def get(key: str) -> torch.Tensor:
        if key not in state_dict:
            raise KeyMismatchError(f"{source} has no {key!r}: it is not a complete Wan VAE.")
        return state_dict[key]

    stem = get("encoder.conv1.weight")  # [dim, 3 * p * p, 3, 3, 3]
    dim, in_channels = int(stem.shape[0]), int(stem.shape[1])
    residual, nrb = official_structure(state_dict)
    if in_channels not in (3, 12) or (in_channels == 12) != residual:
        raise ConfigMismatchError(
            f"{source}: encoder.conv1 takes {in_channels} channels with "
            f"{'residual' if residual else 'plain'} stages; a Wan2.1 VAE takes 3 (plain stages), a Wan2.2 VAE 12 "
            "(residual stages)."
        )
    variant = "wan2.2" if residual else "wan2.1"
    z_dim = int(get("conv2.weight").shape[0])

    # stage widths and temporal downsampling, from the encoder's stages
    mult, temporal = [], []
    if residual:
        stages = sorted({int(m[1]) for k in state_dict if (m := re.match(r"encoder\.downsamples\.(\d+)\.", k))})
        for i in stages:
            out = get(f"encoder.downsamples.{i}.downsamples.0.residual.2.weight").shape[0]
            mult.append(out // dim)
            if f"encoder.downsamples.{i}.downsamples.{nrb}.resample.1.weight" in state_dict:
                temporal.append(f"encoder.downsamples.{i}.downsamples.{nrb}.time_conv.weight" in state_dict)
    else:
        resamplers = sorted(
            int(m[1]) for k in state_dict if (m := re.fullmatch(r"encoder\.downsamples\.(\d+)\.resample\.1\.weight", k))
        )
        firsts = [0] + [n + 1 for n in resamplers]
        for n in firsts:
            mult.append(get(f"encoder.downsamples.{n}.residual.2.weight").shape[0] // dim)
        temporal = [f"encoder.downsamples.{n}.time_conv.weight" in state_dict for n in resamplers]
    if not mult or nrb < 1:
        raise KeyMismatchError(f"{source} has no encoder stages under the official names: it is not a Wan VAE.")
    dec_dim = int(get("decoder.conv1.weight").shape[0]) // mult[-1]
    stats = published_stats(variant, z_dim)
    if stats is None:
        raise ConfigMismatchError(
            f"{source} is a {variant} VAE with z_dim {z_dim}; only z_dim "
            f"{16 if variant == 'wan2.1' else 48} was published with latent statistics."
        )
    try:
        return VAEConfig(
            variant=variant,
            dim=dim,
            z_dim=z_dim,
            dec_dim=dec_dim,
            dim_mult=tuple(mult),
            num_res_blocks=nrb,
            temperal_downsample=tuple(temporal),
        )
    except ValueError as err:
        raise ConfigMismatchError(f"{source}: the tensor shapes do not describe a Wan VAE ({err}).") from err


def _check_against_diffusers_config(config: VAEConfig, data: dict, source: str) -> None:
    checks = {
        "z_dim": config.z_dim,
        "base_dim": config.dim,
        "decoder_base_dim": config.dec_dim,
        "num_res_blocks": config.num_res_blocks,
        "is_residual": config.residual,
    }
    defaults = {"decoder_base_dim": data.get("base_dim"), "is_residual": False}
    wrong = []
    for name, value in checks.items():
        have = data.get(name, defaults.get(name))
        if have is not None and have != value:
            wrong.append(f"{name}={have!r} (weights: {value!r})")
    if wrong:
        raise ConfigMismatchError(
            f"{source}/config.json disagrees with the weights beside it: {', '.join(wrong)}. The config belongs to "
            "another model: download the matching pair."
        )


def _check_keys(net: WanVAENet, state_dict: dict[str, torch.Tensor], source: str, layout: str) -> None:
    expected = net.state_dict()
    missing = set(expected) - set(state_dict)
    unexpected = set(state_dict) - set(expected)
    if missing or unexpected:
        if layout == "diffusers":  # name the tensors as the file does
            residual, nrb = net.config.residual, net.config.num_res_blocks
            missing = {official_to_diffusers_key(k, residual, nrb) for k in missing}
            unexpected = {official_to_diffusers_key(k, residual, nrb) for k in unexpected}
        raise KeyMismatchError(
            f"{source} does not match a {net.config.variant} VAE with {layout} key names: "
            f"{describe_key_mismatch(missing, unexpected)}. "
            "The file is incomplete or holds another model."
        )
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if wrong:
        more = f", ... ({len(wrong)} in all)" if len(wrong) > 8 else ""
        raise ConfigMismatchError(f"{source}: tensors of the wrong shape: {', '.join(wrong[:8])}{more}.")


def _default_dtype(state_dict: dict[str, torch.Tensor]) -> torch.dtype:
    counts: dict[torch.dtype, int] = {}
    for v in state_dict.values():
        if v.is_floating_point():
            counts[v.dtype] = counts.get(v.dtype, 0) + v.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def load_vae_state_dict(
    state_dict: dict[str, torch.Tensor],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    source: str = "the state dict",
    diffusers_config: dict | None = None,
) -> WanVAE:
    """A `WanVAE` from a state dict under official or diffusers names (see `load_vae`)."""
    if dtype not in (None, torch.float32, torch.float16, torch.bfloat16):
        raise InputError(f"The VAE computes in float32, float16 or bfloat16, not {dtype}.")
    state_dict = strip_prefix(state_dict, _PREFIXES)
    layout = detect_layout(state_dict)
    if layout is None:
        raise KeyMismatchError(
            f"{source} is not a Wan VAE: none of its {len(state_dict)} tensors has a Wan VAE name "
            f"(official 'decoder.middle.0.residual.0.gamma' or diffusers 'decoder.mid_block.resnets.0.norm1.gamma'); "
            f"it holds {describe_keys(state_dict.keys(), limit=4)}."
        )
    if layout == "diffusers":
        state_dict = diffusers_to_official(state_dict)
    config = infer_config(state_dict, source)
    if diffusers_config is not None:
        _check_against_diffusers_config(config, diffusers_config, source)
    with torch.device("meta"):
        net = WanVAENet(config)
    _check_keys(net, state_dict, source, layout)
    dtype = dtype or _default_dtype(state_dict)
    check_weight_dtypes(state_dict, dict.fromkeys(state_dict, torch.float32), source)
    state_dict = {k: v.to(device=device, dtype=dtype) for k, v in state_dict.items()}
    scan_weights(state_dict, source)
    net.load_state_dict(state_dict, strict=True, assign=True)
    vae = WanVAE(config, network=net).to(device)
    return vae.eval().requires_grad_(False)


def load_vae(path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> WanVAE:
    """Load a Wan2.1 or Wan2.2 VAE from an official `.pth`, a ComfyUI `.safetensors`, or a diffusers
    `AutoencoderKLWan` folder or weight file. The variant is detected from the weights.

    `dtype=None` keeps the dtype the weights are stored in (fp32 for the official files); the VAE computes in it.
    Raises `MissingFileError` / `CorruptFileError` naming the file, `KeyMismatchError` naming missing and unexpected
    tensors, `ConfigMismatchError` for tensors of the wrong shape.
    """
    state_dict, diffusers_config, source = read_vae_weights(path)
    return load_vae_state_dict(state_dict, device=device, dtype=dtype, source=source, diffusers_config=diffusers_config)
