"""Saved videos as ComfyUI saves them: workflow metadata in Save Video and batch MP4s, `--disable-metadata`, and
ComfyUI's filename tokens."""

from __future__ import annotations

import json
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from graph_executor import run_graph
from test_batch_node import BATCH_NODE, TINY_SIZE, folders, tiny_models  # noqa: F401  (fixtures)
from test_nodes import _mp4_metadata

from nodes import NODE_CLASS_MAPPINGS, batch_queue, host
from nodes.filename_tokens import expand_filename_tokens
from nodes.save_video import Wan22SaveVideo

NOW = time.struct_time((2026, 3, 7, 9, 5, 4, 5, 66, 0))  # 2026-03-07 09:05:04


@pytest.fixture
def disable_metadata(monkeypatch):
    """ComfyUI started with --disable-metadata (its parsed args as a module in sys.modules)."""
    monkeypatch.setitem(sys.modules, "comfy.cli_args", types.SimpleNamespace(
        args=types.SimpleNamespace(disable_metadata=True)))


def test_filename_tokens_expand_as_comfyui_does():
    assert expand_filename_tokens("wan22/%date:yyyy-MM-dd%/clip", 832, 480, NOW) == "wan22/2026-03-07/clip"
    assert expand_filename_tokens("%date:yyMMdd_hhmmss%", 1, 1, NOW) == "260307_090504"
    assert expand_filename_tokens("%date:d.M.yyyy h:m:s%", 1, 1, NOW) == "7.3.2026 9:5:4"
    assert expand_filename_tokens("%year%-%month%-%day%_%hour%%minute%%second%_%width%x%height%", 832, 480, NOW) \
        == "2026-03-07_090504_832x480"
    assert expand_filename_tokens("wan22/%Node.widget%_%unknown%", 1, 1, NOW) == "wan22/%Node.widget%_%unknown%"


def test_save_video_expands_tokens_and_honours_disable_metadata(tmp_path, monkeypatch, disable_metadata):
    monkeypatch.setenv(host.OUTPUT_DIR_ENV, str(tmp_path / "output"))
    result = Wan22SaveVideo().save(torch.rand(5, 16, 24, 3), "wan22/%date:yyyy-MM-dd%/clip_%width%x%height%", 16.0,
                                   False, prompt={"1": {}}, extra_pnginfo={"workflow": {"nodes": []}})
    saved = result["ui"]["images"][0]
    assert saved["subfolder"] == "wan22/" + time.strftime("%Y-%m-%d") and saved["filename"] == "clip_24x16_00001.mp4"
    tags = _mp4_metadata(tmp_path / "output" / saved["subfolder"] / saved["filename"])
    assert "workflow" not in tags and "prompt" not in tags and "comment" not in tags


def test_batch_videos_carry_the_workflow_like_save_video(tiny_models, folders, monkeypatch):  # noqa: F811
    monkeypatch.setenv(host.MODELS_DIR_ENV, str(tiny_models))
    root = Path(__file__).resolve().parent.parent
    graph = json.loads((root / "api" / "wan22_batch_dual_gpu.json").read_text(encoding="utf-8"))
    graph[BATCH_NODE]["inputs"].update(TINY_SIZE, prompts="a red fox in snow")
    workflow = json.loads((root / "example_workflows" / "wan22_batch_dual_gpu.json").read_text(encoding="utf-8"))
    outputs, _ui = run_graph(graph, NODE_CLASS_MAPPINGS, workflow=workflow)
    (video,) = [Path(p) for p in outputs[BATCH_NODE][0].splitlines()]
    tags = _mp4_metadata(video)
    assert json.loads(tags["workflow"]) == workflow
    assert json.loads(tags["prompt"])[BATCH_NODE]["inputs"]["prompts"] == "a red fox in snow"
    assert json.loads(tags["comment"])["workflow"] == workflow
    monkeypatch.setitem(sys.modules, "comfy.cli_args", types.SimpleNamespace(
        args=types.SimpleNamespace(disable_metadata=True)))
    assert batch_queue.workflow_metadata({"1": {}}, {"workflow": workflow}) == {}  # what the batch embeds then
