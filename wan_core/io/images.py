"""Reading a picture file (a start or last frame) as an RGB PIL image, with an error that says what to pass."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from wan_core.errors import InputError

if TYPE_CHECKING:
    from PIL.Image import Image


def read_rgb_image(path: str | Path, what: str, data: bytes | None = None) -> Image:
    """The image at `path` (decoded from `data`, its bytes, where the caller has read them) as RGB; `InputError`
    naming `what` (e.g. `--image`) when it cannot be read as one."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path if data is None else io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise InputError(f"{what} {str(path)!r} cannot be read as an image ({err}). Use a PNG or JPEG file.") from err
