"""Checks of a generation request, run before any model is loaded. Each error names the nearest valid value."""

from __future__ import annotations

import difflib
import math
import numbers

from ..errors import InputError
from ..finite import check_finite_number
from ..sampling import SOLVERS
from .tasks import TaskConfig, get_task

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes seeds up to this


def check_seed(name: str, seed: int) -> None:
    """InputError when `seed` is above what torch's generators take (negative seeds mean random)."""
    if seed > MAX_SEED:
        raise InputError(f"{name} {seed} is too large: seeds go up to {MAX_SEED} (2^64-1); -1 picks a random one")


def nearest_multiple(value: int, multiple: int) -> int:
    """The multiple of ``multiple`` closest to ``value`` (ties go up), at least ``multiple``."""
    return max(multiple, (value + multiple // 2) // multiple * multiple)


def nearest_frame_num(value: int) -> int:
    """The ``4k + 1`` closest to ``value`` (ties go up), at least 1."""
    return max(1, (value - 1 + 2) // 4 * 4 + 1)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_int(name: str, value: object) -> int:
    if _is_int(value):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        raise InputError(f"{name} {value!r} is not a whole number: use {round(value)}")
    raise InputError(f"{name} must be a whole number, got {value!r}")


def _check_side(name: str, value: object, multiple: int, task: TaskConfig) -> None:
    value = _check_int(name, value)
    where = f" for {task.name}" if multiple != 16 else ""
    if value < multiple:
        raise InputError(f"{name} {value} is too small: use at least {multiple}")
    if value % multiple:
        raise InputError(
            f"{name} {value} is not a multiple of {multiple}{where}: use {nearest_multiple(value, multiple)}"
        )


def check_solver(sample_solver: object) -> str:
    if sample_solver in SOLVERS:
        return sample_solver
    close = difflib.get_close_matches(str(sample_solver).lower(), SOLVERS, n=1, cutoff=0.4)
    hint = f"use {close[0]!r}" if close else "use one of " + ", ".join(SOLVERS)
    raise InputError(f"unknown sample_solver {sample_solver!r}: {hint} (valid: {', '.join(SOLVERS)})")


def validate_request(
    task: str | TaskConfig,
    *,
    width: int,
    height: int,
    frame_num: int,
    sample_steps: int,
    sample_solver: str,
    sample_shift: float | None = None,
    has_image: bool | None = None,
    guide_scale: float | tuple[float, float] | None = None,
) -> None:
    """Raise :class:`~wan_core.errors.InputError` if the request cannot run; return None if it can.

    ``task`` is a task name or a :class:`TaskConfig`. ``sample_shift``, ``has_image`` and ``guide_scale`` are checked
    when given.
    """
    task = get_task(task)
    _check_side("width", width, task.size_multiple, task)
    _check_side("height", height, task.size_multiple, task)

    frame_num = _check_int("frame_num", frame_num)
    if frame_num < 1 or (frame_num - 1) % 4:
        raise InputError(f"frame_num {frame_num} is not 4k+1: use {nearest_frame_num(frame_num)}")

    sample_steps = _check_int("sample_steps", sample_steps)
    if sample_steps < 1:
        raise InputError(
            f"sample_steps {sample_steps} must be at least 1: use 1 (the {task.name} default is {task.sample_steps})"
        )

    check_solver(sample_solver)

    if sample_shift is not None:
        real = isinstance(sample_shift, numbers.Real) and not isinstance(sample_shift, bool)
        if not real or not 0 < sample_shift < math.inf:
            raise InputError(
                f"sample_shift {sample_shift!r} must be a finite number above 0: use {task.sample_shift} "
                f"(the {task.name} default)"
            )

    check_finite_number("guide_scale", guide_scale)

    if has_image is not None:
        check_image_use(task, has_image)


def check_image_use(task: TaskConfig, has_image: bool) -> None:
    """Whether the task can run with (or without) a start image."""
    if task.needs_image and not has_image:
        raise InputError(f"task {task.name} needs an input image (--image / image=...)")
    if has_image and not task.accepts_image:
        raise InputError(f"task {task.name} takes no input image: use i2v-A14B or ti2v-5B for image-to-video")


def check_last_frame_use(task: TaskConfig, frame_num: int) -> None:
    """Whether the task can make a video from a first and a last frame of `frame_num` frames (the first frame is
    `check_image_use`'s: i2v-A14B needs it)."""
    if task.model_type != "i2v":
        raise InputError(f"task {task.name} takes no last frame: a video from a first and a last frame is made by "
                         "i2v-A14B (--last_frame / end_image).")
    if frame_num < 5:
        raise InputError(f"A video from a first and a last frame needs at least 5 frames; {frame_num} was asked for. "
                         "Raise the frame count (4n+1: 5, 9, ..., 81).")
