"""Image conditioning of i2v-A14B and ti2v-5B, as the official ``image2video.py`` / ``textimage2video.py`` build it.

* i2v-A14B: the start image at the output size, followed by ``F - 1`` black frames, is encoded by the VAE; ``y`` =
  4 mask channels (1 on the first frame, 0 after, packed 4 frames per latent frame) + that latent, concatenated to
  the noise on the channel axis inside the DiT. A first-last-frame video puts the last image in place of the last
  black frame and marks it given too (as Wan2.1's FLF2V and ComfyUI's WanFirstLastFrameToVideo).
* ti2v-5B: the start image is encoded alone (``[z, 1, H', W']``) and replaces the first latent frame before every
  model call; its tokens get timestep 0, the others the step's timestep (per-token timesteps).

Images are ``[3, H, W]`` tensors in [-1, 1]. :func:`official_image_input` turns a PIL image into that tensor at the
output size exactly as the official ``generate.py`` does (for the CLI). An image of another size (a ComfyUI IMAGE) is
fitted as ComfyUI's native ``WanImageToVideo`` / ``Wan22ImageToVideoLatent`` fit theirs (:func:`fit_image`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from .tasks import TaskConfig, get_task


def i2v_mask(
    frame_num: int, lat_h: int, lat_w: int, device: torch.device | str = "cpu", *, last_frame: bool = False
) -> torch.Tensor:
    """The 4 mask channels of i2v ``y``: ``[4, F', lat_h, lat_w]``, 1 where the pixel frame is given: frame 0, and
    with ``last_frame`` the last one too (Wan2.1 FLF2V's layout, which ComfyUI's WanFirstLastFrameToVideo gives
    Wan2.2 I2V as well)."""
    msk = torch.ones(1, frame_num, lat_h, lat_w, device=device)
    msk[:, 1:] = 0
    if last_frame:
        msk[:, -1] = 1
    msk = torch.cat([torch.repeat_interleave(msk[:, 0:1], repeats=4, dim=1), msk[:, 1:]], dim=1)
    msk = msk.view(1, msk.shape[1] // 4, 4, lat_h, lat_w)
    return msk.transpose(1, 2)[0]


def _vae_dtype(vae: object) -> torch.dtype:
    params = getattr(vae, "parameters", None)
    if params is not None:
        for p in params():
            return p.dtype
    return torch.float32


def vae_encode(vae: object, video: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Encode one video ``[3, F, H, W]`` in [-1, 1]; return its float32 latent ``[z, F', H', W']``."""
    video = video.to(device=device, dtype=_vae_dtype(vae))
    return vae.encode(video[None])[0].float()


def i2v_condition(
    vae: object,
    image: torch.Tensor,
    *,
    width: int,
    height: int,
    frame_num: int,
    device: torch.device | str,
    last_image: torch.Tensor | None = None,
) -> torch.Tensor:
    """The i2v-A14B ``y``: ``[4 + z, F', H', W']`` from the start image ``[3, h, w]`` and, for a first-last-frame
    video, the last image (each fitted here if needed; ``validation.check_last_frame_use`` first); the frames between
    them are black."""
    check_image(image)
    frames = [fit_image(image, width, height).float().cpu()[:, None]]
    if last_image is not None:
        check_image(last_image)
        frames.append(torch.zeros(3, frame_num - 2, height, width))
        frames.append(fit_image(last_image, width, height).float().cpu()[:, None])
    else:
        frames.append(torch.zeros(3, frame_num - 1, height, width))
    latent = vae_encode(vae, torch.cat(frames, dim=1), device)
    msk = i2v_mask(frame_num, latent.shape[-2], latent.shape[-1], device=latent.device,
                   last_frame=last_image is not None)
    return torch.cat([msk, latent])


def ti2v_first_frame_latent(
    vae: object, image: torch.Tensor, *, width: int, height: int, device: torch.device | str
) -> torch.Tensor:
    """The ti2v-5B start-frame latent ``[z, 1, H', W']``; the image is fitted to ``width`` x ``height`` if needed."""
    check_image(image)
    image = fit_image(image, width, height)
    return vae_encode(vae, image[:, None], device)


def first_frame_mask(latent_shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """The official ``masks_like(..., zero=True)[1]``: ones with the first latent frame zero (float32)."""
    mask = torch.ones(latent_shape, dtype=torch.float32, device=device)
    mask[:, 0] = 0
    return mask


def replace_first_frame(latents: torch.Tensor, first_frame: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(1 - mask) * z + mask * latents``: the given first frame, the sampled rest."""
    return (1.0 - mask) * first_frame + mask * latents


def per_token_timesteps(
    mask: torch.Tensor, timestep: torch.Tensor, seq_len: int, patch_size: tuple[int, int, int] = (1, 2, 2)
) -> torch.Tensor:
    """``[1, seq_len]`` timesteps: 0 for the first frame's tokens, ``timestep`` for the others (and any padding)."""
    per_token = (mask[0][:, :: patch_size[1], :: patch_size[2]] * timestep).flatten()
    per_token = torch.cat([per_token, per_token.new_ones(seq_len - per_token.size(0)) * timestep])
    return per_token.unsqueeze(0)


def check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InputError(f"image must be a [3, H, W] tensor in [-1, 1], got {shape}")


def fit_image(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``image`` at ``width`` x ``height`` as ComfyUI's native Wan nodes fit a start image: the center crop of the
    target's aspect ratio, resized bilinearly (``comfy.utils.common_upscale(..., "bilinear", "center")``).

    An image of the target size is returned unchanged: the CLI's come sized the official way by
    :func:`official_image_input`.
    """
    ih, iw = image.shape[-2:]
    if (ih, iw) == (height, width):
        return image
    y, x = center_crop_margins(iw, ih, width / height)
    cropped = image[None, :, y : ih - y, x : iw - x].float()
    return F.interpolate(cropped, size=(height, width), mode="bilinear")[0]


def center_crop_margins(width: int, height: int, aspect: float) -> tuple[int, int]:
    """``(top, left)`` margins that crop a ``width`` x ``height`` image to ``aspect`` (w / h) around its center,
    rounded as ``common_upscale`` rounds them."""
    old_aspect = width / height
    if old_aspect > aspect:
        return 0, round((width - width * (aspect / old_aspect)) / 2)
    if old_aspect < aspect:
        return round((height - height * (old_aspect / aspect)) / 2), 0
    return 0, 0


def best_output_size(w: int, h: int, dw: int, dh: int, expected_area: int) -> tuple[int, int]:
    """The official ti2v output size for a ``w`` x ``h`` image: multiples of (dw, dh), area <= expected, closest
    aspect ratio of fitting the width first or the height first."""
    ratio = w / h
    ow = (expected_area * ratio) ** 0.5
    oh = expected_area / ow
    if ow < dw or oh < dh:  # a side rounds down to 0 (the official code divides by zero)
        raise too_extreme_error(w, h, expected_area, dw, dh)
    ow1 = int(ow // dw * dw)
    oh1 = int(expected_area / ow1 // dh * dh)
    oh2 = int(oh // dh * dh)
    ow2 = int(expected_area / oh2 // dw * dw)
    ratio1, ratio2 = ow1 / oh1, ow2 / oh2
    if max(ratio / ratio1, ratio1 / ratio) < max(ratio / ratio2, ratio2 / ratio):
        return ow1, oh1
    return ow2, oh2


def official_output_size(task: str | TaskConfig, image_width: int, image_height: int, max_area: int) -> tuple[int, int]:
    """``(width, height)`` the official code generates for a start image and ``max_area`` (= W*H of ``--size``)."""
    task = get_task(task)
    _, sh, sw = task.vae_stride
    _, ph, pw = task.patch_size
    if task.model_type == "i2v":
        aspect = image_height / image_width
        lat_h = round(np.sqrt(max_area * aspect) // sh // ph * ph)
        lat_w = round(np.sqrt(max_area / aspect) // sw // pw * pw)
        if lat_h == 0 or lat_w == 0:
            raise too_extreme_error(image_width, image_height, max_area, pw * sw, ph * sh)
        return lat_w * sw, lat_h * sh
    if task.model_type == "ti2v":
        return best_output_size(image_width, image_height, pw * sw, ph * sh, max_area)
    raise InputError(f"task {task.name} takes no input image")


def too_extreme_error(image_width: int, image_height: int, max_area: int, dw: int, dh: int) -> InputError:
    """The error for an image whose aspect ratio leaves a side of the output below one ``dw`` x ``dh`` block."""
    return InputError(
        f"the {image_width}x{image_height} image is too wide or too tall for an output area of {max_area} pixels "
        f"(--size): the output follows the image's aspect ratio, and a side below {min(dw, dh)} pixels rounds down "
        f"to 0. Crop the image closer to the output's shape, or pass a larger --size."
    )


def pil_to_tensor(image) -> torch.Tensor:
    """A PIL image as a ``[3, H, W]`` float32 tensor in [-1, 1] (``TF.to_tensor(img).sub_(0.5).div_(0.5)``)."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32).div(255).sub_(0.5).div_(0.5)


def official_image_input(image, task: str | TaskConfig, max_area: int) -> tuple[torch.Tensor, int, int]:
    """``(image tensor, width, height)`` for a PIL start image, as the official ``generate.py`` prepares it; the
    tensor has the output size.

    i2v-A14B: the output size follows the image's aspect ratio within ``max_area``; the whole image is resized to it
    bicubically (the tensor, as ``image2video.py`` does). ti2v-5B: LANCZOS resize to cover the best output size, then
    center crop (the PIL image, as ``textimage2video.py`` does).
    """
    task = get_task(task)
    image = image.convert("RGB")
    width, height = official_output_size(task, image.width, image.height, max_area)
    if task.model_type == "i2v":
        return F.interpolate(pil_to_tensor(image)[None], size=(height, width), mode="bicubic")[0], width, height
    return pil_to_tensor(cover_and_crop(image, width, height)), width, height


def cover_and_crop(image, width: int, height: int):
    """The official ti2v fit of a PIL image: LANCZOS resize to cover ``width`` x ``height``, then center crop."""
    from PIL import Image

    scale = max(width / image.width, height / image.height)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    x1, y1 = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((x1, y1, x1 + width, y1 + height))


def seq_len_for(latent_shape: tuple[int, ...], patch_size: tuple[int, int, int]) -> int:
    """DiT tokens of a latent: ``ceil(H'*W'/(ph*pw) * F')``."""
    _, f, h, w = latent_shape
    return math.ceil(h * w / (patch_size[1] * patch_size[2]) * f)
