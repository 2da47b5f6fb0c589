"""`api/queue_prompt.py`'s replacements reach the node that samples in every shipped API workflow."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLING_NODES = ("Wan22DiTSampler", "Wan22BatchQueueManager", "Wan22LongVideo")


def _queue_prompt():
    spec = importlib.util.spec_from_file_location("queue_prompt", ROOT / "api" / "queue_prompt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", sorted((ROOT / "api").glob("*.json")), ids=lambda p: p.stem)
def test_size_steps_seed_and_prompt_reach_the_sampling_node(path):
    graph = json.loads(path.read_text(encoding="utf-8"))
    options = argparse.Namespace(prompt="a lighthouse at dusk", seed=7, width=64, height=48, frames=5, steps=3)
    _queue_prompt().apply_options(graph, options)
    sampling = [node["inputs"] for node in graph.values() if node["class_type"] in SAMPLING_NODES]
    assert sampling, "no sampling node"
    for inputs in sampling:
        replaced = (inputs["seed"], inputs["width"], inputs["height"], inputs["frames"], inputs["steps"])
        assert replaced == (7, 64, 48, 5, 3)
    stylers = [node["inputs"] for node in graph.values() if node["class_type"] == "Wan22PromptStyler"]
    assert all(inputs["prompt"] == "a lighthouse at dusk" for inputs in stylers)
