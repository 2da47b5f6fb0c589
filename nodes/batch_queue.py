"""Wan22BatchQueueManager: many prompts in one queue entry, every GPU busy, a ledger so nothing is lost.

A thin node over `wan_core.batch`: it validates the whole batch (CSV or prompt lines, each job through
its `SamplingRequest` and the styles) before any model loads, picks the workers from where the handles live, and reports
the scheduler's events to ComfyUI (progress bar with the node id passed explicitly, `wan22.queue` and
`wan22.progress` for the canvas)."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wan_core.batch.csv_input import load_batch_jobs, resolve_input_file
from wan_core.batch.jobs import BatchJob, JobDefaults, batch_id
from wan_core.batch.ledger import JobLedger, JobState
from wan_core.batch.scheduler import BatchScheduler, BatchSummary, ProgressEvent, Worker
from wan_core.batch.stages import LazyModel, PipelineStages, SamplingSettings
from wan_core.batch.start_images import PictureCheck, job_pictures
from wan_core.errors import InputError
from wan_core.finite import check_finite_number
from wan_core.io.atomic import probe_writable
from wan_core.io.ffmpeg_binary import FfmpegMissingError, ffmpeg_executable
from wan_core.pipeline.denoise import StepInfo
from wan_core.pipeline.tasks import get_task
from wan_core.pipeline.validation import check_last_frame_use
from wan_core.styles import NO_STYLE, STYLES_DIR, load_styles, style_prompt

from . import all_gpus, host
from .devices import ALL_GPUS, CPU, device_label, gpu_count
from .handles import MODEL_CACHE, DiTHandle, ModelCache, ModelHandle, T5Handle, VAEHandle, require_handle
from .sampler import Wan22DiTSampler, send_progress
from .save_video import embed_metadata, workflow_metadata

CATEGORY = "Wan2.2"
QUEUE_EVENT = "wan22.queue"  # {"node", "queued", "running", "done", "failed"} (docs/canvas.md)
BATCH_FOLDER = "wan22_batches"  # inside the output folder: the videos and the ledgers
NO_CSV = "none"
# The pack's example CSVs, offered in the csv_file list under this label so that a fresh install runs them as is.
EXAMPLE_LABEL = "[example] "
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "batch_examples"
AS_WIRED, REPLICA_PER_GPU, ALL_GPUS_PER_JOB = "as wired", "replica per GPU", "all GPUs per job"
SAMPLER_WIDGETS = ("width", "height", "frames", "steps", "solver", "shift", "cfg_high_noise", "cfg_low_noise", "seed")
FAILED_STATES = {JobState.FAILED.value, JobState.TIMED_OUT.value, JobState.CANCELLED.value}
# Copies of the models on the other GPUs of a replica-per-GPU batch, kept between runs like MODEL_CACHE.
_REPLICA_CACHES: dict[str, ModelCache] = {}


def list_csv_files() -> list[str]:
    """`none`, the CSV files of ComfyUI's input folder (subfolders too, relative to it), then the pack's examples."""
    root = Path(host.input_directory())
    names = sorted(path.relative_to(root).as_posix() for path in root.rglob("*.csv")) if root.is_dir() else []
    examples = sorted(EXAMPLE_LABEL + path.name for path in EXAMPLES_DIR.glob("*.csv"))
    return [NO_CSV, *names, *examples]


def csv_location(csv_file: str) -> tuple[str, str]:
    """(file name, folder it is read from) of a csv_file choice: the pack's examples folder or the input folder."""
    if csv_file.startswith(EXAMPLE_LABEL):
        return csv_file.removeprefix(EXAMPLE_LABEL), str(EXAMPLES_DIR)
    return csv_file, host.input_directory()


def _replica_cache(device: str) -> ModelCache:
    return _REPLICA_CACHES.setdefault(device, ModelCache({"dit": 2, "t5": 1, "vae": 1}))


class _BatchProgress:
    """Turns the scheduler's events into ComfyUI's progress bar (steps of all jobs) and the canvas events."""

    def __init__(self, node_id: str | None, jobs: list[BatchJob], done_before: set[int]):
        self.node_id = None if node_id is None else str(node_id)
        self._lock = threading.Lock()
        self._steps = {job.index: job.steps for job in jobs}
        self._completed = {index: self._steps[index] for index in done_before}
        self._started: set[int] = set()
        self.counts = {"queued": len(jobs) - len(done_before), "running": 0, "done": len(done_before), "failed": 0}
        self.last_done: int | None = None
        self._bar = host.Progress(sum(self._steps.values()), node_id)
        self._publish()

    def job_started(self, job: BatchJob, device: str) -> None:
        with self._lock:
            self._started.add(job.index)
            self.counts["queued"] -= 1
            self.counts["running"] += 1
            self._publish()

    def denoise_step(self, job: BatchJob, device: str, info: StepInfo) -> None:
        send_progress(self.node_id, device_label_of(device), info)

    def scheduler_event(self, event: ProgressEvent) -> None:
        with self._lock:
            if event.step == event.total == 0:  # the job ended; `stage` is its final state
                self.counts["running" if event.job_index in self._started else "queued"] -= 1
                if event.stage == JobState.DONE.value:
                    self.counts["done"] += 1
                    self.last_done = event.job_index
                    self._completed[event.job_index] = self._steps[event.job_index]
                else:
                    self.counts["failed"] += 1
            else:
                self._completed[event.job_index] = event.step
            self._publish()

    def _publish(self) -> None:
        """Under the lock (or before any thread runs)."""
        self._bar.update(sum(self._completed.values()))
        host.send_event(QUEUE_EVENT, {"node": self.node_id, **self.counts})


def device_label_of(device: str) -> str:
    import torch

    if device == ALL_GPUS:
        return "all GPUs"
    return device_label(torch.device(device))


class Wan22BatchQueueManager:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        sampler = Wan22DiTSampler.INPUT_TYPES()["required"]
        return {
            "required": {
                "model": ("WAN22_MODEL",),
                "t5": ("WAN22_T5",),
                "vae": ("WAN22_VAE",),
                "prompts": ("STRING", {"multiline": True, "default": "",
                                       "tooltip": "One prompt per line (blank lines skipped); empty with a CSV."}),
                "csv_file": (list_csv_files(), {
                    "default": NO_CSV,
                    "tooltip": "A CSV in ComfyUI's input folder ([example]: one shipped with this pack): a header row, "
                    "then one video per row. Columns: "
                    "prompt, and optional negative_prompt, style, seed, width, height, frames, steps (they "
                    "override the node's settings for that row), and image: the start picture of an image-to-video "
                    "row (i2v-A14B: every row; ti2v-5B: optional), a file in the CSV's folder; last_image: i2v-A14B's "
                    "last frame, for a video from a first and a last frame.",
                }),
                "style": ([NO_STYLE, *load_styles(STYLES_DIR)], {"default": NO_STYLE,
                                                                  "tooltip": "A CSV 'style' cell overrides it."}),
                "negative_prompt": ("STRING", {"multiline": True, "default": "",
                                               "tooltip": "Empty: Wan2.2's official negative prompt."}),
                **{name: sampler[name] for name in SAMPLER_WIDGETS},
                "gpu_mode": ([AS_WIRED, REPLICA_PER_GPU, ALL_GPUS_PER_JOB], {
                    "default": AS_WIRED,
                    "tooltip": "as wired: the devices of the handles (T5 on another GPU than the DiT: the next job "
                    "is encoded and the last one decoded while one denoises). replica per GPU: every GPU holds all "
                    "models and runs whole jobs side by side. all GPUs per job: each job's denoising is split over "
                    "every GPU (as Set Device 'all GPUs (one video)' on the DiT); T5 and VAE stay as wired.",
                }),
                "max_concurrent_jobs": ("INT", {
                    "default": 0, "min": 0, "max": 64,
                    "tooltip": "0: every job slot (the most allowed): 3 with T5 on one GPU and DiT + VAE on another "
                    "(encoding, denoising and decoding of three jobs overlap), 2 per GPU with all models on it "
                    "(one job's video is written while the next denoises).",
                }),
                "queue_timeout": ("FLOAT", {"default": 300.0, "min": 1.0, "max": 86400.0, "step": 10.0,
                                            "tooltip": "Seconds per job (its wait behind other jobs not counted); a "
                                            "job past it is cancelled between steps and recorded as timed out."}),
                "auto_clear_cache": ("BOOLEAN", {"default": True,
                                                 "tooltip": "Free cached GPU memory after each job."}),
                "defrag_every": ("INT", {"default": 0, "min": 0, "max": 1000,
                                         "tooltip": "Every N jobs: garbage collection and a full cache release. "
                                         "0: never."}),
                "wait_for_vae_load": ("BOOLEAN", {"default": True,
                                                  "tooltip": "Load the VAE onto its device before the first job, so "
                                                  "no decode waits for it. Off: it loads at the first decode."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("video_paths", "summary")
    OUTPUT_NODE = True
    FUNCTION = "run_batch"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Runs a batch of text-to-video jobs (prompt lines or a CSV; image-to-video: a CSV with an image column) on "
        "all the devices of the model handles at once. "
        f"Videos and a JSONL job ledger go to output/{BATCH_FOLDER}/; queueing the same batch again skips the jobs "
        "already done."
    )

    @classmethod
    def VALIDATE_INPUTS(cls, csv_file: str) -> bool | str:
        """Run by ComfyUI before the graph executes: a missing CSV or a missing ffmpeg (every job writes an MP4) is
        reported before the first job, not after it."""
        try:
            ffmpeg_executable()
            if csv_file != NO_CSV:
                resolve_input_file(*csv_location(csv_file))
        except (InputError, FfmpegMissingError) as error:
            return str(error)
        return True

    def run_batch(
        self,
        model: DiTHandle,
        t5: T5Handle,
        vae: VAEHandle,
        prompts: str,
        csv_file: str,
        style: str,
        negative_prompt: str,
        width: int,
        height: int,
        frames: int,
        steps: int,
        solver: str,
        shift: float,
        cfg_high_noise: float,
        cfg_low_noise: float,
        seed: int,
        gpu_mode: str,
        max_concurrent_jobs: int,
        queue_timeout: float,
        auto_clear_cache: bool,
        defrag_every: int,
        wait_for_vae_load: bool,
        unique_id: str | None = None,
        prompt: Any = None,
        extra_pnginfo: Any = None,
    ) -> dict:
        dit = require_handle(model, DiTHandle, "model")
        t5 = require_handle(t5, T5Handle, "t5")
        vae = require_handle(vae, VAEHandle, "vae")
        task = get_task(dit.task)
        if task.needs_image and csv_file == NO_CSV:
            raise InputError(f"{task.name} makes each video from a start image: give the jobs as a CSV file with an "
                             "'image' column naming a picture in the CSV's folder (ComfyUI's input folder, where Load "
                             "Image uploads go), not as prompt lines.")
        check_finite_number("queue_timeout", queue_timeout)
        styles = load_styles(STYLES_DIR)

        # Batch jobs repeat their shapes: each DiT forward replays a CUDA graph, so that the replicas of an all-GPU
        # batch do not wait on one another for the interpreter to issue their kernels (docs/batch.md). Not with
        # offload: the experts leave the GPU after each job (taking their graphs along), and a capture needs a
        # forward's activations twice over once, which a card that needs offload may not have.
        runtime = dit.runtime().replace(cuda_graphs=not dit.offload)
        settings = SamplingSettings(task, solver, shift, (cfg_low_noise, cfg_high_noise), runtime)

        csv_name, csv_folder = ("", host.input_directory()) if csv_file == NO_CSV else csv_location(csv_file)
        check_pictures = PictureCheck(csv_folder)

        def validate_job(job: BatchJob) -> None:
            if task.needs_image and not job.image:
                raise InputError(f"{task.name} makes each video from a start image: fill in the row's 'image' cell")
            settings.request(job)  # refuses an image for text-to-video
            style_prompt(styles, job.prompt, job.negative_prompt, job.style)
            if job.last_image:
                if not job.image:
                    raise InputError("a last_image needs a start image too: fill in the row's 'image' cell")
                check_last_frame_use(task, job.frames)
            check_pictures(job)

        defaults = JobDefaults(negative_prompt, style, seed, width, height, frames, steps)
        jobs = load_batch_jobs(prompts, csv_name, csv_folder, defaults, validate_job)
        batch = batch_id(jobs, {**_batch_settings(dit, t5, vae, settings), **_image_settings(check_pictures.digests)})
        output_dir = Path(host.output_directory()) / BATCH_FOLDER
        ledger = JobLedger.for_batch(output_dir, batch)
        done_before, pending = ledger.split_done(jobs)
        progress = _BatchProgress(unique_id, jobs, set(done_before))

        def make_stages(dit: DiTHandle, t5: T5Handle, vae: VAEHandle, caches: dict[str, ModelCache]) -> PipelineStages:
            on_all_gpus = dit.device == ALL_GPUS  # the workers load the experts; the pool starts with the models
            return PipelineStages(
                settings=settings,
                text_encoder=LazyModel(lambda: t5.load(caches["t5"])),
                experts=LazyModel(all_gpus.start_workers if on_all_gpus else lambda: dit.load(caches["dit"])),
                vae=LazyModel(lambda: vae.load(caches["vae"])),
                encode_device=str(t5.target_device()),
                denoise_device=ALL_GPUS if on_all_gpus else str(dit.target_device()),
                decode_device=str(vae.target_device()),
                output_dir=output_dir,
                batch=batch,
                build_prompts=lambda job: style_prompt(styles, job.prompt, job.negative_prompt, job.style),
                on_start=progress.job_started,
                on_step=progress.denoise_step,
                finish_video=(lambda path: embed_metadata(path, tags)) if tags else None,
                denoiser=functools.partial(all_gpus.denoise_on_all_gpus, dit) if on_all_gpus else None,
                read_pictures=lambda job: job_pictures(job, csv_folder),
            )

        tags = workflow_metadata(prompt, extra_pnginfo)  # as Save Video: the workflow in every MP4
        workers = plan_workers(dit, t5, vae, gpu_mode, make_stages)
        with ledger:
            scheduler = BatchScheduler(
                workers, max_concurrent_jobs, queue_timeout, ledger, progress.scheduler_event, host.interrupted,
                node_id=unique_id, auto_clear_cache=auto_clear_cache, defrag_every=defrag_every,
            )
            if pending:
                probe_writable(output_dir, "Batch Queue Manager")  # before any model loads
                _load_models(workers, with_vae=wait_for_vae_load)
            summary = scheduler.run(jobs)
        host.raise_if_interrupted()  # ComfyUI shows "interrupted"; the ledger keeps what finished
        return {"ui": _preview(summary, progress.last_done), "result": (
            "\n".join(summary.output_paths), summary.table())}


StagesFactory = Callable[[DiTHandle, T5Handle, VAEHandle, dict[str, ModelCache]], PipelineStages]


def plan_workers(
    dit: DiTHandle, t5: T5Handle, vae: VAEHandle, gpu_mode: str, make_stages: StagesFactory
) -> list[Worker]:
    """The workers for the handles: one per GPU in `replica per GPU` mode; else one from the handles' devices, split
    when they differ (stages of different jobs overlap across the devices), on one device when they agree (one job's
    video is written while the next one denoises). `all GPUs per job` (or the DiT on Set Device 'all GPUs (one
    video)'): one worker whose denoising lane feeds the kept worker processes on every GPU, text encoding and
    decoding in this process."""
    if gpu_mode == ALL_GPUS_PER_JOB:
        gpu_mode, dit = AS_WIRED, dit.bind(ALL_GPUS)
    if dit.device == ALL_GPUS:
        all_gpus.worker_devices()  # two or more GPUs, else a clear error before any model loads
    if gpu_mode == REPLICA_PER_GPU:
        workers = []
        for name in [f"gpu:{index}" for index in range(gpu_count())] or [CPU]:
            bound = [handle.bind(name) for handle in (dit, t5, vae)]
            caches = {h.kind: _cache_for(original, h) for original, h in zip((dit, t5, vae), bound, strict=True)}
            stages = make_stages(*bound, caches)
            workers.append(Worker.pipelined(stages))
        return workers
    if gpu_mode != AS_WIRED:
        raise InputError(f"Unknown gpu_mode {gpu_mode!r}; use {AS_WIRED!r}, {REPLICA_PER_GPU!r} or "
                         f"{ALL_GPUS_PER_JOB!r}.")
    return [Worker.pipelined(make_stages(dit, t5, vae, {"dit": MODEL_CACHE, "t5": MODEL_CACHE, "vae": MODEL_CACHE}))]


def _cache_for(original: ModelHandle, bound: ModelHandle) -> ModelCache:
    """The shared cache where the handle already lives, a per-device one for the copies on other GPUs."""
    device = bound.target_device()
    return MODEL_CACHE if device == original.target_device() else _replica_cache(str(device))


def _load_models(workers: list[Worker], *, with_vae: bool) -> None:
    """Load every worker's models onto their devices before the first job, so loading time does not count against a
    job's queue_timeout. Each is checked against the interrupt first."""
    for worker in workers:
        stages = worker.stages
        for lazy in (stages.text_encoder, stages.experts, *([stages.vae] if with_vae else [])):
            host.raise_if_interrupted()
            lazy.get()


def _batch_settings(dit: DiTHandle, t5: T5Handle, vae: VAEHandle, settings: SamplingSettings) -> dict:
    """What, besides the jobs, makes two batches different (file names, not folders: a moved model folder resumes)."""
    return {
        "task": settings.task.name,
        "models": [os.path.basename(p) for p in (dit.high_noise_path, dit.low_noise_path or "", t5.path, vae.path)],
        "weight_dtype": [dit.weight_dtype, t5.weight_dtype, vae.weight_dtype],
        "solver": settings.solver,
        "shift": settings.shift,
        "guide_scale": list(settings.guide_scale),
    }


def _image_settings(digests: dict[str, str]) -> dict:
    """The pictures' contents (none: nothing, so text-to-video batches keep their ids)."""
    return {"pictures": digests} if digests else {}


def _preview(summary: BatchSummary, last_done: int | None) -> dict:
    """The node's preview: the video finished last in this run, else the last one of the batch (Wan22SaveVideo's
    ui format)."""
    outputs = {result.index: result.output for result in summary.results if result.output}
    path = outputs.get(last_done) if last_done is not None else None
    path = path or (summary.output_paths[-1] if summary.output_paths else None)
    if path is None:
        return {"images": [], "animated": (True,)}
    subfolder = os.path.relpath(Path(path).parent, Path(host.output_directory())).replace(os.sep, "/")
    return {"images": [{"filename": Path(path).name, "subfolder": subfolder, "type": "output"}], "animated": (True,)}

