"""The CLI's `--interpolate N` (and `--rife_model`): applied to the generated video before it is saved."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch

from .run import AUTO, MULTIPLIERS, interpolate_frames, resolve_weights
from .weights import default_folders


def add_interpolation_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--interpolate", type=int, default=1, choices=(1, *MULTIPLIERS),
        help="Multiply the frame rate by 2 or 4 with RIFE frame interpolation (same duration, smoother motion). "
        "Without RIFE weights, ffmpeg's motion-compensated minterpolate is used, and the output says so.",
    )
    parser.add_argument(
        "--rife_model", default=AUTO,
        help="RIFE weights for --interpolate: a file path, a file name in $WAN22_MODELS_DIR/frame_interpolation/ "
        "(default ./models/frame_interpolation/), 'auto' (rife49.pth, rife47.pth, rife_v4.26.safetensors or "
        "rife_v4.25.safetensors there, else ffmpeg) or 'ffmpeg'.",
    )


def interpolate_video(
    args: argparse.Namespace, video: torch.Tensor, fps: float, device: torch.device, say: Callable[[str], None]
) -> tuple[torch.Tensor, float]:
    """``video`` ``[3, F, H, W]`` in [-1, 1] interpolated as the flags ask; returns it with its new fps."""
    if args.interpolate == 1:
        return video, fps
    path = Path(args.rife_model)
    weights = path if path.is_file() else resolve_weights(args.rife_model, default_folders())
    frames = video.permute(1, 2, 3, 0).add(1.0).div(2.0)
    result = interpolate_frames(frames, args.interpolate, fps=fps, weights=weights, device=device)
    say(f"Interpolated {frames.shape[0]} -> {result.frames.shape[0]} frames, {fps:g} -> {result.fps:g} fps: "
        f"{result.method}.")
    return result.frames.permute(3, 0, 1, 2).mul(2.0).sub(1.0), result.fps
