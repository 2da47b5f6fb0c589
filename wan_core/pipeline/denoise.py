"""The denoising loop: initial noise, MoE expert switching, classifier-free guidance, progress and cancel.

It follows the official ``generate`` loops (``wan/text2video.py``, ``image2video.py``, ``textimage2video.py``):
noise from ``torch.Generator(device).manual_seed(seed)``, the high-noise expert while ``t >= boundary * 1000`` with
the second guide scale (or for the first ``boundary_step`` steps, as the distilled few-step LoRAs sample), then the
low-noise expert with the first; two forwards per step (cond, uncond) combined as ``uncond + g * (cond - uncond)``,
one where ``g`` is 1; the solver steps on float32 latents.

A model is any callable ``model(x, t, context, y=None, attention=None) -> Tensor`` with ``x`` ``[1, C, F', H', W']``,
``t`` ``[1]`` (or ``[1, seq_len]`` per token), ``context`` a list with one ``[L, 4096]`` tensor; it returns
``[1, C_out, F', H', W']``
(``wan_core.dit.WanDiT`` has this signature; ``attention`` is the runtime's backend object).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import InputError, WanError
from ..finite import check_finite
from ..io.state_dict import FP8_DTYPES
from ..memory import GPUOutOfMemoryError, out_of_memory
from ..runtime import Runtime
from ..sampling import make_solver
from . import conditioning
from .forwards import step_forwards
from .request import SamplingRequest
from .step_cache import make_step_cache
from .strength import start_from_latents
from .tasks import TaskConfig

log = logging.getLogger(__name__)

HIGH_NOISE, LOW_NOISE, SINGLE = "high_noise", "low_noise", "single"


@dataclass
class StepInfo:
    """What the loop reports after each step."""

    step: int  # 1-based
    total: int
    expert: str  # "high_noise" | "low_noise" | "single"
    timestep: int
    latents: torch.Tensor  # the current x0 estimate [z, F', H', W'] (float32, on the sampling device), for previews
    seconds: float  # wall time of this step
    skipped_forwards: int = 0  # forwards the step cache has skipped so far in this run (`request.cache`)


ProgressCallback = Callable[[StepInfo], None]
CancelCheck = Callable[[], bool]


class GenerationCancelled(WanError):
    """The cancel check returned True; sampling stopped between two steps."""

    def __init__(self, step: int, total: int):
        super().__init__(f"generation cancelled after {step} of {total} steps")
        self.step = step
        self.total = total


def as_context(embedding: torch.Tensor | list[torch.Tensor], device: torch.device, what: str) -> list[torch.Tensor]:
    """One prompt's embedding ``[L, 4096]`` (or a list holding it) as the DiT's context list, on ``device``."""
    if isinstance(embedding, torch.Tensor):
        embedding = [embedding[0]] if embedding.ndim == 3 and embedding.shape[0] == 1 else [embedding]
    embedding = list(embedding)
    if len(embedding) != 1 or not isinstance(embedding[0], torch.Tensor) or embedding[0].ndim != 2:
        shapes = [tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__ for e in embedding]
        raise InputError(f"{what} must be one prompt embedding [L, 4096] (or a list of one), got {shapes}")
    return [embedding[0].to(device)]


def select_expert(
    step: int, timestep: int | float, request: SamplingRequest
) -> tuple[str, float]:
    """``(expert, guide scale)`` of step ``step`` (0-based) at ``timestep``: the high-noise expert with
    ``guide_scale[1]`` before the boundary (``request.boundary_step`` when given, else while ``t >= boundary``)."""
    guide = request.guide_scale
    if not request.task.is_moe:
        return SINGLE, guide[0]
    if request.boundary_step is not None:
        high = step < request.boundary_step
    else:
        high = timestep >= request.task.boundary_timestep
    return (HIGH_NOISE, guide[1]) if high else (LOW_NOISE, guide[0])


def cfg(cond_out: torch.Tensor, uncond_out: torch.Tensor, guide_scale: float) -> torch.Tensor:
    """Classifier-free guidance as the reference computes it."""
    return uncond_out + guide_scale * (cond_out - uncond_out)


def initial_noise(latent_shape: tuple[int, ...], seed: int, device: torch.device | str) -> torch.Tensor:
    """The official initial noise: float32 ``randn`` from ``torch.Generator(device).manual_seed(seed)``."""
    device = torch.device(device)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return torch.randn(*latent_shape, dtype=torch.float32, device=device, generator=generator)


def denoise_memory_fixes(
    task: TaskConfig, latent_shape: tuple[int, ...], offload: bool, models: list[Callable | None]
) -> list[str]:
    """The settings that would make denoising need less GPU memory, given the ones in use."""
    fixes = []
    if not offload and low_noise_model_given(models):
        fixes.append("offload_model (the expert that is not sampling waits in CPU RAM; Model Loader: offload)")
    parameters = [p for m in models if isinstance(m, torch.nn.Module) for p in m.parameters()]
    if not any(p.dtype in FP8_DTYPES for p in parameters):
        fixes.append("fp8 weights, half the DiT memory (Model Loader weight_dtype fp8_e4m3fn)")
    _, frames, height, width = latent_shape
    stride_f, stride_h, stride_w = task.vae_stride
    fixes.append(
        f"a smaller size or fewer frames (now {width * stride_w}x{height * stride_h}, "
        f"{(frames - 1) * stride_f + 1} frames)"
    )
    fixes.append("nothing else on this GPU: the text encoder on the CPU (t5_cpu; in ComfyUI Set Device cpu)")
    return fixes


def low_noise_model_given(models: list[Callable | None]) -> bool:
    return len({id(m) for m in models if m is not None}) > 1


def sample_latents(
    request: SamplingRequest,
    *,
    high_noise_model: Callable,
    low_noise_model: Callable | None,
    cond: torch.Tensor | list[torch.Tensor],
    uncond: torch.Tensor | list[torch.Tensor],
    runtime: Runtime,
    y: torch.Tensor | None = None,
    first_frame_latent: torch.Tensor | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    init_latents: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the sampler; return the final latents ``[z, F', H', W']`` (float32, on ``runtime.device``).

    ``cond`` / ``uncond``: the prompt / negative prompt embeddings ``[L, 4096]`` (or lists of one); a guide scale of
    1 skips the ``uncond`` forward (CFG 1 is the conditional prediction).
    ``y``: the i2v conditioning ``[4 + z, F', H', W']`` (mask channels + image latent).
    ``init_latents``: video-to-video from these latents ``[z, F', H', W']`` at ``request.denoise``.
    ``first_frame_latent``: the ti2v start-frame latent ``[z, 1, H', W']``; it replaces the first latent frame, whose
    tokens get timestep 0. For a one-model task (ti2v-5B) pass the model as ``high_noise_model`` and None as
    ``low_noise_model``. The forwards run under ``runtime.autocast()`` with ``runtime.attention``; with
    ``runtime.offload`` the expert not sampling waits in CPU RAM.
    """
    task = request.task
    device = runtime.device
    latent_shape = request.latent_shape
    if task.is_moe and low_noise_model is None:
        raise InputError(f"task {task.name} has two experts: pass both high_noise_model and low_noise_model")
    experts = {HIGH_NOISE: high_noise_model, LOW_NOISE: low_noise_model, SINGLE: high_noise_model}

    solver = make_solver(request.solver, request.steps, request.shift)
    latents = initial_noise(latent_shape, request.seed, device)
    first = 0
    if init_latents is not None:
        latents, first = start_from_latents(solver, latents, init_latents, request.denoise)

    context, context_null = as_context(cond, device, "cond"), as_context(uncond, device, "uncond")
    y_batch = None if y is None else y.to(device)[None]
    token_mask = None
    if first_frame_latent is not None:
        first_frame_latent = first_frame_latent.to(device=device, dtype=torch.float32)
        token_mask = conditioning.first_frame_mask(latent_shape, device=device)
        latents = conditioning.replace_first_frame(latents, first_frame_latent, token_mask)
    seq_len = conditioning.seq_len_for(latent_shape, task.patch_size)

    total = solver.steps
    active = None
    cache = make_step_cache(request.cache, request.cache_threshold, total, (HIGH_NOISE, LOW_NOISE, SINGLE))
    try:
        with torch.no_grad(), runtime.autocast():
            for i, t in enumerate(solver.timesteps[first:], first):
                if cancel is not None and cancel():
                    raise GenerationCancelled(i, total)
                start = time.perf_counter()
                expert, g = select_expert(i, t.item(), request)
                model = experts[expert]
                if expert != active:
                    if active is not None:
                        check_finite(latents, f"the latents after the {active} expert (step {i} of {total})")
                    if runtime.offload and active is not None and experts[active] is not model:
                        runtime.park(experts[active])
                    runtime.place(model, device)  # gives back the file pages it was read from
                    active = expert

                timestep = torch.stack([t]).to(device)
                if token_mask is not None:
                    timestep = conditioning.per_token_timesteps(token_mask, timestep, seq_len, task.patch_size)
                contexts = [context] if g == 1.0 else [context, context_null]
                if cache is None or cache.should_compute(i, expert, latents, len(contexts)):
                    flows = step_forwards(model, latents[None], timestep, contexts, y_batch, runtime)
                    if cache is not None:
                        cache.update(latents, flows)
                else:
                    flows = cache.reuse(latents)
                flow = flows[0] if len(flows) == 1 else cfg(flows[0], flows[1], g)

                x0 = solver.predict_x0(flow, latents) if progress is not None else None
                latents = solver.step(flow, latents)
                if first_frame_latent is not None:
                    latents = conditioning.replace_first_frame(latents, first_frame_latent, token_mask)
                    if x0 is not None:
                        x0 = conditioning.replace_first_frame(x0, first_frame_latent, token_mask)
                if progress is not None:
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    progress(StepInfo(i + 1, total, expert, int(t.item()), x0, time.perf_counter() - start,
                                      cache.skipped_forwards if cache is not None else 0))
    except torch.cuda.OutOfMemoryError as err:
        if isinstance(err, GPUOutOfMemoryError):
            raise
        fixes = denoise_memory_fixes(task, latent_shape, runtime.offload, [high_noise_model, low_noise_model])
        raise out_of_memory("denoising", device, fixes) from err
    finally:
        if cache is not None:
            log.info("step cache %s: skipped %d forwards (steps %s)", cache.method, cache.skipped_forwards,
                     cache.skipped_steps)
        if runtime.offload:
            runtime.park(*{id(m): m for m in experts.values() if m is not None}.values())
    check_finite(latents, "the denoised latents")
    return latents
