"""The CLI's `--chunks N`: a long video as N image-to-video runs of the loaded pipeline, each from the previous
chunk's last frame; chunks and their ledger go to `<save_file>.chunks/`, so the same command resumes a killed run."""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import InputError
from .long_video import CHUNK_TASKS, PROMPT_SEPARATOR, REQUEST_FILE, generate_long_video

if TYPE_CHECKING:
    from .pipeline import WanPipeline
    from .request import SamplingRequest


def add_chunk_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--chunks", type=int, default=1,
        help="Generate a long video in N chunks (i2v-A14B or ti2v-5B), each an image-to-video run from the previous "
        f"chunk's last frame; --frame_num frames per chunk. --prompt may hold one prompt per chunk separated by "
        f"'{PROMPT_SEPARATOR}'. Finished chunks are kept in <save_file>.chunks/: the same command (same --save_file) "
        "resumes a killed run at the next chunk.",
    )
    parser.add_argument("--no_colour_match", action="store_true",
                        help="With --chunks: measure the colour drift at the joins but do not correct it.")


def check_chunk_args(args: argparse.Namespace) -> None:
    """Refuse bad --chunks settings before any model loads."""
    if args.chunks < 1:
        raise InputError(f"--chunks must be 1 or more; got {args.chunks}.")
    if args.chunks > 1 and args.task not in CHUNK_TASKS:
        raise InputError(f"--chunks needs an image-to-video task ({', '.join(CHUNK_TASKS)}); got --task {args.task}.")


def chunk_work_dir(save_file: Path) -> Path:
    return save_file.with_name(save_file.stem + ".chunks")


def recorded_seed(work_dir: Path) -> int | None:
    """The seed of the run recorded in ``work_dir``, so a resumed command without --base_seed keeps it."""
    record = work_dir / REQUEST_FILE
    if not record.is_file():
        return None
    return int(json.loads(record.read_text(encoding="utf-8"))["request"]["seed"])


def chunked_generate(
    args: argparse.Namespace, pipeline: WanPipeline, progress_bar: Callable[[int], Callable], say: Callable[[str], None]
) -> Callable[..., torch.Tensor]:
    """A stand-in for ``pipeline.generate`` (same arguments) that makes ``args.chunks`` chunks and joins them;
    ``progress_bar(steps)`` makes a fresh progress callback per chunk."""
    check_chunk_args(args)

    def generate(
        prompt: str, sampling: SamplingRequest, *, image: torch.Tensor | None, progress: object = None
    ) -> torch.Tensor:
        work_dir = chunk_work_dir(Path(args.save_file))
        recorded = recorded_seed(work_dir)
        seed = sampling.seed
        if args.base_seed < 0 and recorded is not None:  # a random seed: a resumed run keeps the first run's
            seed = recorded
        request = {
            "width": sampling.width, "height": sampling.height, "frame_num": sampling.frame_num,
            "sample_solver": sampling.solver, "sample_steps": sampling.steps, "sample_shift": sampling.shift,
            "guide_scale": sampling.guide_scale, "boundary_step": sampling.boundary_step,
            "task": args.task, "checkpoint": str(pipeline_source(args)),
            "image_sha256": None if image is None else hashlib.sha256(image.numpy().tobytes()).hexdigest(),
        }  # fmt: skip

        def make_chunk(chunk_prompt: str, start: torch.Tensor | None, chunk_seed: int) -> torch.Tensor:
            bar = progress_bar(sampling.steps)
            try:
                return pipeline.generate(chunk_prompt, sampling.replace(seed=chunk_seed), image=start, progress=bar)
            finally:
                bar.close()

        result = generate_long_video(make_chunk, prompt, chunks=args.chunks, seed=seed, work_dir=work_dir,
                                     request=request, start_image=image, colour_match=not args.no_colour_match,
                                     say=say)
        say(f"Joined {args.chunks} chunks into {result.video.shape[1]} frames (each chunk's first frame is its start "
            f"image, dropped at the join); chunks in {work_dir}.")
        return result.video

    return generate


def pipeline_source(args: argparse.Namespace) -> str:
    return "demo" if args.demo else str(Path(args.ckpt_dir).resolve())
