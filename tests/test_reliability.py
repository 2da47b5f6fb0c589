"""Nothing lost, nothing silent: verified writes, atomic names, NaN/Inf caught in sampling and decoding, kept latents
decoded by the VAE Decode node, model listing on symlink loops, `.sft` files, styles with `{prompt}` twice."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import imageio_ffmpeg
import pytest
import torch

from nodes import handles, host
from nodes.save_video import Wan22SaveVideo
from nodes.vae_nodes import Wan22VAEDecode
from wan_core import video_io
from wan_core.configs import DIT_CONFIGS
from wan_core.dit.loader import load_dit
from wan_core.dit.model import WanDiT, init_random_
from wan_core.finite import NonFiniteError, non_finite_tensors
from wan_core.io.atomic import OutputWriteError, atomic_target, reserve_numbered
from wan_core.io.writers import write_safetensors
from wan_core.kept_latents import LatentsKeptError, keep_latents_on_failure, load_latents
from wan_core.pipeline.denoise import sample_latents
from wan_core.pipeline.request import SamplingRequest
from wan_core.runtime import Runtime
from wan_core.styles import Style, style_prompt
from wan_core.vae.latent_format import normalize
from wan_core.vae.model import WanVAE, build_vae, official_state_dict

VIDEO = torch.rand(3, 5, 32, 48) * 2 - 1


def _no_scratch_left(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".partial" in p.name]


# --- verified writes -------------------------------------------------------------------------------------------
def test_ffmpeg_failure_names_the_path_and_cause_and_keeps_the_existing_file(tmp_path, monkeypatch):
    target = tmp_path / "v.mp4"
    target.write_bytes(b"old")
    command = video_io._ffmpeg_command
    monkeypatch.setattr(video_io, "_ffmpeg_command",
                        lambda *a: [c if c != "libx264" else "no_such_codec" for c in command(*a)])
    with pytest.raises(OutputWriteError, match=rf"^cannot write {target}: ffmpeg failed \(exit status \d+\): "):
        video_io.save_video(target, VIDEO, 16)
    assert target.read_bytes() == b"old" and _no_scratch_left(tmp_path)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda path: path.write_bytes(b"\x00" * 1000), "does not read back as a video"),
    (lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]), "does not read back as a video"),
    (lambda path: shutil.copy(video_io.save_video(path.with_name("short.mp4"), VIDEO[:, :3], 16), path),
     "holds 3 frames instead of 5"),
], ids=["garbage", "truncated", "short"])
def test_a_file_that_does_not_read_back_whole_is_not_renamed_into_place(tmp_path, damage, message):
    target = tmp_path / "v.mp4"
    with pytest.raises(OutputWriteError, match=f"cannot write {target}: the written file {message}"):
        video_io.save_video(target, VIDEO, 16, finalize=damage)
    assert not target.exists() and _no_scratch_left(tmp_path)


def test_atomic_target_replaces_only_on_success(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_target(target) as scratch:
        scratch.write_bytes(b"half")
        raise RuntimeError("stopped")
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]
    with atomic_target(target) as scratch:
        scratch.write_bytes(b"new")
    assert target.read_bytes() == b"new" and list(tmp_path.iterdir()) == [target]


def test_reserved_names_never_collide_across_threads(tmp_path):
    names: list[Path] = []
    barrier = threading.Barrier(12)

    def reserve() -> None:
        barrier.wait()
        names.append(reserve_numbered(tmp_path, "clip", ".mp4"))

    threads = [threading.Thread(target=reserve) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(p.name for p in names) == [f"clip_{i:05d}.mp4" for i in range(1, 13)]


def test_concurrent_save_video_nodes_with_one_prefix_write_three_files(tmp_path, monkeypatch):
    monkeypatch.setenv(host.OUTPUT_DIR_ENV, str(tmp_path))
    results: list[dict] = []
    barrier = threading.Barrier(3)

    def save(seed: int) -> None:
        images = torch.rand(5, 16, 16, 3, generator=torch.Generator().manual_seed(seed))
        barrier.wait()
        results.append(Wan22SaveVideo().save(images, "wan22/same", 16.0, False))

    threads = [threading.Thread(target=save, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    names = sorted(r["ui"]["images"][0]["filename"] for r in results)
    assert names == ["same_00001.mp4", "same_00002.mp4", "same_00003.mp4"]
    for name in names:
        assert imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "wan22" / name))[0] == 5
    assert _no_scratch_left(tmp_path / "wan22")


def test_a_failed_save_node_leaves_no_placeholder(tmp_path, monkeypatch):
    monkeypatch.setenv(host.OUTPUT_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(video_io, "verify_mp4", lambda *a, **k: (_ for _ in ()).throw(OutputWriteError("no")))
    with pytest.raises(OutputWriteError):
        Wan22SaveVideo().save(torch.rand(5, 16, 16, 3), "wan22/gone", 16.0, False)
    assert list((tmp_path / "wan22").iterdir()) == []


# --- NaN / Inf in sampling and decoding --------------------------------------------------------------------------
class BlowsUp(torch.nn.Module):
    """An expert whose prediction is finite until `after` calls, then NaN (a weight file gone bad mid-way)."""

    def __init__(self, after: int):
        super().__init__()
        self.after, self.calls = after, 0

    def forward(self, x, t, context, y=None, **options):
        self.calls += 1
        return torch.full_like(x, float("nan") if self.calls > self.after else 0.1)


@pytest.mark.parametrize(("high_after", "low_after", "what"), [
    (2, 10**6, r"the latents after the high_noise expert \(step \d+ of 8\)"),
    (10**6, 0, "the denoised latents"),
])
def test_non_finite_latents_stop_sampling_naming_where_and_why(high_after, low_after, what):
    request = SamplingRequest.create("t2v-A14B", width=32, height=32, frame_num=5, seed=0, steps=8)
    assert request.latent_shape == (16, 2, 4, 4)
    with pytest.raises(NonFiniteError, match=what + r" holds NaN/Inf in \d+ of 512 values; no video was saved. "
                                                    r"Likely cause: a weight file holding NaN/Inf, fp16 overflow"):
        sample_latents(request, high_noise_model=BlowsUp(high_after), low_noise_model=BlowsUp(low_after),
                       cond=torch.ones(3, 8), uncond=torch.zeros(3, 8), runtime=Runtime())


def test_vae_output_with_nan_is_an_error_not_a_black_video():
    vae = build_vae("tiny-wan2.1")
    with torch.no_grad():
        vae.model.decoder.head[-1].bias[0] = float("nan")
    with pytest.raises(NonFiniteError, match="the VAE's decoded video holds NaN/Inf .* a VAE weight file"):
        vae.decode(torch.randn(1, 16, 1, 2, 2))


# --- kept latents ----------------------------------------------------------------------------------------------
def test_kept_latents_decode_in_the_vae_decode_node(tmp_path, monkeypatch):
    monkeypatch.setenv(host.OUTPUT_DIR_ENV, str(tmp_path / "output"))
    torch.manual_seed(0)
    vae = build_vae("tiny-wan2.1")
    vae_file = tmp_path / "vae.safetensors"
    write_safetensors(official_state_dict(vae), vae_file)
    latents = torch.randn(16, 2, 4, 4)

    def failing_decode() -> None:
        raise OutputWriteError("cannot write out.mp4: the disk is full")

    with pytest.raises(LatentsKeptError, match=r"disk is full. The latents are kept in .*; use the node") as info:
        keep_latents_on_failure(failing_decode, latents, folder=tmp_path / "output", task="t2v-A14B", stem="out",
                                how_to_decode=lambda kept: "use the node")
    kept = next((tmp_path / "output").glob("out_*.latents.safetensors"))
    assert str(kept) in str(info.value)
    torch.testing.assert_close(load_latents(kept)[0], latents)

    handles.MODEL_CACHE.clear()
    (images,) = Wan22VAEDecode().decode(handles.VAEHandle(path=str(vae_file)), latents_file=kept.name)
    with torch.no_grad():
        expected = vae.decode(latents[None])[0]
    assert images.shape == (5, 32, 32, 3)
    torch.testing.assert_close(images, expected.permute(1, 2, 3, 0).add(1).div(2).clamp(0, 1), atol=1e-5, rtol=0)
    handles.MODEL_CACHE.clear()


# --- model files -----------------------------------------------------------------------------------------------
def test_model_listing_survives_a_symlink_loop_and_lists_sft(tmp_path, monkeypatch):
    monkeypatch.setenv(host.MODELS_DIR_ENV, str(tmp_path))
    folder = tmp_path / "vae" / "sub"
    folder.mkdir(parents=True)
    (folder / "a.sft").write_bytes(b"")
    (folder / "notes.txt").write_bytes(b"")
    os.symlink(tmp_path / "vae", folder / "loop")
    assert host.list_models("vae") == ["sub/a.sft"]


def test_sft_diffusion_model_loads_like_safetensors(tmp_path):
    state = init_random_(WanDiT(DIT_CONFIGS["tiny-t2v"]), torch.Generator().manual_seed(0)).state_dict()
    write_safetensors(state, tmp_path / "wan.safetensors")
    (tmp_path / "wan.safetensors").rename(tmp_path / "wan.sft")
    model = load_dit(tmp_path / "wan.sft")
    torch.testing.assert_close(model.state_dict()["head.head.weight"], state["head.head.weight"])


# --- styles ----------------------------------------------------------------------------------------------------
def test_a_style_with_two_placeholders_fills_the_first_and_never_doubles():
    styles = {"Twice": Style("Twice", "{prompt}, photo of {prompt}"), "Other": Style("Other", "{prompt}, film")}
    positive, _ = style_prompt(styles, "a cat " + "[Style: Twice] " * 500 + "[Style: Other]", style="Twice")
    assert positive == "a cat, photo of, film"


def test_save_video_checks_its_folder_before_the_graph_runs(tmp_path, monkeypatch):
    monkeypatch.setenv(host.OUTPUT_DIR_ENV, str(tmp_path))
    assert Wan22SaveVideo.VALIDATE_INPUTS("wan22/video") is True
    assert list(tmp_path.rglob("*.*")) == []  # the probe file is gone again
    assert "must be a relative name" in Wan22SaveVideo.VALIDATE_INPUTS("../up")
    (tmp_path / "taken").write_bytes(b"a file where the output folder should be")
    monkeypatch.setenv(host.OUTPUT_DIR_ENV, str(tmp_path / "taken" / "output"))
    verdict = Wan22SaveVideo.VALIDATE_INPUTS("wan22/video")
    assert verdict == f"Save Video: cannot write into {tmp_path / 'taken' / 'output'}: Not a directory"


def test_a_failed_node_decode_keeps_the_latents_for_its_latents_file_input(tmp_path, monkeypatch):
    monkeypatch.setenv(host.OUTPUT_DIR_ENV, str(tmp_path))
    vae_file = tmp_path / "vae.safetensors"
    write_safetensors(official_state_dict(build_vae("tiny-wan2.1")), vae_file)

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory even in 64x64-pixel tiles (simulated)")

    monkeypatch.setattr(WanVAE, "decode", out_of_memory)
    samples = torch.randn(1, 16, 1, 2, 2)
    handles.MODEL_CACHE.clear()
    node_handle = handles.VAEHandle(path=str(vae_file))
    with pytest.raises(LatentsKeptError, match=r"out of memory even in .* The latents are kept in .*latents_file"):
        Wan22VAEDecode().decode(node_handle, latent={"samples": samples})
    handles.MODEL_CACHE.clear()
    kept = next(tmp_path.glob("wan22_decode_failed_*.latents.safetensors"))
    latents, task = load_latents(kept)
    assert task is None and torch.equal(latents, normalize(samples)[0])  # kept as the VAE takes them


FP8_FORMATS = [torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64],
                         ids=lambda d: str(d).removeprefix("torch."))
def test_the_weight_scan_finds_each_non_finite_value_in_any_slice(dtype, monkeypatch):
    """The scan reads IEEE weights as integers (all exponent bits set: Inf or NaN), a slice at a time on the CPU."""
    from wan_core import finite

    monkeypatch.setattr(finite, "CPU_SLICE", 64)
    info = torch.finfo(dtype)
    edge = torch.tensor([info.max, -info.max, info.tiny, info.tiny / 4, -0.0, 0.0, info.eps], dtype=dtype)
    weights = torch.cat([torch.randn(994, dtype=dtype), edge]).reshape(-1, 7)
    assert non_finite_tensors([("w", weights)]) == [] and torch.isfinite(weights).all()
    for value in (float("nan"), float("inf"), float("-inf"), -float("nan")):
        for index in (0, 63, 64, 500, weights.numel() - 1):  # the first, a slice's last and next, the very last
            bad = weights.clone()
            bad.view(-1)[index] = value
            assert non_finite_tensors([("w", bad)]) == ["w"], (value, index)
            assert non_finite_tensors([("w", bad.t())]) == ["w"], (value, index)  # strided views too


@pytest.mark.parametrize("dtype", FP8_FORMATS, ids=lambda d: str(d).removeprefix("torch."))
def test_the_fp8_weight_scan_flags_exactly_the_non_finite_bit_patterns(dtype):
    """The load-time NaN/Inf scan reads fp8 weights as bytes; every one of the 256 patterns must be judged as
    float32 would judge it."""
    every_byte = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype)
    reference = {int(b) for b in range(256) if not torch.isfinite(every_byte[b:b + 1].float()).all()}
    assert reference  # each format has a NaN pattern
    flagged = {b for b in range(256) if non_finite_tensors([("w", every_byte[b:b + 1])])}
    assert flagged == reference
    finite = every_byte[[b for b in range(256) if b not in reference]]
    assert non_finite_tensors([("w", finite.reshape(-1, 1))]) == []
