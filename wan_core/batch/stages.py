"""The real generation of a batch job, split into the scheduler's stages: text encoding on the text encoder's device,
denoising with the DiT experts on theirs (a job's start image, if any, encoded first by the VAE on its own device),
decoding with the VAE, and writing the MP4 on the CPU.

Models are given as loaders and read on first use (once, from the stage's own device thread), so a batch whose jobs
are all done loads nothing, and the text encoder of a split worker loads while the DiT's GPU already works.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

import torch

from wan_core.batch.jobs import BatchJob, output_path
from wan_core.batch.scheduler import CancelCheck, StepProgress
from wan_core.kept_latents import keep_latents_on_failure
from wan_core.pipeline.denoise import ProgressCallback, StepInfo
from wan_core.pipeline.pipeline import ImageCondition, WanPipeline
from wan_core.pipeline.request import SamplingRequest
from wan_core.pipeline.tasks import TaskConfig
from wan_core.runtime import Runtime
from wan_core.video_io import Mp4Stream, save_video

T = TypeVar("T")
PromptBuilder = Callable[[BatchJob], tuple[str, str]]  # job -> (positive, negative) as the text encoder gets them
StepListener = Callable[[BatchJob, str, StepInfo], None]  # (job, device, step) after each denoising step
StartListener = Callable[[BatchJob, str], None]  # (job, device) when a job's first stage begins
# Denoising outside this process (e.g. `SequenceParallelWorkers`, one job on every GPU):
# (request, cond, uncond, progress, cancel, y, first_frame_latent) -> latents
Denoiser = Callable[
    [SamplingRequest, torch.Tensor, torch.Tensor, ProgressCallback, CancelCheck, torch.Tensor | None,
     torch.Tensor | None],
    torch.Tensor,
]
# job -> (its start image, its last image or None), each `[3, H, W]` in [-1, 1]
PictureReader = Callable[[BatchJob], tuple[torch.Tensor, torch.Tensor | None]]


class LazyModel(Generic[T]):
    """A model read by `load` on the first `get()` only; thread-safe."""

    def __init__(self, load: Callable[[], T]):
        self._load = load
        self._model: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        with self._lock:
            if self._model is None:
                self._model = self._load()
            return self._model


@dataclass(frozen=True)
class SamplingSettings:
    """The batch-wide settings of every job (size, frames, steps and seed come from the job)."""

    task: TaskConfig
    solver: str
    shift: float
    guide_scale: tuple[float, float]  # official order: (low_noise, high_noise)
    runtime: Runtime = Runtime()  # its device is replaced by each stage's own

    def request(self, job: BatchJob) -> SamplingRequest:
        """The job's validated sampling request (raises `InputError` for a job that cannot run)."""
        return SamplingRequest.create(
            self.task, width=job.width, height=job.height, frame_num=job.frames, seed=job.seed, solver=self.solver,
            steps=job.steps, shift=self.shift, guide_scale=self.guide_scale, has_image=bool(job.image),
        )  # fmt: skip


class DecodedVideo(NamedTuple):
    """A job's decoded video with the latents it came from, kept should the write fail: the MP4 being encoded while
    the VAE made it (`Mp4Stream`, finished by `write`), or the whole video (`[3, F, H, W]` in [-1, 1], on the CPU)
    where it had to be decoded in tiles."""

    latents: torch.Tensor
    video: Mp4Stream | torch.Tensor


@dataclass
class PipelineStages:
    """`JobStages` of a Wan2.2 job (text- or image-to-video). `experts` gives (high-noise or only model, low-noise or
    None)."""

    settings: SamplingSettings
    text_encoder: LazyModel
    experts: LazyModel
    vae: LazyModel
    encode_device: str
    denoise_device: str
    decode_device: str
    output_dir: Path
    batch: str
    build_prompts: PromptBuilder
    on_start: StartListener | None = None
    on_step: StepListener | None = None
    finish_video: Callable[[Path], None] | None = None  # e.g. embeds metadata, before the file gets its final name
    denoiser: Denoiser | None = None  # set: denoising runs there (`experts` then only prepares it), not in-process
    read_pictures: PictureReader | None = None  # for jobs with an `image`
    # The denoising lane encodes a job's start image with the VAE while the decoding lane may be decoding the previous
    # job with it (and with offload, moving it): one at a time.
    _vae_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def encode(self, job: BatchJob) -> tuple[torch.Tensor, torch.Tensor]:
        if self.on_start is not None:
            self.on_start(job, self.encode_device)
        positive, negative = self.build_prompts(job)
        encoder = self.text_encoder.get()
        return self._pipeline(self.encode_device, text_encoder=encoder).encode_prompts(positive, negative)

    def denoise(
        self, job: BatchJob, cond: tuple[torch.Tensor, torch.Tensor], cancel: CancelCheck, progress: StepProgress
    ) -> torch.Tensor:
        def on_step(info: StepInfo) -> None:
            progress(info.step, info.total)
            if self.on_step is not None:
                self.on_step(job, self.denoise_device, info)

        request = self.settings.request(job)
        condition = self._image_condition(job, request)
        if self.denoiser is not None:
            return self.denoiser(request, *cond, on_step, cancel, *(condition or (None, None)))
        high, low = self.experts.get()
        pipeline = self._pipeline(self.denoise_device, high_noise_model=high, low_noise_model=low)
        positive, negative = (embedding.to(self.denoise_device) for embedding in cond)
        return pipeline.sample(positive, negative, request, progress=on_step, cancel=cancel, image_condition=condition)

    def _image_condition(self, job: BatchJob, request: SamplingRequest) -> ImageCondition | None:
        """The job's start image (and last image) made ready for the DiT by the VAE on its own device; None for
        text-to-video."""
        if not job.image:
            return None
        if self.read_pictures is None:
            raise ValueError(f"job {job.index} has a start image but the stages have no read_pictures")
        image, last_image = self.read_pictures(job)
        with self._vae_lock:
            pipeline = self._pipeline(self.decode_device, vae=self.vae.get())
            return pipeline.image_condition(image, request, last_image)

    def decode(self, job: BatchJob, latents: torch.Tensor) -> DecodedVideo:
        """The job's video, handed to ffmpeg a latent frame at a time as the VAE decodes it, so that only the end of
        the encode is left for `write`. Where the untiled decode runs out of CUDA memory, the video is decoded again
        in tiles onto the CPU and `write` encodes it whole. On a failure the latents are kept in the output folder and
        the job fails; the ledger then runs it again on resume."""

        def decode() -> Mp4Stream | torch.Tensor:
            pipeline = self._pipeline(self.decode_device, vae=self.vae.get())
            final = output_path(self.output_dir, self.batch, job.index)
            with self._vae_lock:
                return pipeline.decode_into_mp4(latents.to(self.decode_device), final, self.settings.task.fps)

        return DecodedVideo(latents, self._keeping_latents(job, latents, decode))

    def write(self, job: BatchJob, decoded: DecodedVideo) -> Path:
        """Finish the video's MP4 (verified, renamed into place only when whole); on a failure the latents are kept,
        as in `decode`."""

        def write() -> Path:
            if isinstance(decoded.video, Mp4Stream):
                return decoded.video.finish(self.finish_video)
            final = output_path(self.output_dir, self.batch, job.index)
            return save_video(final, decoded.video, self.settings.task.fps, finalize=self.finish_video)

        return self._keeping_latents(job, decoded.latents, write)

    def _keeping_latents(self, job: BatchJob, latents: torch.Tensor, step: Callable[[], T]) -> T:
        stem = output_path(self.output_dir, self.batch, job.index).stem
        return keep_latents_on_failure(
            step, latents, folder=self.output_dir, task=self.settings.task.name, stem=stem,
            how_to_decode=lambda kept: f"the job runs again when the batch is queued again (or decode {kept.name} "
            "with the Wan2.2 VAE Decode node's latents_file input).",
        )  # fmt: skip

    def _pipeline(self, device: str, **models: Any) -> WanPipeline:
        models = {"text_encoder": None, "vae": None, "high_noise_model": None, **models}
        runtime = self.settings.runtime.replace(device=device)
        return WanPipeline(self.settings.task, runtime=runtime, **models)
