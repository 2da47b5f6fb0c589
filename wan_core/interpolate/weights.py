"""Loading published RIFE weights (Practical-RIFE `flownet.pkl`, ComfyUI-Frame-Interpolation's `rife47.pth`, the
`rife_v4.2x.safetensors` of Comfy-Org/frame_interpolation that ComfyUI's own Frame Interpolation nodes load ...) into
:class:`~wan_core.interpolate.ifnet.IFNet`, with the variant read from the parameter shapes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ..errors import ConfigMismatchError, KeyMismatchError, MissingFileError, describe_key_mismatch
from ..io.state_dict import read_torch_file, read_weights, strip_prefix
from .ifnet import IFNet, IFNetArch

# ComfyUI's model folder for interpolation weights (models/frame_interpolation/), and the published file names.
MODEL_KIND = "frame_interpolation"
RECOMMENDED_FILES = ("rife49.pth", "rife47.pth", "rife_v4.26.safetensors", "rife_v4.25.safetensors")
WHERE_TO_GET = (
    "rife47.pth and rife49.pth are the files ComfyUI-Frame-Interpolation uses (GitHub: the 'models' release of "
    "styler00dollar/VSGAN-tensorrt-docker), rife_v4.26.safetensors and rife_v4.25.safetensors those of ComfyUI's own "
    "frame interpolation (Hugging Face: Comfy-Org/frame_interpolation); Practical-RIFE's train_log/flownet.pkl "
    "(hzwer/Practical-RIFE, 4.7 or newer) works too"
)
# ComfyUI's own loader's names: `blocks.N.` for `blockN.`; training leftovers some files keep
_BLOCK_LIST = re.compile(r"^blocks\.(\d+)\.")
_TRAINING_ONLY = ("teacher.", "caltime.")
_ENCODER_HEAD = ("cnn0", "cnn1", "cnn2", "cnn3")


def default_folders() -> list[Path]:
    """Where the CLI looks for RIFE weights: `$WAN22_MODELS_DIR/frame_interpolation` (default ./models/...)."""
    root = os.environ.get("WAN22_MODELS_DIR") or os.path.join(os.getcwd(), "models")
    return [Path(root) / MODEL_KIND]


def find_weights(folders: list[Path], name: str | None = None) -> Path | None:
    """The file `name` in the first folder that has it; without a name the first of :data:`RECOMMENDED_FILES`
    found. None when nothing is there."""
    for candidate in ([name] if name else RECOMMENDED_FILES):
        for folder in folders:
            path = Path(folder) / candidate
            if path.is_file():
                return path
    return None


def missing_weights_error(name: str, folders: list[Path]) -> MissingFileError:
    where = ", ".join(str(f) for f in folders) or "(no folder)"
    return MissingFileError(f"RIFE weights {name!r} were not found in {where}. Put the file there; {WHERE_TO_GET}.")


def published_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict in Practical-RIFE's names: without a `module.` (DataParallel) or `flownet.` prefix, `blockN.`
    for ComfyUI's `blocks.N.`, without the training-only `teacher.` / `caltime.` parameters."""
    state_dict = strip_prefix(strip_prefix(state_dict, ["module."]), ["flownet."])
    return {_BLOCK_LIST.sub(r"block\1.", key): value for key, value in state_dict.items()
            if not key.startswith(_TRAINING_ONLY)}


def arch_of(state_dict: dict[str, torch.Tensor]) -> IFNetArch:
    """The IFNet variant of a state dict in Practical-RIFE's names (`published_names`)."""
    if any(key.startswith("extract.") for key in state_dict):
        raise ConfigMismatchError(
            "These are FILM weights (e.g. film_net_fp16.safetensors), not RIFE: run them with ComfyUI's own Frame "
            f"Interpolation nodes, or pick a RIFE file here; {WHERE_TO_GET}."
        )
    if not any(key.startswith("encode.") for key in state_dict):
        raise ConfigMismatchError(
            "These weights have no 'encode.*' parameters: a RIFE older than 4.7 (or not RIFE at all). Only RIFE 4.7 "
            f"and newer are supported; {WHERE_TO_GET}."
        )
    if "encode.cnn0.weight" in state_dict:
        names, activations = _ENCODER_HEAD, True
    else:
        indices = sorted({int(key.split(".")[1]) for key in state_dict if key.startswith("encode.")})
        names = tuple(str(i) for i in indices)
        activations = indices != list(range(len(indices)))  # nn.Sequential with LeakyReLUs between the convs
    widths = []
    while f"block{len(widths)}.conv0.1.0.weight" in state_dict:
        widths.append(int(state_dict[f"block{len(widths)}.conv0.1.0.weight"].shape[0]))
    if len(widths) < 2:
        raise ConfigMismatchError(f"Expected IFNet blocks block0, block1, ...; found {len(widths)} block(s).")
    features = int(state_dict[f"encode.{names[-1]}.weight"].shape[1])  # a transposed conv: [in, out, k, k]
    block0_in = int(state_dict["block0.conv0.0.0.weight"].shape[1])
    if block0_in != 7 + 2 * features:
        raise ConfigMismatchError(
            f"block0 takes {block0_in} channels but the encoder gives {features} per frame (expected "
            f"{7 + 2 * features}); not an IFNet of RIFE 4.7+."
        )
    return IFNetArch(
        encoder_names=names,
        encoder_activations=activations,
        encoder_width=int(state_dict[f"encode.{names[0]}.weight"].shape[0]),
        feature_channels=features,
        block_widths=tuple(widths),
        carried_channels=int(state_dict["block1.conv0.0.0.weight"].shape[1]) - 12 - 2 * features,
        head_outputs=int(state_dict["block0.lastconv.0.weight"].shape[1]) // 4,
    )


def ifnet_from_state_dict(state_dict: dict[str, torch.Tensor], source: str = "state dict") -> IFNet:
    """An IFNet (float32, CPU, eval) holding `state_dict` (in any naming `published_names` knows)."""
    state_dict = published_names(state_dict)
    model = IFNet(arch_of(state_dict))
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        mismatch = describe_key_mismatch(result.missing_keys, result.unexpected_keys)
        raise KeyMismatchError(f"{source} does not match RIFE's IFNet: {mismatch}.")
    return model.float().eval().requires_grad_(False)


def load_ifnet(path: str | Path) -> IFNet:
    """The IFNet of a RIFE weight file (`.pth`/`.pkl` state dict or `.safetensors`)."""
    path = Path(path)
    if not path.is_file():
        raise missing_weights_error(path.name, [path.parent])
    # Practical-RIFE ships `.pkl` files that are torch.save archives.
    state_dict = read_torch_file(path) if path.suffix == ".pkl" else read_weights(path)
    return ifnet_from_state_dict(state_dict, source=str(path))
