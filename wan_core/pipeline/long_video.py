"""Long videos in chunks: each chunk is an image-to-video run started from the previous chunk's last frame.

- Prompts: one for every chunk, or one per chunk (a list, or one string with `|` between the prompts).
- Joins: a chunk's first frame re-renders its start image (the previous chunk's last frame), so it is dropped; the
  joined video has ``F + (N - 1) * (F - 1)`` frames and no frame twice.
- Colour drift: at each join the per-channel mean and std of the previous chunk's last frame and the new chunk's
  first frame are compared; with matching on, the new chunk is mapped channel-wise (x - m1) / s1 * s0 + m0 so its
  first frame has the statistics of the previous last frame (a flat channel only gets its mean moved; the gain stays
  within 0.5..2), and the correction carries on to the chunks after it.
- Resume: every finished chunk is written to the work folder (safetensors) and recorded in a job ledger (the batch
  queue's :class:`~wan_core.batch.ledger.JobLedger`, job = chunk number). Running the same request again skips the
  chunks whose last state is `done` and whose file is still there, so a killed run goes on at the next chunk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..batch.ledger import JobLedger, JobState
from ..errors import InputError
from ..video_io import load_tensor, save_tensor

LOG = logging.getLogger(__name__)
PROMPT_SEPARATOR = "|"
CHUNK_TASKS = ("i2v-A14B", "ti2v-5B")  # the tasks that start from an image
REQUEST_FILE = "request.json"
FLAT_STD = 1e-3
GAIN_RANGE = (0.5, 2.0)

# (prompt, start frame [3, H, W] in [-1, 1] or None, seed) -> the chunk's video [3, F, H, W] in [-1, 1]
ChunkGenerator = Callable[[str, "torch.Tensor | None", int], torch.Tensor]


def split_prompts(prompts: str | Sequence[str], chunks: int) -> list[str]:
    """One prompt per chunk from one prompt (repeated), a `|`-separated string, or a list of 1 or `chunks` prompts."""
    if chunks < 1:
        raise InputError(f"chunks must be 1 or more; got {chunks}.")
    items = prompts.split(PROMPT_SEPARATOR) if isinstance(prompts, str) else list(prompts)
    items = [item.strip() for item in items]
    if not items or any(not item for item in items):
        raise InputError(f"Every prompt must have text; got {items!r}. Separate per-chunk prompts with '|'.")
    if len(items) == 1:
        return items * chunks
    if len(items) != chunks:
        raise InputError(
            f"{len(items)} prompts for {chunks} chunks: give one prompt, or exactly one per chunk separated by '|'."
        )
    return items


@dataclass(frozen=True)
class FrameStats:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class JoinDrift:
    """Colour statistics at the join before chunk ``chunk``: the previous last frame and this chunk's first frame."""

    chunk: int
    previous_last: FrameStats
    first: FrameStats

    @property
    def max_mean_shift(self) -> float:
        return max(abs(a - b) for a, b in zip(self.previous_last.mean, self.first.mean, strict=True))


def frame_stats(frame: torch.Tensor) -> FrameStats:
    """Per-channel mean and std of a ``[3, H, W]`` frame."""
    flat = frame.reshape(frame.shape[0], -1).double()
    return FrameStats(tuple(flat.mean(1).tolist()), tuple(flat.std(1, unbiased=False).tolist()))


def match_colour(chunk: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``chunk`` ``[3, F, H, W]`` mapped per channel so its first frame's mean/std equal those of ``reference``
    ``[3, H, W]``; values stay in [-1, 1]."""
    target, source = frame_stats(reference), frame_stats(chunk[:, 0])
    mean_t, std_t = (torch.tensor(v, dtype=torch.float64).view(3, 1, 1, 1) for v in (target.mean, target.std))
    mean_s, std_s = (torch.tensor(v, dtype=torch.float64).view(3, 1, 1, 1) for v in (source.mean, source.std))
    # A flat channel (std ~0) only gets its mean moved; the gain is bounded so one odd frame cannot wreck a chunk.
    flat = (std_s < FLAT_STD) | (std_t < FLAT_STD)
    gain = torch.where(flat, torch.ones_like(std_s), (std_t / std_s.clamp_min(FLAT_STD)).clamp(*GAIN_RANGE))
    return ((chunk.double() - mean_s) * gain + mean_t).clamp(-1.0, 1.0).to(chunk.dtype)


def join_chunks(chunks: Sequence[torch.Tensor]) -> torch.Tensor:
    """The chunks ``[3, F, H, W]`` end to end, each after the first without its first frame (its start image)."""
    return torch.cat([chunks[0], *(chunk[:, 1:] for chunk in chunks[1:])], dim=1)


@dataclass
class LongVideo:
    video: torch.Tensor  # [3, F_total, H, W] in [-1, 1]
    chunk_files: list[Path]
    drift: list[JoinDrift] = field(default_factory=list)  # joins made in this run (resumed chunks were measured then)
    resumed: list[int] = field(default_factory=list)  # chunks taken from an earlier run


def request_fingerprint(request: dict) -> str:
    """A short stable id of a long-video request (its prompts, seed, size, sampler settings ...)."""
    return hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()[:16]


def chunk_path(work_dir: Path, index: int) -> Path:
    return work_dir / f"chunk_{index:03d}.safetensors"


def _claim_work_dir(work_dir: Path, request: dict) -> str:
    """Record ``request`` in ``work_dir`` (or check it is the one recorded there); returns the run id."""
    fingerprint = request_fingerprint(request)
    record = work_dir / REQUEST_FILE
    if record.is_file():
        recorded = json.loads(record.read_text(encoding="utf-8"))
        if recorded.get("fingerprint") != fingerprint:
            raise InputError(
                f"{work_dir} holds the chunks of a different long-video request (another prompt, seed, size or "
                "setting). Use another output name, or delete that folder to start over."
            )
    else:
        work_dir.mkdir(parents=True, exist_ok=True)
        temporary = record.with_suffix(".tmp")
        temporary.write_text(json.dumps({"fingerprint": fingerprint, "request": request}, indent=2, default=str))
        os.replace(temporary, record)
    return fingerprint


def _save_chunk(path: Path, video: torch.Tensor) -> None:
    """Write atomically, so a kill never leaves a half chunk under the final name."""
    temporary = path.with_name(path.stem + ".partial.safetensors")
    save_tensor(temporary, video)
    os.replace(temporary, path)


def generate_long_video(
    make_chunk: ChunkGenerator,
    prompts: str | Sequence[str],
    *,
    chunks: int,
    seed: int,
    work_dir: str | Path,
    request: dict,
    start_image: torch.Tensor | None = None,
    colour_match: bool = True,
    say: Callable[[str], None] = LOG.info,
) -> LongVideo:
    """Generate ``chunks`` chunks with ``make_chunk`` (chunk ``i`` with seed ``seed + i``), resuming from
    ``work_dir``, and join them. ``request``: the settings that define the video (everything but the prompts and
    seed, which are added here); a work folder made for another request is refused."""
    per_chunk = split_prompts(prompts, chunks)
    work_dir = Path(work_dir)
    _claim_work_dir(work_dir, {**request, "prompts": per_chunk, "seed": seed, "chunks": chunks,
                               "colour_match": colour_match, "has_start_image": start_image is not None})
    videos: list[torch.Tensor] = []
    result = LongVideo(video=torch.empty(0), chunk_files=[])
    with JobLedger(work_dir / "chunks.ledger.jsonl") as ledger:
        latest = ledger.last_states()
        for index, prompt in enumerate(per_chunk):
            path = chunk_path(work_dir, index)
            entry = latest.get(index)
            if entry is not None and entry.state is JobState.DONE and path.is_file():
                videos.append(load_tensor(path))
                result.resumed.append(index)
                result.chunk_files.append(path)
                say(f"chunk {index + 1}/{chunks}: done in an earlier run, taken from {path}")
                continue
            start = videos[-1][:, -1] if videos else start_image
            ledger.record(index, JobState.STARTED, prompt=prompt, seed=seed + index)
            started = time.perf_counter()
            video = make_chunk(prompt, start, seed + index).detach().to("cpu", torch.float32)
            details: dict[str, object] = {}
            if videos:
                drift = JoinDrift(index, frame_stats(videos[-1][:, -1]), frame_stats(video[:, 0]))
                result.drift.append(drift)
                details["drift"] = asdict(drift)
                if colour_match:
                    video = match_colour(video, videos[-1][:, -1])
                say(f"chunk {index + 1}/{chunks}: colour drift at the join {drift.max_mean_shift:.4f} (largest "
                    f"channel mean shift){', matched' if colour_match else ''}")
            _save_chunk(path, video)
            ledger.record(index, JobState.DONE, output=str(path), seconds=round(time.perf_counter() - started, 3),
                          **details)
            videos.append(video)
            result.chunk_files.append(path)
            say(f"chunk {index + 1}/{chunks}: {video.shape[1]} frames -> {path}")
    result.video = join_chunks(videos)
    return result
