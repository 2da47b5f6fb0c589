"""`WanPipeline`: prompt -> embeddings -> latents -> video, for t2v-A14B, i2v-A14B and ti2v-5B.

Each stage can run alone (the ComfyUI nodes use them separately); :meth:`WanPipeline.generate` runs them in order.
Where and how the models run is the pipeline's `Runtime` (device, offload, text-encoder device, compute dtype,
attention); what is sampled is a validated `SamplingRequest`. With ``runtime.offload`` the expert not in use (and,
between stages, the text encoder and VAE) waits in CPU RAM, as the official ``offload_model``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import InputError
from ..host_copy import to_host
from ..runtime import Runtime, move_to
from ..video_io import Mp4Stream
from . import conditioning
from .denoise import CancelCheck, ProgressCallback, sample_latents
from .request import SamplingRequest
from .tasks import TaskConfig, get_task
from .validation import check_image_use, check_last_frame_use

log = logging.getLogger(__name__)
# A start image made ready for the DiT: (i2v-A14B's `y`, ti2v-5B's first-frame latent), the other one None.
ImageCondition = tuple[torch.Tensor | None, torch.Tensor | None]


class WanPipeline:
    """The models of one task under one `Runtime`.

    ``text_encoder``: has ``encode(list[str]) -> list[Tensor[L, 4096]]``. ``vae``: ``encode(video [B,3,F,H,W])`` and
    ``decode(latents [B,z,F',H',W'], tile_size=...)``. ``high_noise_model`` / ``low_noise_model``: the DiT experts
    (for ti2v-5B the one model is ``high_noise_model``). Any of them may be None for stages that do not use it.
    """

    def __init__(
        self,
        task: str | TaskConfig,
        *,
        text_encoder: object | None,
        vae: object | None,
        high_noise_model: object | None,
        low_noise_model: object | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        self.task = get_task(task)
        self.text_encoder = text_encoder
        self.vae = vae
        self.high_noise_model = high_noise_model
        self.low_noise_model = low_noise_model
        self.runtime = runtime or Runtime()

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    # -- stages -----------------------------------------------------------------------------------------------------

    def encode_prompts(self, prompt: str, negative_prompt: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cond, uncond)`` embeddings ``[L, 4096]`` on the pipeline device. An empty or None negative prompt
        means the task's default (the official negative prompt), as in the official code."""
        if self.text_encoder is None:
            raise InputError("this pipeline has no text encoder: pass text_encoder=... or give embeddings to sample()")
        if not negative_prompt:
            negative_prompt = self.task.negative_prompt
        with self.runtime.on_device(self.text_encoder, self.runtime.text_encoder_device) as encoder, torch.no_grad():
            cond = encoder.encode([prompt])[0]
            uncond = encoder.encode([negative_prompt])[0]
        return cond.to(self.device), uncond.to(self.device)

    def sample(
        self,
        cond: torch.Tensor | list[torch.Tensor],
        uncond: torch.Tensor | list[torch.Tensor],
        request: SamplingRequest,
        *,
        image: torch.Tensor | None = None,
        last_image: torch.Tensor | None = None,
        progress: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
        init_latents: torch.Tensor | None = None,
        denoise: float = 1.0,
        image_condition: ImageCondition | None = None,
    ) -> torch.Tensor:
        """Denoised latents ``[z, F', H', W']`` (float32, on the pipeline device). ``image``: the start frame
        ``[3, H, W]`` in [-1, 1] (i2v-A14B: required, any size; ti2v-5B: optional); ``last_image``: i2v-A14B's last
        frame, for a video from a first and a last frame. ``image_condition``: in place of ``image``, what
        ``image_condition`` made of it (e.g. by a VAE on another device). ``init_latents`` (normalized,
        ``[z, F', H', W']``): video-to-video from them, with ``request.denoise`` < 1."""
        self._check_request(request, image is not None or image_condition is not None, last_image)
        if self.high_noise_model is None:
            raise InputError("this pipeline has no diffusion model: pass high_noise_model=...")
        y, first_frame = image_condition or (None, None)
        if image is not None:
            y, first_frame = self.image_condition(image, request, last_image)
        return sample_latents(
            request,
            high_noise_model=self.high_noise_model,
            low_noise_model=self.low_noise_model,
            cond=cond,
            uncond=uncond,
            runtime=self.runtime,
            y=y,
            first_frame_latent=first_frame,
            progress=progress,
            cancel=cancel,
            init_latents=init_latents,
        )

    def decode(self, latents: torch.Tensor, tile_size: int | tuple[int, int] | None = None) -> torch.Tensor:
        """The video ``[3, F, H, W]`` in [-1, 1] (float32) of latents ``[z, F', H', W']``; ``tile_size`` (pixels)
        decodes in spatial tiles."""
        kwargs = {} if tile_size is None else {"tile_size": tile_size}
        with self.runtime.on_device(self._require_vae("decode")) as vae, torch.no_grad():
            video = vae.decode(latents[None].to(self.device), **kwargs)[0]
        return video.float()

    def decode_chunks(self, latents: torch.Tensor) -> Iterator[torch.Tensor]:
        """`decode`'s video a latent frame at a time (`[3, 1 or 4, H, W]`, float32, on the VAE's device), untiled
        (`WanVAE.decode_chunks`)."""
        with self.runtime.on_device(self._require_vae("decode")) as vae, torch.no_grad():
            for chunk in vae.decode_chunks(latents[None].to(self.device)):
                yield chunk[0]

    def decode_into_mp4(
        self, latents: torch.Tensor, path: str | Path, fps: float, *, frames_dir: str | Path | None = None
    ) -> Mp4Stream | torch.Tensor:
        """`decode`, each latent frame's video handed to ffmpeg as soon as it is made: the MP4 being written at
        `path` (`Mp4Stream`, for the caller to `finish`), so that only the end of the encode is left after the
        decode. Where the untiled decode runs out of CUDA memory, the stream is dropped and the whole video is
        decoded again in tiles and returned (float32, CPU) for the caller to write."""
        stream = None
        try:
            for chunk in self.decode_chunks(latents):
                if stream is None:
                    stream = Mp4Stream(path, chunk.shape[-1], chunk.shape[-2], fps, frames_dir=frames_dir)
                stream.add(chunk)
            return stream
        except BaseException as error:
            if stream is not None:
                stream.abort()
            if not isinstance(error, torch.cuda.OutOfMemoryError):
                raise
        # Outside the except block, so the failed attempt's tensors are freed. Straight to tiles: an untiled decode
        # of the whole video needs more memory than the one that just ran out (it keeps every frame on the device).
        tile_size = tuple(self.vae.fallback_tile_size)
        log.warning("VAE decode of %s ran out of CUDA memory a latent frame at a time; decoding in tiles of %dx%d "
                    "pixels.", tuple(latents.shape), *tile_size)
        return to_host(self.decode(latents, tile_size=tile_size))

    def generate(
        self,
        prompt: str,
        request: SamplingRequest,
        *,
        negative_prompt: str | None = None,
        image: torch.Tensor | None = None,
        last_image: torch.Tensor | None = None,
        progress: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
        tile_size: int | tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Prompt to video ``[3, F, H, W]`` in [-1, 1] (float32, CPU). The request and the models are checked before
        any model runs."""
        self._check_request(request, image is not None, last_image)
        if image is not None:
            conditioning.check_image(image)
            self._require_vae("encode the start image")
        self._require_vae("decode")

        cond, uncond = self.encode_prompts(prompt, negative_prompt)
        latents = self.sample(
            cond, uncond, request, image=image, last_image=last_image, progress=progress, cancel=cancel
        )
        del cond, uncond
        video = self.decode(latents, tile_size=tile_size)
        return to_host(video)

    # -- helpers ----------------------------------------------------------------------------------------------------

    def _check_request(
        self, request: SamplingRequest, has_image: bool, last_image: torch.Tensor | None = None
    ) -> None:
        if request.task is not self.task:
            raise InputError(f"the request is for {request.task.name}, this pipeline runs {self.task.name}")
        check_image_use(self.task, has_image)
        if last_image is not None:
            check_last_frame_use(self.task, request.frame_num)

    def _require_vae(self, what: str) -> object:
        if self.vae is None:
            raise InputError(f"this pipeline has no VAE to {what}: pass vae=...")
        return self.vae

    def image_condition(
        self, image: torch.Tensor, request: SamplingRequest, last_image: torch.Tensor | None = None
    ) -> ImageCondition:
        """``(y, first_frame_latent)`` of a start image (and i2v's last image) for the task (one of them None), made
        by this pipeline's VAE on the pipeline device."""
        conditioning.check_image(image)
        size = {"width": request.width, "height": request.height, "device": self.device}
        with self.runtime.on_device(self._require_vae("encode the start image")) as vae:
            if self.task.model_type == "i2v":
                y = conditioning.i2v_condition(vae, image, frame_num=request.frame_num, last_image=last_image, **size)
                return y, None
            return None, conditioning.ti2v_first_frame_latent(vae, image, **size)

    def to(self, device: str | torch.device) -> WanPipeline:
        """Move every model to ``device`` (for example back to the CPU) and make it the pipeline device."""
        self.runtime = self.runtime.replace(device=device)
        for model in (self.text_encoder, self.vae, self.high_noise_model, self.low_noise_model):
            if model is not None and not (self.runtime.text_device is not None and model is self.text_encoder):
                move_to(model, self.device)
        return self
