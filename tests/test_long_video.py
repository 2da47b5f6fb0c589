"""Long videos in chunks: prompts per chunk, joins without a repeated frame, colour drift measured and matched,
resume from the ledger (in-process after a crash, and the CLI after a SIGKILL on the --demo checkpoint)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from wan_core.errors import InputError
from wan_core.pipeline.long_video import frame_stats, generate_long_video, join_chunks, split_prompts
from wan_core.video_io import load_tensor

ROOT = Path(__file__).resolve().parent.parent
FRAMES = 5


class FakeChunks:
    """A chunk generator as the pipeline behaves: frame 0 re-renders the start image; the other frames are new.
    Frame values encode (chunk, frame) so repeats are visible; ``tint`` adds a colour drift per chunk."""

    def __init__(self, tint: float = 0.0, fail_at: int | None = None) -> None:
        self.calls: list[tuple[str, int]] = []
        self.tint, self.fail_at = tint, fail_at

    def __call__(self, prompt: str, start: torch.Tensor | None, seed: int) -> torch.Tensor:
        chunk = len(self.calls)
        if chunk == self.fail_at:
            raise RuntimeError("killed")
        self.calls.append((prompt, seed))
        video = torch.empty(3, FRAMES, 4, 6)
        for frame in range(FRAMES):
            video[:, frame] = (chunk * FRAMES + frame) / 100 - 0.5
        video[0, :, 0, 0] = torch.linspace(-0.3, 0.3, FRAMES)  # some spread inside each frame
        if start is not None:  # a drifting chunk is off by `tint` from its start image on
            video[:, 0] = start
            video += self.tint * torch.tensor([1.0, -0.5, 0.2]).view(3, 1, 1, 1)
        return video


def test_prompts_one_for_all_or_one_per_chunk():
    assert split_prompts("a fox", 3) == ["a fox"] * 3
    assert split_prompts("a fox | a wolf |a bear", 3) == ["a fox", "a wolf", "a bear"]
    assert split_prompts(["a", "b"], 2) == ["a", "b"]
    with pytest.raises(InputError, match="2 prompts for 3 chunks"):
        split_prompts("a | b", 3)
    with pytest.raises(InputError, match="must have text"):
        split_prompts("a || c", 3)


def test_chunks_continue_from_the_last_frame_and_join_without_repeats(tmp_path):
    fake = FakeChunks()
    result = generate_long_video(fake, "a | b | c", chunks=3, seed=7, work_dir=tmp_path, request={},
                                 colour_match=False)
    assert fake.calls == [("a", 7), ("b", 8), ("c", 9)]
    video = result.video
    assert video.shape[1] == FRAMES + 2 * (FRAMES - 1)
    flat = video.permute(1, 0, 2, 3).reshape(video.shape[1], -1)
    assert len({tuple(frame.tolist()) for frame in flat}) == video.shape[1]  # no frame twice
    chunks = [load_tensor(path) for path in result.chunk_files]
    for previous, chunk in zip(chunks, chunks[1:], strict=False):
        torch.testing.assert_close(chunk[:, 0], previous[:, -1])  # started from the previous last frame
    torch.testing.assert_close(video, join_chunks(chunks))


def test_colour_drift_is_measured_and_matched(tmp_path):
    drifting = generate_long_video(FakeChunks(tint=0.1), "a", chunks=3, seed=0, work_dir=tmp_path / "off",
                                   request={}, colour_match=False)
    assert [round(d.max_mean_shift, 4) for d in drifting.drift] == [0.1, 0.1]
    matched = generate_long_video(FakeChunks(tint=0.1), "a", chunks=3, seed=0, work_dir=tmp_path / "on",
                                  request={}, colour_match=True)
    chunks = [load_tensor(path) for path in matched.chunk_files]
    for previous, chunk in zip(chunks, chunks[1:], strict=False):
        before, after = frame_stats(previous[:, -1]), frame_stats(chunk[:, 0])
        assert before.mean == pytest.approx(after.mean, abs=1e-5) and before.std == pytest.approx(after.std, abs=1e-5)
    untinted = generate_long_video(FakeChunks(), "a", chunks=3, seed=0, work_dir=tmp_path / "none",
                                   request={}, colour_match=False)
    torch.testing.assert_close(matched.video, untinted.video, atol=1e-5, rtol=0)  # the drift is gone


def test_a_crashed_run_resumes_at_the_next_chunk_and_other_requests_are_refused(tmp_path):
    with pytest.raises(RuntimeError, match="killed"):
        generate_long_video(FakeChunks(fail_at=2), "a", chunks=4, seed=0, work_dir=tmp_path, request={"w": 1})
    again = FakeChunks()
    again.calls = [("earlier", 0), ("earlier", 1)]  # its chunk counter continues where the crashed run stopped
    resumed = generate_long_video(again, "a", chunks=4, seed=0, work_dir=tmp_path, request={"w": 1})
    assert resumed.resumed == [0, 1] and [seed for _, seed in again.calls[2:]] == [2, 3]
    clean = generate_long_video(FakeChunks(), "a", chunks=4, seed=0, work_dir=tmp_path / "clean", request={"w": 1})
    torch.testing.assert_close(resumed.video, clean.video)
    with pytest.raises(InputError, match="different long-video request"):
        generate_long_video(FakeChunks(), "a", chunks=4, seed=1, work_dir=tmp_path, request={"w": 1})


def _cli(save_file: Path, demo_dir: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "wan_core.generate", "--demo", "--task", "ti2v-5B", "--chunks", "3",
               "--frame_num", "5", "--sample_steps", "4", "--base_seed", "5", "--prompt", "a | b | c",
               "--save_file", str(save_file), "--save_tensor", str(save_file.with_suffix(".safetensors"))]
    env = {**os.environ, "WAN22_DEMO_DIR": str(demo_dir), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _ledger(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.endswith("}")]


def test_cli_chunks_killed_with_sigkill_resume_at_the_next_chunk(tmp_path):
    save_file = tmp_path / "long.mp4"
    ledger = tmp_path / "long.chunks" / "chunks.ledger.jsonl"
    process = _cli(save_file, tmp_path / "demo")
    deadline = time.monotonic() + 180
    try:
        while not any(r["state"] == "done" for r in _ledger(ledger)):
            assert process.poll() is None, f"the run ended before it could be killed: {process.stderr.read()}"
            assert time.monotonic() < deadline, "no chunk finished within 180 s"
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    assert process.returncode == -signal.SIGKILL
    done_before = {r["job"] for r in _ledger(ledger) if r["state"] == "done"}
    assert 1 <= len(done_before) < 3 and not save_file.exists()

    rerun = _cli(save_file, tmp_path / "demo")
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    for index in done_before:
        assert f"chunk {index + 1}/3: done in an earlier run" in stdout
    records = _ledger(ledger)
    for index in range(3):
        states = [r["state"] for r in records if r["job"] == index]
        assert states.count("done") == 1
        if index in done_before:
            assert states == ["started", "done"]  # not run again
    video = load_tensor(save_file.with_suffix(".safetensors"))
    chunks = [load_tensor(tmp_path / "long.chunks" / f"chunk_{i:03d}.safetensors") for i in range(3)]
    assert video.shape[1] == 5 + 2 * 4 and save_file.stat().st_size > 1000
    torch.testing.assert_close(video, join_chunks(chunks))
    steps = (video[:, 1:] - video[:, :-1]).abs().flatten(2).amax(dim=(0, 2))
    assert (steps > 0).all()  # no frame repeated, at the joins or elsewhere
