"""The Wan2.2 generation pipeline: tasks and their defaults, request validation, the denoising loop, WanPipeline."""

from __future__ import annotations

from .denoise import CancelCheck, GenerationCancelled, ProgressCallback, StepInfo, sample_latents
from .pipeline import WanPipeline
from .tasks import DEFAULT_NEGATIVE_PROMPT, TASKS, TaskConfig, get_task, parse_size
from .validation import SOLVERS, validate_request

__all__ = [
    "DEFAULT_NEGATIVE_PROMPT",
    "SOLVERS",
    "TASKS",
    "CancelCheck",
    "GenerationCancelled",
    "ProgressCallback",
    "StepInfo",
    "TaskConfig",
    "WanPipeline",
    "get_task",
    "parse_size",
    "sample_latents",
    "validate_request",
]
