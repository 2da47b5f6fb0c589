"""A video from a first and a last frame (i2v-A14B).

The conditioning against two references written out below: Wan2.1's official ``wan/first_last_frame2video.py`` (the
mask and the video the VAE encodes) and ComfyUI's native ``WanFirstLastFrameToVideo`` (``comfy_extras/nodes_wan.py``)
with the ``1 - mask`` of ``WAN21.concat_cond`` (``comfy/model_base.py``). Then the pipeline, the sampler node and the
CLI carrying the last frame there, and the refusals.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from test_native_interop import SAMPLER, tiny_models  # noqa: F401 - the module's fixture
from test_pipeline import image, make_pipeline, text_encoder  # noqa: F401 - the module's fixture
from test_workflows import _tiny_node_models

from nodes import handles, host
from nodes.sampler import Wan22DiTSampler
from nodes.text_encode import Wan22T5Encode
from wan_core.errors import InputError
from wan_core.generate import build_parser, resolve_request
from wan_core.pipeline import conditioning
from wan_core.pipeline.denoise import sample_latents
from wan_core.pipeline.request import SamplingRequest


class EncodingVAE:
    """Stands in for a VAE: keeps each video it encodes and returns a random latent of the right shape."""

    def __init__(self) -> None:
        self.videos: list[torch.Tensor] = []
        self.latents: list[torch.Tensor] = []

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        self.videos.append(video)
        batch, _, frames, height, width = video.shape
        latent = torch.randn(batch, 16, (frames - 1) // 4 + 1, height // 8, width // 8,
                             generator=torch.Generator().manual_seed(len(self.videos)))
        self.latents.append(latent)
        return latent


def wan21_flf2v(first: torch.Tensor, last: torch.Tensor, frame_num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask channels, video the VAE encodes) as ``wan/first_last_frame2video.py`` builds them."""
    h, w = first.shape[1:]
    lat_h, lat_w = h // 8, w // 8
    msk = torch.ones(1, frame_num, lat_h, lat_w)
    msk[:, 1:-1] = 0
    msk = torch.concat([torch.repeat_interleave(msk[:, 0:1], repeats=4, dim=1), msk[:, 1:]], dim=1)
    msk = msk.view(1, msk.shape[1] // 4, 4, lat_h, lat_w).transpose(1, 2)[0]
    video = torch.concat([first[:, None], torch.zeros(3, frame_num - 2, h, w), last[:, None]], dim=1)
    return msk, video


def comfy_native_flf(start: torch.Tensor, end: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask channels the model sees, video the VAE encodes in [-1, 1]) of ``WanFirstLastFrameToVideo`` for one
    IMAGE each ``[1, H, W, 3]`` in 0..1 of the output size."""
    height, width = start.shape[1:3]
    latent_frames, lat_h, lat_w = (length - 1) // 4 + 1, height // 8, width // 8
    pictures = torch.ones((length, height, width, 3)) * 0.5
    mask = torch.ones((1, 1, latent_frames * 4, lat_h, lat_w))
    pictures[: start.shape[0]] = start
    mask[:, :, : start.shape[0] + 3] = 0.0
    pictures[-end.shape[0] :] = end
    mask[:, :, -end.shape[0] :] = 0.0
    mask = mask.view(1, mask.shape[2] // 4, 4, mask.shape[3], mask.shape[4]).transpose(1, 2)
    return (1.0 - mask)[0], pictures.permute(3, 0, 1, 2) * 2.0 - 1.0


@pytest.mark.parametrize("frame_num", [5, 9, 81])
def test_the_conditioning_is_wan21_flf2v_and_comfyui_natives(frame_num):
    gen = torch.Generator().manual_seed(frame_num)
    start, end = torch.rand(1, 48, 64, 3, generator=gen), torch.rand(1, 48, 64, 3, generator=gen)
    first, last = start[0].permute(2, 0, 1) * 2 - 1, end[0].permute(2, 0, 1) * 2 - 1
    vae = EncodingVAE()
    y = conditioning.i2v_condition(vae, first, width=64, height=48, frame_num=frame_num, device="cpu",
                                   last_image=last)
    latent_frames = (frame_num - 1) // 4 + 1
    assert y.shape == (20, latent_frames, 6, 8)
    torch.testing.assert_close(y[4:], vae.latents[0][0], rtol=0, atol=0)

    official_mask, official_video = wan21_flf2v(first, last, frame_num)
    native_mask, native_video = comfy_native_flf(start, end, frame_num)
    torch.testing.assert_close(y[:4], official_mask, rtol=0, atol=0)
    torch.testing.assert_close(y[:4], native_mask, rtol=0, atol=0)
    torch.testing.assert_close(vae.videos[0][0], official_video, rtol=0, atol=0)
    torch.testing.assert_close(vae.videos[0][0], native_video, rtol=0, atol=1e-6)  # 0.5 * 2 - 1 and 8-bit rounding
    # the last latent frame marks only its last pixel frame as given; the first marks all four of frame 0's channels
    assert y[:4, -1].flatten(1).amax(1).tolist() == [0, 0, 0, 1] and y[:4, 0].min() == 1


def test_a_last_image_of_another_shape_is_fitted_like_the_start_image():
    start = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    end = torch.rand(3, 90, 100, generator=torch.Generator().manual_seed(2)) * 2 - 1
    vae = EncodingVAE()
    conditioning.i2v_condition(vae, start, width=64, height=48, frame_num=5, device="cpu", last_image=end)
    torch.testing.assert_close(vae.videos[0][0, :, -1], conditioning.fit_image(end, 64, 48), rtol=0, atol=0)


def test_the_pipeline_samples_from_the_first_last_frame_conditioning(text_encoder):  # noqa: F811 - the fixture
    pipe = make_pipeline("i2v-A14B", text_encoder)
    first, last = image(32, 48), image(48, 32)
    request = SamplingRequest.create("i2v-A14B", seed=3, width=32, height=48, frame_num=9, steps=3)
    cond, uncond = pipe.encode_prompts("a boat", None)
    ours = pipe.sample(cond, uncond, request, image=first, last_image=last)
    y = conditioning.i2v_condition(pipe.vae, first, width=32, height=48, frame_num=9, device="cpu", last_image=last)
    reference = sample_latents(request, high_noise_model=pipe.high_noise_model, low_noise_model=pipe.low_noise_model,
                               cond=cond, uncond=uncond, runtime=pipe.runtime, y=y)
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    assert not torch.equal(ours, pipe.sample(cond, uncond, request, image=first))  # the last frame changes the video


@pytest.fixture
def i2v_parts(tiny_models, monkeypatch):  # noqa: F811 - the fixture
    monkeypatch.setenv(host.MODELS_DIR_ENV, str(tiny_models))
    handles.MODEL_CACHE.clear()
    yield _tiny_node_models("i2v-A14B")
    handles.MODEL_CACHE.clear()


def test_the_sampler_node_takes_an_end_image(i2v_parts, monkeypatch):
    dit, t5, vae = i2v_parts
    conditioning_out, *_ = Wan22T5Encode().encode(t5, "a fox in snow", "blurry")
    start = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(4))
    end = torch.rand(1, 40, 40, 3, generator=torch.Generator().manual_seed(5))
    seen = []
    real = conditioning.i2v_condition
    monkeypatch.setattr(conditioning, "i2v_condition", lambda *a, **k: seen.append(k) or real(*a, **k))
    sampler = Wan22DiTSampler()
    (with_end,) = sampler.sample(dit, **SAMPLER, conditioning=conditioning_out, vae=vae, start_image=start,
                                 end_image=end)
    (without,) = sampler.sample(dit, **SAMPLER, conditioning=conditioning_out, vae=vae, start_image=start)
    torch.testing.assert_close(seen[0]["last_image"], end[0].permute(2, 0, 1) * 2 - 1, rtol=0, atol=0)
    assert seen[1]["last_image"] is None
    assert with_end["samples"].shape == without["samples"].shape == (1, 16, 2, 4, 4)
    assert not torch.equal(with_end["samples"], without["samples"])
    with pytest.raises(InputError, match="i2v-A14B needs an input image"):
        sampler.sample(dit, **SAMPLER, conditioning=conditioning_out, vae=vae, end_image=end)
    with pytest.raises(InputError, match="end_image holds 2 pictures"):
        sampler.sample(dit, **SAMPLER, conditioning=conditioning_out, vae=vae, start_image=start,
                       end_image=torch.cat([end, end]))
    with pytest.raises(InputError, match="needs at least 5 frames; 1 was asked for"):
        sampler.sample(dit, **{**SAMPLER, "frames": 1}, conditioning=conditioning_out, vae=vae, start_image=start,
                       end_image=end)


def _write_image(path, width: int, height: int, seed: int) -> str:
    pixels = torch.randint(0, 256, (height, width, 3), generator=torch.Generator().manual_seed(seed))
    Image.fromarray(pixels.to(torch.uint8).numpy()).save(path)
    return str(path)


def test_the_cli_fits_the_last_frame_to_the_first_and_sizes_both_alike(tmp_path):
    first = _write_image(tmp_path / "first.png", 160, 96, 1)
    last = _write_image(tmp_path / "last.png", 200, 150, 2)
    args = build_parser().parse_args(["--task", "i2v-A14B", "--demo", "--size", "64*48", "--image", first,
                                      "--last_frame", last, "--save_file", str(tmp_path / "o.mp4")])
    request = resolve_request(args)
    expected_last = conditioning.cover_and_crop(Image.open(last).convert("RGB"), 160, 96)
    reference, width, height = conditioning.official_image_input(expected_last, "i2v-A14B", max_area=64 * 48)
    assert request.last_image.shape == request.image.shape == (3, height, width)
    assert (request.sampling.width, request.sampling.height) == (width, height)
    torch.testing.assert_close(request.last_image, reference, rtol=0, atol=0)


@pytest.mark.parametrize(("flags", "message"), [
    (["--task", "t2v-A14B"], "task t2v-A14B takes no last frame"),
    (["--task", "ti2v-5B"], "task ti2v-5B takes no last frame"),
    (["--task", "i2v-A14B", "--frame_num", "1"], "needs at least 5 frames"),
    (["--task", "i2v-A14B", "--ckpt_dir", "."], "i2v-A14B needs an input image"),
])  # fmt: skip
def test_the_cli_refuses_a_last_frame_it_cannot_use(tmp_path, flags, message):
    last = _write_image(tmp_path / "last.png", 64, 48, 3)
    demo = [] if "--ckpt_dir" in flags else ["--demo"]
    args = build_parser().parse_args([*flags, *demo, "--last_frame", last, "--save_file", str(tmp_path / "o.mp4")])
    with pytest.raises(InputError, match=message):
        resolve_request(args)


def test_the_cli_makes_the_video_and_refuses_chunks_with_it(capsys, monkeypatch, tmp_path_factory, tmp_path):
    from test_cli import run_cli, run_demo

    demo_home = tmp_path_factory.mktemp("demo_cache")
    last = _write_image(tmp_path / "last.png", 64, 48, 4)
    small = ("--task", "i2v-A14B", "--size", "64*48", "--frame_num", "5", "--sample_steps", "2", "--base_seed", "3")
    _, plain = run_demo(capsys, monkeypatch, demo_home, tmp_path / "plain", *small)
    _, ended = run_demo(capsys, monkeypatch, demo_home, tmp_path / "ended", *small, "--last_frame", last)
    assert ended.shape == plain.shape == (3, 5, 48, 64)
    assert (ended - plain).abs().max() > 1e-2
    code, _, err = run_cli(capsys, "--demo", "--device", "cpu", *small, "--last_frame", last, "--chunks", "2",
                           "--save_file", str(tmp_path / "c.mp4"))
    assert code == 2 and "--last_frame ends one video; --chunks continues" in err


def test_all_gpus_encode_the_last_frame_before_the_workers_denoise(monkeypatch):
    from nodes import all_gpus

    class Pipeline:
        def image_condition(self, image, request, last_image=None):
            self.seen = (image, request, last_image)
            return "y", None

    handed = []
    monkeypatch.setattr(all_gpus, "denoise_on_all_gpus", lambda *args: handed.append(args) or "latents")
    pipeline, first, last = Pipeline(), torch.zeros(3, 8, 8), torch.ones(3, 8, 8)
    cond = type("Cond", (), {"positive": ("p",), "negative": ("n",)})()
    out = all_gpus.sample_on_all_gpus("dit", pipeline, cond, "request", first, None, None, last_image=last)
    assert out == "latents" and pipeline.seen == (first, "request", last) and handed[0][-2:] == ("y", None)
