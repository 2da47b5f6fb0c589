"""Our nodes in ComfyUI's conventions: LATENT holds raw VAE latents, CONDITIONING is native's list of
[embedding, dict]; video-to-video through the sampler's latent input and denoise strength."""

from __future__ import annotations

import pytest
import torch
from test_workflows import _tiny_node_models, _write_tiny_models

from nodes import handles, host
from nodes.conditioning import WanConditioning, to_comfy
from nodes.sampler import Wan22DiTSampler
from nodes.text_encode import Wan22T5Encode
from nodes.vae_nodes import Wan22VAEDecode, Wan22VAEEncode, images_to_video, video_to_images
from wan_core.errors import InputError
from wan_core.pipeline.denoise import sample_latents
from wan_core.pipeline.pipeline import WanPipeline
from wan_core.pipeline.request import SamplingRequest
from wan_core.pipeline.strength import first_step
from wan_core.pipeline.tasks import get_task
from wan_core.runtime import Runtime
from wan_core.vae.config import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD

SIZE = {"width": 32, "height": 32, "frames": 5}
SAMPLER = {**SIZE, "steps": 3, "solver": "unipc", "shift": 5.0, "cfg_high_noise": 4.0, "cfg_low_noise": 3.0,
           "seed": 7}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    _write_tiny_models(models)
    return models


@pytest.fixture
def parts(tiny_models, monkeypatch):
    monkeypatch.setenv(host.MODELS_DIR_ENV, str(tiny_models))
    handles.MODEL_CACHE.clear()
    yield _tiny_node_models("t2v-A14B")
    handles.MODEL_CACHE.clear()


def _published_raw(normalized: torch.Tensor) -> torch.Tensor:
    """ComfyUI's Wan21.process_out written from the published constants."""
    mean = torch.tensor(WAN21_LATENTS_MEAN).view(1, 16, 1, 1, 1)
    std = torch.tensor(WAN21_LATENTS_STD).view(1, 16, 1, 1, 1)
    return normalized * std + mean


def test_vae_nodes_give_and_take_raw_vae_latents(parts):
    _dit, _t5, vae = parts
    images = torch.rand(5, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    (latent,) = Wan22VAEEncode().encode(vae, images)
    assert set(latent) == {"samples"} and latent["samples"].shape == (1, 16, 2, 4, 4)
    network = vae.load().model
    with torch.no_grad():
        raw = network.encode_raw(images_to_video(images)[None])  # the network's own latents, no normalization
        frames = network.decode_raw(latent["samples"]).clamp(-1, 1)
    torch.testing.assert_close(latent["samples"], raw, rtol=1e-5, atol=1e-5)
    (decoded,) = Wan22VAEDecode().decode(vae, latent, False, 256, 64)
    torch.testing.assert_close(decoded, video_to_images(frames[0]), rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="48 channels"):
        Wan22VAEDecode().decode(vae, {"samples": torch.zeros(1, 48, 2, 2, 2)}, False, 256, 64)
    with pytest.raises(InputError, match="image latent"):
        Wan22VAEDecode().decode(vae, {"samples": torch.zeros(1, 4, 8, 8)}, False, 256, 64)


def test_sampler_hands_out_raw_latents_that_decode_like_the_cli_path(parts):
    dit, t5, vae = parts
    conditioning, *_ = Wan22T5Encode().encode(t5, "a fox in snow", "blurry")
    (latent,) = Wan22DiTSampler().sample(dit, **SAMPLER, conditioning=conditioning, denoise=1.0)
    high, low = dit.load()
    pipeline = WanPipeline(get_task("t2v-A14B"), text_encoder=None, vae=vae.load(), high_noise_model=high,
                           low_noise_model=low)
    request = SamplingRequest.create("t2v-A14B", width=32, height=32, frame_num=5, seed=7, steps=3, shift=5.0,
                                     guide_scale=(3.0, 4.0))
    normalized = pipeline.sample(list(conditioning.positive), list(conditioning.negative), request)
    torch.testing.assert_close(latent["samples"], _published_raw(normalized[None]), rtol=1e-5, atol=1e-5)
    (images,) = Wan22VAEDecode().decode(vae, latent, False, 256, 64)
    torch.testing.assert_close(images, video_to_images(pipeline.decode(normalized)), rtol=1e-4, atol=1e-4)


def test_native_conditioning_drives_the_sampler_as_ours_does(parts):
    dit, t5, _vae = parts
    conditioning, positive, negative = Wan22T5Encode().encode(t5, "a fox in snow", "blurry")
    cond = conditioning.positive[0]
    assert positive[0][0].shape == (1, 512, cond.shape[-1])  # padded like CLIPTextEncode's umt5 output
    torch.testing.assert_close(positive[0][0][0, : cond.shape[0]], cond)
    assert positive[0][0][0, cond.shape[0]:].abs().max() == 0
    (ours,) = Wan22DiTSampler().sample(dit, **SAMPLER, conditioning=conditioning)
    (native,) = Wan22DiTSampler().sample(dit, **SAMPLER, positive=positive, negative=negative)
    torch.testing.assert_close(native["samples"], ours["samples"], rtol=0, atol=0)
    with pytest.raises(InputError, match="not both"):
        Wan22DiTSampler().sample(dit, **SAMPLER, conditioning=conditioning, positive=positive, negative=negative)
    with pytest.raises(InputError, match="needs prompts"):
        Wan22DiTSampler().sample(dit, **SAMPLER, positive=positive)
    with pytest.raises(InputError, match="combined"):
        Wan22DiTSampler().sample(dit, **SAMPLER, positive=positive + positive, negative=negative)


def test_latent_input_sets_the_size_and_starts_the_sampler_from_it(parts):
    dit, t5, vae = parts
    conditioning, *_ = Wan22T5Encode().encode(t5, "a fox in snow", "blurry")
    empty = {"samples": torch.zeros(1, 16, 2, 4, 4)}  # what EmptyHunyuanLatentVideo makes for 32x32, 5 frames
    other_size = {**SAMPLER, "width": 64, "height": 48, "frames": 9}
    (from_latent,) = Wan22DiTSampler().sample(dit, **other_size, conditioning=conditioning, latent=empty)
    (plain,) = Wan22DiTSampler().sample(dit, **SAMPLER, conditioning=conditioning)
    torch.testing.assert_close(from_latent["samples"], plain["samples"], rtol=0, atol=0)

    images = torch.rand(5, 32, 32, 3, generator=torch.Generator().manual_seed(3))
    (source,) = Wan22VAEEncode().encode(vae, images)
    (out,) = Wan22DiTSampler().sample(dit, **SAMPLER, conditioning=conditioning, latent=source, denoise=0.34)
    high, low = dit.load()
    pipeline = WanPipeline(get_task("t2v-A14B"), text_encoder=None, vae=None, high_noise_model=high,
                           low_noise_model=low)
    mean = torch.tensor(WAN21_LATENTS_MEAN).view(16, 1, 1, 1)
    std = torch.tensor(WAN21_LATENTS_STD).view(16, 1, 1, 1)
    request = SamplingRequest.create("t2v-A14B", width=32, height=32, frame_num=5, seed=7, steps=3, shift=5.0,
                                     guide_scale=(3.0, 4.0), denoise=0.34)
    want = pipeline.sample(list(conditioning.positive), list(conditioning.negative), request,
                           init_latents=(source["samples"][0] - mean) / std)
    torch.testing.assert_close(out["samples"], _published_raw(want[None]), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out["samples"], plain["samples"], atol=1e-2)
    wrong = {**SAMPLER, "conditioning": conditioning}
    with pytest.raises(InputError, match="48 channels"):
        Wan22DiTSampler().sample(dit, **wrong, latent={"samples": torch.zeros(1, 48, 2, 2, 2)})
    with pytest.raises(InputError, match="noise_mask"):
        masked = {"samples": torch.zeros(1, 16, 2, 4, 4), "noise_mask": torch.ones(1, 1, 2, 4, 4)}
        masked["noise_mask"][:, :, 0] = 0  # Wan22ImageToVideoLatent keeps the start frame
        Wan22DiTSampler().sample(dit, **wrong, latent=masked)
    with pytest.raises(InputError, match="2 videos"):
        Wan22DiTSampler().sample(dit, **wrong, latent={"samples": torch.zeros(2, 16, 2, 4, 4)})


class LinearFlow(torch.nn.Module):
    """A model whose flow is a fixed linear map of the latent (independent of t and context)."""

    def forward(self, x, t, context, y=None, attention=None):
        return [0.3 * x[0] - 0.1]


def test_denoise_starts_at_the_matching_step_with_the_noised_input():
    shape = (48, 2, 4, 4)
    init = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    context = torch.zeros(3, 8)
    request = SamplingRequest.create("ti2v-5B", width=64, height=64, frame_num=5, seed=5, solver="euler", steps=8,
                                     shift=3.0, guide_scale=1.0, denoise=0.5)
    got = sample_latents(request, high_noise_model=LinearFlow(), low_noise_model=None, cond=context, uncond=context,
                         runtime=Runtime(), init_latents=init)
    # reference: the Euler update written out, from sigma[4] of the 8-step shifted grid
    from wan_core.pipeline.denoise import initial_noise
    from wan_core.sampling import make_solver

    sigmas = make_solver("euler", 8, 3.0).sigmas
    assert first_step(8, 0.5) == 4
    x = (1 - sigmas[4]) * init + sigmas[4] * initial_noise(shape, 5, "cpu")
    for i in range(4, 8):
        x = x + (sigmas[i + 1] - sigmas[i]) * (0.3 * x - 0.1)
    torch.testing.assert_close(got, x, rtol=1e-5, atol=1e-5)


class Oracle(torch.nn.Module):
    """The exact flow toward a known clean latent: (x_t - x0) / sigma."""

    def __init__(self, x0: torch.Tensor, sigmas: torch.Tensor, timesteps: torch.Tensor):
        super().__init__()
        self.x0, self.table = x0, dict(zip(timesteps.tolist(), sigmas.tolist(), strict=False))

    def forward(self, x, t, context, y=None, attention=None):
        return [(x[0] - self.x0) / self.table[t.item()]]


@pytest.mark.parametrize("solver", ["unipc", "dpm++", "euler"])
def test_every_solver_runs_from_a_later_step_to_the_clean_latent(solver):
    from wan_core.sampling import make_solver

    shape = (48, 2, 4, 4)
    x0 = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    reference = make_solver(solver, 10, 5.0)
    oracle = Oracle(x0, reference.sigmas, reference.timesteps)
    context = torch.zeros(3, 8)
    request = SamplingRequest.create("ti2v-5B", width=64, height=64, frame_num=5, seed=1, solver=solver, steps=10,
                                     shift=5.0, guide_scale=1.0, denoise=0.45)
    got = sample_latents(request, high_noise_model=oracle, low_noise_model=None, cond=context, uncond=context,
                         runtime=Runtime(), init_latents=torch.randn(shape))
    torch.testing.assert_close(got, x0, rtol=1e-4, atol=1e-4)


def test_denoise_strength_is_checked_and_to_comfy_keeps_long_prompts():
    with pytest.raises(InputError, match="denoise"):
        first_step(10, 0.0)
    assert first_step(10, 1.0) == 0 and first_step(10, 0.01) == 9
    long = torch.randn(600, 8)
    (padded, extra), = to_comfy(long)
    assert padded.shape == (1, 600, 8) and extra == {"pooled_output": None}
    assert isinstance(WanConditioning(positive=(long,), negative=(long,)).to(torch.device("cpu")), WanConditioning)
