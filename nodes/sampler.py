"""Wan22DiTSampler: the Wan2.2 sampling loop (MoE expert switch inside) as a ComfyUI node."""

from __future__ import annotations

import torch
from PIL import Image

from wan_core.errors import InputError
from wan_core.pipeline.denoise import SINGLE, StepInfo

from . import host
from .devices import announce_device, device_label
from .handles import DiTHandle, VAEHandle, release_to_cpu, require_handle
from .text_encode import WanConditioning

CATEGORY = "Wan2.2"
MAX_SIZE = 4096
# {"node", "device", "expert", "step", "total"}: the canvas shows `[GPU 1] high-noise expert, step 12/40`.
PROGRESS_EVENT = "wan22.progress"


def _solvers() -> list[str]:
    from wan_core.sampling import SOLVERS

    return list(SOLVERS)


def send_progress(node: str | None, device: str, info: StepInfo) -> None:
    """Tell the canvas about one denoising step of node `node` on `device` (a label such as `GPU 1`)."""
    host.send_event(PROGRESS_EVENT, {
        "node": node, "device": device, "step": info.step, "total": info.total,
        "expert": None if info.expert == SINGLE else info.expert,
    })


def latent_preview(latents: torch.Tensor) -> Image.Image:
    """An RGB picture of the middle latent frame of `[z, F, H, W]` latents (host's Wan factors when available)."""

    frame = latents[:, latents.shape[1] // 2].detach().to("cpu", torch.float32)
    factors = host.latent_rgb_factors(frame.shape[0])
    if factors is not None:
        weights, bias = factors
        rgb = torch.einsum("chw,cr->rhw", frame, torch.tensor(weights))
        if bias is not None:
            rgb = rgb + torch.tensor(bias)[:, None, None]
        rgb = (rgb + 1.0) / 2.0
    else:  # plain fallback: the first three channels, each stretched to 0..1
        rgb = frame[:3]
        low = rgb.amin(dim=(1, 2), keepdim=True)
        high = rgb.amax(dim=(1, 2), keepdim=True)
        rgb = (rgb - low) / (high - low).clamp_min(1e-6)
    pixels = rgb.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(pixels)


def image_to_video_frame(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE `[B, H, W, 3]` in 0..1 -> the first picture as `[3, H, W]` in [-1, 1]."""
    if image.ndim != 4 or image.shape[-1] < 3:
        raise InputError(f"start_image must be a ComfyUI IMAGE [B, H, W, 3]; got shape {tuple(image.shape)}.")
    return image[0, ..., :3].permute(2, 0, 1).float() * 2.0 - 1.0


class Wan22DiTSampler:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": ("WAN22_MODEL",),
                "conditioning": ("WAN22_CONDITIONING",),
                "width": ("INT", {"default": 832, "min": 16, "max": MAX_SIZE, "step": 16}),
                "height": ("INT", {"default": 480, "min": 16, "max": MAX_SIZE, "step": 16}),
                "frames": ("INT", {"default": 81, "min": 1, "max": 1001, "step": 4, "tooltip": "4n+1 frames."}),
                "steps": ("INT", {"default": 40, "min": 1, "max": 200}),
                "solver": (_solvers(), {"default": "unipc"}),
                "shift": ("FLOAT", {"default": 12.0, "min": 0.0, "max": 100.0, "step": 0.1}),
                "cfg_high_noise": ("FLOAT", {
                    "default": 4.0, "min": 0.0, "max": 30.0, "step": 0.1,
                    "tooltip": "Guidance while the high-noise expert samples (TI2V-5B: its only cfg).",
                }),
                "cfg_low_noise": ("FLOAT", {
                    "default": 3.0, "min": 0.0, "max": 30.0, "step": 0.1,
                    "tooltip": "Guidance while the low-noise expert samples (unused by TI2V-5B).",
                }),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
            },
            "optional": {
                "vae": ("WAN22_VAE", {"tooltip": "Needed with start_image (it encodes the picture)."}),
                "start_image": ("IMAGE", {"tooltip": "i2v / ti2v: the first frame."}),
                "cache": (["off", "easycache", "magcache"], {
                    "default": "off",
                    "tooltip": "Step cache: skip forwards predictable from the last one (easycache: adaptive, "
                               "magcache: Wan2.2 magnitude ratios). Faster, slightly different video.",
                }),
                "cache_threshold": ("FLOAT", {
                    "default": 0.05, "min": 0.0, "max": 1.0, "step": 0.005,
                    "tooltip": "Higher skips more; 0 never skips. The papers use 0.05 (easycache), 0.06 (magcache).",
                }),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "sample"
    CATEGORY = CATEGORY
    DESCRIPTION = "Samples Wan2.2 video latents; switches from the high- to the low-noise expert at the task boundary."

    def sample(
        self,
        model: DiTHandle,
        conditioning: WanConditioning,
        width: int,
        height: int,
        frames: int,
        steps: int,
        solver: str,
        shift: float,
        cfg_high_noise: float,
        cfg_low_noise: float,
        seed: int,
        vae: VAEHandle | None = None,
        start_image: torch.Tensor | None = None,
        unique_id: str | None = None,
        cache: str = "off",
        cache_threshold: float = 0.05,
    ) -> tuple:
        from wan_core.pipeline.denoise import GenerationCancelled
        from wan_core.pipeline.pipeline import WanPipeline
        from wan_core.pipeline.request import SamplingRequest

        dit = require_handle(model, DiTHandle, "model")
        if not isinstance(conditioning, WanConditioning):
            raise InputError("The 'conditioning' input needs the output of Wan22T5Encode.")
        request = SamplingRequest.create(
            dit.task, width=width, height=height, frame_num=frames, seed=seed, solver=solver, steps=steps,
            shift=shift, guide_scale=(cfg_low_noise, cfg_high_noise), has_image=start_image is not None,
            cache=cache, cache_threshold=cache_threshold,
        )  # fmt: skip
        image = None
        if start_image is not None:
            if vae is None:
                raise InputError("start_image needs the VAE: connect the Wan22VAELoader output to 'vae'.")
            image = image_to_video_frame(start_image)

        runtime = dit.runtime()
        device = runtime.device
        label = device_label(device)
        announce_device(unique_id, device)
        high, low = dit.load()
        vae_module = require_handle(vae, VAEHandle, "vae").load() if vae is not None else None
        pipeline = WanPipeline(
            request.task, text_encoder=None, vae=vae_module, high_noise_model=high, low_noise_model=low, runtime=runtime
        )
        bar = host.Progress(steps, unique_id)

        def on_step(info: StepInfo) -> None:
            send_progress(str(unique_id), label, info)
            bar.update(info.step, latent_preview(info.latents))
            host.raise_if_interrupted()

        cond = conditioning.to(device)
        try:
            latents = pipeline.sample(
                list(cond.positive), list(cond.negative), request, image=image, progress=on_step,
                cancel=host.interrupted,
            )
        except GenerationCancelled:
            host.raise_if_interrupted()  # ComfyUI's own exception: shown as "interrupted", not as an error
            raise
        except torch.cuda.OutOfMemoryError:
            release_to_cpu(high, low)  # ComfyUI unloads only its own models: free ours for the retry
            raise
        return ({"samples": latents.unsqueeze(0).to("cpu", torch.float32)},)
