"""Reading tensors from safetensors and official .pth files, with errors that name the file."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from ..errors import CorruptFileError, MissingFileError

# The one list of weight-file suffixes the loaders accept and the model lists offer (`.sft` is ComfyUI's short
# safetensors suffix); any other suffix is read as safetensors.
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
WEIGHT_SUFFIXES = SAFETENSORS_SUFFIXES + TORCH_SUFFIXES
FP8_DTYPES = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, name))


def cast_floating(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """Cast a floating tensor to `dtype`; integer, bool and fp8 tensors are left as they are."""
    if dtype is None or not tensor.is_floating_point() or tensor.dtype in FP8_DTYPES:
        return tensor
    return tensor.to(dtype)


def _corrupt(path: Path, err: Exception) -> CorruptFileError:
    return CorruptFileError(
        f"{path} cannot be read ({type(err).__name__}: {err}). The file is truncated or is not a "
        f"{path.suffix} weight file: download it again."
    )


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata stored in a safetensors header (empty when it has none)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as err:  # safetensors raises its own error types for a bad header
        raise _corrupt(path, err) from err


def read_safetensors(
    paths: str | Path | Iterable[str | Path], *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """All tensors of one or several safetensors files, cast tensor by tensor (never a full fp32 copy)."""
    from safetensors import safe_open

    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    out: dict[str, torch.Tensor] = {}
    for path in paths:
        if not path.is_file():
            raise MissingFileError(f"Weight file {path} does not exist.")
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as handle:
                for key in handle.keys():
                    out[key] = cast_floating(handle.get_tensor(key), dtype)
        except CorruptFileError:
            raise
        except Exception as err:
            raise _corrupt(path, err) from err
    return out


def _load_pth(path: Path) -> object:
    """torch.load with weights_only; memory-mapped for zip-format files, read whole for legacy-format ones."""
    import zipfile

    mmap = zipfile.is_zipfile(path)
    return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)


def read_torch_file(path: str | Path, *, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """An official `.pth` state dict, loaded with `weights_only=True` (never arbitrary pickles)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"Weight file {path} does not exist.")
    try:
        data = _load_pth(path)
    except Exception as err:
        raise _corrupt(path, err) from err
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise CorruptFileError(f"{path} holds a {type(data).__name__}, not a state dict of tensors.")
    return {k: cast_floating(v, dtype) for k, v in data.items() if isinstance(v, torch.Tensor)}


def is_torch_file(path: str | Path) -> bool:
    """True for a pickled torch file (`.pth`, `.pt`, `.bin`, `.ckpt`), read with weights_only; else safetensors."""
    return Path(path).suffix.lower() in TORCH_SUFFIXES


def read_weights(path: str | Path, *, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """A single weight file of either kind, chosen by its suffix."""
    path = Path(path)
    if is_torch_file(path):
        return read_torch_file(path, dtype=dtype)
    return read_safetensors(path, dtype=dtype)


def strip_prefix(state_dict: dict[str, torch.Tensor], prefixes: Iterable[str]) -> dict[str, torch.Tensor]:
    """Remove the first of `prefixes` that every key (apart from quantization markers) starts with."""
    for prefix in prefixes:
        if prefix and any(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state_dict.items()}
    return state_dict


