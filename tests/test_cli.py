"""The CLI (python -m wan_core.generate): checkpoint-folder resolution, validation errors (exit code 2), the demo."""

from __future__ import annotations

import json
from pathlib import Path

import imageio_ffmpeg
import pytest
import torch

from wan_core.checkpoint_dir import LAYOUTS, T5_FILE, TOKENIZER_DIR, resolve_checkpoint
from wan_core.errors import MissingFileError
from wan_core.generate import DEMO_FRAME_NUM, main, parse_guide_scale
from wan_core.video_io import load_tensor


def fake_expert(folder: Path, shards: int = 2) -> None:
    """config.json + index + empty shard files: enough for the folder check, which reads no tensors."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    names = [f"diffusion_pytorch_model-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)]
    for name in names:
        (folder / name).write_bytes(b"")
    index = {"weight_map": {f"w{i}": name for i, name in enumerate(names)}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))


def fake_checkpoint(root: Path, task: str) -> Path:
    layout = LAYOUTS[task]
    for sub in layout.expert_dirs:
        fake_expert(root / sub if sub else root)
    (root / layout.vae_file).write_bytes(b"")
    (root / T5_FILE).write_bytes(b"")
    (root / TOKENIZER_DIR).mkdir(parents=True)
    (root / TOKENIZER_DIR / "spiece.model").write_bytes(b"")
    return root


# --- checkpoint folder resolution ---------------------------------------------------------------------------------


@pytest.mark.parametrize("task", list(LAYOUTS))
def test_complete_official_folder_resolves_to_its_parts(tmp_path, task):
    files = resolve_checkpoint(task, fake_checkpoint(tmp_path, task))
    if task == "ti2v-5B":
        assert files.expert_dirs == (tmp_path,)
        assert files.vae == tmp_path / "Wan2.2_VAE.pth"
    else:
        assert files.expert_dirs == (tmp_path / "high_noise_model", tmp_path / "low_noise_model")
        assert files.vae == tmp_path / "Wan2.1_VAE.pth"
    assert files.text_encoder == tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    assert files.tokenizer == tmp_path / "google" / "umt5-xxl"


def test_every_missing_part_is_named_with_its_download(tmp_path):
    root = fake_checkpoint(tmp_path, "t2v-A14B")
    for path in ["low_noise_model", "google"]:
        import shutil

        shutil.rmtree(root / path)
    (root / "Wan2.1_VAE.pth").unlink()
    (root / "high_noise_model" / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(MissingFileError) as caught:
        resolve_checkpoint("t2v-A14B", root)
    message = str(caught.value)
    assert "lacks 4 part(s)" in message
    for name in ["low_noise_model/", "Wan2.1_VAE.pth", "google/umt5-xxl/", "diffusion_pytorch_model-00002-of-00002"]:
        assert name in message
    assert "models_t5_umt5-xxl-enc-bf16.pth" not in message  # present, so not listed
    assert "Wan-AI/Wan2.2-T2V-A14B" in message
    assert f'hf download Wan-AI/Wan2.2-T2V-A14B --include "high_noise_model/*" "low_noise_model/*"' \
           f' "Wan2.1_VAE.pth" "google/umt5-xxl/*" --local-dir {root}' in message


def test_ti2v_needs_the_model_at_the_top_and_the_wan22_vae(tmp_path):
    root = fake_checkpoint(tmp_path, "t2v-A14B")  # an A14B folder is not a ti2v-5B folder
    with pytest.raises(MissingFileError) as caught:
        resolve_checkpoint("ti2v-5B", root)
    message = str(caught.value)
    assert "  - config.json" in message and "diffusion_pytorch_model*.safetensors" in message
    assert "Wan2.2_VAE.pth" in message and "Wan-AI/Wan2.2-TI2V-5B" in message


def test_missing_folder_says_how_to_download(tmp_path):
    with pytest.raises(MissingFileError, match=r"(?s)does not exist.*hf download Wan-AI/Wan2.2-I2V-A14B"):
        resolve_checkpoint("i2v-A14B", tmp_path / "nowhere")


# --- argument parsing ---------------------------------------------------------------------------------------------


def test_guide_scale_parsing():
    assert parse_guide_scale("5") == 5.0
    assert parse_guide_scale("3.0,4.0") == (3.0, 4.0)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--task", "t2v-5B"], "invalid choice: 't2v-5B'"),
        (["--sample_solver", "ddim"], "invalid choice: 'ddim'"),
        (["--offload_model", "maybe"], "expected a boolean"),
        (["--sample_guide_scale", "1,2,3"], "low,high"),
        (["--frame_num", "many"], "invalid int value"),
    ],
)
def test_argparse_errors_exit_2_without_traceback(capsys, argv, expected):
    code, _, err = run_cli(capsys, *argv, "--demo")
    assert code == 2
    assert expected in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--demo", "--size", "1280x"], "is not 'W*H'"),
        (["--demo", "--size", "100*96"], "100"),
        (["--demo", "--task", "ti2v-5B", "--size", "112*96"], "112"),
        (["--demo", "--frame_num", "10"], "10"),
        (["--demo", "--sample_steps", "0"], "steps"),
        (["--demo", "--ckpt_dir", "x"], "drop --ckpt_dir"),
        (["--demo", "--device", "gpu"], "not a torch device"),
        (["--demo", "--image", "x.png"], "cannot be read"),
        (["--task", "t2v-A14B"], "--ckpt_dir"),
        (["--demo", "--task", "i2v-A14B", "--image", "no/such.png"], "cannot be read"),
        (["--task", "i2v-A14B", "--ckpt_dir", "x", "--size", "832*480"], "--image"),
    ],
)
def test_validation_errors_exit_2_with_a_clean_message(capsys, tmp_path, monkeypatch, argv, expected):
    monkeypatch.setenv("WAN22_DEMO_DIR", str(tmp_path / "demo"))
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.startswith("python -m wan_core.generate: error: ") and expected in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "demo").exists()  # rejected before anything was built or loaded


def test_ckpt_dir_missing_parts_exit_2_naming_the_files(capsys, tmp_path):
    root = fake_checkpoint(tmp_path / "ckpt", "t2v-A14B")
    (root / T5_FILE).unlink()
    code, _, err = run_cli(capsys, "--ckpt_dir", str(root), "--size", "832*480", "--save_file", str(tmp_path / "o.mp4"))
    assert code == 2
    assert "models_t5_umt5-xxl-enc-bf16.pth" in err and "hf download Wan-AI/Wan2.2-T2V-A14B" in err
    assert "Traceback" not in err


# --- the demo end to end ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory):
    return tmp_path_factory.mktemp("demo_cache")


def run_demo(capsys, monkeypatch, demo_home: Path, out: Path, *extra: str) -> tuple[str, torch.Tensor]:
    monkeypatch.setenv("WAN22_DEMO_DIR", str(demo_home))
    code, stdout, err = run_cli(
        capsys, "--demo", "--device", "cpu", "--save_file", str(out / "video.mp4"),
        "--save_tensor", str(out / "video.safetensors"), *extra,
    )
    assert code == 0, err
    return stdout, load_tensor(out / "video.safetensors")


def read_mp4_meta(path: Path) -> tuple[int, tuple[int, int], float]:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    return sum(1 for _ in reader), tuple(meta["size"]), meta["fps"]


def test_demo_writes_a_playable_mp4_the_frames_and_the_tensor(capsys, monkeypatch, demo_home, tmp_path):
    # The demo's own frame count and steps (both experts run); a smaller size than its default keeps the test fast.
    stdout, video = run_demo(capsys, monkeypatch, demo_home, tmp_path, "--base_seed", "7", "--size", "64*48",
                             "--save_frames", str(tmp_path / "frames"))
    assert "weights are RANDOM" in stdout
    assert (demo_home / "t2v-A14B" / "high_noise_model" / "config.json").is_file()
    assert (demo_home / "t2v-A14B" / "low_noise_model" / "config.json").is_file()
    assert video.shape == (3, DEMO_FRAME_NUM, 48, 64)
    assert video.min() >= -1 and video.max() <= 1 and torch.isfinite(video).all()
    assert read_mp4_meta(tmp_path / "video.mp4") == (DEMO_FRAME_NUM, (64, 48), 16.0)
    assert len(list((tmp_path / "frames").glob("frame_*.png"))) == DEMO_FRAME_NUM



def test_a_plain_mp4_streamed_while_decoding_is_the_file_the_whole_video_gives(capsys, monkeypatch, demo_home,
                                                                               tmp_path):
    small = ("--size", "64*48", "--frame_num", "9", "--sample_steps", "2", "--base_seed", "5")
    run_demo(capsys, monkeypatch, demo_home, tmp_path / "whole", *small)  # --save_tensor: decoded whole first
    from wan_core.pipeline.pipeline import WanPipeline

    def whole_decode(*args, **kwargs):
        raise AssertionError("a plain MP4 must not wait for the whole video")

    monkeypatch.setattr(WanPipeline, "decode", whole_decode)
    code, stdout, err = run_cli(capsys, "--demo", "--device", "cpu", "--save_file", str(tmp_path / "streamed.mp4"),
                                "--save_frames", str(tmp_path / "frames"), *small)
    assert code == 0, err
    assert f"Saved {tmp_path / 'streamed.mp4'} (9 frames, 64x48, 16 fps)." in stdout
    assert (tmp_path / "streamed.mp4").read_bytes() == (tmp_path / "whole" / "video.mp4").read_bytes()
    assert len(list((tmp_path / "frames").glob("frame_*.png"))) == 9


def test_a_plain_mp4_whose_streamed_decode_runs_out_of_memory_is_decoded_whole(capsys, monkeypatch, demo_home,
                                                                                 tmp_path):
    from wan_core.vae.model import WanVAE

    small = ("--size", "64*48", "--frame_num", "9", "--sample_steps", "2", "--base_seed", "5")
    run_demo(capsys, monkeypatch, demo_home, tmp_path / "whole", *small)

    def out_of_memory(self, latents):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        yield

    monkeypatch.setattr(WanVAE, "decode_chunks", out_of_memory)
    code, stdout, err = run_cli(capsys, "--demo", "--device", "cpu", "--save_file", str(tmp_path / "v.mp4"), *small)
    assert code == 0, err
    assert (tmp_path / "v.mp4").read_bytes() == (tmp_path / "whole" / "video.mp4").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4", "whole"]


def test_demo_same_seed_same_video_other_seed_other_video(capsys, monkeypatch, demo_home, tmp_path):
    small = ("--size", "64*48", "--frame_num", "5", "--sample_steps", "3")
    _, first = run_demo(capsys, monkeypatch, demo_home, tmp_path / "a", "--base_seed", "7", *small)
    _, again = run_demo(capsys, monkeypatch, demo_home, tmp_path / "b", "--base_seed", "7", *small)
    _, other = run_demo(capsys, monkeypatch, demo_home, tmp_path / "c", "--base_seed", "8", *small)
    assert first.shape == (3, 5, 48, 64)
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-2


def test_demo_ti2v_uses_its_fps_and_the_single_model_layout(capsys, monkeypatch, demo_home, tmp_path):
    _, video = run_demo(capsys, monkeypatch, demo_home, tmp_path, "--task", "ti2v-5B", "--base_seed", "1",
                        "--size", "64*64", "--frame_num", "5", "--sample_steps", "2")
    assert (demo_home / "ti2v-5B" / "config.json").is_file()
    assert not (demo_home / "ti2v-5B" / "high_noise_model").exists()
    assert video.shape == (3, 5, 64, 64)
    assert read_mp4_meta(tmp_path / "video.mp4") == (5, (64, 64), 24.0)


# --- the demo checkpoint cache ------------------------------------------------------------------------------------


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, weights_only=True)


def test_demo_checkpoint_is_deterministic_reused_and_repaired(monkeypatch, demo_home, tmp_path):
    from wan_core.demo import MARKER_FILE, ensure_demo_checkpoint

    monkeypatch.setenv("WAN22_DEMO_DIR", str(demo_home))
    cached = ensure_demo_checkpoint("t2v-A14B")
    assert cached == demo_home / "t2v-A14B"
    stamps = {p: p.stat().st_mtime_ns for p in cached.rglob("*") if p.is_file()}
    assert ensure_demo_checkpoint("t2v-A14B") == cached
    assert {p: p.stat().st_mtime_ns for p in cached.rglob("*") if p.is_file()} == stamps  # reused, not rewritten

    copy = ensure_demo_checkpoint("t2v-A14B", tmp_path / "copy")
    names = sorted(str(p.relative_to(cached)) for p in stamps)
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file()) == names
    for name in names:
        if name.endswith((".safetensors", ".pth")):
            first, second = _tensors(cached / name), _tensors(copy / name)
            assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first), name
    high, low = (_tensors(copy / sub / "diffusion_pytorch_model-00001-of-00002.safetensors")
                 for sub in ("high_noise_model", "low_noise_model"))
    assert any(not torch.equal(high[k], low[k]) for k in high.keys() & low.keys())  # two different experts

    shard = copy / "low_noise_model" / "diffusion_pytorch_model-00002-of-00002.safetensors"
    shard.unlink()
    assert ensure_demo_checkpoint("t2v-A14B", copy) == copy
    assert shard.is_file() and (copy / MARKER_FILE).is_file()


def test_demo_never_replaces_a_folder_it_did_not_write(tmp_path):
    from wan_core.demo import ensure_demo_checkpoint
    from wan_core.errors import InputError

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="already holds other files"):
        ensure_demo_checkpoint("t2v-A14B", tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
