"""Wan22FrameInterpolate: RIFE weights from the model folders (ours and ComfyUI-Frame-Interpolation's), the ffmpeg
fallback said in its info output, a clear error for a missing file; and the CLI's --interpolate."""

from __future__ import annotations

import os
import sys
import types

import pytest
import torch
from test_cli import read_mp4_meta, run_demo
from test_interpolate import moving_square, rife47_state_dict, translating_ifnet
from test_nodes import _fake_comfyui

from nodes import NODE_CLASS_MAPPINGS, host
from nodes.frame_interpolate import Wan22FrameInterpolate
from wan_core.errors import MissingFileError


def run_node(images: torch.Tensor, rife_model: str, multiplier: int = 2) -> tuple:
    result = Wan22FrameInterpolate().interpolate(images, multiplier, rife_model, 16.0, batch_size=2, tile_size=0,
                                                 unique_id="9")
    return result["result"]


def test_node_runs_rife_from_the_model_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(host.MODELS_DIR_ENV, str(tmp_path))
    (tmp_path / "frame_interpolation").mkdir()
    torch.save(translating_ifnet(8.0).state_dict(), tmp_path / "frame_interpolation" / "rife47.pth")
    assert "Wan22FrameInterpolate" in NODE_CLASS_MAPPINGS
    assert "rife47.pth" in Wan22FrameInterpolate.INPUT_TYPES()["required"]["rife_model"][0]
    frames = moving_square(3, step=8)
    images, fps, info = run_node(frames, "rife47.pth")
    assert images.shape == (5, 64, 128, 3) and fps == 32.0
    assert "RIFE (rife47.pth)" in info and "3 -> 5 frames" in info
    torch.testing.assert_close(images[1], moving_square(1, 0, start=12)[0], rtol=0, atol=1e-4)
    images, _, info = run_node(frames, "auto")
    assert "RIFE (rife47.pth)" in info  # auto picks a recommended file that is there


def test_node_without_weights_falls_back_to_ffmpeg_or_names_the_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv(host.MODELS_DIR_ENV, str(tmp_path))
    images, fps, info = run_node(moving_square(3, step=8), "auto", multiplier=4)
    assert images.shape[0] == 9 and fps == 64.0 and "ffmpeg minterpolate" in info
    with pytest.raises(MissingFileError, match=r"rife49\.pth.*frame_interpolation"):
        run_node(moving_square(3, step=8), "rife49.pth")


def test_inside_comfyui_the_folder_kind_is_registered_and_frame_interpolation_pack_files_are_found(
    tmp_path, monkeypatch
):
    _fake_comfyui(monkeypatch, [])
    registered: dict[str, tuple[list[str], set]] = {"custom_nodes": ([str(tmp_path / "custom_nodes")], set())}

    def add_model_folder_path(kind: str, path: str, is_default: bool = False) -> None:
        registered.setdefault(kind, ([], set()))[0].append(path)

    def get_filename_list(kind: str) -> list[str]:
        return sorted(name for folder in registered[kind][0] if os.path.isdir(folder) for name in os.listdir(folder))

    folder_paths = types.SimpleNamespace(
        models_dir=str(tmp_path / "models"), folder_names_and_paths=registered,
        add_model_folder_path=add_model_folder_path, get_folder_paths=lambda kind: list(registered[kind][0]),
        get_filename_list=get_filename_list,
    )
    monkeypatch.setitem(sys.modules, "folder_paths", folder_paths)
    pack = tmp_path / "custom_nodes" / "ComfyUI-Frame-Interpolation" / "ckpts" / "rife"
    pack.mkdir(parents=True)
    torch.save(rife47_state_dict(), pack / "rife47.pth")
    torch.save(rife47_state_dict(), pack / "rife48.pth")
    choices = Wan22FrameInterpolate.INPUT_TYPES()["required"]["rife_model"][0]
    assert registered["frame_interpolation"][0] == [str(tmp_path / "models" / "frame_interpolation"), str(pack)]
    assert "rife48.pth" in choices and choices[0] == "auto" and choices[-1] == "ffmpeg"
    Wan22FrameInterpolate.INPUT_TYPES()  # registering twice adds nothing
    assert len(registered["frame_interpolation"][0]) == 2
    _, _, info = run_node(torch.rand(2, 32, 32, 3), "auto")
    assert "RIFE (rife47.pth)" in info


def test_cli_interpolate_keeps_the_frames_multiplies_the_fps_and_says_what_ran(capsys, monkeypatch, tmp_path):
    small = ("--task", "ti2v-5B", "--base_seed", "1", "--size", "64*64", "--frame_num", "5", "--sample_steps", "2")
    weights = tmp_path / "my_rife.pth"
    torch.save(rife47_state_dict(), weights)
    stdout, rife = run_demo(capsys, monkeypatch, tmp_path / "demo", tmp_path / "rife", *small, "--interpolate", "4",
                            "--rife_model", str(weights))
    assert "5 -> 17 frames, 24 -> 96 fps: 4x by RIFE (my_rife.pth) on cpu" in stdout and rife.shape[1] == 17
    stdout, doubled = run_demo(capsys, monkeypatch, tmp_path / "demo", tmp_path / "ffmpeg", *small,
                               "--interpolate", "2")
    assert "5 -> 9 frames, 24 -> 48 fps: 2x by ffmpeg minterpolate" in stdout
    assert doubled.shape == (3, 9, 64, 64) and read_mp4_meta(tmp_path / "ffmpeg" / "video.mp4") == (9, (64, 64), 48.0)
    # RIFE keeps the generated frames exactly (tests/test_interpolate.py); ffmpeg keeps them up to 8-bit YUV steps
    assert (doubled[:, ::2] - rife[:, ::4]).abs().max() <= 4 / 255 * 2
