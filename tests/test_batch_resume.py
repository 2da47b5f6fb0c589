import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from wan_core.batch import BatchJob, JobLedger, JobState, batch_id, ledger_path, output_filename, parse_prompt_lines

TESTS = Path(__file__).resolve().parent
SCRIPT = TESTS / "batch_resume_script.py"
JOBS = 8


def run_script(output_dir: Path, **popen):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    command = [sys.executable, str(SCRIPT), str(output_dir), str(JOBS), "0.1"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def ledger_records(path: Path):
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.endswith("}")]


def test_batch_killed_mid_run_resumes_skipping_done_jobs(tmp_path):
    process = run_script(tmp_path)
    deadline = time.monotonic() + 60
    done_before: set[int] = set()
    try:
        while len(done_before) < 2:
            assert process.poll() is None, f"batch ended before it could be killed: {process.stderr.read()}"
            assert time.monotonic() < deadline, "no job finished within 60 s"
            time.sleep(0.02)
            ledgers = list(tmp_path.glob("*.ledger.jsonl"))
            records = ledger_records(ledgers[0]) if ledgers else []
            done_before = {r["job"] for r in records if r["state"] == "done"}
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    assert process.returncode == -signal.SIGKILL
    records = ledger_records(ledgers[0])
    done_before = {r["job"] for r in records if r["state"] == "done"}
    assert 2 <= len(done_before) < JOBS, "the kill came too late to leave jobs undone"

    rerun = run_script(tmp_path)
    stdout, stderr = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, stderr
    summary = json.loads(stdout)
    states = {index: state for index, state, _ in summary["results"]}
    assert {i for i, state in states.items() if state == "skipped"} == done_before
    assert {i for i, state in states.items() if state == "done"} == set(range(1, JOBS + 1)) - done_before

    records = ledger_records(ledger_path(tmp_path, summary["batch"]))
    assert Counter(r["job"] for r in records if r["state"] == "done") == {i: 1 for i in range(1, JOBS + 1)}
    for index in done_before:  # nothing of a job done before the kill was run again
        assert [r["state"] for r in records if r["job"] == index] == ["queued", "started", "done"]
    for index, _, output in summary["results"]:
        assert output == str(tmp_path / output_filename(summary["batch"], index))
        assert Path(output).read_text().startswith(f"{index}:prompt number {index}:")
    assert not list(tmp_path.glob("*.partial"))  # a video torn by the kill was made again and renamed


def test_torn_last_line_is_ignored_and_cut_before_the_next_write(tmp_path):
    path = tmp_path / "batch.ledger.jsonl"
    video = tmp_path / "video.mp4"
    video.write_bytes(b"mp4")
    with JobLedger(path) as ledger:
        ledger.record(1, JobState.STARTED, worker="cuda:0")
        ledger.record(1, JobState.DONE, output=str(video), worker="cuda:0", seconds=1.5)
        ledger.record(2, JobState.STARTED, worker="cuda:1")
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"job": 2, "state": "do')  # the process died in the middle of this write
    ledger = JobLedger(path)
    last = ledger.last_states()
    assert last[1].state is JobState.DONE and last[1].output == str(video) and last[1].seconds == 1.5
    assert last[2].state is JobState.STARTED
    jobs = [BatchJob(i, f"p{i}", "", "none", i, 64, 64, 5, 2) for i in (1, 2)]
    done, pending = ledger.split_done(jobs)
    assert list(done) == [1] and pending == [jobs[1]]
    ledger.record(2, JobState.FAILED, error="RuntimeError: boom")
    ledger.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["state"] for line in lines] == ["started", "done", "started", "failed"]


def test_done_job_whose_video_was_deleted_runs_again(tmp_path):
    video = tmp_path / "gone.mp4"
    with JobLedger(tmp_path / "b.ledger.jsonl") as ledger:
        ledger.record(1, JobState.DONE, output=str(video))
        jobs = [BatchJob(1, "p", "", "none", 0, 64, 64, 5, 2)]
        assert ledger.split_done(jobs) == ({}, jobs)


def test_batch_id_follows_the_batch_content():
    jobs = parse_prompt_lines("a cat\na dog")
    same = parse_prompt_lines("\na cat\n\n  a dog  \n")
    assert batch_id(jobs, {"task": "t2v-A14B"}) == batch_id(same, {"task": "t2v-A14B"})
    assert batch_id(jobs, {"task": "t2v-A14B"}) != batch_id(jobs, {"task": "ti2v-5B"})
    assert batch_id(jobs) != batch_id(parse_prompt_lines("a cat\na dog."))
    assert batch_id(jobs).startswith("batch-") and len(batch_id(jobs)) == len("batch-") + 12
