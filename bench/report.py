"""The benchmarks' output (one JSON object on stdout, and the same in a file when one is named) and their CUDA timer."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch


def emit(report: dict, json_path: str | None = None) -> None:
    text = json.dumps(report, indent=2)
    print(text)
    if json_path:
        Path(json_path).write_text(text + "\n")


def cuda_seconds(fn: Callable[[], object], repeats: int = 3) -> float:
    """Mean seconds of `repeats` calls of `fn`, the GPU synchronized before and after."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats
