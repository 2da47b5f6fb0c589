"""`SamplingRequest`: what one denoising run samples, with the task's defaults filled in and every value checked once.

The CLI, the nodes and the batch engine each build one (`SamplingRequest.create`) before any model loads and hand it
to the sampler; nothing below re-validates it.
"""

from __future__ import annotations

import dataclasses
import random
import sys
from dataclasses import dataclass

from ..errors import InputError
from .step_cache import check_cache
from .strength import first_step
from .tasks import TaskConfig, get_task
from .validation import check_seed, validate_request


@dataclass(frozen=True)
class SamplingRequest:
    task: TaskConfig
    width: int
    height: int
    frame_num: int
    seed: int
    solver: str
    steps: int
    shift: float
    guide_scale: tuple[float, float]  # official order: (low_noise, high_noise)
    # The first step of the low-noise expert (Lightning: 2 of 4); None: the task's timestep boundary decides.
    boundary_step: int | None = None
    denoise: float = 1.0  # video-to-video strength: < 1 starts from given latents, noised (pipeline.strength)
    # Step caching (`step_cache.py`): "off" | "easycache" | "magcache"; thresholds (low_noise, high_noise), None
    # when off (the method's default fills in when not given).
    cache: str = "off"
    cache_threshold: tuple[float, float] | None = None

    @classmethod
    def create(
        cls,
        task: str | TaskConfig,
        *,
        width: int | None = None,
        height: int | None = None,
        frame_num: int | None = None,
        seed: int = -1,
        solver: str = "unipc",
        steps: int | None = None,
        shift: float | None = None,
        guide_scale: float | tuple[float, float] | list[float] | None = None,
        boundary_step: int | None = None,
        denoise: float = 1.0,
        has_image: bool | None = None,
        cache: str = "off",
        cache_threshold: float | tuple[float, float] | list[float] | None = None,
    ) -> SamplingRequest:
        """The request with the task's defaults where a value is None; raises `InputError` naming the nearest valid
        value. A negative seed draws a random one (as the official code); ``has_image`` is checked when given."""
        task = get_task(task)
        default_w, default_h = task.default_size
        width = default_w if width is None else width
        height = default_h if height is None else height
        frame_num = task.frame_num if frame_num is None else frame_num
        steps = task.sample_steps if steps is None else steps
        shift = task.sample_shift if shift is None else shift
        validate_request(
            task, width=width, height=height, frame_num=frame_num, sample_steps=steps, sample_solver=solver,
            sample_shift=shift, has_image=has_image, guide_scale=guide_scale,
        )  # fmt: skip
        check_seed("seed", seed)
        guide = as_guide_pair(task.guide_scale if guide_scale is None else guide_scale)
        if boundary_step is not None:
            if not task.is_moe:
                raise InputError(f"boundary_step is for the two-expert tasks; {task.name} has one model: drop it")
            if isinstance(boundary_step, bool) or not isinstance(boundary_step, int) or not 0 <= boundary_step <= steps:
                raise InputError(
                    f"boundary_step {boundary_step!r} must be a whole number from 0 to the step count ({steps}): "
                    f"the first step of the low-noise expert, e.g. {steps // 2}"
                )
        first_step(steps, denoise)  # raises for a strength outside (0, 1]
        threshold = None if cache_threshold is None else as_guide_pair(cache_threshold, "cache_threshold")
        return cls(
            task=task, width=int(width), height=int(height), frame_num=int(frame_num), seed=resolve_seed(seed),
            solver=solver, steps=int(steps), shift=float(shift), guide_scale=guide, boundary_step=boundary_step,
            denoise=float(denoise), cache=cache, cache_threshold=check_cache(cache, threshold),
        )  # fmt: skip

    def replace(self, **changes: object) -> SamplingRequest:
        """A re-validated copy with `changes` (field names of `create`)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return SamplingRequest.create(**{**fields, **changes})

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        return self.task.latent_shape(self.width, self.height, self.frame_num)


def as_guide_pair(
    guide_scale: float | tuple[float, float] | list[float], what: str = "guide_scale"
) -> tuple[float, float]:
    """A guide scale (or another per-expert value, named `what`) as the official ``(low_noise, high_noise)`` pair
    (a single number is used for both)."""
    if isinstance(guide_scale, (int, float)) and not isinstance(guide_scale, bool):
        return float(guide_scale), float(guide_scale)
    pair = tuple(float(g) for g in guide_scale)
    if len(pair) != 2:
        raise InputError(f"{what} takes one number or two (low_noise, high_noise), got {guide_scale!r}")
    return pair  # type: ignore[return-value]


def resolve_seed(seed: int | None) -> int:
    """A negative (or None) seed means a random one, as in the official code."""
    if seed is None or seed < 0:
        return random.randint(0, sys.maxsize)
    return int(seed)
