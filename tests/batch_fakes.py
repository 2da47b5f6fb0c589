"""Fake devices, runners and stages for the batch scheduler tests: CPU threads standing in for GPUs, sleeping a
little and recording when each job and stage ran."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from wan_core.batch import BatchJob, JobCancelled, output_path


@dataclass(frozen=True)
class Interval:
    job: int
    stage: str
    device: str
    start: float
    end: float
    thread: int

    def overlaps(self, other: Interval) -> bool:
        return self.start < other.end and other.start < self.end


class Recorder:
    """Intervals of stages, and the most jobs that were running at one moment."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.intervals: list[Interval] = []
        self.active_jobs: set[int] = set()
        self.max_active = 0
        self.started: dict[tuple[int, str], threading.Event] = {}
        self.inference_modes: list[bool] = []  # torch.is_inference_mode_enabled() of each stage

    def event(self, job: int, stage: str) -> threading.Event:
        with self.lock:
            return self.started.setdefault((job, stage), threading.Event())

    def job_started(self, job: int) -> None:
        with self.lock:
            self.active_jobs.add(job)
            self.max_active = max(self.max_active, len(self.active_jobs))

    def job_ended(self, job: int) -> None:
        with self.lock:
            self.active_jobs.discard(job)

    def record(self, job: int, stage: str, device: str, start: float) -> None:
        with self.lock:
            self.inference_modes.append(torch.is_inference_mode_enabled())
            self.intervals.append(Interval(job, stage, device, start, time.monotonic(), threading.get_ident()))

    def of(self, stage: str) -> dict[int, Interval]:
        return {i.job: i for i in self.intervals if i.stage == stage}


def write_video(path: Path, job: BatchJob) -> Path:
    """A small stand-in for the MP4, written under a temporary name and renamed, as a real saver must."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(f"{job.index}:{job.prompt}:{job.seed}", encoding="utf-8")
    os.replace(partial, path)
    return path


class FakeRunner:
    """A JobRunner that takes `steps` sleeps of `step_seconds`, checking cancel before each."""

    def __init__(self, output_dir: Path, batch: str, *, steps: int = 3, step_seconds: float = 0.02,
                 slow_jobs: tuple[int, ...] = (), fail_jobs: tuple[int, ...] = (), recorder: Recorder | None = None,
                 on_step=None):
        self.output_dir, self.batch = Path(output_dir), batch
        self.steps, self.step_seconds = steps, step_seconds
        self.slow_jobs, self.fail_jobs = slow_jobs, fail_jobs
        self.recorder = recorder or Recorder()
        self.on_step = on_step
        self.cancel_seen: list[int] = []
        self.contexts: dict[int, object] = {}

    def run(self, job, context, cancel, progress):
        self.contexts[job.index] = context
        start = time.monotonic()
        self.recorder.job_started(job.index)
        try:
            steps = self.steps * (100 if job.index in self.slow_jobs else 1)
            for step in range(1, steps + 1):
                if cancel():
                    self.cancel_seen.append(job.index)
                    raise JobCancelled(f"job {job.index} cancelled at step {step}")
                time.sleep(self.step_seconds)
                progress(step, steps)
                if self.on_step is not None:
                    self.on_step(job, step)
            if job.index in self.fail_jobs:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return write_video(output_path(self.output_dir, self.batch, job.index), job)
        finally:
            self.recorder.job_ended(job.index)
            self.recorder.record(job.index, "run", context.device, start)


class FakeStages:
    """JobStages on named fake devices. `meet` pairs stages that must run at the same moment: each waits (5 s at
    most, then fails its job) until its partner has started, so a schedule that cannot overlap them fails the test."""

    def __init__(self, output_dir: Path, batch: str, *, encode_device: str, denoise_device: str, decode_device: str,
                 recorder: Recorder, seconds: tuple[float, float, float, float] = (0.03, 0.06, 0.03, 0.01),
                 meet: list[tuple[tuple[int, str], tuple[int, str]]] = ()):
        self.encode_device, self.denoise_device, self.decode_device = encode_device, denoise_device, decode_device
        self.output_dir, self.batch, self.recorder = Path(output_dir), batch, recorder
        self.seconds = seconds
        self.partners: dict[tuple[int, str], list[tuple[int, str]]] = {}
        for first, second in meet:
            self.partners.setdefault(first, []).append(second)
            self.partners.setdefault(second, []).append(first)

    def _begin(self, job: BatchJob, stage: str) -> float:
        start = time.monotonic()
        self.recorder.event(job.index, stage).set()
        for partner in self.partners.get((job.index, stage), []):
            if not self.recorder.event(*partner).wait(5):
                raise AssertionError(f"{stage} of job {job.index} ran without {partner[1]} of job {partner[0]}")
        return start

    def encode(self, job):
        start = self._begin(job, "encode")
        self.recorder.job_started(job.index)
        time.sleep(self.seconds[0])
        self.recorder.record(job.index, "encode", self.encode_device, start)
        return f"cond-{job.index}"

    def denoise(self, job, cond, cancel, progress):
        assert cond == f"cond-{job.index}"
        start = self._begin(job, "denoise")
        time.sleep(self.seconds[1])
        progress(1, 1)
        self.recorder.record(job.index, "denoise", self.denoise_device, start)
        return f"latents-{job.index}"

    def decode(self, job, latents):
        assert latents == f"latents-{job.index}"
        start = self._begin(job, "decode")
        time.sleep(self.seconds[2])
        self.recorder.record(job.index, "decode", self.decode_device, start)
        return f"video-{job.index}"

    def write(self, job, video):
        assert video == f"video-{job.index}"
        start = self._begin(job, "write")
        time.sleep(self.seconds[3])
        path = write_video(output_path(self.output_dir, self.batch, job.index), job)
        self.recorder.record(job.index, "write", self.decode_device, start)
        self.recorder.job_ended(job.index)
        return path
