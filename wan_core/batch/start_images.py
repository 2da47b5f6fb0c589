"""The start images of image-to-video batch jobs: file names from the CSV's `image` column, read from the CSV file's
folder only (a workflow shared by someone else must not read arbitrary files), checked before any model loads."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch

from wan_core.batch.jobs import BatchJob
from wan_core.errors import InputError
from wan_core.io.files import resolve_inside
from wan_core.io.images import read_rgb_image
from wan_core.pipeline.conditioning import pil_to_tensor


def start_image_path(name: str, folder: str | Path) -> Path:
    """The file of an `image` cell inside `folder` (the CSV file's), or an error saying where to put it."""
    path = resolve_inside(name, folder, "The start image", "the CSV file's folder")
    if not path.is_file():
        raise InputError(f"The start image {name!r} was not found in {Path(folder).resolve()} (the CSV file's "
                         "folder, where ComfyUI's Load Image uploads go); check the name.")
    return path


def read_start_image(name: str, folder: str | Path) -> torch.Tensor:
    """The start image `name` as a `[3, H, W]` float32 tensor in [-1, 1] (fitted to the video's size later, as the
    sampler node fits a Load Image picture)."""
    return pil_to_tensor(read_rgb_image(start_image_path(name, folder), "The start image"))


def image_digests(jobs: Sequence[BatchJob], folder: str | Path) -> dict[str, str]:
    """SHA-256 of each start image the jobs name: part of the batch id, so that a changed picture under the same name
    makes a new batch instead of resuming the old one's finished videos."""
    names = sorted({job.image for job in jobs if job.image})
    return {name: hashlib.sha256(start_image_path(name, folder).read_bytes()).hexdigest() for name in names}
