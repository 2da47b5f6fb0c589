"""The CLI's output side: targets checked (and probed) before any model loads, the verified writes after decoding,
latents kept when either fails, and `--decode_latents` to finish such a run later."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import InputError
from .host_copy import to_host
from .io.atomic import probe_writable
from .io.ffmpeg_binary import ffmpeg_executable
from .kept_latents import keep_latents_on_failure, load_latents
from .video_io import Mp4Stream

if TYPE_CHECKING:
    from .generate import Request
    from .pipeline.pipeline import WanPipeline

Say = Callable[[str], None]

# ffmpeg picks the container from the --save_file suffix; these cannot hold the H.264 stream it is given.
NOT_H264_SUFFIXES = (".webm", ".gif")


def check_output_target(path: Path, flag: str, overwrite: bool) -> None:
    """Refuse a folder, a missing parent folder that is a file, or an existing file without `--overwrite`; then
    create and remove a file beside `path`, so an unwritable folder is found before any model loads."""
    if path.is_dir():
        raise InputError(f"{flag} {path} is a folder; give a file name, e.g. {path / 'video.mp4'}.")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise InputError(f"{flag} {path}: {parent} is a file, not a folder.")
    if path.exists() and not overwrite:
        raise InputError(f"{flag} {path} already exists; pass --overwrite to replace it, or choose another name.")
    probe_writable(parent, flag)


def check_video_suffix(path: Path) -> None:
    """Refuse a --save_file whose suffix gives ffmpeg no container for H.264 (it would fail only after sampling)."""
    suffix = path.suffix.lower()
    if not suffix or suffix in NOT_H264_SUFFIXES:
        cause = "has no file extension" if not suffix else f"is a {suffix} file, which cannot hold H.264"
        raise InputError(f"--save_file {path} {cause}; ffmpeg picks the container from the extension: use "
                         f"{path.with_name(path.stem + '.mp4')}")


def check_cli_files(args: argparse.Namespace, save_file: Path) -> None:
    """Before any model loads: ffmpeg is found, the --decode_latents file is read, and `check_output_target` runs for
    every output flag that is set."""
    ffmpeg_executable()
    if args.decode_latents:
        load_latents(args.decode_latents)
    check_output_target(save_file, "--save_file", args.overwrite)
    check_video_suffix(save_file)
    if args.save_tensor:
        check_output_target(Path(args.save_tensor), "--save_tensor", args.overwrite)
    if args.save_frames:
        frames = Path(args.save_frames)
        if frames.is_file():
            raise InputError(f"--save_frames {frames} is a file; give a folder for the PNG frames.")
        probe_writable(frames, "--save_frames")


def decode_command(args: argparse.Namespace, request: Request, latents_file: Path) -> str:
    """The command line that decodes a kept latents file into the same outputs."""
    parts = ["python", "-m", "wan_core.generate", "--task", request.task]
    parts += ["--demo"] if args.demo else ["--ckpt_dir", str(args.ckpt_dir)]
    parts += ["--decode_latents", str(latents_file), "--save_file", str(request.save_file)]
    return shlex.join(parts)


def decode_and_write(
    pipeline: WanPipeline, latents: torch.Tensor, request: Request, args: argparse.Namespace, say: Say
) -> None:
    """Decode `latents` and write every requested output; on any failure the latents are kept beside --save_file
    and the error says how to decode them later."""
    folder = request.save_file.parent if str(request.save_file.parent) else Path(".")
    keep_latents_on_failure(
        lambda: write_decoded(pipeline, latents, request, args, say), latents,
        folder=folder, task=request.task, stem=request.save_file.stem,
        how_to_decode=lambda kept: f"decode them later with: {decode_command(args, request, kept)}",
    )  # fmt: skip


def write_decoded(
    pipeline: WanPipeline, latents: torch.Tensor, request: Request, args: argparse.Namespace, say: Say
) -> None:
    """Decode `latents` into every requested output. A plain MP4 (with or without --save_frames) is encoded while the
    VAE decodes; --interpolate and --save_tensor need the whole video first."""
    if args.interpolate != 1 or args.save_tensor:
        write_outputs(to_host(pipeline.decode(latents)), request, args, say)
        return
    fps = request.sampling.task.fps
    decoded = pipeline.decode_into_mp4(latents, request.save_file, fps, frames_dir=args.save_frames)
    if not isinstance(decoded, Mp4Stream):  # decoded in tiles after running out of memory
        write_outputs(decoded, request, args, say)
        return
    decoded.finish()
    _say_saved(request.save_file, decoded.frames, decoded.width, decoded.height, fps, args, say)


def write_outputs(video: torch.Tensor, request: Request, args: argparse.Namespace, say: Say) -> None:
    """Interpolate the decoded video as --interpolate asks, then write every requested output (verified)."""
    from .interpolate.cli import interpolate_video
    from .video_io import save_tensor, save_video

    video, fps = interpolate_video(args, video, request.sampling.task.fps, request.runtime.device, say)
    save_video(request.save_file, video, fps, frames_dir=args.save_frames)
    _say_saved(request.save_file, video.shape[1], video.shape[3], video.shape[2], fps, args, say)
    if args.save_tensor:
        save_tensor(args.save_tensor, video)
        say(f"Saved the video tensor [3, F, H, W] in [-1, 1] to {args.save_tensor}.")


def _say_saved(path: Path, frames: int, width: int, height: int, fps: float, args: argparse.Namespace,
               say: Say) -> None:
    say(f"Saved {path} ({frames} frames, {width}x{height}, {fps:g} fps).")
    if args.save_frames:
        say(f"Saved the frames as PNGs in {args.save_frames}.")


def decode_latents_file(request: Request, args: argparse.Namespace, say: Say) -> int:
    """`--decode_latents FILE`: load only the VAE of the checkpoint, decode the kept latents, write the outputs."""
    from .checkpoint_dir import resolve_checkpoint
    from .pipeline.pipeline import WanPipeline
    from .vae.loader import load_vae

    latents, task = load_latents(args.decode_latents)
    if task is not None and task != request.task:
        raise InputError(f"{args.decode_latents} holds latents of {task}; pass --task {task}.")
    device = request.runtime.device
    vae = load_vae(resolve_checkpoint(request.task, request.ckpt_dir).vae, device=device, dtype=torch.float32)
    if latents.shape[0] != vae.z_dim:
        raise InputError(f"{args.decode_latents} holds {latents.shape[0]}-channel latents but the VAE of "
                         f"{request.task} takes {vae.z_dim}; pass the --task the latents were made with.")
    pipeline = WanPipeline(request.task, text_encoder=None, vae=vae, high_noise_model=None, runtime=request.runtime)
    say(f"Decoding {args.decode_latents} ...")
    write_decoded(pipeline, latents, request, args, say)
    return 0
