"""Video-to-video: start the sampler from a given latent, noised to the step that a denoise strength selects.

`denoise` 1 starts from pure noise at step 0 (the latent only sets the shape); `denoise` d < 1 skips the first
`steps - round(steps * d)` steps and starts from the flow-matching interpolation `(1 - sigma) * x + sigma * noise`
at the sigma of the first step taken, the point an un-skipped run would have passed through for a clean video `x`.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from ..sampling.base import FlowSolver


def first_step(steps: int, denoise: float) -> int:
    """The index of the first step run for a denoise strength in (0, 1] (at least one step always runs)."""
    if not 0.0 < denoise <= 1.0:
        raise InputError(f"denoise must be in (0, 1]; got {denoise}. 1 = from noise, 0.5 = keep half the input.")
    return min(steps - 1, steps - round(steps * denoise))


def start_from_latents(
    solver: FlowSolver, noise: torch.Tensor, init_latents: torch.Tensor, denoise: float
) -> tuple[torch.Tensor, int]:
    """(the starting latents, the first step index); positions `solver` at that step."""
    if tuple(init_latents.shape) != tuple(noise.shape):
        raise InputError(
            f"The input latent has shape {tuple(init_latents.shape)} but this request samples {tuple(noise.shape)}."
        )
    start = first_step(solver.steps, denoise)
    solver.step_index = start
    if start == 0 and denoise == 1.0:
        return noise, 0
    sigma = solver.sigmas[start].item()
    return (1.0 - sigma) * init_latents.to(noise.device, torch.float32) + sigma * noise, start
