"""`WanPipeline`: prompt -> embeddings -> latents -> video, for t2v-A14B, i2v-A14B and ti2v-5B.

Each stage can run alone (the ComfyUI nodes use them separately); :meth:`WanPipeline.generate` runs them in order
and validates the request before any model work. Memory follows the official options: ``offload_model`` keeps the
expert not in use (and, between stages, the text encoder and VAE) in CPU RAM and moves every model back to the CPU
after its stage; ``t5_cpu`` runs the text encoder on the CPU.
"""

from __future__ import annotations

import logging

import torch

from ..errors import InputError
from . import conditioning
from .denoise import CancelCheck, ProgressCallback, free_device_memory, move_to, sample_latents
from .tasks import TaskConfig, get_task
from .validation import validate_request

log = logging.getLogger(__name__)


class WanPipeline:
    """The models of one task on one device.

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
        device: str | torch.device = "cpu",
        offload_model: bool = False,
        t5_cpu: bool = False,
        param_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        self.task = get_task(task)
        self.text_encoder = text_encoder
        self.vae = vae
        self.high_noise_model = high_noise_model
        self.low_noise_model = low_noise_model
        self.device = torch.device(device)
        self.offload_model = offload_model
        self.t5_cpu = t5_cpu
        self.param_dtype = param_dtype

    # -- stages -----------------------------------------------------------------------------------------------------

    def encode_prompts(self, prompt: str, negative_prompt: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cond, uncond)`` embeddings ``[L, 4096]`` on the pipeline device. An empty or None negative prompt
        means the task's default (the official negative prompt), as in the official code."""
        if self.text_encoder is None:
            raise InputError("this pipeline has no text encoder: pass text_encoder=... or give embeddings to sample()")
        if not negative_prompt:
            negative_prompt = self.task.negative_prompt
        encoder = self.text_encoder
        run_on = torch.device("cpu") if self.t5_cpu else self.device
        move_to(encoder, run_on)
        try:
            with torch.no_grad():
                cond = encoder.encode([prompt])[0]
                uncond = encoder.encode([negative_prompt])[0]
        finally:
            if self.offload_model and not self.t5_cpu:
                move_to(encoder, "cpu")
                free_device_memory(self.device)
        return cond.to(self.device), uncond.to(self.device)

    def sample(
        self,
        cond: torch.Tensor | list[torch.Tensor],
        uncond: torch.Tensor | list[torch.Tensor],
        *,
        width: int,
        height: int,
        frame_num: int,
        seed: int,
        sample_solver: str = "unipc",
        sample_steps: int | None = None,
        sample_shift: float | None = None,
        guide_scale: float | tuple[float, float] | None = None,
        image: torch.Tensor | None = None,
        progress: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
    ) -> torch.Tensor:
        """Denoised latents ``[z, F', H', W']`` (float32, on the pipeline device). ``image``: the start frame
        ``[3, H, W]`` in [-1, 1] (i2v-A14B: required, any size; ti2v-5B: optional)."""
        task = self.task
        sample_steps = task.sample_steps if sample_steps is None else sample_steps
        validate_request(
            task, width=width, height=height, frame_num=frame_num, sample_steps=sample_steps,
            sample_solver=sample_solver, sample_shift=sample_shift, has_image=image is not None,
            guide_scale=guide_scale,
        )  # fmt: skip
        if self.high_noise_model is None:
            raise InputError("this pipeline has no diffusion model: pass high_noise_model=...")
        y = first_frame = None
        if image is not None:
            y, first_frame = self._image_condition(image, width=width, height=height, frame_num=frame_num)
        return sample_latents(
            task=task,
            high_noise_model=self.high_noise_model,
            low_noise_model=self.low_noise_model,
            cond=cond,
            uncond=uncond,
            width=width,
            height=height,
            frame_num=frame_num,
            seed=seed,
            sample_solver=sample_solver,
            sample_steps=sample_steps,
            sample_shift=sample_shift,
            guide_scale=guide_scale,
            device=self.device,
            y=y,
            first_frame_latent=first_frame,
            offload_model=self.offload_model,
            progress=progress,
            cancel=cancel,
            dtype=self.param_dtype,
        )

    def decode(self, latents: torch.Tensor, tile_size: int | tuple[int, int] | None = None) -> torch.Tensor:
        """The video ``[3, F, H, W]`` in [-1, 1] (float32) of latents ``[z, F', H', W']``; ``tile_size`` (pixels)
        decodes in spatial tiles."""
        vae = self._require_vae("decode")
        move_to(vae, self.device)
        try:
            kwargs = {} if tile_size is None else {"tile_size": tile_size}
            with torch.no_grad():
                video = vae.decode(latents[None].to(self.device), **kwargs)[0]
        finally:
            if self.offload_model:
                move_to(vae, "cpu")
                free_device_memory(self.device)
        return video.float()

    def generate(
        self,
        prompt: str,
        *,
        negative_prompt: str | None = None,
        width: int | None = None,
        height: int | None = None,
        frame_num: int | None = None,
        seed: int = 0,
        sample_solver: str = "unipc",
        sample_steps: int | None = None,
        sample_shift: float | None = None,
        guide_scale: float | tuple[float, float] | None = None,
        image: torch.Tensor | None = None,
        progress: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
        tile_size: int | tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Prompt to video ``[3, F, H, W]`` in [-1, 1] (float32, CPU). Defaults (size, frames, steps, shift, guide
        scale) come from the task; the request is validated before any model runs."""
        task = self.task
        default_w, default_h = task.default_size
        width = default_w if width is None else width
        height = default_h if height is None else height
        frame_num = task.frame_num if frame_num is None else frame_num
        sample_steps = task.sample_steps if sample_steps is None else sample_steps
        validate_request(
            task, width=width, height=height, frame_num=frame_num, sample_steps=sample_steps,
            sample_solver=sample_solver, sample_shift=sample_shift, has_image=image is not None,
            guide_scale=guide_scale,
        )  # fmt: skip
        if image is not None:
            conditioning.check_image(image)
            self._require_vae("encode the start image")
        self._require_vae("decode")

        cond, uncond = self.encode_prompts(prompt, negative_prompt)
        latents = self.sample(
            cond, uncond, width=width, height=height, frame_num=frame_num, seed=seed, sample_solver=sample_solver,
            sample_steps=sample_steps, sample_shift=sample_shift, guide_scale=guide_scale, image=image,
            progress=progress, cancel=cancel,
        )  # fmt: skip
        del cond, uncond
        video = self.decode(latents, tile_size=tile_size)
        return video.cpu()

    # -- helpers ----------------------------------------------------------------------------------------------------

    def _require_vae(self, what: str) -> object:
        if self.vae is None:
            raise InputError(f"this pipeline has no VAE to {what}: pass vae=...")
        return self.vae

    def _image_condition(
        self, image: torch.Tensor, *, width: int, height: int, frame_num: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(y, first_frame_latent)`` of a start image for the task (one of them None)."""
        vae = self._require_vae("encode the start image")
        conditioning.check_image(image)
        move_to(vae, self.device)
        try:
            if self.task.model_type == "i2v":
                y = conditioning.i2v_condition(
                    vae, image, width=width, height=height, frame_num=frame_num, device=self.device
                )
                return y, None
            first = conditioning.ti2v_first_frame_latent(vae, image, width=width, height=height, device=self.device)
            return None, first
        finally:
            if self.offload_model:
                move_to(vae, "cpu")
                free_device_memory(self.device)

    def to(self, device: str | torch.device) -> WanPipeline:
        """Move every model to ``device`` (for example back to the CPU) and make it the pipeline device."""
        self.device = torch.device(device)
        for model in (self.text_encoder, self.vae, self.high_noise_model, self.low_noise_model):
            if model is not None and not (self.t5_cpu and model is self.text_encoder):
                move_to(model, self.device)
        return self
