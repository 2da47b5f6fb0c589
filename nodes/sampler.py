"""Wan22DiTSampler: the Wan2.2 sampling loop (MoE expert switch inside) as a ComfyUI node."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from PIL import Image

from wan_core.errors import InputError
from wan_core.pipeline.denoise import SINGLE, StepInfo
from wan_core.pipeline.tasks import TASKS, TaskConfig
from wan_core.pipeline.validation import check_last_frame_use

from . import host
from .all_gpus import sample_on_all_gpus
from .conditioning import WanConditioning, conditioning_from_comfy
from .devices import ALL_GPUS, announce_device, device_label
from .handles import DiTHandle, VAEHandle, require_handle
from .latents import latent_input, latent_output, reject_noise_mask

if TYPE_CHECKING:
    from wan_core.pipeline.request import SamplingRequest
    from wan_core.runtime import Runtime

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


def image_to_video_frame(image: torch.Tensor, name: str = "start_image") -> torch.Tensor:
    """ComfyUI IMAGE `[1, H, W, C]` in 0..1 -> `[3, H, W]` in [-1, 1] (an alpha channel is dropped, a gray one
    repeated); `name`: the input it came through, for the errors."""
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise InputError(f"{name} must be a ComfyUI IMAGE [1, H, W, 3]; got shape {tuple(image.shape)}. Connect "
                         "a Load Image node (or convert a mask with Convert Mask to Image).")
    if image.shape[0] != 1:
        raise InputError(f"{name} holds {image.shape[0]} pictures, and it takes one: pick it with an Image From "
                         "Batch node (batch_index 0 for the first, the last index for the last frame).")
    return image[0, ..., :3].expand(-1, -1, 3).permute(2, 0, 1).float() * 2.0 - 1.0


def sampler_conditioning(
    conditioning: WanConditioning | None, positive: list | None, negative: list | None
) -> WanConditioning:
    """Ours from Wan22T5Encode, or a native positive / negative pair (exactly one of the two)."""
    if conditioning is not None and (positive is not None or negative is not None):
        raise InputError("Connect either 'conditioning' (Wan2.2 T5 Encode) or 'positive' / 'negative', not both.")
    if conditioning is not None:
        if not isinstance(conditioning, WanConditioning):
            raise InputError("The 'conditioning' input needs the output of Wan22T5Encode.")
        return conditioning
    if positive is None or negative is None:
        raise InputError(
            "The sampler needs prompts: connect Wan2.2 T5 Encode to 'conditioning', or native CLIPTextEncode "
            "outputs to both 'positive' and 'negative'."
        )
    return conditioning_from_comfy(positive, negative)


def denoising_runtime(dit: DiTHandle, request: SamplingRequest, node_id: str | None) -> tuple[Runtime, int, str]:
    """The runtime a sampling node denoises `request` with, the activation bytes each expert that loads keeps free
    beside it, and the device's label; the node's canvas badge is told the device."""
    activations = dit.forward_memory(request)
    runtime = dit.runtime(host_placement=True, memory_required=activations)
    announce_device(node_id, runtime.device)
    return runtime, activations, device_label(runtime.device)


def video_size_of(task: TaskConfig, latents: torch.Tensor) -> tuple[int, int, int]:
    """(width, height, frames) of normalized latents `[z, F', H', W']` for `task`, checked against its VAE."""
    stride_f, stride_h, stride_w = task.vae_stride
    if latents.shape[0] != task.z_dim:
        raise InputError(
            f"The latent has {latents.shape[0]} channels; {task.name} samples {task.z_dim}-channel latents "
            "(A14B: 16, Wan2.1 VAE; TI2V-5B: 48, Wan2.2 VAE)."
        )
    _, frames, height, width = latents.shape
    return width * stride_w, height * stride_h, (frames - 1) * stride_f + 1


class Wan22DiTSampler:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": ("WAN22_MODEL",),
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
                "conditioning": ("WAN22_CONDITIONING", {"tooltip": "From Wan2.2 T5 Encode (or positive/negative)."}),
                "vae": ("WAN22_VAE", {"tooltip": "Needed with start_image (it encodes the picture)."}),
                "start_image": ("IMAGE", {"tooltip": "i2v / ti2v: the first frame; a picture of another shape is "
                                                     "center-cropped to width x height, as WanImageToVideo does."}),
                "end_image": ("IMAGE", {"tooltip": "i2v-A14B: the last frame, for a video from a first and a last "
                                                   "frame (as WanFirstLastFrameToVideo); needs start_image."}),
                "positive": ("CONDITIONING", {"tooltip": "Native CLIPTextEncode (umt5, type wan) instead."}),
                "negative": ("CONDITIONING", {"tooltip": "Native CLIPTextEncode of the negative prompt."}),
                "latent": ("LATENT", {
                    "tooltip": "Video-to-video: a Wan latent (Wan2.2 VAE Encode, native VAE Encode, "
                    "EmptyHunyuanLatentVideo...). Its size and frame count replace width, height and frames.",
                }),
                "denoise": ("FLOAT", {
                    "default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                    "tooltip": "With 'latent': 1 = a new video of its size; less keeps more of the input video.",
                }),
                "boundary_step": ("INT", {
                    "default": -1, "min": -1, "max": 200,
                    "tooltip": "A14B: the first step of the low-noise expert (Lightning: 2 of 4); -1: the task's "
                    "noise-level boundary.",
                }),
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
        width: int,
        height: int,
        frames: int,
        steps: int,
        solver: str,
        shift: float,
        cfg_high_noise: float,
        cfg_low_noise: float,
        seed: int,
        conditioning: WanConditioning | None = None,
        vae: VAEHandle | None = None,
        start_image: torch.Tensor | None = None,
        positive: list | None = None,
        negative: list | None = None,
        latent: dict | None = None,
        denoise: float = 1.0,
        boundary_step: int = -1,
        unique_id: str | None = None,
        cache: str = "off",
        cache_threshold: float = 0.05,
        end_image: torch.Tensor | None = None,
    ) -> tuple:
        from wan_core.pipeline.denoise import GenerationCancelled
        from wan_core.pipeline.pipeline import WanPipeline
        from wan_core.pipeline.request import SamplingRequest

        dit = require_handle(model, DiTHandle, "model")
        conditioning = sampler_conditioning(conditioning, positive, negative)
        init_latents = None
        if latent is not None:
            reject_noise_mask(latent)
            batch = latent_input(latent)
            if batch.shape[0] != 1:
                raise InputError(f"'latent' holds {batch.shape[0]} videos; the sampler makes one (split the batch).")
            init_latents = batch[0]
            width, height, frames = video_size_of(TASKS[dit.task], init_latents)
        request = SamplingRequest.create(
            dit.task, width=width, height=height, frame_num=frames, seed=seed, solver=solver, steps=steps,
            shift=shift, guide_scale=(cfg_low_noise, cfg_high_noise), denoise=denoise,
            boundary_step=None if boundary_step < 0 else boundary_step, has_image=start_image is not None,
            cache=cache, cache_threshold=cache_threshold,
        )  # fmt: skip
        image = last_image = None
        if start_image is not None:
            if vae is None:
                raise InputError("start_image needs the VAE: connect the Wan22VAELoader output to 'vae'.")
            image = image_to_video_frame(start_image)
        if end_image is not None:
            check_last_frame_use(request.task, request.frame_num)
            last_image = image_to_video_frame(end_image, "end_image")

        runtime, activations, label = denoising_runtime(dit, request, unique_id)
        device = runtime.device
        all_gpus = dit.device == ALL_GPUS
        # all GPUs: the workers load the experts; else the denoising loop places each expert at its first step
        high, low = (None, None) if all_gpus else dit.load(memory_required=activations, place=False)
        vae_module = require_handle(vae, VAEHandle, "vae").load() if vae is not None else None
        pipeline = WanPipeline(
            request.task, text_encoder=None, vae=vae_module, high_noise_model=high, low_noise_model=low, runtime=runtime
        )
        bar = host.Progress(steps, unique_id)

        def on_step(info: StepInfo) -> None:
            send_progress(str(unique_id), label, info)
            bar.update(info.step, lambda: latent_preview(info.latents))
            host.raise_if_interrupted()

        cond = conditioning.to(device)
        try:
            if all_gpus:
                if init_latents is not None:
                    raise InputError("Video-to-video ('latent' input) runs on one GPU: set the DiT's device to a "
                                     "single GPU, or drop the latent.")
                latents = sample_on_all_gpus(
                    dit, pipeline, cond, request, image, on_step, host.interrupted, last_image=last_image
                )
            else:
                latents = pipeline.sample(
                    list(cond.positive), list(cond.negative), request, image=image, last_image=last_image,
                    progress=on_step, cancel=host.interrupted, init_latents=init_latents,
                )
        except GenerationCancelled:
            host.raise_if_interrupted()  # ComfyUI's own exception: shown as "interrupted", not as an error
            raise
        except torch.cuda.OutOfMemoryError:
            runtime.park(high, low)  # ComfyUI unloads only its own models: free ours for the retry
            raise
        return (latent_output(latents),)
