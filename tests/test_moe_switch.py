"""The MoE expert switch, the guide scale per expert, offloading and ti2v per-token timesteps in the denoising loop,
with recording fake experts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wan_core import runtime as runtime_module
from wan_core.errors import InputError
from wan_core.pipeline.denoise import cfg, sample_latents, select_expert
from wan_core.pipeline.request import SamplingRequest, as_guide_pair
from wan_core.pipeline.tasks import get_task
from wan_core.runtime import Runtime
from wan_core.sampling import make_schedule

COND_VALUE, UNCOND_VALUE = 1.0, 0.0


class RecordingExpert(torch.nn.Module):
    """Returns COND_VALUE for the prompt context and UNCOND_VALUE for the negative one, so CFG gives the guide scale;
    records every call."""

    def __init__(self, name: str, out_channels: int):
        super().__init__()
        self.name = name
        self.out_channels = out_channels
        self.calls: list[dict] = []

    def forward(self, x, t, context, y=None, attention=None):
        is_cond = bool(context[0].flatten()[0] == 1)
        self.calls.append({"x": x.clone(), "t": t.clone(), "cond": is_cond, "y": y})
        value = COND_VALUE if is_cond else UNCOND_VALUE
        return torch.full((x.shape[0], self.out_channels, *x.shape[2:]), value)


def official_switch_index(steps: int, shift: float, boundary: float, grid: str = "unipc") -> int:
    """First step whose timestep is below boundary * 1000, re-computed from the official formulas."""
    if grid == "unipc":
        alphas = np.linspace(1, 1 / 1000, 1000)[::-1].copy()
        sigma_max = torch.from_numpy(1.0 - alphas).to(torch.float32)[0].item()
        sigmas = np.linspace(sigma_max, 0, steps + 1).copy()[:-1]
    else:
        sigmas = np.linspace(1, 0, steps + 1)[:steps]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    timesteps = torch.from_numpy(sigmas * 1000).to(torch.int64)
    below = [i for i, t in enumerate(timesteps.tolist()) if t < boundary * 1000]
    return below[0] if below else steps


def run(task_name, steps, shift, solver="unipc", guide_scale=None, offload=False, boundary_step=None, **kwargs):
    """Sample latents (z, 2, 4, 4) with recording experts."""
    task = get_task(task_name)
    stride = task.vae_stride[1]
    request = SamplingRequest.create(
        task, width=4 * stride, height=4 * stride, frame_num=5, seed=0, solver=solver, steps=steps, shift=shift,
        guide_scale=guide_scale, boundary_step=boundary_step,
    )  # fmt: skip
    high, low = RecordingExpert("high", task.z_dim), RecordingExpert("low", task.z_dim)
    latents = sample_latents(
        request,
        high_noise_model=high,
        low_noise_model=None if task.boundary is None else low,
        cond=torch.ones(3, 8),
        uncond=torch.zeros(5, 8),
        runtime=Runtime(offload=offload),
        **kwargs,
    )
    return high, low, latents


@pytest.mark.parametrize("task_name", ["t2v-A14B", "i2v-A14B"])
@pytest.mark.parametrize("steps", [1, 2, 5, 10, 20, 40, 50])
@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0, 8.0, 12.0])
@pytest.mark.parametrize("solver", ["unipc", "dpm++"])
def test_switch_step(task_name, steps, shift, solver):
    task = get_task(task_name)
    high, low, _ = run(task_name, steps, shift, solver=solver)
    k = official_switch_index(steps, shift, task.boundary, "unipc" if solver == "unipc" else "dpm")
    timesteps = make_schedule("unipc" if solver == "unipc" else "dpm", steps, shift).timesteps
    # two forwards (cond, uncond) per step; the high-noise expert for steps [0, k), the low-noise one after
    assert [c["cond"] for c in high.calls] == [True, False] * k
    assert [c["cond"] for c in low.calls] == [True, False] * (steps - k)
    assert [int(c["t"].item()) for c in high.calls[::2]] == timesteps[:k].tolist()
    assert [int(c["t"].item()) for c in low.calls[::2]] == timesteps[k:].tolist()
    assert all(c["t"].item() >= task.boundary * 1000 for c in high.calls)
    assert all(c["t"].item() < task.boundary * 1000 for c in low.calls)


def test_default_t2v_switch_is_inside_the_run():
    high, low, _ = run("t2v-A14B", 40, 12.0)
    k = len(high.calls) // 2
    assert 0 < k < 40 and len(low.calls) // 2 == 40 - k


@pytest.mark.parametrize("guide", [None, (2.0, 7.0), 6.0])
def test_guide_scale_per_expert(guide):
    """With Euler, x[i+1] - x[i] = dt * flow, and flow = uncond + g * (cond - uncond) = g: read g back per step."""
    steps, shift = 12, 5.0
    task = get_task("t2v-A14B")
    high, low, final = run("t2v-A14B", steps, shift, solver="euler", guide_scale=guide)
    low_g, high_g = as_guide_pair(task.guide_scale if guide is None else guide)
    xs = [c["x"][0] for c in (high.calls + low.calls)[::2]] + [final]
    sigmas = make_schedule("unipc", steps, shift).sigmas
    k = len(high.calls) // 2
    for i in range(steps):
        g = (xs[i + 1] - xs[i]) / (sigmas[i + 1] - sigmas[i])
        expected = high_g if i < k else low_g
        assert torch.allclose(g, torch.full_like(g, expected), atol=1e-3), (i, expected)


def test_select_expert_and_cfg():
    t2v = SamplingRequest.create("t2v-A14B", seed=0, guide_scale=(3.0, 4.0))
    assert select_expert(0, 875, t2v) == ("high_noise", 4.0)
    assert select_expert(0, 874, t2v) == ("low_noise", 3.0)
    by_step = t2v.replace(steps=4, boundary_step=2)
    assert [select_expert(i, 0, by_step)[0] for i in range(4)] == ["high_noise"] * 2 + ["low_noise"] * 2
    ti2v = SamplingRequest.create("ti2v-5B", seed=0, guide_scale=5.0)
    assert select_expert(0, 999, ti2v) == ("single", 5.0)
    assert as_guide_pair(5.0) == (5.0, 5.0) and as_guide_pair([3, 4]) == (3.0, 4.0)
    with pytest.raises(InputError, match="one number or two"):
        as_guide_pair((1.0, 2.0, 3.0))
    c, u = torch.tensor([2.0]), torch.tensor([1.0])
    assert cfg(c, u, 3.0).item() == 1.0 + 3.0 * (2.0 - 1.0)


def test_two_experts_required_for_moe_tasks():
    request = SamplingRequest.create("t2v-A14B", width=16, height=16, frame_num=1, seed=0, steps=2)
    with pytest.raises(InputError, match="two experts"):
        sample_latents(
            request, high_noise_model=RecordingExpert("h", 16), low_noise_model=None,
            cond=torch.ones(1, 8), uncond=torch.zeros(1, 8), runtime=Runtime(),
        )  # fmt: skip


def test_initial_noise_is_the_official_draw():
    high, _, _ = run("t2v-A14B", 3, 5.0)
    g = torch.Generator("cpu").manual_seed(0)
    expected = torch.randn(16, 2, 4, 4, dtype=torch.float32, generator=g)
    assert torch.equal(high.calls[0]["x"][0], expected)


def test_offload_moves_the_idle_expert_to_cpu(monkeypatch):
    moves = []
    def record(model, device):
        moves.append((model.name, str(device)))

    monkeypatch.setattr(runtime_module, "move_to", record)  # what `Runtime.place` calls without a placer
    high, low, _ = run("t2v-A14B", 10, 12.0, offload=True)
    k = len(high.calls) // 2
    assert 0 < k < 10
    # the high-noise expert comes to the device, leaves for the CPU when the low-noise one arrives, and at the end
    # both are back on the CPU
    assert moves[:3] == [("high", "cpu"), ("high", "cpu"), ("low", "cpu")]
    assert sorted(moves[3:]) == [("high", "cpu"), ("low", "cpu")]

    moves.clear()
    run("t2v-A14B", 10, 12.0, offload=False)
    assert moves == [("high", "cpu"), ("low", "cpu")]  # each moved to the device once, nothing sent back


def test_ti2v_single_model_per_token_timesteps_and_first_frame():
    task = get_task("ti2v-5B")
    first = torch.randn(48, 1, 4, 4)
    high, low, final = run("ti2v-5B", 4, 5.0, first_frame_latent=first)
    assert low.calls == [] and len(high.calls) == 8
    timesteps = make_schedule("unipc", 4, 5.0).timesteps
    tokens_per_frame = (4 // 2) * (4 // 2)
    for call, t in zip(high.calls, timesteps.repeat_interleave(2), strict=True):
        assert call["t"].shape == (1, 2 * tokens_per_frame)  # [1, seq_len]
        assert torch.all(call["t"][0, :tokens_per_frame] == 0)
        assert torch.all(call["t"][0, tokens_per_frame:] == t.item())
        assert torch.equal(call["x"][0, :, :1], first)  # the first latent frame is the image's, at every step
    assert torch.equal(final[:, :1], first)
    # guide scale 5.0 for every step (ti2v has one value)
    assert task.guide_scale == (5.0, 5.0)


def test_ti2v_without_image_uses_one_timestep_per_sample():
    high, _, _ = run("ti2v-5B", 3, 5.0)
    assert all(c["t"].shape == (1,) for c in high.calls)


def test_i2v_y_reaches_both_forwards():
    y = torch.randn(20, 2, 4, 4)
    high, low, _ = run("i2v-A14B", 4, 5.0, y=y)
    for call in high.calls + low.calls:
        assert torch.equal(call["y"], y[None])


def test_boundary_step_splits_the_steps_between_the_experts():
    """Lightning runs: 4 steps, the first 2 on the high-noise expert whatever the timesteps say."""
    high, low, _ = run("t2v-A14B", 4, 5.0, boundary_step=2, guide_scale=3.0)
    assert len(high.calls) == 4 and len(low.calls) == 4  # 2 steps each, cond + uncond
    high, low, _ = run("t2v-A14B", 4, 5.0, boundary_step=0, guide_scale=3.0)
    assert high.calls == [] and len(low.calls) == 8
    with pytest.raises(InputError, match="boundary_step 5 must be a whole number from 0 to the step count"):
        SamplingRequest.create("t2v-A14B", steps=4, boundary_step=5)
    with pytest.raises(InputError, match="two-expert tasks"):
        SamplingRequest.create("ti2v-5B", steps=4, boundary_step=2)


def test_cfg_one_runs_one_forward_per_step():
    """Guide scale 1 is the conditional prediction alone: the negative-prompt forward is skipped."""
    high, low, final = run("t2v-A14B", 6, 5.0, solver="euler", guide_scale=1.0)
    calls = high.calls + low.calls
    assert len(calls) == 6 and all(c["cond"] for c in calls)
    # and it samples what two forwards with g = 1 would: x moves by dt * cond (= 1) per step
    sigmas = make_schedule("unipc", 6, 5.0).sigmas
    xs = [c["x"][0] for c in calls] + [final]
    for i in range(6):
        assert torch.allclose((xs[i + 1] - xs[i]) / (sigmas[i + 1] - sigmas[i]), torch.ones(()), atol=1e-3)
