"""The batch engine behind Wan22BatchQueueManager: jobs from text or CSV, a crash-safe ledger, a multi-device
scheduler. Pure Python plus optional torch calls, so it is tested on CPU with fake devices."""

from wan_core.batch.csv_input import load_batch_jobs, parse_prompt_lines, read_csv_jobs, resolve_input_file
from wan_core.batch.jobs import BatchJob, JobDefaults, batch_id, output_filename, output_path
from wan_core.batch.ledger import JobLedger, JobState, LedgerEntry, ledger_path
from wan_core.batch.scheduler import (
    NOT_STARTED,
    SKIPPED,
    BatchScheduler,
    BatchSummary,
    DeviceContext,
    JobCancelled,
    JobResult,
    JobRunner,
    JobStages,
    ProgressEvent,
    Worker,
)

__all__ = [
    "NOT_STARTED",
    "SKIPPED",
    "BatchJob",
    "BatchScheduler",
    "BatchSummary",
    "DeviceContext",
    "JobCancelled",
    "JobDefaults",
    "JobLedger",
    "JobResult",
    "JobRunner",
    "JobStages",
    "JobState",
    "LedgerEntry",
    "ProgressEvent",
    "Worker",
    "batch_id",
    "ledger_path",
    "load_batch_jobs",
    "output_filename",
    "output_path",
    "parse_prompt_lines",
    "read_csv_jobs",
    "resolve_input_file",
]
