"""The Wan2.2 generation pipeline: tasks and their defaults, the sampling request, the denoising loop, WanPipeline."""

from __future__ import annotations

from .denoise import CancelCheck, GenerationCancelled, ProgressCallback, StepInfo, sample_latents
from .pipeline import WanPipeline
from .request import SamplingRequest
from .tasks import DEFAULT_NEGATIVE_PROMPT, TASKS, TaskConfig, get_task, parse_size

__all__ = [
    "DEFAULT_NEGATIVE_PROMPT",
    "TASKS",
    "CancelCheck",
    "GenerationCancelled",
    "ProgressCallback",
    "SamplingRequest",
    "StepInfo",
    "TaskConfig",
    "WanPipeline",
    "get_task",
    "parse_size",
    "sample_latents",
]
