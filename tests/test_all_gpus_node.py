"""Set Device "all GPUs (one video)": the sampler node's kept worker processes (2 CPU processes, gloo) give the
latents of the in-process sampler; progress comes back per step; an interrupt stops them and keeps them; a dead
worker gives a clear error, not a hang."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from nodes import all_gpus, devices, handles
from nodes.conditioning import WanConditioning
from nodes.latents import latent_output
from nodes.sampler import Wan22DiTSampler
from nodes.set_device import Wan22SetDevice
from wan_core.errors import InputError, WanError

pytest.importorskip("yunchang")


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    """Two tiny t2v experts in the official folder layout."""
    from wan_core.configs import DIT_CONFIGS
    from wan_core.dit.model import WanDiT, init_random_
    from wan_core.io.writers import write_sharded

    root = tmp_path_factory.mktemp("experts")
    config = DIT_CONFIGS["tiny-t2v"]
    for seed, name in enumerate(("high", "low")):
        model = init_random_(WanDiT(config), torch.Generator().manual_seed(seed))
        write_sharded(model.state_dict(), root / name)
        (root / name / "config.json").write_text(json.dumps(config.to_official_json()))
    return root


@pytest.fixture
def cpu_workers(monkeypatch):
    monkeypatch.setattr(devices, "gpu_count", lambda: 0)
    monkeypatch.setenv(all_gpus.CPU_WORKERS_ENV, "2")
    yield
    all_gpus.shutdown()


def run_sampler(handle: handles.DiTHandle, conditioning: WanConditioning) -> torch.Tensor:
    # 80x112, 5 frames: 2 x 5 x 7 = 70 tokens per frame pair; 3 steps cross the expert boundary (shift 12).
    (latent,) = Wan22DiTSampler().sample(handle, 112, 80, 5, 3, "unipc", 12.0, 4.0, 3.0, 11, conditioning=conditioning)
    return latent["samples"]


def handle_and_conditioning(experts, seed: int) -> tuple[handles.DiTHandle, WanConditioning]:
    handle = handles.DiTHandle(task="t2v-A14B", high_noise_path=str(experts / "high"),
                               low_noise_path=str(experts / "low"), weight_dtype="fp32", attention="sdpa",
                               device="cpu")
    generator = torch.Generator().manual_seed(seed)
    return handle, WanConditioning(positive=(torch.randn(9, 64, generator=generator),),
                                   negative=(torch.randn(4, 64, generator=generator),))


def test_all_gpus_workers_give_the_in_process_latents(experts, cpu_workers):
    handle, conditioning = handle_and_conditioning(experts, 5)
    single = run_sampler(handle, conditioning)
    (on_all,) = Wan22SetDevice().set_device(handle, devices.ALL_GPUS)
    split = run_sampler(on_all, conditioning)
    assert split.shape == single.shape == (1, 16, 2, 10, 14)
    assert ((split - single).norm() / single.norm()).item() < 1e-5

    pool = all_gpus._pool

    class Interrupted(Exception):
        pass

    def interrupt(info):
        raise Interrupted()

    with pytest.raises(Interrupted):  # the host's interrupt, raised from the progress callback: the workers stop
        pool.sample(_job(on_all, conditioning), interrupt)
    assert not pool.closed
    steps = []
    again = pool.sample(_job(on_all, conditioning), steps.append)
    assert torch.equal(latent_output(again)["samples"], split)  # the kept workers, same job, same latents
    assert [info.step for info in steps] == [1, 2, 3] and steps[-1].latents.shape == (16, 2, 10, 14)

    os.kill(pool._processes[1].pid, signal.SIGKILL)
    pool._processes[1].join()
    with pytest.raises(WanError, match="worker 1 .* exited"):
        pool.sample(_job(on_all, conditioning))
    assert pool.closed and all(not p.is_alive() for p in pool._processes)


def test_three_workers_split_four_heads_with_a_ring(experts, monkeypatch):
    """4 heads do not divide over 3 devices: the workers attend with a ring of 3 instead of refusing."""
    monkeypatch.setattr(devices, "gpu_count", lambda: 0)
    monkeypatch.setenv(all_gpus.CPU_WORKERS_ENV, "3")
    handle, conditioning = handle_and_conditioning(experts, 6)
    try:
        single = run_sampler(handle, conditioning)
        (on_all,) = Wan22SetDevice().set_device(handle, devices.ALL_GPUS)
        split = run_sampler(on_all, conditioning)  # 70 tokens per latent frame pair: padded to 3 x 24
    finally:
        all_gpus.shutdown()
    assert ((split - single).norm() / single.norm()).item() < 1e-5


def _job(dit, conditioning):
    return all_gpus._job(dit, _request(), conditioning.positive[0], conditioning.negative[0], None, None)


def _request():
    from wan_core.pipeline.request import SamplingRequest

    return SamplingRequest.create("t2v-A14B", width=112, height=80, frame_num=5, seed=11, steps=3, shift=12.0,
                                  guide_scale=(3.0, 4.0))


def test_all_gpus_is_for_the_dit_and_needs_several_devices(monkeypatch):
    monkeypatch.setattr(devices, "gpu_count", lambda: 1)
    with pytest.raises(InputError, match="for the DiT"):
        Wan22SetDevice().set_device(handles.VAEHandle(path="vae.pth"), devices.ALL_GPUS)
    with pytest.raises(InputError, match="two or more GPUs; this machine has 1"):
        all_gpus.worker_devices()
    assert devices.ALL_GPUS not in devices.list_devices()
