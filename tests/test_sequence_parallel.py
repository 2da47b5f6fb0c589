"""Ulysses sequence parallelism on the CPU (gloo, 2 processes): the split DiT equals the one-process DiT, and the
CLI under torch.distributed.run writes the same video as one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from wan_core.errors import InputError
from wan_core.generate import main
from wan_core.video_io import load_tensor

pytest.importorskip("yunchang")
ROOT = Path(__file__).resolve().parents[1]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def run_two_ranks(tmp_path: Path, check: str, ranks: int = 2) -> dict:
    from sequence_parallel_checks import run_in_group

    results = mp.Manager().dict()
    mp.spawn(run_in_group, args=(ranks, str(tmp_path / "pg"), check, results), nprocs=ranks)
    return dict(results)


def test_split_dit_equals_one_process_with_padding_and_per_token_time(tmp_path):
    results = run_two_ranks(tmp_path, "ti2v_uneven")
    for rank in (0, 1):
        single, split = results[rank]
        assert split.shape == single.shape == (1, 48, 3, 6, 10)
        assert relative_error(split, single) < 1e-5


def test_head_count_that_does_not_split_names_the_sizes_that_do(tmp_path):
    message = run_two_ranks(tmp_path, "heads")[0]
    assert "3 attention heads over 2 ranks" in message and "1, 3" in message
    assert "--ulysses_size 1 --ring_size 2" in message


def test_ring_attention_and_sharded_text_encoder_equal_one_process(tmp_path):
    results = run_two_ranks(tmp_path, "ring_t5")
    for rank in (0, 1):
        single, split = results[rank]["ti2v"]  # uneven tokens (a padded key on rank 1), per-token time
        assert split.shape == single.shape == (1, 48, 3, 6, 10)
        assert relative_error(split, single) < 1e-5
        single, split = results[rank]["three_heads"]  # 3 heads: Ulysses cannot split them over 2 ranks, ring can
        assert split.shape == single.shape == (1, 16, 3, 6, 10)
        assert relative_error(split, single) < 1e-5
        whole, sharded, local_count, total = results[rank]["t5"]
        assert [e.shape for e in sharded] == [e.shape for e in whole] and whole[0].shape[1] == 64
        assert all(torch.allclose(s, w, rtol=1e-5, atol=1e-6) for s, w in zip(sharded, whole, strict=True))
        assert local_count <= total // 2 + 64  # each rank holds half of the weights (dim-0 shards, rounded up)


def test_ulysses_times_ring_on_four_processes_equals_one_process(tmp_path):
    results = run_two_ranks(tmp_path, "hybrid", ranks=4)
    for rank in range(4):
        single, split = results[rank]
        assert relative_error(split, single) < 1e-5


@pytest.mark.parametrize("check, rank_1_waits", [("close_completed", True), ("close_failed", False)])
def test_closing_waits_for_every_rank_only_after_a_completed_run(tmp_path, check, rank_1_waits):
    times = run_two_ranks(tmp_path, check)  # rank 0 closes 1 s after rank 1
    if rank_1_waits:
        assert times[1] >= times[0]
    else:
        assert times[1] < times[0] - 0.5


@pytest.mark.parametrize("fails", [False, True])
def test_cli_tells_the_group_whether_the_run_completed(monkeypatch, fails):
    import wan_core.generate as generate
    import wan_core.parallel.launch as launch

    closed = []

    class Group:
        def close(self, completed: bool) -> None:
            closed.append(completed)

    def generate_or_fail(args, distributed):
        if fails:
            raise InputError("bad input on this rank")
        return 0

    monkeypatch.setattr(launch, "start", lambda *args: Group())
    monkeypatch.setattr(generate, "_generate", generate_or_fail)
    assert main(["--demo"]) == (2 if fails else 0)
    assert closed == [not fails]


@pytest.mark.parametrize("flags, message", [
    (["--ulysses_size", "2"], "torchrun --nproc_per_node=2"),
    (["--ring_size", "2"], "torchrun --nproc_per_node=2 -m wan_core.generate ... --ulysses_size 1 --ring_size 2"),
    (["--ulysses_size", "2", "--ring_size", "2"], "ulysses_size x ring_size of them, e.g. torchrun --nproc_per_node=4"),
    (["--t5_fsdp"], "--t5_fsdp shards weights over several processes: start them with torchrun"),
    (["--dit_fsdp"], "start them with torchrun"),
])
def test_parallel_flags_that_cannot_run_say_what_to_do(capsys, flags, message):
    assert main(["--demo", "--device", "cpu", *flags]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("parallel, attention", [
    (["--ulysses_size", "2"], "ulysses2:sdpa"),
    (["--ulysses_size", "2", "--dit_fsdp"], "ulysses2:sdpa"),
    (["--ring_size", "2", "--t5_fsdp"], "ring2:sdpa"),
], ids=["ulysses", "ulysses+dit_fsdp", "ring+t5_fsdp"])
def test_cli_on_two_processes_writes_the_video_of_one_process(tmp_path, monkeypatch, parallel, attention):
    # 112*80, 9 frames: 3 x 5 x 7 = 105 tokens, an odd count, so rank 1 carries a padded token.
    monkeypatch.setenv("WAN22_DEMO_DIR", str(tmp_path / "demo"))
    flags = ["--demo", "--device", "cpu", "--base_seed", "3", "--size", "112*80", "--sample_steps", "4"]
    assert main([*flags, "--save_file", str(tmp_path / "one.mp4"), "--save_tensor", str(tmp_path / "one.st")]) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "wan_core.generate", *flags, *parallel,
           "--save_file", str(tmp_path / "two.mp4"), "--save_tensor", str(tmp_path / "two.st")]  # fmt: skip
    done = subprocess.run(two, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-12000:]
    assert f"attention {attention}." in done.stdout
    assert done.stdout.count("Saved the video tensor") == 1  # rank 0 alone writes
    one, two_ranks = load_tensor(tmp_path / "one.st"), load_tensor(tmp_path / "two.st")
    assert two_ranks.shape == one.shape == (3, 9, 80, 112)
    assert relative_error(two_ranks, one) < 1e-4
