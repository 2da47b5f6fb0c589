"""The model forwards of one denoising step: the conditional and (with CFG) the unconditional prediction, as two
forwards or, with `Runtime.cfg_batch`, one forward of batch 2 (the same math; fewer, larger kernels). With
`Runtime.compile` the model's blocks are compiled on their first use (`wan_core.dit.compiled`); with
`Runtime.cuda_graphs` (and no compile) the forwards replay from CUDA graphs where they can (`wan_core.dit.cuda_graphs`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..dit.compiled import compilable, compile_blocks
from ..dit.cuda_graphs import graphed
from ..runtime import Runtime


def step_forwards(
    model: Callable,
    x: torch.Tensor,
    timestep: torch.Tensor,
    contexts: list[list[torch.Tensor]],
    y: torch.Tensor | None,
    runtime: Runtime,
) -> list[torch.Tensor]:
    """The float32 flow ``[C, F, H, W]`` for each context in ``contexts`` (cond, then uncond) at latents ``x``
    ``[1, C, F, H, W]`` and ``timestep`` (``[1]`` or per token ``[1, L]``)."""
    attention = runtime.attention
    if runtime.compile:
        compile_blocks(model)
        attention = compilable(attention)
    elif runtime.cuda_graphs:
        model = graphed(model)
    if runtime.cfg_batch and len(contexts) > 1:
        n = len(contexts)
        batch_t = timestep.expand(n, *timestep.shape[1:])
        out = model(x.expand(n, *x.shape[1:]), batch_t, [c[0] for c in contexts], y=y, attention=attention)
        return [out[i].float() for i in range(n)]
    return [model(x, timestep, context, y=y, attention=attention)[0].float() for context in contexts]
