"""The pictures of image-to-video batch jobs: file names from the CSV's `image` (start) and `last_image` columns, read
from the CSV file's folder only (a workflow shared by someone else must not read arbitrary files), checked before any
model loads."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from wan_core.batch.jobs import PICTURE_FIELDS, BatchJob
from wan_core.errors import InputError
from wan_core.io.files import resolve_inside
from wan_core.io.images import read_rgb_image
from wan_core.pipeline.conditioning import pil_to_tensor

# picture field -> how the messages name it
PICTURE_NAMES = dict(zip(PICTURE_FIELDS, ("The start image", "The last image"), strict=True))


def picture_path(name: str, folder: str | Path, what: str) -> Path:
    """The file of a picture cell inside `folder` (the CSV file's), or an error naming `what` and where to put it."""
    path = resolve_inside(name, folder, what, "the CSV file's folder")
    if not path.is_file():
        raise InputError(f"{what} {name!r} was not found in {Path(folder).resolve()} (the CSV file's folder, where "
                         "ComfyUI's Load Image uploads go); check the name.")
    return path


def job_pictures(job: BatchJob, folder: str | Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The job's start image and last image (None without one), each a `[3, H, W]` float32 tensor in [-1, 1], fitted
    to the video's size later as the sampler node fits a Load Image picture."""

    def read(column: str) -> torch.Tensor:
        what = PICTURE_NAMES[column]
        return pil_to_tensor(read_rgb_image(picture_path(getattr(job, column), folder, what), what))

    return read("image"), read("last_image") if job.last_image else None


class PictureCheck:
    """Checks the pictures of each job as the CSV is read, before any model loads: each named file is found inside
    the folder and decodes as an image. Its bytes are read once for that and hashed: `digests` (name -> SHA-256) is
    part of the batch id, so that a changed picture under the same name makes a new batch instead of resuming the old
    one's finished videos."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = folder
        self.digests: dict[str, str] = {}

    def __call__(self, job: BatchJob) -> None:
        for column in PICTURE_FIELDS:
            name = getattr(job, column)
            if name and name not in self.digests:
                what = PICTURE_NAMES[column]
                path = picture_path(name, self.folder, what)
                data = path.read_bytes()
                read_rgb_image(path, what, data)
                self.digests[name] = hashlib.sha256(data).hexdigest()
