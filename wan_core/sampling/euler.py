"""Flow-matching Euler: ``x <- x + (sigma[i+1] - sigma[i]) * flow``.

The official Wan2.2 code has no Euler solver; this one walks the official default (UniPC) grid, so its timesteps,
and with them the MoE switch step, are the ones of the default solver. The update is diffusers'
``FlowMatchEulerDiscreteScheduler.step`` (computed in float32).
"""

from __future__ import annotations

import torch

from .base import FlowSolver


class EulerSolver(FlowSolver):
    name = "euler"
    grid = "unipc"

    def _update(self, flow: torch.Tensor, sample: torch.Tensor, i: int) -> torch.Tensor:
        dt = self.sigmas[i + 1] - self.sigmas[i]
        return (sample.to(torch.float32) + dt * flow).to(flow.dtype)
