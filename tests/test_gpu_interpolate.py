"""RIFE on a CUDA GPU: fp16 batched interpolation agrees with the fp32 CPU result; a known translation lands
halfway, whole and tiled. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch
from test_interpolate import moving_square, rife47_state_dict, square_center_x, translating_ifnet

from wan_core.interpolate import interpolate_frames
from wan_core.interpolate.rife import rife_interpolate
from wan_core.interpolate.weights import ifnet_from_state_dict

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def smooth_frames(count: int, height: int, width: int) -> torch.Tensor:
    """Gradients that shift a little per frame: small fp16 flow errors change little (unlike random pixels)."""
    y = torch.linspace(0, 1, height)[:, None]
    x = torch.linspace(0, 1, width)[None, :]
    frames = [
        torch.stack([((x + 0.02 * k) % 1).expand(height, width), y.expand(height, width), (0.5 * x + 0.5 * y) % 1], -1)
        for k in range(count)
    ]
    return torch.stack(frames)


def test_fp16_on_cuda_matches_fp32_on_the_cpu():
    frames = smooth_frames(5, 200, 360)
    reference = rife_interpolate(ifnet_from_state_dict(rife47_state_dict(seed=3)), frames, 2, device="cpu",
                                 dtype=torch.float32, batch_size=2)
    got = rife_interpolate(ifnet_from_state_dict(rife47_state_dict(seed=3)), frames, 2, device="cuda",
                           dtype=torch.float16, batch_size=4)
    assert ((got - reference).norm() / reference.norm()).item() < 0.02


@pytest.mark.parametrize("tile_size", [0, 96], ids=["whole", "tiled"])
def test_known_translation_on_cuda_puts_the_square_halfway(tile_size):
    frames = moving_square(4, step=8)
    result = interpolate_frames(frames, 2, fps=16.0, weights=translating_ifnet(8.0), device="cuda",
                                tile_size=tile_size)
    assert "on cuda" in result.method
    for k in range(3):
        expected = moving_square(1, 0, start=8 + 8 * k + 4)[0]
        got = result.frames[2 * k + 1].float().cpu()
        # fp16 on the GPU: the square's centre within 0.1 px of halfway (one pixel off moves it by 1), and the frame
        # within fp16 noise away from the picture border (the tiles' edge padding rounds differently there)
        assert abs(square_center_x(got) - square_center_x(expected)) < 0.1
        inner = (slice(None), slice(4, -4))
        torch.testing.assert_close(got[inner], expected[inner], rtol=0, atol=2e-2)
