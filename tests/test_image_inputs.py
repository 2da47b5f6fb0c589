"""Start images from real-world files and ComfyUI IMAGE tensors, checked against the references.

* The CLI's ``--image`` against the official code: ``generate.py`` opens it with ``Image.open(path).convert("RGB")``;
  ``wan/image2video.py`` (i2v-A14B) derives the size from ``max_area`` and the image's aspect ratio and resizes the
  ``TF.to_tensor`` image bicubically; ``wan/textimage2video.py`` (ti2v-5B) picks ``best_output_size``, LANCZOS-resizes
  to cover it and crops the center. The references below are those lines, written out (torchvision's ``to_tensor``
  of an RGB image included).
* The nodes' ``start_image`` against ComfyUI's native ``WanImageToVideo`` / ``Wan22ImageToVideoLatent``
  (``comfy_extras/nodes_wan.py``): ``comfy.utils.common_upscale(image, width, height, "bilinear", "center")``, then
  the VAE's ``image * 2 - 1``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from nodes.sampler import image_to_video_frame
from wan_core.errors import InputError
from wan_core.generate import build_parser, resolve_request
from wan_core.pipeline import conditioning

EXIF_ORIENTATION = 0x0112


class RecordingVAE:
    """Stands in for a VAE: keeps each video it encodes and returns a zero latent of the right shape."""

    def __init__(self, z_dim: int, stride: int) -> None:
        self.z_dim, self.stride = z_dim, stride
        self.videos: list[torch.Tensor] = []

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        self.videos.append(video)
        batch, _, frames, height, width = video.shape
        return torch.zeros(batch, self.z_dim, (frames - 1) // 4 + 1, height // self.stride, width // self.stride)


def encoded_start_frame(task: str, image: torch.Tensor, width: int, height: int, frame_num: int = 5) -> torch.Tensor:
    """The start frame ``[3, H, W]`` our conditioning hands to the VAE for ``task``."""
    if task == "i2v-A14B":
        vae = RecordingVAE(16, 8)
        y = conditioning.i2v_condition(vae, image, width=width, height=height, frame_num=frame_num, device="cpu")
        assert y.shape == (20, (frame_num - 1) // 4 + 1, height // 8, width // 8)
        video = vae.videos[0][0]
        assert video.shape == (3, frame_num, height, width) and not video[:, 1:].any()  # black frames after the first
    else:
        vae = RecordingVAE(48, 16)
        conditioning.ti2v_first_frame_latent(vae, image, width=width, height=height, device="cpu")
        video = vae.videos[0][0]
        assert video.shape == (3, 1, height, width)
    return video[:, 0]


# -- the official CLI preprocessing ----------------------------------------------------------------------------------


def to_tensor(image: Image.Image) -> torch.Tensor:
    """torchvision's ``TF.to_tensor`` of an RGB PIL image."""
    array = torch.from_numpy(np.array(image, np.uint8, copy=True)).view(image.height, image.width, 3)
    return array.permute(2, 0, 1).contiguous().to(dtype=torch.float32).div(255)


def official_best_output_size(w: int, h: int, dw: int, dh: int, expected_area: int) -> tuple[int, int]:
    """``wan/utils/utils.py`` ``best_output_size``."""
    ratio = w / h
    ow = (expected_area * ratio) ** 0.5
    oh = expected_area / ow
    ow1 = int(ow // dw * dw)
    oh1 = int(expected_area / ow1 // dh * dh)
    ratio1 = ow1 / oh1
    oh2 = int(oh // dh * dh)
    ow2 = int(expected_area / oh2 // dw * dw)
    ratio2 = ow2 / oh2
    if max(ratio / ratio1, ratio1 / ratio) < max(ratio / ratio2, ratio2 / ratio):
        return ow1, oh1
    return ow2, oh2


def official_i2v_frame(img: Image.Image, max_area: int) -> tuple[torch.Tensor, int, int]:
    """``WanI2V.generate``: the first frame it encodes and ``(w, h)``."""
    img = to_tensor(img).sub_(0.5).div_(0.5)
    h, w = img.shape[1:]
    aspect_ratio = h / w
    lat_h = round(np.sqrt(max_area * aspect_ratio) // 8 // 2 * 2)
    lat_w = round(np.sqrt(max_area / aspect_ratio) // 8 // 2 * 2)
    h, w = lat_h * 8, lat_w * 8
    return F.interpolate(img[None].cpu(), size=(h, w), mode="bicubic")[0], w, h


def official_ti2v_frame(img: Image.Image, max_area: int) -> tuple[torch.Tensor, int, int]:
    """``WanTI2V.i2v``: the image it encodes and ``(ow, oh)``."""
    ih, iw = img.height, img.width
    ow, oh = official_best_output_size(iw, ih, 32, 32, max_area)
    scale = max(ow / iw, oh / ih)
    img = img.resize((round(iw * scale), round(ih * scale)), Image.LANCZOS)
    x1 = (img.width - ow) // 2
    y1 = (img.height - oh) // 2
    img = img.crop((x1, y1, x1 + ow, y1 + oh))
    return to_tensor(img).sub_(0.5).div_(0.5), ow, oh


def official_cli_frame(path: Path, task: str, max_area: int) -> tuple[torch.Tensor, int, int]:
    img = Image.open(path).convert("RGB")  # the official generate.py
    return official_i2v_frame(img, max_area) if task == "i2v-A14B" else official_ti2v_frame(img, max_area)


def pixels(width: int, height: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A uint8 picture: smooth ramps plus noise, so that resizing and cropping errors show."""
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.linspace(0, 150, height), np.linspace(0, 100, width))[..., None]
    noise = rng.integers(0, 6, (height, width, channels))
    return (ramp * (1 + np.arange(channels)) / channels + noise).clip(0, 255).astype(np.uint8)


def save_rgba(path: Path) -> None:
    array = pixels(241, 163, 4)
    array[:60, :, 3] = 0  # fully transparent band: its RGB values are still there
    Image.fromarray(array, "RGBA").save(path)


def save_palette(path: Path) -> None:
    image = Image.fromarray(pixels(150, 97)).convert("P", palette=Image.Palette.ADAPTIVE)
    image.save(path, transparency=0)


def save_gray16(path: Path) -> None:
    Image.fromarray(pixels(130, 90, 1)[..., 0].astype(np.uint16) * 257).save(path)


def save_cmyk_jpeg(path: Path) -> None:
    Image.fromarray(pixels(200, 120)).convert("CMYK").save(path, quality=95)


def save_rotated_jpeg(path: Path) -> None:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90 CW to display": a phone's portrait photo stored landscape
    Image.fromarray(pixels(160, 120)).save(path, quality=95, exif=exif)


IMAGE_FILES = {
    "rgb.png": lambda p: Image.fromarray(pixels(333, 251)).save(p),
    "rgba.png": save_rgba,
    "gray.png": lambda p: Image.fromarray(pixels(177, 99, 1)[..., 0], "L").save(p),
    "gray_alpha.png": lambda p: Image.fromarray(pixels(120, 80, 2), "LA").save(p),
    "palette.png": save_palette,
    "gray16.png": save_gray16,
    "cmyk.jpg": save_cmyk_jpeg,
    "exif_rotated.jpg": save_rotated_jpeg,
    "panorama_3x1.png": lambda p: Image.fromarray(pixels(603, 201)).save(p),
    "portrait_1x3.png": lambda p: Image.fromarray(pixels(201, 603)).save(p),
    "tiny.png": lambda p: Image.fromarray(pixels(7, 5)).save(p),
    "large.jpg": lambda p: Image.fromarray(pixels(3001, 2003)).save(p, quality=90),
}


@pytest.mark.parametrize(("task", "size"), [("i2v-A14B", (832, 480)), ("ti2v-5B", (1280, 704))])
@pytest.mark.parametrize("name", sorted(IMAGE_FILES))
def test_cli_image_is_the_official_start_frame(tmp_path, monkeypatch, task, size, name):
    """Alpha dropped, palette / gray / CMYK converted and the EXIF orientation ignored, as ``convert("RGB")`` does."""
    path = tmp_path / name
    IMAGE_FILES[name](path)
    monkeypatch.chdir(tmp_path)
    flags = ["--task", task, "--image", str(path), "--size", "{}*{}".format(*size), "--save_file", "o.mp4"]
    request = resolve_request(build_parser().parse_args(["--demo", "--device", "cpu", *flags]))
    width, height = request.sampling.width, request.sampling.height
    expected, official_w, official_h = official_cli_frame(path, task, max_area=size[0] * size[1])
    assert (width, height) == (official_w, official_h)
    assert torch.equal(encoded_start_frame(task, request.image, width, height), expected)


@pytest.mark.parametrize("task", ["i2v-A14B", "ti2v-5B"])
@pytest.mark.parametrize(
    ("image_width", "image_height", "max_area"),
    [(100000, 10, 1280 * 704), (10, 100000, 1280 * 704), (1200, 10, 128 * 96), (10, 1200, 128 * 96)],
)
def test_an_image_too_wide_or_too_tall_for_the_area_says_what_to_do(task, image_width, image_height, max_area):
    with pytest.raises(InputError, match=rf"{image_width}x{image_height} image .*--size.* [Cc]rop"):
        conditioning.official_output_size(task, image_width, image_height, max_area)


# -- the nodes' start_image against ComfyUI's native Wan nodes --------------------------------------------------------


def native_common_upscale(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``comfy.utils.common_upscale(samples, width, height, "bilinear", "center")`` of ``[B, C, H, W]``."""
    old_width = samples.shape[-1]
    old_height = samples.shape[-2]
    old_aspect = old_width / old_height
    new_aspect = width / height
    x = 0
    y = 0
    if old_aspect > new_aspect:
        x = round((old_width - old_width * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_height - old_height * (old_aspect / new_aspect)) / 2)
    s = samples.narrow(-2, y, old_height - y * 2).narrow(-1, x, old_width - x * 2)
    return torch.nn.functional.interpolate(s, size=(height, width), mode="bilinear")


def native_start_frame(start_image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The first frame ``WanImageToVideo`` / ``Wan22ImageToVideoLatent`` encode, in the VAE's [-1, 1]."""
    upscaled = native_common_upscale(start_image.movedim(-1, 1), width, height).movedim(1, -1)
    return (upscaled[0, :, :, :3] * 2.0 - 1.0).permute(2, 0, 1)


def comfy_image(width: int, height: int, channels: int = 3, low: float = 0.0, high: float = 1.0):
    """A ComfyUI IMAGE ``[1, H, W, C]``."""
    generator = torch.Generator().manual_seed(width * 7 + height)
    return low + (high - low) * torch.rand(1, height, width, channels, generator=generator)


NODE_CASES = {  # output sizes are multiples of 32, valid for both tasks
    "wider than the output": dict(image=(120, 50), size=(64, 32)),
    "taller than the output": dict(image=(50, 120), size=(64, 32)),
    "portrait into landscape": dict(image=(45, 60), size=(96, 32)),
    "same aspect, larger": dict(image=(256, 128), size=(64, 32)),
    "same aspect, smaller": dict(image=(32, 16), size=(128, 64)),
    "odd sizes": dict(image=(101, 77), size=(64, 64)),
    "already the output size": dict(image=(64, 32), size=(64, 32)),
    "3:1 panorama": dict(image=(300, 100), size=(64, 64)),
    "1:3 portrait": dict(image=(100, 300), size=(64, 64)),
    "tiny": dict(image=(3, 2), size=(64, 32)),
    "alpha channel": dict(image=(90, 60), size=(64, 32), channels=4),
    "values outside 0..1": dict(image=(90, 60), size=(64, 32), low=-0.2, high=1.3),
}


@pytest.mark.parametrize("task", ["i2v-A14B", "ti2v-5B"])
@pytest.mark.parametrize("case", sorted(NODE_CASES))
def test_node_start_image_is_the_native_start_frame(task, case):
    spec = dict(NODE_CASES[case])
    (image_width, image_height), (width, height) = spec.pop("image"), spec.pop("size")
    image = comfy_image(image_width, image_height, **spec)
    got = encoded_start_frame(task, image_to_video_frame(image), width, height)
    # float rounding only: the native nodes map [0, 1] to [-1, 1] after the resize, the sampler node before it
    torch.testing.assert_close(got, native_start_frame(image, width, height), rtol=0, atol=1e-6)
