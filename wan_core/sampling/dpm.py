"""DPM-Solver++ (2M, midpoint) for flow matching, as the official ``FlowDPMSolverMultistepScheduler``.

Official grid ``linspace(1, 0, steps + 1)[:steps]`` shifted (first timestep 1000), first-order at the first step
(warm-up) and at the last step (``final_sigmas_type="zero"``), second order in between.
"""

from __future__ import annotations

import torch

from .base import FlowSolver


class DPMSolver(FlowSolver):
    name = "dpm++"
    grid = "dpm"

    def __init__(self, steps: int, shift: float, **kwargs):
        super().__init__(steps, shift, **kwargs)
        self._prev_x0: torch.Tensor | None = None

    def _update(self, flow: torch.Tensor, sample: torch.Tensor, i: int) -> torch.Tensor:
        x0 = self.predict_x0(flow, sample, i)
        prev_x0, self._prev_x0 = self._prev_x0, x0
        sample = sample.to(torch.float32)

        sigma_t, sigma_s0 = self.sigmas[i + 1], self.sigmas[i]
        alpha_t = 1 - sigma_t
        h = self.lam(i + 1) - self.lam(i)
        x_t = (sigma_t / sigma_s0) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * x0
        if prev_x0 is not None and i != self.steps - 1:
            # Second order (midpoint): D1 = (m0 - m1) / r0 with r0 = h_0 / h.
            r0 = (self.lam(i) - self.lam(i - 1)) / h
            d1 = (1.0 / r0) * (x0 - prev_x0)
            x_t = x_t - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * d1
        return x_t.to(x0.dtype)
