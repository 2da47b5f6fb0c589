"""Shifted flow-matching sigmas and timesteps, computed exactly as the official Wan2.2 code does.

Two grids exist in the official code, and which one a solver uses changes the timesteps the model sees:

* ``"unipc"`` (``FlowUniPCMultistepScheduler.set_timesteps(steps, shift=shift)``): ``linspace(sigma_max, 0, steps + 1)``
  without its last point, where ``sigma_max`` is the float32 value 0.999 of the training schedule (``1 - 1/1000``),
  then shifted. The first timestep is therefore below 1000 (999 for shift 1, 999 for shift 12).
* ``"dpm"`` (``get_sampling_sigmas`` + ``FlowDPMSolverMultistepScheduler.set_timesteps(sigmas=...)``):
  ``linspace(1, 0, steps + 1)[:steps]``, shifted; the first timestep is exactly 1000.

The shift is ``shift * s / (1 + (shift - 1) * s)`` in float64; timesteps are ``sigmas * 1000`` truncated to int64;
the sigmas the solvers use are cast to float32 with a final 0 appended.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000
GRIDS = ("unipc", "dpm")


@dataclass(frozen=True)
class Schedule:
    """The sampling grid: ``sigmas`` float32 ``[steps + 1]`` (last is 0), ``timesteps`` int64 ``[steps]`` (CPU)."""

    sigmas: torch.Tensor
    timesteps: torch.Tensor

    @property
    def steps(self) -> int:
        return int(self.timesteps.shape[0])


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """The official time shift, in float64: ``shift * s / (1 + (shift - 1) * s)``."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def training_sigma_range(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> tuple[float, float]:
    """``(sigma_max, sigma_min)`` of the official schedulers' training grid (built with shift 1, held in float32)."""
    alphas = np.linspace(1, 1 / num_train_timesteps, num_train_timesteps)[::-1].copy()
    sigmas = torch.from_numpy(1.0 - alphas).to(dtype=torch.float32)
    sigmas = 1.0 * sigmas / (1 + (1.0 - 1) * sigmas)  # the constructor's shift (always 1 in the official code)
    return sigmas[0].item(), sigmas[-1].item()


def unshifted_sigmas(grid: str, steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """The float64 grid of ``steps`` sigmas before the shift."""
    if grid == "unipc":
        sigma_max, sigma_min = training_sigma_range(num_train_timesteps)
        return np.linspace(sigma_max, sigma_min, steps + 1).copy()[:-1]
    if grid == "dpm":
        return np.linspace(1, 0, steps + 1)[:steps]
    raise ValueError(f"unknown sigma grid {grid!r}: use one of {', '.join(GRIDS)}")


def make_schedule(grid: str, steps: int, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> Schedule:
    """Sigmas and timesteps of ``steps`` sampling steps with ``shift``, as the official ``generate`` gets them."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    sigmas = shift_sigmas(unshifted_sigmas(grid, steps, num_train_timesteps), shift)
    if grid == "dpm":
        # retrieve_timesteps(sigmas=...) runs set_timesteps, which applies the scheduler's own shift (1) once more.
        sigmas = shift_sigmas(sigmas, 1.0)
    timesteps = torch.from_numpy(sigmas * num_train_timesteps).to(dtype=torch.int64)
    full = torch.from_numpy(np.concatenate([sigmas, [0]]).astype(np.float32))
    return Schedule(sigmas=full, timesteps=timesteps)
