"""Runs a batch of jobs on several devices at once, recording every state change in the job ledger.

A job flows through its worker's stages: a single `run` stage for a `JobRunner`, or encode -> denoise -> decode ->
write for `JobStages`. Each device has two lanes, each one thread with its own CUDA stream on a CUDA device that runs
one stage of one job at a time: the compute lane (denoise, or a whole `run`) and the I/O lane (text encoding and
writing the video file). Lanes run concurrently, so with a split worker (text encoder on one GPU; DiT and VAE on
another) the text encoding of the next job and the decoding and writing of the previous one overlap the denoising of
the current one. A worker on one device runs text encoding, denoising and decoding one after another on its compute
lane (its models never work side by side on that GPU, whose memory may have room for one of them at work only), and
its I/O lane writes the previous job's video while the GPU works on the next. With one such worker per GPU, jobs run
side by side on every GPU.

A job slot is one lane of one worker; `max_concurrent_jobs` (jobs in flight at once) defaults to the number of slots
and may not exceed it. A job past `queue_timeout` seconds is cancelled at its next cancel check (between
denoising steps) or stage boundary and recorded `timed_out` (the time its stages wait behind other jobs' stages, as
the third job of a split worker waits for two denoisings, does not count); a job that raises (bad prompt, CUDA out
of memory) is recorded `failed` and the batch goes on; ComfyUI's interrupt stops new jobs and cancels the running
ones."""

from __future__ import annotations

import collections
import contextlib
import gc
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from wan_core.batch.jobs import BatchJob
from wan_core.batch.ledger import JobLedger, JobState
from wan_core.errors import InputError, WanError

LOG = logging.getLogger("comfyui-wan22")

CancelCheck = Callable[[], bool]
StepProgress = Callable[[int, int], None]  # (step, total) of the running stage
StreamFactory = Callable[[str], contextlib.AbstractContextManager]
DeviceHook = Callable[[str], None]

SKIPPED = "skipped"  # result state of a job found done in the ledger
NOT_STARTED = "not_started"  # result state of a job the interrupt kept from starting


class JobCancelled(WanError):
    """Raised by a runner or stage when its cancel check returns True (the pipeline's GenerationCancelled works too:
    any exception raised while the job is cancelled counts as the cancellation)."""


@dataclass(frozen=True)
class DeviceContext:
    """Where a stage runs: the worker, the stage's device and the worker's text / main (DiT + VAE) devices."""

    worker: str
    device: str
    text_device: str
    main_device: str
    stream: Any = None  # the CUDA stream of this device's thread; None on CPU


class JobRunner(Protocol):
    def run(self, job: BatchJob, context: DeviceContext, cancel: CancelCheck, progress: StepProgress) -> str | Path:
        """Make the job's video; return its path. Call `cancel()` between steps and stop (raise) when it is True."""


class JobStages(Protocol):
    """A generation split into stages, each on the device where its model lives."""

    encode_device: str
    denoise_device: str
    decode_device: str

    def encode(self, job: BatchJob) -> Any: ...

    def denoise(self, job: BatchJob, cond: Any, cancel: CancelCheck, progress: StepProgress) -> Any: ...

    def decode(self, job: BatchJob, latents: Any) -> Any:
        """The job's video decoded from the latents, in whatever form `write` takes it."""

    def write(self, job: BatchJob, decoded: Any) -> str | Path:
        """Write the decoded video to its file (verified, in place only when whole); return its path."""


@dataclass(frozen=True)
class Worker:
    """A set of devices holding one copy of the models, running jobs through a runner or through stages."""

    name: str
    text_device: str
    main_device: str
    runner: JobRunner | None = None
    stages: JobStages | None = None

    def __post_init__(self) -> None:
        if (self.runner is None) == (self.stages is None):
            raise ValueError("a Worker runs jobs through exactly one of `runner` and `stages`")

    @classmethod
    def replica(cls, device: str, runner: JobRunner, name: str | None = None) -> Worker:
        """All models on one device."""
        return cls(name or device, device, device, runner=runner)

    @classmethod
    def pipelined(cls, stages: JobStages, name: str | None = None) -> Worker:
        """Stages on the devices the stages name; stages of different jobs overlap across devices, and on one device
        the video write of one job overlaps the denoising of the next."""
        devices = dict.fromkeys((stages.encode_device, stages.denoise_device, stages.decode_device))
        return cls(name or "+".join(devices), stages.encode_device, stages.denoise_device, stages=stages)


@dataclass(frozen=True)
class ProgressEvent:
    """A step of a stage (`step`/`total`), or a job's end (`stage` is then its final state, step == total == 0)."""

    node_id: str | None
    job_index: int
    worker: str
    device: str
    stage: str
    step: int
    total: int
    jobs_finished: int
    jobs_total: int


@dataclass(frozen=True)
class JobResult:
    index: int
    state: str  # a JobState value, SKIPPED or NOT_STARTED
    output: str | None = None
    error: str | None = None
    seconds: float = 0.0
    worker: str | None = None


@dataclass(frozen=True)
class BatchSummary:
    results: list[JobResult]

    @property
    def output_paths(self) -> list[str]:
        """The videos of the batch in job order: made now or found done from an earlier run."""
        return [r.output for r in self.results if r.output and r.state in (JobState.DONE.value, SKIPPED)]

    def table(self) -> str:
        counts: dict[str, int] = {}
        for result in self.results:
            counts[result.state] = counts.get(result.state, 0) + 1
        lines = [f"{'job':>5}  {'state':<11}  {'seconds':>8}  {'worker':<14}  output / error"]
        for r in self.results:
            lines.append(f"{r.index:>5}  {r.state:<11}  {r.seconds:>8.1f}  {r.worker or '-':<14}  "
                         f"{r.output or r.error or ''}")
        lines.append("total: " + ", ".join(f"{count} {state}" for state, count in counts.items()))
        return "\n".join(lines)


COMPUTE, IO = "compute", "io"


@dataclass(frozen=True)
class _Stage:
    name: str
    device: str
    kind: str  # COMPUTE or IO
    call: Callable[[BatchJob, Any, DeviceContext, CancelCheck, StepProgress], Any]

    @property
    def lane(self) -> tuple[str, str]:
        """(device, "compute" | "io"): the thread that runs this stage."""
        return self.device, self.kind


@dataclass
class _WorkerPlan:
    worker: Worker
    stages: list[_Stage]
    in_flight: int = 0
    jobs_finished: int = 0

    @property
    def slots(self) -> int:
        return len({stage.lane for stage in self.stages})


@dataclass
class _JobRun:
    job: BatchJob
    order: int
    plan: _WorkerPlan
    started: float | None = None
    deadline: float | None = None
    submitted: float = 0.0  # when its next stage was queued on its lane
    value: Any = None
    contexts: dict[str, DeviceContext] = field(default_factory=dict)


def _plan(worker: Worker) -> _WorkerPlan:
    if worker.runner is not None:
        runner = worker.runner
        run_stage = _Stage("run", worker.main_device, COMPUTE,
                           lambda job, _, ctx, cancel, progress: runner.run(job, ctx, cancel, progress))
        return _WorkerPlan(worker, [run_stage])
    stages = worker.stages
    # On one device the models take turns on the compute lane, as in a plain job; only the write runs beside them.
    lane = COMPUTE if stages.encode_device == stages.denoise_device == stages.decode_device else IO
    return _WorkerPlan(worker, [
        _Stage("encode", stages.encode_device, lane, lambda job, _, ctx, cancel, progress: stages.encode(job)),
        _Stage("denoise", stages.denoise_device, COMPUTE,
               lambda job, cond, ctx, cancel, progress: stages.denoise(job, cond, cancel, progress)),
        _Stage("decode", stages.decode_device, lane,
               lambda job, latents, ctx, cancel, progress: stages.decode(job, latents)),
        _Stage("write", stages.decode_device, IO, lambda job, video, ctx, cancel, progress: stages.write(job, video)),
    ])  # fmt: skip


@contextlib.contextmanager
def cuda_stream(device: str) -> Iterator[Any]:
    """A CUDA stream of its own for the calling thread while in the block (nothing on other devices)."""
    if not device.startswith("cuda"):
        yield None
        return
    import torch

    stream = torch.cuda.Stream(device=device)
    with torch.cuda.device(device), torch.cuda.stream(stream):
        yield stream


def clear_device_cache(device: str) -> None:
    """Hand cached, unused GPU memory back to the driver (ComfyUI's soft_empty_cache does the same)."""
    if device.startswith("cuda"):
        import torch

        with torch.cuda.device(device):
            torch.cuda.empty_cache()


def defragment_device(device: str) -> None:
    """Free Python garbage holding tensors, then release the allocator's cached blocks and IPC handles."""
    gc.collect()
    if device.startswith("cuda"):
        import torch

        with torch.cuda.device(device):
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.ipc_collect()


_HOOK_PRIORITY = (-1,)  # ahead of every stage waiting on the lane


def _call_hooks(hooks: list[DeviceHook], device: str) -> None:
    """A failing hook is only logged."""
    for hook in hooks:
        try:
            hook(device)
        except Exception as error:
            LOG.warning("[Wan2.2] cache hook on %s failed: %s", device, error)


class _LaneThread:
    """One thread per lane of a device: takes the most urgent stage (earliest job first) and runs it."""

    _STOP = (float("inf"),)

    def __init__(self, lane: tuple[str, str], stream_factory: StreamFactory, on_crash: Callable[[BaseException], None]):
        self.device, kind = lane
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._sequence = itertools.count()
        self._stream_factory = stream_factory
        self._on_crash = on_crash
        self._thread = threading.Thread(target=self._loop, name=f"wan22-batch-{self.device}-{kind}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, priority: tuple[int, ...], task: Callable[[Any], None]) -> None:
        self._queue.put((priority, next(self._sequence), task))

    def stop(self) -> None:
        self._queue.put((self._STOP, next(self._sequence), None))
        self._thread.join()

    def _loop(self) -> None:
        import torch

        try:
            # As the host runs its nodes: the models were loaded under inference mode (a thread-local mode), and
            # in-place writes to their tensors (patches, block swap) are refused outside it.
            with torch.inference_mode(), self._stream_factory(self.device) as stream:
                while True:
                    _, _, task = self._queue.get()
                    if task is None:
                        return
                    task(stream)
        except BaseException as error:  # a bug or a ledger write error: end the batch instead of hanging it
            self._on_crash(error)


class BatchScheduler:
    """Runs jobs on `workers`, at most `max_concurrent_jobs` at once, skipping jobs the ledger has done."""

    def __init__(
        self,
        workers: Sequence[Worker],
        max_concurrent_jobs: int | None = None,
        queue_timeout: float | None = 300.0,
        ledger: JobLedger | None = None,
        on_progress: Callable[[ProgressEvent], None] | None = None,
        is_interrupted: Callable[[], bool] | None = None,
        *,
        node_id: str | None = None,
        auto_clear_cache: bool = False,
        defrag_every: int = 0,
        clear_cache: DeviceHook = clear_device_cache,
        defragment: DeviceHook = defragment_device,
        stream_factory: StreamFactory = cuda_stream,
        poll_seconds: float = 0.05,
    ):
        if not workers:
            raise InputError("The batch has no worker: connect at least one model handle with its device.")
        if ledger is None:
            raise ValueError("BatchScheduler needs a JobLedger (JobLedger.for_batch(output_dir, batch_id))")
        self._plans = [_plan(worker) for worker in workers]
        devices = {stage.device for plan in self._plans for stage in plan.stages}
        self._lanes = sorted({stage.lane for plan in self._plans for stage in plan.stages})
        self.capacity = min(sum(plan.slots for plan in self._plans), len(self._lanes))
        if max_concurrent_jobs is None or max_concurrent_jobs == 0:
            max_concurrent_jobs = self.capacity
        if not 1 <= max_concurrent_jobs <= self.capacity:
            raise InputError(
                f"max_concurrent_jobs={max_concurrent_jobs} but the workers have {self.capacity} job slot(s) "
                f"(one per busy lane: denoising, or text encoding / writing, on {', '.join(sorted(devices))}); "
                "more jobs at once would only wait and fight over memory. "
                f"Set it between 1 and {self.capacity}, or 0 for all of them."
            )
        if queue_timeout is not None and queue_timeout <= 0:
            raise InputError(f"queue_timeout must be positive seconds (got {queue_timeout}); use None for no limit.")
        if defrag_every < 0:
            raise InputError(f"defrag_every must be 0 (never) or a number of jobs (got {defrag_every}).")
        self.max_concurrent_jobs = max_concurrent_jobs
        self.queue_timeout = queue_timeout
        self.ledger = ledger
        self.node_id = node_id
        self._on_progress = on_progress
        self._is_interrupted = is_interrupted
        self._auto_clear_cache = auto_clear_cache
        self._defrag_every = defrag_every
        self._clear_cache = clear_cache
        self._defragment = defragment
        self._stream_factory = stream_factory
        self._poll_seconds = poll_seconds
        self._condition = threading.Condition()
        self._progress_lock = threading.Lock()

    # -- running a batch ---------------------------------------------------------------------------------------------

    def run(self, jobs: Sequence[BatchJob]) -> BatchSummary:
        """Run the jobs not yet done according to the ledger; return every job's result in job order."""
        done, pending = self.ledger.split_done(jobs)
        self._results: dict[int, JobResult] = {
            index: JobResult(index, SKIPPED, output=entry.output, worker=entry.worker) for index, entry in done.items()
        }
        self._jobs_total = len(jobs)
        self._waiting = collections.deque(pending)
        self._order = itertools.count()
        self._in_flight = 0
        self._interrupted = False
        self._crash: BaseException | None = None
        self.ledger.record_many((job.index, JobState.QUEUED, {"prompt": job.prompt}) for job in pending)
        self._threads = {lane: _LaneThread(lane, self._stream_factory, self._crashed) for lane in self._lanes}
        for thread in self._threads.values():
            thread.start()
        try:
            self._wait_for_batch()
        finally:
            for thread in self._threads.values():
                thread.stop()
        if self._crash is not None:
            raise self._crash
        for job in self._waiting:
            self._results[job.index] = JobResult(job.index, NOT_STARTED, error="interrupted before it started")
        return BatchSummary([self._results[job.index] for job in jobs])

    def _wait_for_batch(self) -> None:
        """Admit the first jobs, then watch the interrupt flag until every admitted job has finished."""
        with self._condition:
            self._admit_jobs()
            while self._crash is None and (self._in_flight or (self._waiting and not self._interrupt_requested())):
                self._condition.wait(self._poll_seconds)
                self._interrupt_requested()

    def _admit_jobs(self) -> None:
        """Under the lock: start waiting jobs on free workers, up to max_concurrent_jobs. Called again by each
        finishing job before its device thread takes its next task, so the next job's first stage is already queued."""
        while self._waiting and self._in_flight < self.max_concurrent_jobs and not self._interrupt_requested():
            free = [plan for plan in self._plans if plan.in_flight < plan.slots]
            if not free:
                return
            plan = min(free, key=lambda candidate: candidate.in_flight)
            self._in_flight += 1
            plan.in_flight += 1
            self._submit_stage(_JobRun(self._waiting.popleft(), next(self._order), plan), 0)

    def _interrupt_requested(self) -> bool:
        if not self._interrupted and self._is_interrupted is not None and self._is_interrupted():
            self._interrupted = True
        return self._interrupted

    def _submit_stage(self, run: _JobRun, stage_index: int) -> None:
        """Queue a stage on its device. A device first takes the stages that hand work to another device (an encode
        feeding the DiT's GPU, a decode whose end admits a job encoded elsewhere), then goes by job order."""
        stages = run.plan.stages
        stage = stages[stage_index]
        handed_to = stages[stage_index + 1].device if stage_index + 1 < len(stages) else stages[0].device
        priority = (0 if handed_to != stage.device else 1, run.order, stage_index)
        run.submitted = time.monotonic()
        self._threads[stage.lane].submit(priority, lambda stream: self._run_stage(run, stage_index, stream))

    def _crashed(self, error: BaseException) -> None:
        with self._condition:
            self._crash = self._crash or error
            self._condition.notify_all()

    # -- one stage of one job (on its device's thread) ---------------------------------------------------------------

    def _run_stage(self, run: _JobRun, stage_index: int, stream: Any) -> None:
        stage = run.plan.stages[stage_index]
        worker = run.plan.worker
        if run.deadline is not None:  # its wait for this lane was other jobs' time
            run.deadline += time.monotonic() - run.submitted
        reason = self._stop_reason(run)
        if reason is not None:
            self._finish(run, reason, error=self._stop_message(run, reason, stage.name))
            return
        if stage_index == 0:
            self.ledger.record(run.job.index, JobState.STARTED, worker=worker.name)
            run.started = time.monotonic()
            run.deadline = None if self.queue_timeout is None else run.started + self.queue_timeout
        context = DeviceContext(worker.name, stage.device, worker.text_device, worker.main_device, stream)

        def progress(step: int, total: int) -> None:
            self._emit(run, stage.device, stage.name, step, total)

        try:
            run.value = stage.call(run.job, run.value, context, lambda: self._stop_reason(run) is not None, progress)
            if stream is not None:
                stream.synchronize()  # the next stage may read this stage's tensors from another device's stream
        except Exception as error:
            reason = self._stop_reason(run)
            message = self._stop_message(run, reason, stage.name) if reason else f"{type(error).__name__}: {error}"
            if reason is None:
                LOG.warning("[Wan2.2] batch job %d failed in %s on %s: %s", run.job.index, stage.name, stage.device,
                            message)
            self._finish(run, reason or JobState.FAILED, error=message)
            return
        if stage_index + 1 < len(run.plan.stages):
            self._submit_stage(run, stage_index + 1)
        elif not isinstance(run.value, (str, Path)) or not Path(run.value).is_file():
            self._finish(run, JobState.FAILED, error=f"the job returned {run.value!r}, which is not a file on disk")
        else:
            self._finish(run, JobState.DONE, output=str(run.value))

    def _stop_reason(self, run: _JobRun) -> JobState | None:
        if self._interrupted or (self._is_interrupted is not None and self._is_interrupted()):
            return JobState.CANCELLED
        if run.deadline is not None and time.monotonic() > run.deadline:
            return JobState.TIMED_OUT
        return None

    def _stop_message(self, run: _JobRun, reason: JobState, stage: str) -> str:
        if reason is JobState.TIMED_OUT:
            return f"cancelled in {stage}: ran past queue_timeout of {self.queue_timeout:g} s"
        return f"cancelled in {stage} by the interrupt"

    def _finish(self, run: _JobRun, state: JobState, output: str | None = None, error: str | None = None) -> None:
        seconds = round(time.monotonic() - run.started, 3) if run.started is not None else 0.0
        worker = run.plan.worker.name
        run.value = None  # drop the job's latents now, not when the scheduler goes away
        self.ledger.record(run.job.index, state, output=output, error=error, worker=worker, seconds=seconds)
        with self._condition:
            run.plan.jobs_finished += 1
            defrag_due = bool(self._defrag_every) and run.plan.jobs_finished % self._defrag_every == 0
        self._run_cache_hooks(run.plan, defrag_due)
        with self._condition:
            self._results[run.job.index] = JobResult(run.job.index, state.value, output, error, seconds, worker)
            finished = len(self._results)
            self._in_flight -= 1
            run.plan.in_flight -= 1
            self._admit_jobs()
            self._condition.notify_all()
        self._emit(run, run.plan.worker.main_device, state.value, 0, 0, finished)

    def _run_cache_hooks(self, plan: _WorkerPlan, defrag_due: bool) -> None:
        """Cache hooks on the worker's devices, each queued ahead of every stage on the device's compute lane (its
        I/O lane where it has none): it runs between two stages there, never beside one (emptying the cache under a
        running denoise would only make it allocate again), and before the next job's stages on that lane."""
        hooks = [self._clear_cache] if self._auto_clear_cache else []
        if defrag_due:
            hooks.append(self._defragment)
        if not hooks:
            return
        for device in dict.fromkeys(stage.device for stage in plan.stages):
            lane = (device, COMPUTE) if (device, COMPUTE) in self._threads else (device, IO)
            self._threads[lane].submit(_HOOK_PRIORITY, lambda stream, device=device: _call_hooks(hooks, device))

    def _emit(self, run: _JobRun, device: str, stage: str, step: int, total: int, finished: int | None = None) -> None:
        if self._on_progress is None:
            return
        if finished is None:
            with self._condition:
                finished = len(self._results)
        event = ProgressEvent(self.node_id, run.job.index, run.plan.worker.name, device, stage, step, total,
                              finished, self._jobs_total)
        with self._progress_lock:
            try:
                self._on_progress(event)
            except Exception as error:
                LOG.warning("[Wan2.2] progress callback failed: %s", error)
