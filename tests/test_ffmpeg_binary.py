"""Which ffmpeg runs: imageio-ffmpeg's, else one on PATH, else a clear error that every entry point reports before
any work (Save Video and Batch Queue Manager validation, the CLI's checks before loading models)."""

from __future__ import annotations

import os
import sys

import imageio_ffmpeg
import pytest
import torch

from nodes import host
from nodes.batch_queue import NO_CSV, Wan22BatchQueueManager
from nodes.save_video import Wan22SaveVideo
from wan_core.generate import main
from wan_core.io.ffmpeg_binary import FfmpegMissingError, ffmpeg_executable
from wan_core.video_io import save_video

REAL_FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


@pytest.fixture
def no_imageio_ffmpeg(monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # `import imageio_ffmpeg` raises ImportError


@pytest.fixture
def no_ffmpeg_at_all(no_imageio_ffmpeg, monkeypatch, tmp_path):
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def test_imageio_ffmpeg_binary_first():
    assert ffmpeg_executable() == REAL_FFMPEG


def test_without_imageio_ffmpeg_the_ffmpeg_on_path_writes_the_video(no_imageio_ffmpeg, monkeypatch, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ffmpeg").symlink_to(REAL_FFMPEG)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert ffmpeg_executable() == str(bin_dir / "ffmpeg")
    video = torch.rand(3, 5, 16, 16) * 2 - 1
    out = save_video(tmp_path / "out" / "v.mp4", video, 16)  # encodes and reads back through the PATH binary
    assert out.stat().st_size > 0
    monkeypatch.undo()
    assert imageio_ffmpeg.count_frames_and_secs(str(out))[0] == 5


def test_no_ffmpeg_is_a_clear_error_and_writes_nothing(no_ffmpeg_at_all, tmp_path):
    with pytest.raises(FfmpegMissingError, match=r"pip install imageio-ffmpeg.*or put an ffmpeg binary on PATH"):
        ffmpeg_executable()
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(FfmpegMissingError):
        save_video(folder / "v.mp4", torch.zeros(3, 5, 16, 16), 16)
    assert list(folder.iterdir()) == []  # no temporary file left


def test_imageio_ffmpeg_without_a_binary_is_the_same_clear_error(monkeypatch):
    def no_binary() -> str:
        raise RuntimeError("No ffmpeg exe could be found. Install ffmpeg on your system, or set the IMAGEIO_FFMPEG_EXE "
                           "environment variable to the path of an ffmpeg executable.")

    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", no_binary)
    with pytest.raises(FfmpegMissingError, match=r"No ffmpeg exe could be found.*pip install imageio-ffmpeg"):
        ffmpeg_executable()


def test_the_nodes_refuse_the_graph_before_it_runs(no_ffmpeg_at_all, monkeypatch, tmp_path):
    monkeypatch.setenv(host.OUTPUT_DIR_ENV, str(tmp_path))
    for verdict in (Wan22SaveVideo.VALIDATE_INPUTS("wan22/video"), Wan22BatchQueueManager.VALIDATE_INPUTS(NO_CSV)):
        assert isinstance(verdict, str) and "pip install imageio-ffmpeg" in verdict


def test_the_cli_stops_before_loading_any_model(no_ffmpeg_at_all, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("WAN22_DEMO_DIR", str(tmp_path / "demo"))
    code = main(["--demo", "--save_file", str(tmp_path / "v.mp4")])
    err = capsys.readouterr().err
    assert code != 0 and "pip install imageio-ffmpeg" in err and "Traceback" not in err
    assert not (tmp_path / "demo").exists()  # the demo checkpoint was never built
    assert not os.path.exists(tmp_path / "v.mp4")
