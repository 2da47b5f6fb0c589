"""One video job of a batch, and the batch id that names the batch's ledger and output files."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from wan_core.styles import NO_STYLE


@dataclass(frozen=True)
class JobDefaults:
    """Settings of the node, used where a prompt line or CSV cell gives none.

    A job without its own seed gets `seed + index - 1`, so the jobs of a batch differ yet re-run identically."""

    negative_prompt: str = ""
    style: str = NO_STYLE
    seed: int = 0
    width: int = 1280
    height: int = 720
    frames: int = 81
    steps: int = 40


# The fields naming an image-to-video job's pictures (CSV columns of the same names).
PICTURE_FIELDS = ("image", "last_image")


@dataclass(frozen=True)
class BatchJob:
    index: int  # 1-based position in the batch; names the output file
    prompt: str
    negative_prompt: str
    style: str
    seed: int
    width: int
    height: int
    frames: int
    steps: int
    image: str = ""  # the start image's file name (image-to-video), relative to the CSV file's folder; "": none
    last_image: str = ""  # i2v-A14B: the last frame's file name, for a video from a first and a last frame


def batch_id(jobs: Sequence[BatchJob], settings: Mapping[str, object] | None = None) -> str:
    """`batch-<12 hex>`: a digest of every job and of the batch-wide `settings` (model, solver, ...).

    The same batch queued again gets the same id, hence finds its ledger and skips the jobs already done; any change
    to a prompt or a setting gives a new batch."""
    # a job without pictures leaves their fields out: batches queued before they existed keep their ids (and ledgers)
    described = [{k: v for k, v in asdict(job).items() if v or k not in PICTURE_FIELDS} for job in jobs]
    content = {"jobs": described, "settings": dict(settings or {})}
    encoded = json.dumps(content, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return "batch-" + hashlib.sha256(encoded).hexdigest()[:12]


def output_filename(batch: str, index: int) -> str:
    """`<batch_id>_<index>.mp4`, the index zero-padded to four digits so the files sort in job order."""
    return f"{batch}_{index:04d}.mp4"


def output_path(output_dir: str | Path, batch: str, index: int) -> Path:
    return Path(output_dir) / output_filename(batch, index)
