"""Disk full, simulated with RLIMIT_FSIZE in a subprocess: the CLI exits non-zero with a one-line error, leaves no
file at the target and an existing target unchanged, keeps the latents (which then decode with --decode_latents);
the batch engine records the job failed and redoes it when the batch runs again."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import disk_full_batch_script
import imageio_ffmpeg
import pytest

from wan_core.demo import ensure_demo_checkpoint
from wan_core.generate import PROG, main
from wan_core.kept_latents import load_latents

TESTS = Path(__file__).resolve().parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
# The demo video below is ~16 KB and its latents ~8 KB: the video cannot be written, the latents can.
FILE_SIZE_LIMIT = 12_000
DEMO_ARGS = ["--demo", "--device", "cpu", "--size", "64*64", "--frame_num", "5", "--sample_steps", "2",
             "--base_seed", "3"]

pytestmark = pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="needs POSIX RLIMIT_FSIZE")


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def _start(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *argv], cwd=cwd, env=env, preexec_fn=_limit_file_size,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith(f"{PROG}: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_cli_on_a_full_disk_fails_loudly_keeps_the_latents_and_destroys_nothing(tmp_path, monkeypatch, capsys):
    demo = tmp_path / "demo"
    env = {**ENV, "WAN22_DEMO_DIR": str(demo)}
    monkeypatch.setenv("WAN22_DEMO_DIR", str(demo))
    ensure_demo_checkpoint("t2v-A14B")  # built without the limit: only the run's own writes hit it
    out = tmp_path / "out"
    out.mkdir()
    existing = out / "existing.mp4"
    existing.write_bytes(b"the video of yesterday")
    cli = ["-m", "wan_core.generate", *DEMO_ARGS]
    new_run = _start([*cli, "--save_file", "out/new.mp4"], tmp_path, env)
    over_run = _start([*cli, "--save_file", "out/existing.mp4", "--overwrite"], tmp_path, env)
    new_out, new_err = new_run.communicate(timeout=300)
    _, over_err = over_run.communicate(timeout=300)

    assert new_run.returncode == 1 and over_run.returncode == 1
    assert "Saved" not in new_out
    line = _error_line(new_err)
    assert "cannot write out/new.mp4: the file size limit was reached (disk full or ulimit -f)" in line
    assert "cannot write out/existing.mp4: the file size limit was reached" in _error_line(over_err)
    assert not (out / "new.mp4").exists()
    assert existing.read_bytes() == b"the video of yesterday"
    assert not [p for p in out.iterdir() if ".partial" in p.name]  # no temporary file left behind

    # The latents were kept, and the error says how to decode them; doing so (without the limit) gives the video.
    kept = sorted(out.glob("new_*.latents.safetensors"))
    assert len(kept) == 1 and f"The latents are kept in out/{kept[0].name}; decode them later with:" in line
    latents, task = load_latents(kept[0])
    assert task == "t2v-A14B" and tuple(latents.shape) == (16, 2, 8, 8)
    monkeypatch.chdir(tmp_path)
    assert main([*DEMO_ARGS, "--decode_latents", str(kept[0].relative_to(tmp_path)), "--save_file", "out/new.mp4"]) == 0
    assert "Saved out/new.mp4 (5 frames, 64x64" in capsys.readouterr().out
    assert imageio_ffmpeg.count_frames_and_secs(str(out / "new.mp4"))[0] == 5


def test_batch_on_a_full_disk_records_the_job_failed_and_redoes_it_on_resume(tmp_path):
    script = [str(TESTS / "disk_full_batch_script.py"), str(tmp_path)]
    full = _start(script, tmp_path, ENV)
    stdout, stderr = full.communicate(timeout=300)
    assert full.returncode == 0, stderr
    first = json.loads(stdout)
    assert [state for _, state, _, _ in first["results"]] == ["failed", "failed"]
    for index, _, output, error in first["results"]:
        assert output is None
        assert f"cannot write {tmp_path}/{first['batch']}_{index:04d}.mp4: the file size limit was reached" in error
        assert "The latents are kept in" in error
    assert not list(tmp_path.glob("*.mp4"))

    second = disk_full_batch_script.run(tmp_path)  # the batch queued again, without the limit
    assert [state for _, state, _, _ in second["results"]] == ["done", "done"]
    ledger = [json.loads(line) for line in (tmp_path / f"{first['batch']}.ledger.jsonl").read_text().splitlines()]
    assert [r["state"] for r in ledger if r["job"] == 1] == ["queued", "started", "failed", "queued", "started", "done"]
    for _, _, output, _ in second["results"]:
        assert imageio_ffmpeg.count_frames_and_secs(output)[0] == 5
