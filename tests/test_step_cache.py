"""Step caching in the denoising loop (EasyCache, MagCache), batched CFG, and their request/CLI/node inputs."""

from __future__ import annotations

import pytest
import torch

from wan_core.configs import DIT_CONFIGS
from wan_core.dit.model import WanDiT, init_random_
from wan_core.errors import InputError
from wan_core.pipeline.denoise import sample_latents
from wan_core.pipeline.forwards import step_forwards
from wan_core.pipeline.request import SamplingRequest
from wan_core.pipeline.step_cache import MAG_MAX_SKIPS, WAN22_T2V_A14B_MAG_RATIOS, nearest_ratios
from wan_core.runtime import Runtime

STEPS = 30


class SmoothExpert(torch.nn.Module):
    """A flow that changes slowly with x and t (as a DiT's does late in sampling) and differs for cond / uncond;
    counts its forwards."""

    def __init__(self, gain: float):
        super().__init__()
        self.gain = gain
        self.forwards = 0

    def forward(self, x, t, context, y=None, attention=None):
        self.forwards += x.shape[0]
        bias = torch.stack([c.mean() for c in context]).view(-1, 1, 1, 1, 1)
        return self.gain * torch.tanh(x) + bias * (t.float().view(-1, 1, 1, 1, 1) / 1000)


def skipped_infos(infos):
    """The StepInfos of the steps the cache skipped."""
    counts = [0] + [i.skipped_forwards for i in infos]
    return [info for info, before in zip(infos, counts[:-1], strict=True) if info.skipped_forwards > before]


def run(cache="off", threshold=None, steps=STEPS, guide=(3.0, 4.0), runtime=None):
    request = SamplingRequest.create(
        "t2v-A14B", width=64, height=64, frame_num=5, seed=3, steps=steps, guide_scale=guide, cache=cache,
        cache_threshold=threshold,
    )  # fmt: skip
    high, low = SmoothExpert(-0.9), SmoothExpert(-1.1)
    infos = []
    latents = sample_latents(
        request, high_noise_model=high, low_noise_model=low, cond=torch.ones(4, 8), uncond=torch.zeros(4, 8),
        runtime=runtime or Runtime(), progress=infos.append,
    )  # fmt: skip
    return latents, high.forwards + low.forwards, infos


@pytest.mark.parametrize("method", ["easycache", "magcache"])
def test_threshold_zero_is_bit_identical_to_no_cache(method):
    plain, forwards, _ = run()
    cached, cached_forwards, infos = run(method, 0.0)
    assert torch.equal(plain, cached)
    assert cached_forwards == forwards == 2 * STEPS
    assert infos[-1].skipped_forwards == 0


@pytest.mark.parametrize("method", ["easycache", "magcache"])
def test_skips_are_deterministic_counted_and_close(method):
    plain, forwards, _ = run()
    first, first_forwards, infos = run(method, 0.5)
    again, _, infos_again = run(method, 0.5)
    skipped = infos[-1].skipped_forwards
    assert skipped > 0 and skipped % 2 == 0  # cond and uncond are skipped together
    assert first_forwards == forwards - skipped
    assert torch.equal(first, again)
    assert [i.skipped_forwards for i in infos] == [i.skipped_forwards for i in infos_again]
    skipped_steps = [i.step - 1 for i in skipped_infos(infos)]
    experts = [i.expert for i in infos]
    switch = experts.index("low_noise")
    forced = {0, STEPS - 1, switch, switch + 1}
    assert not forced & set(skipped_steps)
    assert ((first - plain).norm() / plain.norm()).item() < 0.1  # the reuse is a fair prediction of this flow


def test_magcache_never_skips_more_than_k_in_a_row():
    _, _, infos = run("magcache", 5.0)
    skipped = {i.step for i in skipped_infos(infos)}
    run_length = longest = 0
    for info in infos:
        run_length = run_length + 1 if info.step in skipped else 0
        longest = max(longest, run_length)
    assert longest == MAG_MAX_SKIPS


def test_per_expert_thresholds():
    _, _, infos = run("easycache", (0.0, 5.0))  # (low_noise, high_noise): only the high-noise expert skips
    skipped = {i.expert for i in skipped_infos(infos)}
    assert skipped == {"high_noise"}


def test_cfg_one_caches_one_stream():
    _, forwards, infos = run("easycache", 5.0, guide=1.0)
    assert forwards + infos[-1].skipped_forwards == STEPS


def test_magcache_ratios_resample_the_40_step_calibration():
    assert len(WAN22_T2V_A14B_MAG_RATIOS) == 80
    assert nearest_ratios(40, 0) == list(WAN22_T2V_A14B_MAG_RATIOS[0::2])
    assert nearest_ratios(40, 1) == list(WAN22_T2V_A14B_MAG_RATIOS[1::2])
    twenty = nearest_ratios(20, 0)
    assert len(twenty) == 20 and twenty[0] == 1.0 and twenty[-1] == WAN22_T2V_A14B_MAG_RATIOS[-2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"cache": "teacache"}, "choose one of"), ({"cache": "easycache", "cache_threshold": -0.1}, "from 0"),
     ({"cache": "magcache", "cache_threshold": (0.1, 0.2, 0.3)}, "cache_threshold takes one number or two")],
)
def test_request_rejects_bad_cache_settings(kwargs, message):
    with pytest.raises(InputError, match=message):
        SamplingRequest.create("t2v-A14B", **kwargs)


def test_request_fills_the_method_default():
    assert SamplingRequest.create("t2v-A14B", cache="magcache").cache_threshold == (0.06, 0.06)
    assert SamplingRequest.create("t2v-A14B", cache="easycache", cache_threshold=0.1).cache_threshold == (0.1, 0.1)
    assert SamplingRequest.create("t2v-A14B").cache_threshold is None


def test_cli_flags_reach_the_request_and_runtime():
    from wan_core.generate import build_parser, resolve_request

    args = build_parser().parse_args(["--demo", "--device", "cpu", "--cache", "magcache", "--cache_threshold",
                                      "0.02,0.08", "--compile", "--cfg_batch"])
    request = resolve_request(args)
    assert request.sampling.cache == "magcache" and request.sampling.cache_threshold == (0.02, 0.08)
    assert request.runtime.compile and request.runtime.cfg_batch


def test_cfg_batch_matches_two_forwards():
    torch.manual_seed(0)
    model = init_random_(WanDiT(DIT_CONFIGS["tiny-t2v"]), torch.Generator().manual_seed(1)).eval()
    x = torch.randn(1, 16, 2, 4, 4)
    t = torch.tensor([700.0])
    contexts = [[torch.randn(5, model.config.text_dim)], [torch.randn(3, model.config.text_dim)]]
    with torch.no_grad():
        separate = step_forwards(model, x, t, contexts, None, Runtime())
        batched = step_forwards(model, x, t, contexts, None, Runtime(cfg_batch=True))
    for a, b in zip(separate, batched, strict=True):
        assert a.shape == (16, 2, 4, 4)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(separate[0], separate[1])
