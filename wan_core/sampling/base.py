"""The interface every flow-matching solver shares.

A solver owns its schedule and its history. The loop asks it for the timestep of step ``i`` (``solver.timesteps``),
runs the model, then calls ``solver.step(flow, sample)`` once per step, in order. ``flow`` is the model's velocity
prediction (``noise - x0`` for flow matching); ``sample`` is the current latent. Solvers work on any tensor shape.

Scalar coefficients are computed as float32 0-d tensors on the CPU, the way the official schedulers compute them, so
the updates agree with the official code to float32 rounding.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from .schedule import NUM_TRAIN_TIMESTEPS, Schedule, make_schedule


class FlowSolver(ABC):
    """One sampling run: ``steps`` solver steps over the shifted grid of ``grid``."""

    name: str = ""
    grid: str = "unipc"

    def __init__(self, steps: int, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS):
        self.schedule: Schedule = make_schedule(self.grid, steps, shift, num_train_timesteps)
        self.shift = float(shift)
        self.step_index = 0

    @property
    def sigmas(self) -> torch.Tensor:
        return self.schedule.sigmas

    @property
    def timesteps(self) -> torch.Tensor:
        return self.schedule.timesteps

    @property
    def steps(self) -> int:
        return self.schedule.steps

    def lam(self, index: int) -> torch.Tensor:
        """log-SNR ``log(alpha) - log(sigma)`` with ``alpha = 1 - sigma`` (may be +-inf at the ends)."""
        sigma = self.sigmas[index]
        return torch.log(1 - sigma) - torch.log(sigma)

    def predict_x0(self, flow: torch.Tensor, sample: torch.Tensor, index: int | None = None) -> torch.Tensor:
        """The clean-latent estimate ``sample - sigma * flow`` at step ``index`` (default: the current step)."""
        return sample - self.sigmas[self.step_index if index is None else index] * flow

    def step(self, flow: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Advance ``sample`` from sigma[i] to sigma[i + 1] with the model's flow at step i."""
        if self.step_index >= self.steps:
            raise RuntimeError(f"{self.name} solver has already run all {self.steps} steps")
        out = self._update(flow, sample, self.step_index)
        self.step_index += 1
        return out

    @abstractmethod
    def _update(self, flow: torch.Tensor, sample: torch.Tensor, i: int) -> torch.Tensor:
        """The solver's own update for step ``i``."""
