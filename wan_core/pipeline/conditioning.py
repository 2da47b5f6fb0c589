"""Image conditioning of i2v-A14B and ti2v-5B, as the official ``image2video.py`` / ``textimage2video.py`` build it.

* i2v-A14B: the start image, resized (bicubic) to the output size, followed by ``F - 1`` black frames, is encoded by
  the VAE; ``y`` = 4 mask channels (1 on the first frame, 0 after, packed 4 frames per latent frame) + that latent,
  concatenated to the noise on the channel axis inside the DiT.
* ti2v-5B: the start image is encoded alone (``[z, 1, H', W']``) and replaces the first latent frame before every
  model call; its tokens get timestep 0, the others the step's timestep (per-token timesteps).

Images are ``[3, H, W]`` tensors in [-1, 1]. :func:`official_image_input` turns a PIL image into that tensor and the
output size exactly as the official ``generate.py`` does (for the CLI).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from .tasks import TaskConfig, get_task


def i2v_mask(frame_num: int, lat_h: int, lat_w: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The 4 mask channels of i2v ``y``: ``[4, F', lat_h, lat_w]``, 1 where the pixel frame is given (frame 0)."""
    msk = torch.ones(1, frame_num, lat_h, lat_w, device=device)
    msk[:, 1:] = 0
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
    vae: object, image: torch.Tensor, *, width: int, height: int, frame_num: int, device: torch.device | str
) -> torch.Tensor:
    """The i2v-A14B ``y``: ``[4 + z, F', H', W']`` from the start image ``[3, h, w]`` (any size; resized here)."""
    check_image(image)
    resized = F.interpolate(image[None].float().cpu(), size=(height, width), mode="bicubic").transpose(0, 1)
    video = torch.cat([resized, torch.zeros(3, frame_num - 1, height, width)], dim=1)
    latent = vae_encode(vae, video, device)
    msk = i2v_mask(frame_num, latent.shape[-2], latent.shape[-1], device=latent.device)
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
    """Scale ``image`` to cover ``width`` x ``height`` and center-crop (the official ti2v geometry).

    The official code resizes with PIL's LANCZOS; this tensor path uses antialiased bicubic. Images that already have
    the target size are returned unchanged (use :func:`official_image_input` to get the official resize).
    """
    ih, iw = image.shape[-2:]
    if (ih, iw) == (height, width):
        return image
    scale = max(width / iw, height / ih)
    rw, rh = round(iw * scale), round(ih * scale)
    out = F.interpolate(image[None].float(), size=(rh, rw), mode="bicubic", antialias=True)[0]
    x1, y1 = (rw - width) // 2, (rh - height) // 2
    return out[:, y1 : y1 + height, x1 : x1 + width].clamp(-1, 1)


def best_output_size(w: int, h: int, dw: int, dh: int, expected_area: int) -> tuple[int, int]:
    """The official ti2v output size for a ``w`` x ``h`` image: multiples of (dw, dh), area <= expected, closest
    aspect ratio of fitting the width first or the height first."""
    ratio = w / h
    ow = (expected_area * ratio) ** 0.5
    oh = expected_area / ow
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
        return lat_w * sw, lat_h * sh
    if task.model_type == "ti2v":
        return best_output_size(image_width, image_height, pw * sw, ph * sh, max_area)
    raise InputError(f"task {task.name} takes no input image")


def pil_to_tensor(image) -> torch.Tensor:
    """A PIL image as a ``[3, H, W]`` float32 tensor in [-1, 1] (``TF.to_tensor(img).sub_(0.5).div_(0.5)``)."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32).div(255).sub_(0.5).div_(0.5)


def official_image_input(image, task: str | TaskConfig, max_area: int) -> tuple[torch.Tensor, int, int]:
    """``(image tensor, width, height)`` for a PIL start image, as the official ``generate.py`` prepares it.

    i2v-A14B: the image at its own size (the pipeline resizes it bicubically to the output size, as the official code
    does); the output size follows the image's aspect ratio within ``max_area``. ti2v-5B: LANCZOS resize to cover the
    best output size, then center crop.
    """
    from PIL import Image

    task = get_task(task)
    image = image.convert("RGB")
    width, height = official_output_size(task, image.width, image.height, max_area)
    if task.model_type == "ti2v":
        scale = max(width / image.width, height / image.height)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
        x1, y1 = (image.width - width) // 2, (image.height - height) // 2
        image = image.crop((x1, y1, x1 + width, y1 + height))
    return pil_to_tensor(image), width, height


def seq_len_for(latent_shape: tuple[int, ...], patch_size: tuple[int, int, int]) -> int:
    """DiT tokens of a latent: ``ceil(H'*W'/(ph*pw) * F')``."""
    _, f, h, w = latent_shape
    return math.ceil(h * w / (patch_size[1] * patch_size[2]) * f)
