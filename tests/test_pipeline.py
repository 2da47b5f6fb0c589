"""WanPipeline end to end on CPU with the tiny real models (tiny WanDiT, tiny UMT5 + demo tokenizer, tiny VAEs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wan_core.configs import DIT_CONFIGS
from wan_core.dit import WanDiT
from wan_core.errors import InputError
from wan_core.pipeline import DEFAULT_NEGATIVE_PROMPT, GenerationCancelled, StepInfo, WanPipeline, conditioning
from wan_core.pipeline.request import SamplingRequest
from wan_core.runtime import Runtime
from wan_core.sampling import make_schedule
from wan_core.text.demo import build_tiny_umt5
from wan_core.text.encoder import TextEncoder
from wan_core.text.tokenizer import build_demo_tokenizer, load_tokenizer
from wan_core.vae.model import build_vae


class Spy:
    """Wraps a model; counts calls (and records the text encoder's prompts)."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.inner(*args, **kwargs)

    def encode(self, prompts):
        self.calls.append(list(prompts))
        return self.inner.encode(prompts)

    def to(self, device):
        self.inner.to(device)
        return self

    def parameters(self):
        return self.inner.parameters() if hasattr(self.inner, "parameters") else iter(())


def dit(name: str, seed: int) -> WanDiT:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WanDiT(DIT_CONFIGS[name]).eval()


@pytest.fixture(scope="module")
def text_encoder(tmp_path_factory):
    tokenizer = load_tokenizer(build_demo_tokenizer(tmp_path_factory.mktemp("tokenizer")))
    return TextEncoder(build_tiny_umt5(), tokenizer)


def vae(name: str):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        return build_vae(name)


def make_pipeline(task: str, text_encoder, offload: bool = False) -> WanPipeline:
    if task == "ti2v-5B":
        high, low, vae_model = Spy(dit("tiny-ti2v", 0)), None, vae("tiny-wan2.2")
    else:
        name = "tiny-t2v" if task == "t2v-A14B" else "tiny-i2v"
        high, low, vae_model = Spy(dit(name, 0)), Spy(dit(name, 1)), vae("tiny-wan2.1")
    return WanPipeline(
        task, text_encoder=Spy(text_encoder), vae=vae_model, high_noise_model=high, low_noise_model=low,
        runtime=Runtime(offload=offload),
    )


T2V = {"width": 32, "height": 32, "frame_num": 5, "steps": 4}


def t2v(**kwargs) -> SamplingRequest:
    return SamplingRequest.create("t2v-A14B", **{**T2V, **kwargs})


def image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_t2v_end_to_end_and_seeds(text_encoder):
    pipe = make_pipeline("t2v-A14B", text_encoder)
    a = pipe.generate("a cat surfing", t2v(seed=7))
    b = pipe.generate("a cat surfing", t2v(seed=7))
    c = pipe.generate("a cat surfing", t2v(seed=8))
    assert a.shape == (3, 5, 32, 32) and a.dtype == torch.float32 and a.device.type == "cpu"
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # 4 steps, 2 forwards each, split between the experts at the boundary
    assert len(pipe.high_noise_model.calls) + len(pipe.low_noise_model.calls) == 3 * 4 * 2


def test_stages_compose_to_generate(text_encoder):
    pipe = make_pipeline("t2v-A14B", text_encoder)
    request = t2v(seed=3, solver="dpm++")
    video = pipe.generate("a red fox", request)
    cond, uncond = pipe.encode_prompts("a red fox")
    latents = pipe.sample(cond, uncond, request)
    assert latents.shape == (16, 2, 4, 4) and latents.dtype == torch.float32
    assert torch.equal(pipe.decode(latents), video)
    # the nodes pass embeddings as lists of one tensor
    again = pipe.sample([cond], [uncond], request)
    assert torch.equal(again, latents)


@pytest.mark.parametrize("solver", ["unipc", "dpm++", "euler"])
def test_progress_reports_every_step(text_encoder, solver):
    pipe = make_pipeline("t2v-A14B", text_encoder)
    seen: list[StepInfo] = []
    cond, uncond = pipe.encode_prompts("waves")
    pipe.sample(cond, uncond, t2v(seed=0, solver=solver, steps=6, shift=3.0), progress=seen.append)
    grid = "dpm" if solver == "dpm++" else "unipc"
    timesteps = make_schedule(grid, 6, 3.0).timesteps.tolist()
    assert [s.step for s in seen] == [1, 2, 3, 4, 5, 6] and {s.total for s in seen} == {6}
    assert [s.timestep for s in seen] == timesteps
    assert [s.expert for s in seen] == ["high_noise" if t >= 875 else "low_noise" for t in timesteps]
    assert "high_noise" in {s.expert for s in seen} and "low_noise" in {s.expert for s in seen}
    assert all(s.latents.shape == (16, 2, 4, 4) and s.seconds >= 0 for s in seen)


def test_cancel_stops_between_steps(text_encoder):
    pipe = make_pipeline("t2v-A14B", text_encoder)
    seen = []
    with pytest.raises(GenerationCancelled, match="after 2 of 4 steps") as info:
        pipe.generate("a dog", t2v(seed=0), progress=seen.append, cancel=lambda: len(seen) >= 2)
    assert (info.value.step, info.value.total) == (2, 4)
    assert len(seen) == 2
    assert len(pipe.high_noise_model.calls) + len(pipe.low_noise_model.calls) == 2 * 2

    pipe = make_pipeline("t2v-A14B", text_encoder)
    with pytest.raises(GenerationCancelled, match="after 0 of 4 steps"):
        pipe.generate("a dog", t2v(seed=0), cancel=lambda: True)
    assert pipe.high_noise_model.calls == [] and pipe.low_noise_model.calls == []


def test_request_validation_and_image_checks_run_before_any_model(text_encoder):
    for kwargs, message in [
        ({"height": 721}, "height 721 is not a multiple of 16: use 720"),
        ({"frame_num": 80}, "frame_num 80 is not 4k\\+1: use 81"),
        ({"steps": 0}, "sample_steps 0 must be at least 1"),
        ({"solver": "ddim"}, "unknown sample_solver 'ddim'"),
        ({"shift": -1.0}, "sample_shift -1.0 must be a finite number above 0"),
    ]:
        with pytest.raises(InputError, match=message):
            t2v(**kwargs)
    pipe = make_pipeline("t2v-A14B", text_encoder)
    with pytest.raises(InputError, match="takes no input image"):
        pipe.generate("x", t2v(), image=image(32, 32))
    with pytest.raises(InputError, match="the request is for i2v-A14B, this pipeline runs t2v-A14B"):
        pipe.generate("x", SamplingRequest.create("i2v-A14B", **T2V))
    assert pipe.text_encoder.calls == [] and pipe.high_noise_model.calls == []

    i2v = make_pipeline("i2v-A14B", text_encoder)
    request = SamplingRequest.create("i2v-A14B", **T2V)
    with pytest.raises(InputError, match="i2v-A14B needs an input image"):
        i2v.generate("x", request)
    with pytest.raises(InputError, match="image must be a \\[3, H, W\\] tensor"):
        i2v.generate("x", request, image=torch.zeros(1, 3, 32, 32))
    assert i2v.text_encoder.calls == []


def test_negative_prompt(text_encoder):
    pipe = make_pipeline("t2v-A14B", text_encoder)
    pipe.encode_prompts("a cat")
    pipe.encode_prompts("a cat", "")
    pipe.encode_prompts("a cat", "blurry")
    assert pipe.text_encoder.calls == [
        ["a cat"], [DEFAULT_NEGATIVE_PROMPT], ["a cat"], [DEFAULT_NEGATIVE_PROMPT], ["a cat"], ["blurry"],
    ]  # fmt: skip


def test_defaults_come_from_the_task():
    request = SamplingRequest.create("t2v-A14B")
    assert (request.width, request.height, request.frame_num, request.steps) == (1280, 720, 81, 40)
    assert (request.solver, request.shift, request.guide_scale) == ("unipc", 12.0, (3.0, 4.0))
    assert 0 <= request.seed and request.boundary_step is None
    ti2v = SamplingRequest.create("ti2v-5B", seed=4)
    assert (ti2v.width, ti2v.height, ti2v.frame_num, ti2v.steps, ti2v.seed) == (1280, 704, 121, 50, 4)


def test_i2v_end_to_end(text_encoder):
    pipe = make_pipeline("i2v-A14B", text_encoder)
    start = image(40, 50)
    request = SamplingRequest.create("i2v-A14B", seed=1, width=32, height=48, frame_num=5, steps=3)
    a = pipe.generate("a boat", request, image=start)
    b = pipe.generate("a boat", request, image=start)
    assert a.shape == (3, 5, 48, 32) and torch.equal(a, b)
    y = pipe.high_noise_model.calls[0][1]["y"]
    assert y.shape == (1, 20, 2, 6, 4)
    assert torch.equal(y[0, :4, 0], torch.ones(4, 6, 4)) and torch.equal(y[0, :4, 1], torch.zeros(4, 6, 4))


def test_ti2v_end_to_end(text_encoder):
    pipe = make_pipeline("ti2v-5B", text_encoder)
    start = image(64, 96)
    request = SamplingRequest.create("ti2v-5B", width=64, height=64, frame_num=5, steps=3, seed=2)
    cond, uncond = pipe.encode_prompts("a kite")
    latents = pipe.sample(cond, uncond, request, image=start)
    first = conditioning.ti2v_first_frame_latent(pipe.vae, start, width=64, height=64, device="cpu")
    assert latents.shape == (48, 2, 4, 4) and torch.equal(latents[:, :1], first)
    t = pipe.high_noise_model.calls[0][0][1]
    assert t.shape == (1, 2 * 2 * 2) and torch.all(t[0, :4] == 0) and torch.all(t[0, 4:] == 999)
    video = pipe.generate("a kite", request, image=start)
    assert video.shape == (3, 5, 64, 64)
    assert pipe.generate("a kite", request).shape == (3, 5, 64, 64)  # text-to-video with the same model


def test_offload_model_runs_and_leaves_models_on_cpu(text_encoder):
    pipe = make_pipeline("t2v-A14B", text_encoder, offload=True)
    plain = make_pipeline("t2v-A14B", text_encoder)
    assert torch.equal(pipe.generate("a tree", t2v(seed=5)), plain.generate("a tree", t2v(seed=5)))
    for model in (pipe.high_noise_model.inner, pipe.low_noise_model.inner, pipe.vae):
        assert next(model.parameters()).device.type == "cpu"


# -- conditioning helpers against the official formulas -------------------------------------------------------


def official_i2v_mask(F: int, lat_h: int, lat_w: int) -> torch.Tensor:
    msk = torch.ones(1, F, lat_h, lat_w)
    msk[:, 1:] = 0
    msk = torch.concat([torch.repeat_interleave(msk[:, 0:1], repeats=4, dim=1), msk[:, 1:]], dim=1)
    msk = msk.view(1, msk.shape[1] // 4, 4, lat_h, lat_w)
    return msk.transpose(1, 2)[0]


@pytest.mark.parametrize("frames", [1, 5, 9, 81])
def test_i2v_mask(frames):
    assert torch.equal(conditioning.i2v_mask(frames, 6, 4), official_i2v_mask(frames, 6, 4))


def test_per_token_timesteps_match_the_official_expression():
    noise = torch.zeros(48, 3, 4, 6)
    mask = conditioning.first_frame_mask(noise.shape)
    timestep = torch.tensor([937])
    seq_len = 3 * 2 * 3
    expected = (mask[0][:, ::2, ::2] * timestep).flatten()
    expected = torch.cat([expected, expected.new_ones(seq_len - expected.size(0)) * timestep]).unsqueeze(0)
    got = conditioning.per_token_timesteps(mask, timestep, seq_len)
    assert torch.equal(got, expected) and got.dtype == torch.float32


def test_official_output_sizes():
    # i2v-A14B: the official lat_h/lat_w rule for max_area = 1280*720
    w, h = conditioning.official_output_size("i2v-A14B", 1000, 750, 1280 * 720)
    lat_h = round(np.sqrt(1280 * 720 * 0.75) // 8 // 2 * 2)
    lat_w = round(np.sqrt(1280 * 720 / 0.75) // 8 // 2 * 2)
    assert (w, h) == (lat_w * 8, lat_h * 8) and w % 16 == 0 and h % 16 == 0
    # ti2v-5B: best_output_size with multiples of 32
    assert conditioning.official_output_size("ti2v-5B", 1280, 704, 1280 * 704) == (1280, 704)
    w, h = conditioning.official_output_size("ti2v-5B", 900, 1600, 1280 * 704)
    assert w % 32 == 0 and h % 32 == 0 and w * h <= 1280 * 704 and h > w
    with pytest.raises(InputError, match="takes no input image"):
        conditioning.official_output_size("t2v-A14B", 10, 10, 100)


def test_official_image_input():
    from PIL import Image

    pil = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8))
    tensor, w, h = conditioning.official_image_input(pil, "ti2v-5B", 1280 * 704)
    assert tensor.shape == (3, h, w) and w % 32 == 0 and h % 32 == 0
    assert tensor.min() >= -1 and tensor.max() <= 1
    tensor, w, h = conditioning.official_image_input(pil, "i2v-A14B", 832 * 480)
    assert (w, h) == conditioning.official_output_size("i2v-A14B", 500, 300, 832 * 480)
    expected = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float() / 255 * 2 - 1
    expected = torch.nn.functional.interpolate(expected[None], size=(h, w), mode="bicubic")[0]  # image2video.py
    assert tensor.shape == (3, h, w) and torch.allclose(tensor, expected, atol=1e-6)


def test_fit_image_keeps_the_right_size():
    img = image(64, 64)
    assert conditioning.fit_image(img, 64, 64) is img
    out = conditioning.fit_image(image(50, 100), 64, 32)
    assert out.shape == (3, 32, 64) and out.abs().max() <= 1


def test_each_expert_is_placed_through_the_runtime_placer_at_its_switch():
    """The nodes hand ComfyUI's memory manager in as the runtime's placer (`DiTHandle.runtime(host_placement=True)`),
    so the expert the sampler switches to is loaded within ComfyUI's budget, the other evicted if need be."""
    from nodes.handles import DiTHandle, move_module
    from wan_core.pipeline.denoise import sample_latents

    handle = DiTHandle(task="t2v-A14B", high_noise_path="high", low_noise_path="low", device="cpu")
    placer = handle.runtime(host_placement=True, memory_required=5).placer
    assert handle.runtime().placer is None and (placer.func, placer.keywords) == (move_module, {"memory_required": 5})
    placed = []
    runtime = Runtime(placer=lambda model, device: placed.append((model, device)))
    high, low = dit("tiny-t2v", 0), dit("tiny-t2v", 1)
    text = torch.randn(7, DIT_CONFIGS["tiny-t2v"].text_dim, generator=torch.Generator().manual_seed(0))
    sample_latents(t2v(seed=3, guide_scale=1.0), high_noise_model=high, low_noise_model=low, cond=text, uncond=text,
                   runtime=runtime)
    assert placed == [(high, torch.device("cpu")), (low, torch.device("cpu"))]
