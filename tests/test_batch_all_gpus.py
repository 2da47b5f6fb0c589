"""Batch Queue Manager, gpu_mode 'all GPUs per job': each job's denoising runs in the kept worker processes (here 2
CPU processes, gloo) and gives the latents of the in-process batch; text encoding and decoding stay in the host."""

from __future__ import annotations

import pytest
import torch
from graph_executor import run_graph
from test_batch_node import _batch_graph, folders  # noqa: F401  (a fixture)
from test_nodes import _fake_comfyui
from test_workflows import tiny_models  # noqa: F401  (a fixture)

from nodes import NODE_CLASS_MAPPINGS, all_gpus, batch_queue, devices, host
from wan_core.batch.stages import PipelineStages
from wan_core.errors import InputError

pytest.importorskip("yunchang")
BATCH_NODE = "30"
# 48x48, 9 frames: 3 x 3 x 3 = 27 tokens, an odd count, so the second worker carries a padded token.
SIZE = {"width": 48, "height": 48, "frames": 9, "steps": 2}


def test_all_gpus_per_job_gives_the_latents_of_the_in_process_batch(tiny_models, folders, monkeypatch):  # noqa: F811
    monkeypatch.setenv(host.MODELS_DIR_ENV, str(tiny_models))
    calls: list = []
    _fake_comfyui(monkeypatch, calls)
    monkeypatch.setattr(devices, "gpu_count", lambda: 0)
    monkeypatch.setenv(all_gpus.CPU_WORKERS_ENV, "2")
    latents: dict[str, dict[int, torch.Tensor]] = {}
    decode = PipelineStages.decode

    def keep_latents(stages, job, value):
        latents.setdefault(stages.denoise_device, {})[job.index] = value.clone()
        return decode(stages, job, value)

    monkeypatch.setattr(PipelineStages, "decode", keep_latents)
    summaries = {}
    try:
        for mode in (batch_queue.AS_WIRED, batch_queue.ALL_GPUS_PER_JOB):
            monkeypatch.setenv(host.OUTPUT_DIR_ENV, str(folders / mode))  # the same batch id: its own ledger
            graph = _batch_graph("none")
            graph[BATCH_NODE]["inputs"].update(SIZE, prompts="a fox in snow\nwaves on a beach", gpu_mode=mode)
            outputs, _ = run_graph(graph, NODE_CLASS_MAPPINGS)
            summaries[mode] = outputs[BATCH_NODE][1]
    finally:
        all_gpus.shutdown()
    assert "2 done" in summaries[batch_queue.ALL_GPUS_PER_JOB]
    assert "all GPUs (one video)" in summaries[batch_queue.ALL_GPUS_PER_JOB]  # the worker's name
    in_process, on_workers = latents["cpu"], latents[devices.ALL_GPUS]
    assert sorted(on_workers) == sorted(in_process) == [1, 2]
    for index, single in in_process.items():
        assert on_workers[index].shape == single.shape == (16, 3, 6, 6)
        assert ((on_workers[index] - single).norm() / single.norm()).item() < 1e-5
    assert not torch.allclose(in_process[1], in_process[2])  # two prompts, two seeds: a real comparison
    progress = [c[2] for c in calls if c[0] == "send" and c[1] == "wan22.progress"]
    assert {p["device"] for p in progress} == {"CPU", "all GPUs"} and len(progress) == 2 * 2 * SIZE["steps"]


def test_all_gpus_per_job_needs_several_gpus_before_any_model_loads(monkeypatch):
    monkeypatch.setattr(devices, "gpu_count", lambda: 1)
    from test_batch_node import _fake_handles

    bound = _fake_handles()
    with pytest.raises(InputError, match="two or more GPUs; this machine has 1"):
        batch_queue.plan_workers(bound["model"], bound["t5"], bound["vae"], batch_queue.ALL_GPUS_PER_JOB, None)
