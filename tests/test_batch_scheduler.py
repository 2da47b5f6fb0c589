import contextlib
import json
import threading

import pytest
from batch_fakes import FakeRunner, FakeStages, Recorder

from wan_core.batch import (
    NOT_STARTED,
    SKIPPED,
    BatchScheduler,
    JobLedger,
    JobState,
    Worker,
    batch_id,
    output_filename,
    parse_prompt_lines,
)
from wan_core.errors import InputError


def make_jobs(count):
    return parse_prompt_lines("\n".join(f"a red fox number {i}" for i in range(1, count + 1)))


@pytest.fixture
def batch(tmp_path):
    """(jobs, batch id, ledger) of six jobs writing into tmp_path."""
    jobs = make_jobs(6)
    name = batch_id(jobs)
    with JobLedger.for_batch(tmp_path, name) as ledger:
        yield jobs, name, ledger


def ledger_lines(ledger):
    return [json.loads(line) for line in ledger.path.read_text(encoding="utf-8").splitlines()]


def assert_outputs_complete(tmp_path, name, jobs, summary):
    for job, result in zip(jobs, summary.results, strict=True):
        assert result.state == "done", result
        assert result.output == str(tmp_path / output_filename(name, job.index))
        assert (tmp_path / f"{name}_{job.index:04d}.mp4").read_text() == f"{job.index}:{job.prompt}:{job.seed}"


def test_replicas_never_exceed_max_concurrent_jobs(tmp_path, batch):
    jobs, name, ledger = batch
    runner = FakeRunner(tmp_path, name, steps=3, step_seconds=0.05)
    workers = [Worker.replica(f"fake:{i}", runner) for i in range(3)]
    summary = BatchScheduler(workers, max_concurrent_jobs=2, ledger=ledger).run(jobs)
    assert runner.recorder.max_active == 2
    assert len({interval.device for interval in runner.recorder.intervals}) >= 2
    assert_outputs_complete(tmp_path, name, jobs, summary)
    states = [(line["job"], line["state"]) for line in ledger_lines(ledger)]
    assert states[:6] == [(i, "queued") for i in range(1, 7)]
    for job in jobs:
        job_states = [state for index, state in states if index == job.index]
        assert job_states == ["queued", "started", "done"]


def test_max_concurrent_jobs_defaults_to_lane_slots_and_more_is_refused(tmp_path, batch):
    _, name, ledger = batch
    runner = FakeRunner(tmp_path, name)
    workers = [Worker.replica("fake:0", runner), Worker.replica("fake:1", runner)]
    assert BatchScheduler(workers, ledger=ledger).max_concurrent_jobs == 2
    with pytest.raises(InputError, match=r"max_concurrent_jobs=3 but the workers have 2 job slot"):
        BatchScheduler(workers, max_concurrent_jobs=3, ledger=ledger)
    stages = FakeStages(tmp_path, name, encode_device="fake:0", denoise_device="fake:1", decode_device="fake:1",
                        recorder=Recorder())
    # encode lane on fake:0; denoise and decode lanes on fake:1
    assert BatchScheduler([Worker.pipelined(stages)], ledger=ledger).max_concurrent_jobs == 3
    # one job at a time: the runner spans both devices
    split_runner = Worker("fake:0+fake:1", "fake:0", "fake:1", runner=runner)
    assert BatchScheduler([split_runner], ledger=ledger).max_concurrent_jobs == 1


def test_split_pipeline_overlaps_encoding_and_decoding_with_denoising(tmp_path, batch):
    """T5 on one GPU, DiT and VAE on the other: job n+1 encodes and job n-1 decodes while job n denoises."""
    jobs, name, ledger = batch
    recorder = Recorder()
    meet = [((n + 1, "encode"), (n, "denoise")) for n in range(1, len(jobs))]
    meet += [((n - 1, "decode"), (n, "denoise")) for n in range(2, len(jobs) + 1)]
    stages = FakeStages(tmp_path, name, encode_device="fake:0", denoise_device="fake:1", decode_device="fake:1",
                        recorder=recorder, meet=meet)
    summary = BatchScheduler([Worker.pipelined(stages)], ledger=ledger).run(jobs)
    assert_outputs_complete(tmp_path, name, jobs, summary)
    encode, denoise, decode = recorder.of("encode"), recorder.of("denoise"), recorder.of("decode")
    for n in range(1, len(jobs)):
        assert encode[n + 1].overlaps(denoise[n]) and decode[n].overlaps(denoise[n + 1])
    assert recorder.max_active == 3
    for lane in (("encode",), ("denoise",), ("decode",)):  # each lane runs one stage at a time, on one thread
        in_lane = sorted((i for i in recorder.intervals if i.stage in lane), key=lambda i: i.start)
        assert all(a.end <= b.start for a, b in zip(in_lane, in_lane[1:], strict=False))
        assert len({i.thread for i in in_lane}) == 1


def test_split_pipeline_with_vae_beside_text_encoder_overlaps_decoding_with_denoising(tmp_path, batch):
    jobs, name, ledger = batch
    recorder = Recorder()
    meet = [((n - 1, "decode"), (n, "denoise")) for n in range(2, len(jobs) + 1)]
    stages = FakeStages(tmp_path, name, encode_device="fake:0", denoise_device="fake:1", decode_device="fake:0",
                        recorder=recorder, meet=meet)
    summary = BatchScheduler([Worker.pipelined(stages)], ledger=ledger).run(jobs)
    assert_outputs_complete(tmp_path, name, jobs, summary)
    decode, denoise = recorder.of("decode"), recorder.of("denoise")
    for n in range(2, len(jobs) + 1):
        assert decode[n - 1].overlaps(denoise[n])


def test_one_device_runs_its_models_in_turn_and_writes_while_the_next_job_denoises(tmp_path, batch):
    """T5, DiT and VAE on one GPU: the models never run side by side there (encoding and decoding take the compute
    lane), and the video write of job n-1 (CPU work) overlaps the denoising of job n."""
    jobs, name, ledger = batch
    recorder = Recorder()
    meet = [((n - 1, "write"), (n, "denoise")) for n in range(2, len(jobs) + 1)]
    stages = FakeStages(tmp_path, name, encode_device="fake:0", denoise_device="fake:0", decode_device="fake:0",
                        recorder=recorder, seconds=(0.01, 0.06, 0.02, 0.04), meet=meet)
    scheduler = BatchScheduler([Worker.pipelined(stages)], ledger=ledger)
    assert scheduler.max_concurrent_jobs == 2
    summary = scheduler.run(jobs)
    assert_outputs_complete(tmp_path, name, jobs, summary)
    encode, denoise, decode = recorder.of("encode"), recorder.of("denoise"), recorder.of("decode")
    write = recorder.of("write")
    on_gpu = sorted([*encode.values(), *denoise.values(), *decode.values()], key=lambda i: i.start)
    assert all(a.end <= b.start for a, b in zip(on_gpu, on_gpu[1:], strict=False))
    assert len({i.thread for i in on_gpu}) == 1 and not {i.thread for i in on_gpu} & {i.thread for i in write.values()}
    for n in range(2, len(jobs) + 1):
        assert write[n - 1].overlaps(denoise[n])
    assert recorder.max_active == 2


def test_timed_out_job_is_cancelled_between_steps_and_recorded(tmp_path, batch):
    jobs, name, ledger = batch
    runner = FakeRunner(tmp_path, name, steps=3, step_seconds=0.02, slow_jobs=(2,))  # job 2: 300 steps, 6 s
    summary = BatchScheduler([Worker.replica("fake:0", runner)], queue_timeout=0.3, ledger=ledger).run(jobs[:3])
    timed_out = summary.results[1]
    assert timed_out.state == "timed_out" and timed_out.output is None
    assert "queue_timeout of 0.3 s" in timed_out.error
    assert 0.3 <= timed_out.seconds < 2.0
    assert runner.cancel_seen == [2]
    assert [r.state for r in summary.results] == ["done", "timed_out", "done"]
    last = ledger.last_states()
    assert last[2].state is JobState.TIMED_OUT and "queue_timeout" in last[2].error


def test_waiting_behind_other_jobs_does_not_count_against_queue_timeout(tmp_path, batch):
    """A split worker holds three jobs: the third one's denoising waits for two others (0.5 s here), more than the
    timeout, while its own stages take half of it."""
    jobs, name, ledger = batch
    stages = FakeStages(tmp_path, name, encode_device="fake:0", denoise_device="fake:1", decode_device="fake:1",
                        recorder=Recorder(), seconds=(0.01, 0.25, 0.01, 0.01))
    summary = BatchScheduler([Worker.pipelined(stages)], queue_timeout=0.6, ledger=ledger).run(jobs[:4])
    assert_outputs_complete(tmp_path, name, jobs[:4], summary)
    assert max(r.seconds for r in summary.results) > 0.6  # the ledger's seconds still count the wait


def test_failing_job_is_recorded_and_the_batch_goes_on(tmp_path, batch):
    jobs, name, ledger = batch
    runner = FakeRunner(tmp_path, name, fail_jobs=(2, 5))
    workers = [Worker.replica("fake:0", runner), Worker.replica("fake:1", runner)]
    summary = BatchScheduler(workers, ledger=ledger).run(jobs)
    states = {r.index: r.state for r in summary.results}
    assert states == {1: "done", 2: "failed", 3: "done", 4: "done", 5: "failed", 6: "done"}
    assert "RuntimeError: CUDA out of memory" in summary.results[1].error
    assert ledger.last_states()[5].error.startswith("RuntimeError: CUDA out of memory")
    assert summary.output_paths == [str(tmp_path / output_filename(name, i)) for i in (1, 3, 4, 6)]
    table = summary.table()
    assert "CUDA out of memory" in table and table.endswith("total: 4 done, 2 failed")


def test_runner_returning_no_file_is_a_failure(tmp_path, batch):
    jobs, name, ledger = batch

    class NoFileRunner:
        def run(self, job, context, cancel, progress):
            return tmp_path / "never_written.mp4"

    summary = BatchScheduler([Worker.replica("fake:0", NoFileRunner())], ledger=ledger).run(jobs[:1])
    assert summary.results[0].state == "failed" and "never_written.mp4" in summary.results[0].error


def test_interrupt_cancels_running_job_and_starts_no_more(tmp_path, batch):
    jobs, name, ledger = batch
    interrupted = threading.Event()
    runner = FakeRunner(tmp_path, name, steps=5, on_step=lambda job, step: step == 2 and interrupted.set())
    scheduler = BatchScheduler([Worker.replica("fake:0", runner)], ledger=ledger, is_interrupted=interrupted.is_set)
    summary = scheduler.run(jobs[:4])
    assert [r.state for r in summary.results] == ["cancelled", NOT_STARTED, NOT_STARTED, NOT_STARTED]
    assert runner.cancel_seen == [1]
    assert ledger.last_states()[1].state is JobState.CANCELLED
    rerun = BatchScheduler([Worker.replica("fake:0", FakeRunner(tmp_path, name))], ledger=ledger).run(jobs[:4])
    assert [r.state for r in rerun.results] == ["done"] * 4


def test_completed_batch_queued_again_is_skipped_except_missing_outputs(tmp_path, batch):
    jobs, name, ledger = batch
    workers = [Worker.replica("fake:0", FakeRunner(tmp_path, name))]
    BatchScheduler(workers, ledger=ledger).run(jobs[:3])
    (tmp_path / output_filename(name, 2)).unlink()
    lines_before = len(ledger_lines(ledger))
    summary = BatchScheduler(workers, ledger=ledger).run(jobs[:3])
    assert [r.state for r in summary.results] == [SKIPPED, "done", SKIPPED]
    assert len(summary.output_paths) == 3
    assert [(line["job"], line["state"]) for line in ledger_lines(ledger)[lines_before:]] == [
        (2, "queued"), (2, "started"), (2, "done")]


def test_cache_hooks_run_after_jobs_on_the_workers_devices(tmp_path, batch):
    jobs, name, ledger = batch
    cleared, defragmented = [], []
    runner = FakeRunner(tmp_path, name, steps=1, fail_jobs=(3,))
    split = Worker("fake:0+fake:1", "fake:0", "fake:1", runner=runner)
    BatchScheduler([split], ledger=ledger, auto_clear_cache=True, defrag_every=2,
                   clear_cache=cleared.append, defragment=defragmented.append).run(jobs[:5])
    assert cleared == ["fake:1"] * 5  # after every job, failed ones included, on the devices its stages use
    assert defragmented == ["fake:1"] * 2


def test_cache_hooks_run_between_the_compute_lanes_stages_not_beside_them(tmp_path, batch):
    """One device, a job written while the next denoises: the cache is emptied on the compute lane's thread, between
    two of its stages, never while the next job's denoising runs on the GPU."""
    jobs, name, ledger = batch
    recorder, hook_threads = Recorder(), []
    stages = FakeStages(tmp_path, name, encode_device="fake:0", denoise_device="fake:0", decode_device="fake:0",
                        recorder=recorder, seconds=(0.005, 0.05, 0.01, 0.04))
    BatchScheduler([Worker.pipelined(stages)], ledger=ledger, auto_clear_cache=True,
                   clear_cache=lambda device: hook_threads.append((device, threading.get_ident()))).run(jobs)
    (compute_thread,) = {i.thread for i in recorder.of("denoise").values()}
    assert hook_threads == [("fake:0", compute_thread)] * len(jobs)


def test_progress_events_name_node_job_and_device(tmp_path, batch):
    jobs, name, ledger = batch
    events = []
    runner = FakeRunner(tmp_path, name, steps=2)
    workers = [Worker.replica("fake:0", runner), Worker.replica("fake:1", runner)]
    BatchScheduler(workers, ledger=ledger, on_progress=events.append, node_id="17").run(jobs[:4])
    assert {e.node_id for e in events} == {"17"}
    steps = [e for e in events if e.stage == "run"]
    assert sorted((e.job_index, e.step) for e in steps) == [(j, s) for j in range(1, 5) for s in (1, 2)]
    assert all(e.total == 2 and e.device == runner.contexts[e.job_index].device for e in steps)
    finished = [e for e in events if e.stage == "done"]
    assert sorted(e.jobs_finished for e in finished) == [1, 2, 3, 4] and {e.jobs_total for e in finished} == {4}


def test_each_lane_thread_runs_its_stages_on_its_own_stream(tmp_path, batch):
    jobs, name, ledger = batch
    created = {}

    class FakeStream:
        def __init__(self):
            self.synchronized = 0

        def synchronize(self):
            self.synchronized += 1

    @contextlib.contextmanager
    def stream_factory(device):
        stream = FakeStream()
        created[threading.get_ident()] = (device, stream)
        yield stream

    recorder = Recorder()
    stages = FakeStages(tmp_path, name, encode_device="fake:0", denoise_device="fake:1", decode_device="fake:1",
                        recorder=recorder, seconds=(0.001, 0.001, 0.001, 0.001))
    BatchScheduler([Worker.pipelined(stages)], ledger=ledger, stream_factory=stream_factory).run(jobs[:3])
    assert sorted(device for device, _ in created.values()) == ["fake:0", "fake:1", "fake:1"]
    stage_names = ("encode", "denoise", "decode", "write")
    threads = {stage: {i.thread for i in recorder.of(stage).values()} for stage in stage_names}
    assert all(len(ids) == 1 for ids in threads.values()) and len(set.union(*threads.values())) == 3
    assert threads["write"] == threads["decode"]  # a split worker decodes and writes in the VAE GPU's I/O lane
    for interval in recorder.intervals:
        assert created[interval.thread][0] == interval.device
    assert sorted(stream.synchronized for _, stream in created.values()) == [3, 3, 6]
    # Each stage ran in inference mode, as ComfyUI runs its nodes (models it loaded hold inference tensors).
    assert recorder.inference_modes and all(recorder.inference_modes)
