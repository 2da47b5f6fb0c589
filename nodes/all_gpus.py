"""Set Device "all GPUs (one video)": the sampler denoises one video on every GPU together (Ulysses sequence
parallelism in kept worker processes, `wan_core.parallel.workers`).

The pool of workers is started on first use and kept (the experts stay loaded in the workers); a pool whose worker
died is replaced on the next run. Without GPUs, `WAN22_CPU_WORKERS=N` runs the choice as N CPU processes (gloo;
tests and debugging).
"""

from __future__ import annotations

import atexit
import os
import threading

import torch

from wan_core.errors import InputError
from wan_core.pipeline.denoise import CancelCheck, ProgressCallback
from wan_core.pipeline.request import SamplingRequest

from . import devices
from .devices import ALL_GPUS
from .handles import DIT_COMPUTE_DTYPES, DIT_WEIGHT_FORMATS, DiTHandle

CPU_WORKERS_ENV = "WAN22_CPU_WORKERS"
_pool = None
_lock = threading.Lock()


def worker_devices() -> list[torch.device]:
    """One device per worker: every GPU; on a machine without GPUs, `WAN22_CPU_WORKERS` CPU processes."""
    if devices.gpu_count() >= 2:
        return [torch.device("cuda", index) for index in range(devices.gpu_count())]
    cpu_workers = int(os.environ.get(CPU_WORKERS_ENV, "0") or 0)
    if devices.gpu_count() == 0 and cpu_workers >= 2:
        return [torch.device("cpu")] * cpu_workers
    raise InputError(
        f"Set Device '{ALL_GPUS}' splits one video over two or more GPUs; this machine has {devices.gpu_count()}. "
        "Choose auto or gpu:0."
    )


def _workers(devices: list[torch.device]):  # -> SequenceParallelWorkers
    global _pool
    from wan_core.parallel.workers import SequenceParallelWorkers

    with _lock:
        if _pool is None or _pool.closed or list(_pool.devices) != devices:
            if _pool is not None:
                _pool.close()
            _pool = SequenceParallelWorkers(devices)
        return _pool


def shutdown() -> None:
    """Stop the workers (they also end with the host process)."""
    with _lock:
        if _pool is not None:
            _pool.close()


atexit.register(shutdown)


def start_workers() -> object:
    """The kept pool on every GPU (started here if it is not running): `SequenceParallelWorkers`."""
    return _workers(worker_devices())


def _job(dit: DiTHandle, request: SamplingRequest, positive: torch.Tensor, negative: torch.Tensor,
         y: torch.Tensor | None, first_frame: torch.Tensor | None):  # -> Job
    from wan_core.parallel.workers import ExpertSource, Job
    from wan_core.pipeline.denoise import HIGH_NOISE, LOW_NOISE, SINGLE

    options = tuple(DIT_WEIGHT_FORMATS[dit.weight_dtype].items())
    if dit.low_noise_path:
        experts = (ExpertSource(dit.high_noise_path, HIGH_NOISE, options, dit.patches_high),
                   ExpertSource(dit.low_noise_path, LOW_NOISE, options, dit.patches_low))
    else:
        experts = (ExpertSource(dit.high_noise_path, SINGLE, options, dit.patches_high), None)
    runtime = {"compute_dtype": DIT_COMPUTE_DTYPES[dit.weight_dtype], "offload": dit.offload,
               "attention": dit.attention}
    cpu = torch.device("cpu")
    return Job(experts=experts, runtime=runtime, request=request, cond=positive.to(cpu), uncond=negative.to(cpu),
               y=None if y is None else y.to(cpu),
               first_frame_latent=None if first_frame is None else first_frame.to(cpu))


def sample_on_all_gpus(
    dit: DiTHandle,
    pipeline: object,
    cond: object,
    request: SamplingRequest,
    image: torch.Tensor | None,
    progress: ProgressCallback,
    cancel: CancelCheck,
    last_image: torch.Tensor | None = None,
) -> torch.Tensor:
    """The sampler's latents `[z, F', H', W']`, denoised by the worker pool; the start image (and i2v's last image),
    if any, is encoded here first, by `pipeline`'s VAE on the host device."""
    y = first_frame = None
    if image is not None:
        y, first_frame = pipeline.image_condition(image, request, last_image)
    return denoise_on_all_gpus(dit, request, cond.positive[0], cond.negative[0], progress, cancel, y, first_frame)


def denoise_on_all_gpus(
    dit: DiTHandle,
    request: SamplingRequest,
    positive: torch.Tensor,
    negative: torch.Tensor,
    progress: ProgressCallback | None,
    cancel: CancelCheck | None,
    y: torch.Tensor | None = None,
    first_frame: torch.Tensor | None = None,
) -> torch.Tensor:
    """The latents `[z, F', H', W']` (CPU) of one request denoised by the kept pool on every GPU, from the text
    embeddings (and the image conditioning, if any); the batch queue's one-job-on-all-GPUs denoiser too."""
    job = _job(dit, request, positive, negative, y, first_frame)
    return start_workers().sample(job, progress, cancel)
