"""Kept worker processes, one per device, that denoise one video together (Ulysses, or a ring where the model's
heads do not divide by the device count; NCCL, gloo on the CPU).

The host process (ComfyUI) keeps one `SequenceParallelWorkers` pool: started once (`torch.multiprocessing` spawn),
each worker reads the DiT experts from disk once (kept between jobs) and joins one process group. A job carries the
request, the text embeddings and the image conditioning (CPU tensors); every worker runs the same denoising loop
(`sample_latents`) with the DiT's tokens split over them, and rank 0 sends each step (with the x0 preview latents)
and the final latents back over a queue. Interrupt: the host sets an event; the workers agree on it (an all-reduce
before each step) and stop together. A worker that fails or dies ends the pool with an error that names it; the
host stays up and the next job starts a fresh pool.
"""

from __future__ import annotations

import logging
import os
import queue
import tempfile
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..errors import InputError, WanError
from ..pipeline.denoise import CancelCheck, GenerationCancelled, ProgressCallback, StepInfo
from ..pipeline.request import SamplingRequest

log = logging.getLogger(__name__)
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class ExpertSource:
    """Where a worker reads one DiT expert: `load_dit(path, **options)`, then `patches` (LoRA) for `expert`."""

    path: str
    expert: str
    options: tuple[tuple[str, Any], ...] = ()
    patches: tuple = ()


@dataclass(frozen=True)
class Job:
    experts: tuple[ExpertSource, ExpertSource | None]  # (high-noise or only model, low-noise model or None)
    runtime: dict  # Runtime.create keywords (compute_dtype, offload, attention)
    request: SamplingRequest
    cond: torch.Tensor
    uncond: torch.Tensor
    y: torch.Tensor | None = None
    first_frame_latent: torch.Tensor | None = None


@dataclass
class WorkerFailed:
    rank: int
    kind: str  # the exception's class name
    message: str
    details: str = field(default="", repr=False)


class SequenceParallelWorkers:
    """A pool of `len(devices)` worker processes; `sample(job, ...)` runs one job on all of them."""

    def __init__(self, devices: Sequence[torch.device | str]) -> None:
        from .ulysses import require_yunchang

        require_yunchang()
        self.devices = tuple(torch.device(d) for d in devices)
        if len(self.devices) < 2:
            raise InputError(f"Sequence parallelism needs two or more devices, got {len(self.devices)}.")
        context = mp.get_context("spawn")
        self._init_file = tempfile.NamedTemporaryFile(prefix="wan22-pg-", delete=False).name
        os.unlink(self._init_file)  # the file store creates it
        self._jobs = [context.Queue() for _ in self.devices]
        self._results = context.Queue()
        self._cancel = context.Event()
        self._processes = [
            context.Process(target=_serve, args=(rank, self.devices, self._init_file, self._jobs[rank], self._results,
                                                 self._cancel), daemon=True, name=f"wan22-sp-{rank}")
            for rank in range(len(self.devices))
        ]  # fmt: skip
        for process in self._processes:
            process.start()
        self.closed = False

    def sample(self, job: Job, progress: ProgressCallback | None = None, cancel: CancelCheck | None = None
               ) -> torch.Tensor:
        """The final latents `[z, F', H', W']` (float32, CPU). Raises `GenerationCancelled` when `cancel` returned
        True (or `progress` raised) and the workers stopped; `WanError` when a worker failed (the pool is closed)."""
        if self.closed:
            raise WanError("this worker pool was closed; start a new one")
        self._check_alive()
        self._cancel.clear()
        for jobs in self._jobs:
            jobs.put(job)
        interruption: BaseException | None = None
        while True:
            if interruption is None and cancel is not None and cancel():
                self._cancel.set()
            message = self._next_message()
            if message is None:
                continue
            kind, payload = message
            if kind == "step" and progress is not None and interruption is None:
                try:
                    progress(StepInfo(**payload))
                except BaseException as err:  # the host's interrupt exception: stop the workers, then re-raise it
                    interruption = err
                    self._cancel.set()
            elif kind == "done":
                return payload
            elif kind == "cancelled":
                if interruption is not None:
                    raise interruption
                raise GenerationCancelled(*payload)
            elif kind == "failed":
                self.close()
                error = InputError if payload.kind == "InputError" else WanError
                raise error(f"sequence-parallel worker {payload.rank} ({self.devices[payload.rank]}) failed: "
                            f"{payload.kind}: {payload.message}")

    def _next_message(self) -> tuple[str, Any] | None:
        try:
            return self._results.get(timeout=POLL_SECONDS)
        except queue.Empty:
            self._check_alive()
            return None

    def _check_alive(self) -> None:
        for rank, process in enumerate(self._processes):
            if not process.is_alive():
                code = process.exitcode
                self.close()
                raise WanError(
                    f"sequence-parallel worker {rank} ({self.devices[rank]}) exited (code {code}); its error is in "
                    "the console above (out of memory is the usual cause). The workers restart on the next run."
                )

    def close(self) -> None:
        """Stop every worker (a job in flight is abandoned)."""
        if self.closed:
            return
        self.closed = True
        for process in self._processes:
            if process.is_alive():
                process.kill()
            process.join(timeout=10)
        if os.path.exists(self._init_file):
            os.unlink(self._init_file)


# --- the worker side ------------------------------------------------------------------------------------------------


def _serve(rank: int, devices: tuple[torch.device, ...], init_file: str, jobs: Any, results: Any, cancel: Any) -> None:
    device = devices[rank]
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=len(devices),
                            **({"device_id": device} if device.type == "cuda" else {}))
    models: dict[ExpertSource, torch.nn.Module] = {}
    attentions: dict[tuple[str, int], Any] = {}  # kept: a ring's process groups are made once
    while True:
        job = jobs.get()
        try:
            latents = _run(job, device, models, attentions, results if rank == 0 else None, cancel)
            if rank == 0:
                results.put(("done", latents.cpu()))
        except GenerationCancelled as err:
            if rank == 0:
                results.put(("cancelled", (err.step, err.total)))
        except BaseException as err:
            results.put(("failed", WorkerFailed(rank, type(err).__name__, str(err), traceback.format_exc())))
            raise


def _load(source: ExpertSource, device: torch.device, models: dict) -> torch.nn.Module:
    from ..dit.loader import load_dit
    from ..patching import set_patches

    base = ExpertSource(source.path, source.expert, source.options)
    if base not in models:
        for other in [key for key in models if key.expert == source.expert]:
            del models[other]  # one copy per expert slot
        models[base] = load_dit(source.path, device="cpu", **dict(source.options))
    model = models[base]
    set_patches(model, source.patches, source.expert)
    return model


def _run(job: Job, device: torch.device, models: dict, attentions: dict, results: Any, cancel: Any
         ) -> torch.Tensor:
    from ..pipeline.denoise import sample_latents
    from ..runtime import Runtime
    from .ring import degrees_for_heads, sequence_parallel_attention

    runtime = Runtime.create(device, **job.runtime)
    high, low = (None if source is None else _load(source, device, models) for source in job.experts)
    key = (runtime.attention.name, high.config.num_heads)
    if key not in attentions:  # the same on every rank: the ranks make a ring's groups together
        degrees = degrees_for_heads(key[1], dist.get_world_size())
        attentions[key] = sequence_parallel_attention(runtime.attention, *degrees)
    runtime = runtime.replace(attention=attentions[key])
    comm_device = device if device.type == "cuda" else torch.device("cpu")

    def agreed_cancel() -> bool:
        flag = torch.tensor([1.0 if cancel.is_set() else 0.0], device=comm_device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def send_step(info: StepInfo) -> None:
        results.put(("step", {**info.__dict__, "latents": info.latents.cpu()}))

    return sample_latents(
        job.request, high_noise_model=high, low_noise_model=low, cond=job.cond, uncond=job.uncond, runtime=runtime,
        y=job.y, first_frame_latent=job.first_frame_latent, progress=send_step if results is not None else None,
        cancel=agreed_cancel,
    )  # fmt: skip
