"""Frame interpolation: our IFNet equals ccvfi's RIFE on the same random weights; the published rife47.pth layout
loads by its real key names; a hand-built IFNet whose flow is a known translation puts a moving square halfway (the
warp, flow scaling, padding, batching, tiling and blending, not the learned motion estimate, which random weights
cannot show); the ffmpeg fallback keeps every frame, gives 2F-1 frames at 2x and puts the square halfway."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import types

import pytest
import torch
from comfyui_checkout import needs_comfyui, run_probe
from safetensors.torch import save_file

from wan_core.errors import ConfigMismatchError, KeyMismatchError, MissingFileError
from wan_core.interpolate import FFMPEG, IFNet, interpolate_frames, load_ifnet, resolve_weights
from wan_core.interpolate.ffmpeg import ffmpeg_interpolate
from wan_core.interpolate.rife import rife_interpolate
from wan_core.interpolate.weights import arch_of, ifnet_from_state_dict


def ccvfi_ifnet_class() -> type:
    """ccvfi's IFNet (RIFE 4.26), imported without ccvfi's model-zoo front end (which needs torchvision and cv2)."""
    spec = importlib.util.find_spec("ccvfi")
    if spec is None:
        pytest.skip("ccvfi is not installed (pip install -r requirements-test.txt)")
    if "ccvfi" not in sys.modules:
        package = types.ModuleType("ccvfi")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["ccvfi"] = package
    from ccvfi.arch.ifnet_arch import IFNet as CcvfiIFNet

    return CcvfiIFNet


def rife47_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the parameter names and shapes of the published rife47.pth / rife49.pth (RIFE 4.7-4.9),
    written out here from the file layout, not from our module."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {"encode.0.weight": (16, 3, 3, 3), "encode.0.bias": (16,), "encode.1.weight": (16, 4, 4, 4),
              "encode.1.bias": (4,)}
    for index, (c, in_channels) in enumerate([(192, 15), (128, 20), (96, 20), (64, 20)]):
        prefix = f"block{index}."
        shapes |= {prefix + "conv0.0.0.weight": (c // 2, in_channels, 3, 3), prefix + "conv0.0.0.bias": (c // 2,),
                   prefix + "conv0.1.0.weight": (c, c // 2, 3, 3), prefix + "conv0.1.0.bias": (c,),
                   prefix + "lastconv.0.weight": (c, 24, 4, 4), prefix + "lastconv.0.bias": (24,)}
        for res in range(8):
            shapes |= {f"{prefix}convblock.{res}.conv.weight": (c, c, 3, 3), f"{prefix}convblock.{res}.conv.bias": (c,),
                       f"{prefix}convblock.{res}.beta": (1, c, 1, 1)}
    return {key: torch.randn(shape, generator=gen) * 0.05 for key, shape in shapes.items()}


def translating_ifnet(shift_x: float) -> IFNet:
    """A rife47-layout IFNet whose every weight is zero except block0's output bias: its flow is a constant
    backward flow of -shift_x/2 (from the middle frame to frame 0) and +shift_x/2 (to frame 1), its mask 0.5."""
    state = {key: torch.zeros_like(value) for key, value in rife47_state_dict().items()}
    scale = 8  # block0 works at 1/8 and multiplies its flow by 8
    bias = state["block0.lastconv.0.bias"]  # 24 channels, pixel-shuffled by 2: output channel c <- inputs 4c..4c+3
    bias[0:4] = -shift_x / 2 / scale  # flow0 x
    bias[8:12] = shift_x / 2 / scale  # flow1 x
    return ifnet_from_state_dict(state)


def moving_square(count: int, step: int, height: int = 64, width: int = 128, start: int = 8) -> torch.Tensor:
    frames = torch.full((count, height, width, 3), 0.1)
    for k in range(count):
        frames[k, 24:40, start + step * k:start + step * k + 16] = torch.tensor([1.0, 0.8, 0.2])
    return frames


def square_center_x(frame: torch.Tensor) -> float:
    weight = (frame[..., 0] - 0.3).clamp(min=0).sum(0)
    return float((weight * torch.arange(frame.shape[1])).sum() / weight.sum())


def test_our_ifnet_equals_ccvfi_rife_on_the_same_random_weights():
    reference = ccvfi_ifnet_class()().eval()
    gen = torch.Generator().manual_seed(1)
    # The default init with beta 1 blows activations up to ~1e13 through 5 x 8 residual convs; beta ~0.5 keeps them
    # near 1, and a larger last mask head makes the final blend weights spread over (0, 1) instead of sitting at 0.5.
    state = {key: 0.5 + 0.1 * torch.randn(value.shape, generator=gen) if key.endswith("beta") else value
             for key, value in reference.state_dict().items()}
    state["block4.lastconv.0.weight"][:, 16:20] *= 100  # pre-shuffle channels 16..19 become the mask channel 4
    state["block4.lastconv.0.bias"][16:20] *= 100
    reference.load_state_dict(state)
    ours = ifnet_from_state_dict({"module." + key: value for key, value in state.items()})  # as in flownet.pkl
    assert len(ours.arch.block_widths) == 5 and ours.arch.carried_channels == 8
    img0, img1 = torch.rand(2, 3, 64, 128, generator=gen), torch.rand(2, 3, 64, 128, generator=gen)
    with torch.no_grad():
        for timestep in (0.5, 0.25):
            expected = reference(torch.cat([img0, img1], 1), timestep)
            got = ours(img0, img1, timestep)
            assert (expected - 0.5 * (img0 + img1)).abs().mean() > 0.05  # the flows really move pixels
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_published_rife47_layout_loads_by_its_key_names(tmp_path):
    path = tmp_path / "rife47.pth"
    torch.save(rife47_state_dict(), path)
    model = load_ifnet(path)
    assert model.arch.block_widths == (192, 128, 96, 64) and model.arch.feature_channels == 4
    assert not model.arch.encoder_activations and model.arch.carried_channels == 0
    out = model(torch.rand(1, 3, 40, 72), torch.rand(1, 3, 40, 72), 0.5)  # not a multiple of 64: padded inside
    assert out.shape == (1, 3, 40, 72) and torch.isfinite(out).all()

    broken = rife47_state_dict()
    broken["block3.extra.weight"] = broken.pop("block3.convblock.7.beta")
    with pytest.raises(KeyMismatchError, match="convblock.7.beta"):
        ifnet_from_state_dict(broken)
    old = {k: v for k, v in rife47_state_dict().items() if not k.startswith("encode.")}
    with pytest.raises(ConfigMismatchError, match="4.7"):
        arch_of(old)


def test_comfyui_names_and_training_leftovers_load_the_same_network(tmp_path):
    """ComfyUI's own frame interpolation keeps `blocks.N.` names (Comfy-Org/frame_interpolation's rife_v4.2x files);
    some Practical-RIFE saves have a `flownet.` prefix and training-only `teacher.` / `caltime.` parameters."""
    published = rife47_state_dict(3)
    comfy = {re.sub(r"^block(\d+)\.", r"blocks.\1.", key): value for key, value in published.items()}
    assert "blocks.3.lastconv.0.weight" in comfy
    leftovers = {"flownet." + key: value for key, value in published.items()} | {
        "flownet.teacher.lastconv.0.weight": torch.ones(2), "flownet.caltime.0.weight": torch.ones(2)}
    expected = ifnet_from_state_dict(published).state_dict()
    for variant in (comfy, leftovers):
        got = ifnet_from_state_dict(variant).state_dict()
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
    save_file(comfy, str(tmp_path / "rife_v4.26.safetensors"))
    found = resolve_weights("auto", [tmp_path])  # what a current ComfyUI's template downloads, taken by auto
    assert found.name == "rife_v4.26.safetensors" and load_ifnet(found).arch == ifnet_from_state_dict(published).arch
    film = {"extract.extract_sublevels.convs.0.0.conv.weight": torch.ones(1)}
    with pytest.raises(ConfigMismatchError, match="FILM weights .* ComfyUI's own Frame Interpolation nodes"):
        ifnet_from_state_dict(film)


@needs_comfyui
def test_our_ifnet_equals_comfyuis_own_on_its_weight_names():
    run = run_probe("host_rife_probe.py")
    if "No module named 'comfy_extras.frame_interpolation_models'" in run.stderr:
        pytest.skip("this ComfyUI has no frame interpolation of its own (before 0.2x)")
    assert run.returncode == 0, run.stderr[-4000:]
    for case in json.loads(run.stdout.strip().splitlines()[-1]):
        assert case["moved"] > 0.1, case  # the flows move pixels: a wrong block would show
        assert case["max_difference"] < 1e-3, case  # float32 through 45 convs and 4 warps; frames are 0..1


def test_missing_weights_name_the_file_and_where_to_get_it(tmp_path):
    with pytest.raises(MissingFileError, match=r"rife49\.pth.*VSGAN-tensorrt-docker"):
        resolve_weights("rife49.pth", [tmp_path])
    assert resolve_weights("auto", [tmp_path]) is None  # auto falls back to ffmpeg
    assert resolve_weights(FFMPEG, [tmp_path]) is None
    torch.save(rife47_state_dict(), tmp_path / "rife47.pth")
    assert resolve_weights("auto", [tmp_path]) == tmp_path / "rife47.pth"


@pytest.mark.parametrize("tile_size", [0, 64], ids=["whole", "tiled"])
def test_known_translation_puts_the_square_halfway(tile_size):
    frames = moving_square(4, step=8)
    out = rife_interpolate(translating_ifnet(8.0), frames, 2, batch_size=2, tile_size=tile_size, tile_overlap=32)
    assert out.shape == (7, 64, 128, 3)
    torch.testing.assert_close(out[::2], frames)
    for k in range(3):
        torch.testing.assert_close(out[2 * k + 1], moving_square(1, 0, start=8 + 8 * k + 4)[0], rtol=0, atol=1e-4)


def test_interpolate_frames_doubles_the_fps_and_says_what_ran():
    frames = moving_square(3, step=8)
    result = interpolate_frames(frames, 4, fps=16.0, weights=translating_ifnet(8.0), device="cpu")
    assert result.frames.shape[0] == 9 and result.fps == 64.0 and "RIFE" in result.method
    fallback = interpolate_frames(frames, 2, fps=24.0, weights=None)
    assert fallback.frames.shape[0] == 5 and fallback.fps == 48.0 and "ffmpeg minterpolate" in fallback.method


def test_ffmpeg_fallback_gives_2f_minus_1_frames_with_the_square_halfway():
    frames = moving_square(6, step=8)
    out = ffmpeg_interpolate(frames, 2)
    assert out.shape == (11, 64, 128, 3)  # 2F - 1: every input frame kept, one new frame between each pair
    assert (out[::2] - frames).abs().max() <= 2 / 255  # originals survive the RGB -> YUV 4:4:4 -> RGB trip
    for k in range(5):
        assert abs(square_center_x(out[2 * k + 1]) - (8 + 8 * k + 4 + 7.5)) <= 1.0
