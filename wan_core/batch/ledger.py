"""The job ledger: a JSONL file in the output folder, one line per state change of a job.

Each line is flushed and fsynced before the work it announces starts, so after a crash, a kill or a power cut the
ledger tells which jobs finished. Queueing the same batch again (same batch id) skips the jobs whose last state is
`done` and whose video is still on disk, and runs the rest. A line torn by a crash is ignored on reading and cut
off before the next write."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path

from wan_core.batch.jobs import BatchJob

LOG = logging.getLogger("comfyui-wan22")


class JobState(str, Enum):
    QUEUED = "queued"
    STARTED = "started"
    DONE = "done"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"  # stopped by ComfyUI's interrupt; runs again on the next queue


@dataclass(frozen=True)
class LedgerEntry:
    job: int
    state: JobState
    time: str
    output: str | None = None
    error: str | None = None
    worker: str | None = None
    seconds: float | None = None


def ledger_path(output_dir: str | Path, batch: str) -> Path:
    return Path(output_dir) / f"{batch}.ledger.jsonl"


class JobLedger:
    """Appends state changes of one batch's jobs (thread-safe) and reads back each job's last state."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._file = None

    @classmethod
    def for_batch(cls, output_dir: str | Path, batch: str) -> JobLedger:
        return cls(ledger_path(output_dir, batch))

    def record(self, job: int, state: JobState, **details: object) -> None:
        """Append one line and make it durable before returning."""
        self.record_many([(job, state, details)])

    def record_many(self, changes: Iterable[tuple[int, JobState, dict[str, object]]]) -> None:
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        lines = []
        for job, state, details in changes:
            fields = {key: value for key, value in details.items() if value is not None}
            lines.append(json.dumps({"job": job, "state": JobState(state).value, "time": now, **fields},
                                    ensure_ascii=False, default=str))
        if not lines:
            return
        with self._lock:
            handle = self._open()
            handle.write("".join(line + "\n" for line in lines))
            handle.flush()
            os.fsync(handle.fileno())

    def last_states(self) -> dict[int, LedgerEntry]:
        """Each job's latest entry. Lines that are not complete JSON records (a write torn by a crash) are skipped."""
        if not self.path.is_file():
            return {}
        latest: dict[int, LedgerEntry] = {}
        with open(self.path, encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                entry = _parse_line(line)
                if entry is None:
                    if line.strip():
                        LOG.warning("[Wan2.2] %s line %d is not a complete record (torn write?); ignored.",
                                    self.path, number)
                    continue
                latest[entry.job] = entry
        return latest

    def split_done(self, jobs: Sequence[BatchJob]) -> tuple[dict[int, LedgerEntry], list[BatchJob]]:
        """(entries of jobs already done with their video on disk, by index; the jobs still to run, in order)."""
        latest = self.last_states()
        done: dict[int, LedgerEntry] = {}
        pending: list[BatchJob] = []
        for job in jobs:
            entry = latest.get(job.index)
            if entry is not None and entry.state is JobState.DONE and entry.output and Path(entry.output).is_file():
                done[job.index] = entry
            else:
                pending.append(job)
        return done, pending

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> JobLedger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _open(self):
        if self._file is None:
            created = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not created:
                _cut_torn_tail(self.path)
            self._file = open(self.path, "a", encoding="utf-8", newline="\n")
            if created:
                _fsync_directory(self.path.parent)
        return self._file


def _parse_line(line: str) -> LedgerEntry | None:
    try:
        record = json.loads(line)
        return LedgerEntry(
            job=int(record["job"]),
            state=JobState(record["state"]),
            time=str(record.get("time", "")),
            output=record.get("output"),
            error=record.get("error"),
            worker=record.get("worker"),
            seconds=record.get("seconds"),
        )
    except (ValueError, KeyError, TypeError):
        return None


def _cut_torn_tail(path: Path) -> None:
    """Drop a last line that has no newline (its write was cut short), so new lines start on a line of their own."""
    with open(path, "rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)


def _fsync_directory(folder: Path) -> None:
    """Make a new file's name durable too (POSIX); Windows cannot open folders, and NTFS journals names anyway."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
