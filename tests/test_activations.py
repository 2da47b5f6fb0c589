"""The activation memory a DiT forward needs beside its weights, and the nodes asking ComfyUI's memory manager to keep
it free when they load an expert (as native samplers do from their model's estimate)."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from test_workflows import _tiny_node_models, _write_tiny_models

from nodes import handles, host
from nodes.memory_manager import managed
from nodes.sampler import Wan22DiTSampler
from wan_core.configs import DIT_CONFIGS
from wan_core.dit.activations import forward_activation_bytes
from wan_core.measured import ACTIVATIONS

GIB = 2**30
# Tokens of the measured forwards: 81 frames -> 21 latent frames; 480p 60x104 and 720p 90x160 latents in 2x2 patches;
# TI2V-5B at 1280x704, 121 frames: 31 latent frames of 44x80 (VAE stride 16) in 2x2 patches.
MEASURED_TOKENS = {("A14B", "480p"): 21 * 30 * 52, ("A14B", "720p"): 21 * 45 * 80, ("5B", "720p"): 31 * 22 * 40}
CONFIGS = {"A14B": DIT_CONFIGS["t2v-A14B"], "5B": DIT_CONFIGS["ti2v-5B"]}


@pytest.mark.parametrize("key", sorted(ACTIVATIONS))
def test_the_estimate_covers_every_measured_forward_and_stays_close(key):
    model, _compute, resolution = key
    estimate = forward_activation_bytes(CONFIGS[model], MEASURED_TOKENS[model, resolution]) / GIB
    assert ACTIVATIONS[key].gib <= estimate <= 1.15 * ACTIVATIONS[key].gib, (key, estimate)


def test_the_estimate_grows_with_tokens_and_batch():
    config = DIT_CONFIGS["t2v-A14B"]
    assert forward_activation_bytes(config, 2000) == 2 * forward_activation_bytes(config, 1000)
    assert forward_activation_bytes(config, 1000, batch=2) == forward_activation_bytes(config, 2000)


@pytest.fixture
def dit(tmp_path, monkeypatch):
    _write_tiny_models(tmp_path)
    monkeypatch.setenv(host.MODELS_DIR_ENV, str(tmp_path))
    handles.MODEL_CACHE.clear()
    handle, _, _ = _tiny_node_models("t2v-A14B")
    yield handle
    handles.MODEL_CACHE.clear()


def test_the_sampler_keeps_its_forward_memory_free_beside_each_expert(dit, monkeypatch):
    """Every move of an expert onto the device (at its first step: the start and the expert switch) asks the memory
    manager to keep one forward's activations free: without it ComfyUI kept only its 0.8 GB minimum free and could
    fill the rest with weights."""
    moves = []
    move_module = handles.move_module

    def record(module, device, memory_required=0):
        moves.append((module, memory_required))
        return move_module(module, device, memory_required)

    monkeypatch.setattr(handles, "move_module", record)
    text = torch.randn(1, 3, DIT_CONFIGS["tiny-t2v"].text_dim)
    Wan22DiTSampler().sample(
        dit,
        width=32,
        height=32,
        frames=5,
        steps=2,
        solver="euler",
        shift=5.0,
        cfg_high_noise=1.0,
        cfg_low_noise=1.0,
        seed=1,
        positive=[[text, {}]],
        negative=[[text, {}]],
        boundary_step=1,
    )
    sampled = list(moves)
    high, low = dit.load()
    tokens = 2 * 2 * 2  # 5 frames -> 2 latent frames of 4x4, in 2x2 patches
    expected = forward_activation_bytes(DIT_CONFIGS["t2v-A14B"], tokens)  # the task's real model, not the tiny file
    assert [m for m, _ in sampled] == [high, low]  # each expert at its first step (not also at the load)
    assert {need for _, need in sampled} == {expected}


def test_the_memory_requirement_reaches_comfyuis_manager(monkeypatch):
    calls = []
    fake = types.SimpleNamespace(
        load_models_gpu=lambda models, memory_required=0: calls.append((models, memory_required))
    )
    monkeypatch.setitem(sys.modules, "comfy.model_management", fake)
    module = torch.nn.Linear(2, 2)
    meta = torch.device("meta")  # not the CPU, so managed
    handles.move_module(module, meta, memory_required=123)
    assert calls == [([managed(module, meta)], 123)]
