"""Latents kept when decoding or writing a video fails, so the denoising (the expensive part) is never lost.

The file is a safetensors with one float32 tensor `latents` `[z, F', H', W']` and the task in its metadata; the CLI
decodes it with `--decode_latents FILE`, the Wan2.2 VAE Decode node with its `latents_file` input."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import torch

from .errors import InputError, WanError
from .io.atomic import write_safetensors_atomic

LATENTS_KEY = "latents"
FORMAT = "wan22-latents"
T = TypeVar("T")


class LatentsKeptError(WanError):
    """Decoding or writing the video failed; the latents were saved (or, when even that failed, the error says so)."""


def save_latents(folder: str | Path, latents: torch.Tensor, *, task: str | None, stem: str) -> Path:
    """Write `latents` `[z, F', H', W']` to `<folder>/<stem>_<time>.latents.safetensors`; return the path."""
    if latents.ndim == 5 and latents.shape[0] == 1:
        latents = latents[0]
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S_%f")
    path = Path(folder) / f"{stem}_{stamp}.latents.safetensors"
    tensor = latents.detach().to("cpu", torch.float32).contiguous()
    metadata = {"format": FORMAT} | ({"task": task} if task else {})
    return write_safetensors_atomic(path, {LATENTS_KEY: tensor}, metadata)


def load_latents(path: str | Path) -> tuple[torch.Tensor, str | None]:
    """(latents `[z, F', H', W']`, task or None) of a file written by `save_latents`; InputError for anything else."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"The latents file {path} does not exist; give the path the error message named.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if LATENTS_KEY not in handle.keys():
                raise InputError(f"{path} holds no {LATENTS_KEY!r} tensor; it is not a kept-latents file.")
            latents = handle.get_tensor(LATENTS_KEY)
    except InputError:
        raise
    except Exception as error:  # a truncated or foreign file
        raise InputError(f"{path} cannot be read as a latents file ({type(error).__name__}: {error}).") from error
    if latents.ndim != 4 or not latents.is_floating_point():
        raise InputError(f"{path}: latents must be a float tensor [z, F', H', W']; got {latents.dtype} "
                         f"{tuple(latents.shape)}.")
    return latents.float(), metadata.get("task")


def keep_latents_on_failure(
    step: Callable[[], T], latents: torch.Tensor, *, folder: str | Path, task: str | None, stem: str,
    how_to_decode: Callable[[Path], str],
) -> T:
    """Run `step` (decode and write); if it raises, save `latents` into `folder` and raise `LatentsKeptError` whose
    message is the failure, where the latents went and how to decode them (`how_to_decode(path)`)."""
    try:
        return step()
    except Exception as error:
        failure = str(error).rstrip()
        failure += "" if failure.endswith((".", "!", "?")) else "."
        try:
            kept = save_latents(folder, latents, task=task, stem=stem)
        except Exception as keep_error:
            raise LatentsKeptError(f"{failure} The latents could not be kept either: {keep_error}") from error
        raise LatentsKeptError(f"{failure} The latents are kept in {kept}; {how_to_decode(kept)}") from error
