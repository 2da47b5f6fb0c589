"""A small batch on two fake GPUs, run as its own process by test_batch_resume.py (which SIGKILLs it mid-run).

Usage: python tests/batch_resume_script.py OUTPUT_DIR JOBS STEP_SECONDS. Prints the summary as JSON."""

import json
import sys
from pathlib import Path

from batch_fakes import FakeRunner

from wan_core.batch import BatchScheduler, JobLedger, Worker, batch_id, parse_prompt_lines


def main() -> None:
    output_dir, job_count, step_seconds = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    jobs = parse_prompt_lines("\n".join(f"prompt number {i}" for i in range(1, job_count + 1)))
    batch = batch_id(jobs, {"test": "resume"})
    runner = FakeRunner(output_dir, batch, steps=3, step_seconds=step_seconds)
    with JobLedger.for_batch(output_dir, batch) as ledger:
        scheduler = BatchScheduler([Worker.replica("fake:0", runner), Worker.replica("fake:1", runner)],
                                   queue_timeout=60, ledger=ledger)
        summary = scheduler.run(jobs)
    print(json.dumps({"batch": batch, "results": [[r.index, r.state, r.output] for r in summary.results]}))


if __name__ == "__main__":
    main()
