"""Writing a generated video `[3, F, H, W]` in [-1, 1]: MP4 (H.264, yuv420p), PNG frames, safetensors tensor.

Frames are converted to 8-bit one at a time, so writing never holds a second full copy of the video.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .errors import InputError

VIDEO_TENSOR_KEY = "video"
# imageio-ffmpeg's quality scale (0..10); 8 is what the official Wan2.2 `save_video` uses.
MP4_QUALITY = 8


def _check_video(video: torch.Tensor) -> None:
    if video.ndim != 4 or video.shape[0] != 3:
        raise InputError(
            f"Expected a video tensor of shape [3, F, H, W] (RGB in [-1, 1]); got shape {tuple(video.shape)}. "
            "Drop the batch axis (video[0]) or move the channel axis first."
        )
    if video.shape[1] == 0:
        raise InputError("The video tensor has no frames (F = 0); nothing to write.")


def iter_frames_uint8(video: torch.Tensor) -> Iterator[np.ndarray]:
    """The frames of a `[3, F, H, W]` video in [-1, 1] as contiguous `[H, W, 3]` uint8 arrays, one at a time."""
    _check_video(video)
    for index in range(video.shape[1]):
        frame = video[:, index].detach().to("cpu", torch.float32)
        frame = frame.clamp(-1.0, 1.0).add(1.0).mul(127.5).round().to(torch.uint8)
        yield np.ascontiguousarray(frame.permute(1, 2, 0).numpy())


def _png_path(folder: Path, index: int) -> Path:
    return folder / f"frame_{index:05d}.png"


def save_video(
    path: str | Path,
    video: torch.Tensor,
    fps: float,
    *,
    frames_dir: str | Path | None = None,
) -> Path:
    """Write `video` ([3, F, H, W] in [-1, 1]) as an H.264 yuv420p MP4 at `fps`; also as PNGs into `frames_dir`.

    H.264 with yuv420p needs even sizes: an odd width or height is padded by one pixel by ffmpeg.
    """
    import imageio_ffmpeg

    _check_video(video)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = int(video.shape[2]), int(video.shape[3])
    png_folder = None
    if frames_dir is not None:
        png_folder = Path(frames_dir)
        png_folder.mkdir(parents=True, exist_ok=True)

    writer = imageio_ffmpeg.write_frames(
        str(path),
        (width, height),
        fps=fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        quality=MP4_QUALITY,
        macro_block_size=2,
        ffmpeg_log_level="error",
    )
    writer.send(None)
    try:
        for index, frame in enumerate(iter_frames_uint8(video)):
            writer.send(frame)
            if png_folder is not None:
                _save_png(_png_path(png_folder, index), frame)
    finally:
        writer.close()
    return path


def _save_png(path: Path, frame: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(frame).save(path)


def save_tensor(path: str | Path, video: torch.Tensor) -> Path:
    """Save the decoded video as safetensors: one tensor `"video"`, shape [3, F, H, W], values in [-1, 1]."""
    from safetensors.torch import save_file

    _check_video(video)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensor = video.detach().to("cpu").contiguous()
    save_file({VIDEO_TENSOR_KEY: tensor}, str(path), metadata={"layout": "3,F,H,W", "range": "-1,1"})
    return path


def load_tensor(path: str | Path) -> torch.Tensor:
    """Read back a video saved by `save_tensor`."""
    from safetensors.torch import load_file

    return load_file(str(path))[VIDEO_TENSOR_KEY]
