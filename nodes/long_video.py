"""Wan22LongVideo: a long video in chunks, each an image-to-video run from the previous chunk's last frame
(I2V-A14B or TI2V-5B), colour-matched at the joins, resumable: finished chunks stay in the output folder under
`run_name`, and queueing the same graph again continues at the first chunk not done."""

from __future__ import annotations

import torch

from wan_core.errors import InputError
from wan_core.pipeline.denoise import StepInfo
from wan_core.pipeline.long_video import CHUNK_TASKS, PROMPT_SEPARATOR

from . import host
from .handles import DiTHandle, T5Handle, VAEHandle, require_handle
from .sampler import MAX_SIZE, _solvers, denoising_runtime, image_to_video_frame, latent_preview, send_progress
from .save_video import resolve_prefix
from .vae_nodes import video_to_images

CATEGORY = "Wan2.2"


class Wan22LongVideo:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": ("WAN22_MODEL",),
                "t5": ("WAN22_T5",),
                "vae": ("WAN22_VAE",),
                "prompts": ("STRING", {
                    "multiline": True, "default": "",
                    "tooltip": f"One prompt for every chunk, or one per chunk separated by '{PROMPT_SEPARATOR}'.",
                }),
                "negative_prompt": ("STRING", {"multiline": True, "default": "",
                                               "tooltip": "Empty: Wan2.2's official negative prompt."}),
                "chunks": ("INT", {"default": 3, "min": 1, "max": 100}),
                "width": ("INT", {"default": 1280, "min": 16, "max": MAX_SIZE, "step": 16}),
                "height": ("INT", {"default": 704, "min": 16, "max": MAX_SIZE, "step": 16}),
                "frames": ("INT", {"default": 121, "min": 5, "max": 1001, "step": 4,
                                   "tooltip": "Frames per chunk (4n+1); each join drops one repeated frame."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 200}),
                "solver": (_solvers(), {"default": "unipc"}),
                "shift": ("FLOAT", {"default": 5.0, "min": 0.0, "max": 100.0, "step": 0.1}),
                "cfg_high_noise": ("FLOAT", {"default": 5.0, "min": 0.0, "max": 30.0, "step": 0.1}),
                "cfg_low_noise": ("FLOAT", {"default": 5.0, "min": 0.0, "max": 30.0, "step": 0.1}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "Chunk i uses seed + i."}),
                "colour_match": ("BOOLEAN", {"default": True, "tooltip": "Match each chunk's colours to the "
                                             "previous chunk's last frame (mean/std per channel)."}),
                "run_name": ("STRING", {"default": "wan22_long/run",
                                        "tooltip": "Chunks and their ledger go to output/<run_name>.chunks/; the "
                                        "same request queued again resumes there."}),
            },
            "optional": {"start_image": ("IMAGE", {"tooltip": "The first frame (required for I2V-A14B)."})},
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("images", "info")
    FUNCTION = "generate"
    CATEGORY = CATEGORY
    DESCRIPTION = "Generates a long video chunk by chunk, each chunk continuing from the previous chunk's last frame."

    def generate(
        self, model: DiTHandle, t5: T5Handle, vae: VAEHandle, prompts: str, negative_prompt: str, chunks: int,
        width: int, height: int, frames: int, steps: int, solver: str, shift: float, cfg_high_noise: float,
        cfg_low_noise: float, seed: int, colour_match: bool, run_name: str, start_image: torch.Tensor | None = None,
        unique_id: str | None = None,
    ) -> dict:
        from wan_core.pipeline.denoise import GenerationCancelled
        from wan_core.pipeline.long_video import generate_long_video
        from wan_core.pipeline.pipeline import WanPipeline
        from wan_core.pipeline.request import SamplingRequest

        dit = require_handle(model, DiTHandle, "model")
        if dit.task not in CHUNK_TASKS:
            raise InputError(f"Long videos continue each chunk from an image: load an I2V-A14B or TI2V-5B model, "
                             f"not {dit.task}.")
        sampling = SamplingRequest.create(
            dit.task, width=width, height=height, frame_num=frames, seed=seed, solver=solver, steps=steps,
            shift=shift, guide_scale=(cfg_low_noise, cfg_high_noise), has_image=True,
        )  # fmt: skip
        task = sampling.task
        if task.model_type == "i2v" and start_image is None:
            raise InputError("I2V-A14B starts from a picture: connect a Load Image node to start_image.")
        folder, stem = resolve_prefix(host.output_directory(), run_name)
        encoder = require_handle(t5, T5Handle, "t5").load()
        runtime, activations, label = denoising_runtime(dit, sampling, unique_id)
        device = runtime.device
        high, low = dit.load(memory_required=activations, place=False)  # placed at each expert's first step
        pipeline = WanPipeline(task, text_encoder=None, vae=require_handle(vae, VAEHandle, "vae").load(),
                               high_noise_model=high, low_noise_model=low, runtime=runtime)
        bar = host.Progress(chunks * steps, unique_id)
        negative = negative_prompt.strip() or task.negative_prompt
        made = 0

        def make_chunk(prompt: str, start: torch.Tensor | None, chunk_seed: int) -> torch.Tensor:
            nonlocal made
            offset = made * steps
            made += 1

            def on_step(info: StepInfo) -> None:
                send_progress(str(unique_id), label, info)
                bar.update(offset + info.step, lambda: latent_preview(info.latents))
                host.raise_if_interrupted()

            with torch.no_grad():
                cond, uncond = encoder.encode([prompt, negative])
            latents = pipeline.sample(
                [cond.to(device)], [uncond.to(device)], sampling.replace(seed=chunk_seed), image=start,
                progress=on_step, cancel=host.interrupted,
            )
            return pipeline.decode(latents)

        request = {"task": dit.task, "model": (dit.high_noise_path, dit.low_noise_path), "width": width,
                   "height": height, "frames": frames, "steps": steps, "solver": solver, "shift": shift,
                   "cfg": (cfg_low_noise, cfg_high_noise), "negative_prompt": negative}
        first = image_to_video_frame(start_image) if start_image is not None else None
        try:
            result = generate_long_video(make_chunk, prompts, chunks=chunks, seed=seed,
                                         work_dir=folder / f"{stem}.chunks", request=request, start_image=first,
                                         colour_match=colour_match)
        except GenerationCancelled:
            host.raise_if_interrupted()
            raise
        shifts = ", ".join(f"{d.max_mean_shift:.3f}" for d in result.drift) or "none measured in this run"
        info = (f"{chunks} chunks -> {result.video.shape[1]} frames; resumed chunks: {result.resumed or 'none'}; "
                f"colour drift at the joins (largest channel mean shift, [-1, 1] scale): {shifts}"
                f"{' (matched)' if colour_match else ''}")
        return {"ui": {"text": [info]}, "result": (video_to_images(result.video), info)}
