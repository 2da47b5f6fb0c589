"""Interpolation without RIFE weights: ffmpeg's motion-compensated `minterpolate` filter (imageio-ffmpeg's ffmpeg).

Frames go through ffmpeg as raw RGB; the filter works in YUV 4:4:4 (full chroma). The output is cut after the last
input frame, so the count matches RIFE's: ``(F - 1) * multiplier + 1`` (2x: ``2F - 1``), with input frame ``k`` at
``k * multiplier``.
"""

from __future__ import annotations

import subprocess

import numpy as np
import torch

from ..errors import WanError
from ..io.ffmpeg_binary import ffmpeg_executable
from .rife import check_request, interpolated_count

# Motion-compensated interpolation with bidirectional block matching and overlapped-block smoothing.
MINTERPOLATE = "minterpolate=fps={fps}:mi_mode=mci:mc_mode=aobmc:me_mode=bidir:vsbmc=1:scd=none"
# Any frame rate works: ffmpeg only needs the ratio, so the filter runs on a nominal rate.
_NOMINAL_FPS = 16
_LOOKAHEAD = 2


def ffmpeg_interpolate(frames: torch.Tensor, multiplier: int) -> torch.Tensor:
    """``frames`` ``[F, H, W, 3]`` in 0..1 -> ``[(F-1)*multiplier + 1, H, W, 3]`` float32 in 0..1 (8-bit steps)."""
    check_request(frames, multiplier)
    count, height, width = frames.shape[:3]
    if multiplier == 1:
        return frames.float().clone()
    pixels = frames.detach().to("cpu", torch.float32).clamp(0, 1).mul(255).round().to(torch.uint8)
    # minterpolate emits a frame only once it has read the frames after it: feed the last one again as lookahead
    pixels = torch.cat([pixels, pixels[-1:].expand(_LOOKAHEAD, -1, -1, -1)]).contiguous().numpy()
    command = [
        ffmpeg_executable(), "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
        "-s", f"{width}x{height}", "-r", str(_NOMINAL_FPS), "-i", "-",
        "-vf", "format=yuv444p," + MINTERPOLATE.format(fps=_NOMINAL_FPS * multiplier),
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
    ]
    done = subprocess.run(command, input=pixels.tobytes(), capture_output=True, check=False)
    if done.returncode != 0:
        raise WanError(f"ffmpeg minterpolate failed (exit {done.returncode}): {done.stderr.decode(errors='replace')}")
    frame_bytes = height * width * 3
    produced = len(done.stdout) // frame_bytes
    wanted = interpolated_count(count, multiplier)
    if produced < wanted:
        raise WanError(f"ffmpeg minterpolate returned {produced} frames; expected at least {wanted}.")
    out = np.frombuffer(done.stdout, dtype=np.uint8, count=wanted * frame_bytes).reshape(wanted, height, width, 3)
    return torch.from_numpy(out.copy()).float().div(255.0)
