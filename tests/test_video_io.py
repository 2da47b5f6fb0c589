"""MP4 / PNG / tensor output of wan_core.video_io, read back with imageio-ffmpeg, Pillow and safetensors."""

from __future__ import annotations

import json
import subprocess

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

from wan_core.errors import InputError
from wan_core.video_io import iter_frames_uint8, load_tensor, save_tensor, save_video


def read_mp4(path) -> tuple[list[np.ndarray], dict]:
    """All frames as [H, W, 3] uint8 arrays plus imageio-ffmpeg's stream metadata (size, fps, codec, pix_fmt)."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(raw, np.uint8).reshape(height, width, 3) for raw in reader]
    return frames, meta


def probe_video_stream(path) -> str:
    """ffmpeg's one-line description of the first video stream, e.g. 'h264 (High) (avc1 / ...), yuv420p(...), ...'."""
    result = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True
    )
    return next(line for line in result.stderr.splitlines() if "Video:" in line).split("Video:")[1].strip()


def smooth_video(frames: int = 5, height: int = 48, width: int = 64) -> torch.Tensor:
    """A [3, F, H, W] video in [-1, 1] with smooth gradients (lossy H.264 keeps them close)."""
    t = torch.linspace(-1, 1, frames)[:, None, None]
    y = torch.linspace(-1, 1, height)[None, :, None]
    x = torch.linspace(-1, 1, width)[None, None, :]
    return torch.stack([(0.8 * x + 0.1 * t).expand(frames, height, width),
                        (0.8 * y - 0.1 * t).expand(frames, height, width),
                        (0.5 * x * y).expand(frames, height, width)])


def test_frames_are_mapped_from_minus_one_one_to_uint8():
    video = torch.tensor([-1.0, -0.5, 0.0, 1.0, 2.0, -3.0]).reshape(1, 1, 1, 6).expand(3, 2, 1, 6)
    frames = list(iter_frames_uint8(video))
    assert len(frames) == 2
    assert frames[0].shape == (1, 6, 3) and frames[0].dtype == np.uint8
    assert frames[0][0, :, 0].tolist() == [0, 64, 128, 255, 255, 0]  # round((v + 1) * 127.5), clamped


def test_mp4_is_h264_yuv420p_with_frame_count_size_fps_and_close_pixels(tmp_path):
    video = smooth_video()
    path = save_video(tmp_path / "out" / "clip.mp4", video, fps=16, frames_dir=tmp_path / "frames")
    frames, meta = read_mp4(path)
    assert len(frames) == 5
    assert tuple(meta["size"]) == (64, 48)
    assert meta["fps"] == pytest.approx(16)
    stream = probe_video_stream(path)
    assert stream.startswith("h264") and "yuv420p" in stream, stream
    expected = np.stack(list(iter_frames_uint8(video))).astype(np.float32)
    assert np.abs(np.stack(frames).astype(np.float32) - expected).mean() < 4.0  # lossy, but the same picture

    pngs = sorted((tmp_path / "frames").glob("*.png"))
    assert [p.name for p in pngs] == [f"frame_{i:05d}.png" for i in range(5)]
    np.testing.assert_array_equal(np.asarray(Image.open(pngs[3])), expected[3].astype(np.uint8))


def test_mp4_fps_follows_the_argument(tmp_path):
    _, meta = read_mp4(save_video(tmp_path / "a.mp4", smooth_video(frames=3, height=32, width=32), fps=24))
    assert meta["fps"] == pytest.approx(24)


def test_tensor_round_trip_is_exact(tmp_path):
    video = smooth_video(frames=3, height=16, width=16).to(torch.bfloat16)
    path = save_tensor(tmp_path / "v.safetensors", video)
    loaded = load_tensor(path)
    assert loaded.dtype == torch.bfloat16 and loaded.shape == (3, 3, 16, 16)
    assert torch.equal(loaded, video)
    header = json.loads(path.read_bytes()[8:8 + int.from_bytes(path.read_bytes()[:8], "little")])
    assert header["__metadata__"] == {"layout": "3,F,H,W", "range": "-1,1"}


@pytest.mark.parametrize("shape", [(1, 3, 5, 8, 8), (4, 5, 8, 8), (3, 0, 8, 8)])
def test_wrong_video_shape_is_an_input_error(tmp_path, shape):
    with pytest.raises(InputError, match=r"\[3, F, H, W\]|no frames"):
        save_video(tmp_path / "x.mp4", torch.zeros(shape), fps=16)
    assert not (tmp_path / "x.mp4").exists()


def test_a_stream_fed_in_parts_writes_the_same_file_as_the_whole_video(tmp_path):
    from wan_core.video_io import Mp4Stream

    video = smooth_video(frames=13)
    whole = save_video(tmp_path / "whole.mp4", video, 16)
    stream = Mp4Stream(tmp_path / "parts.mp4", 64, 48, 16)
    for start, end in ((0, 1), (1, 5), (5, 9), (9, 13)):  # as the VAE decodes: 1 frame, then 4 per latent frame
        stream.add(video[:, start:end])
    assert not (tmp_path / "parts.mp4").exists()  # not in place before it is finished and checked
    parts = stream.finish()
    assert parts == tmp_path / "parts.mp4" and stream.frames == 13
    assert parts.read_bytes() == whole.read_bytes()


def test_a_stream_given_frames_of_another_size_is_refused(tmp_path):
    from wan_core.video_io import Mp4Stream

    stream = Mp4Stream(tmp_path / "v.mp4", 64, 48, 16)
    with pytest.raises(InputError, match=r"frames of 32x48 cannot join a 64x48 video \(v\.mp4\)"):
        stream.add(smooth_video(width=32))
    stream.abort()
    assert list(tmp_path.iterdir()) == []


def test_an_aborted_or_dropped_stream_stops_ffmpeg_and_leaves_the_old_file(tmp_path):
    import gc

    from wan_core.video_io import Mp4Stream

    target = tmp_path / "v.mp4"
    target.write_bytes(b"old")
    aborted = Mp4Stream(target, 64, 48, 16)
    aborted.add(smooth_video())
    aborted.abort()
    assert aborted._process.returncode is not None

    dropped = Mp4Stream(target, 64, 48, 16)
    dropped.add(smooth_video())
    process = dropped._process
    del dropped  # a job cancelled between its decode and its write drops its stream unfinished
    gc.collect()
    assert process.returncode is not None
    assert list(tmp_path.iterdir()) == [target] and target.read_bytes() == b"old"


def test_a_stream_whose_ffmpeg_cannot_start_leaves_nothing(tmp_path, monkeypatch):
    from wan_core import video_io

    monkeypatch.setattr(video_io, "_ffmpeg_command", lambda *a: [str(tmp_path / "no-such-ffmpeg")])
    target = tmp_path / "out" / "v.mp4"
    with pytest.raises(FileNotFoundError):
        video_io.Mp4Stream(target, 64, 48, 16)
    assert list((tmp_path / "out").iterdir()) == []
