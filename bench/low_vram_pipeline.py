"""Small cards emulated on one big GPU, whole pipeline: T5, both experts with the MoE switch, VAE decode, under a cap.

Each case caps this process's GPU memory with `torch.cuda.set_per_process_memory_fraction` and runs what a user of
that card runs, through the pack's own code (`WanPipeline` with a `Runtime`, `load_dit`, `load_text_encoder`,
`load_vae`, `enable_block_swap`):
- the setup the GPU Check node recommends for the card in fp8 (`wan_core.hardware.candidates`): block-swap resident
  count, T5 on the CPU or the GPU, tiled decode; offload_model on (one model on the GPU at a time);
- model files with random weights at real shape in ComfyUI's layouts (`bench/host_models.py`: fp8_scaled experts,
  `umt5_xxl_fp8_e4m3fn_scaled`, the Wan2.1 / Wan2.2 VAE), written once into `--dir` and read through the loaders,
  so the experts are memory-mapped and their pages released as the pipeline does; A14B reads one expert file for
  both the high-noise and the low-noise expert (half the disk; two loads, two maps, as two files would be);
- stages: load, text encoding (the encoder is dropped after it, as a one-shot run can), denoising with `--steps`
  steps (A14B: the first with the high-noise expert, the rest with the low-noise one, `boundary_step=1`), VAE decode.

Per stage: seconds, peak GPU memory (allocated / reserved) and peak resident RAM (VmHWM, reset per stage), and where
the RAM is at the stage's end (`ram_at_end`: anonymous / file-backed / shared resident memory from /proc/self/status,
and torch's pinned host allocator: bytes owned, cached included, and bytes in use); per case the maxima, the setup
used and the seconds of each denoising step (the first step of each expert includes moving it
onto the GPU). One JSON object.

    python bench/low_vram_pipeline.py                      # 4 cases (about 7 minutes on an H100, 27 GB of files)
    python bench/low_vram_pipeline.py --cases a14b-16gib-720p-81f
    python bench/low_vram_pipeline.py --device cpu --tiny  # wiring check on a CPU with tiny models (seconds)
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dit_step import sync  # noqa: E402  (bench/ is this script's folder)
from host_models import T5_FILE, dit_specs, umt5_specs, vae_specs, write_streamed  # noqa: E402
from low_vram import (  # noqa: E402
    bench_device,
    case_parser,
    emit,
    peaks,
    report_head,
    reset_peaks,
    select_cases,
    set_cap,
)

from wan_core import ram  # noqa: E402
from wan_core.dit.block_swap import GIB, enable_block_swap  # noqa: E402
from wan_core.dit.loader import load_dit  # noqa: E402
from wan_core.hardware import T5_CPU, TILED_DECODE, Setup, candidates  # noqa: E402
from wan_core.host_buffers import drop_spares  # noqa: E402
from wan_core.pipeline.pipeline import WanPipeline  # noqa: E402
from wan_core.pipeline.request import SamplingRequest  # noqa: E402
from wan_core.runtime import Runtime  # noqa: E402
from wan_core.text.encoder import load_text_encoder  # noqa: E402
from wan_core.vae.loader import load_vae  # noqa: E402

PROMPT = "Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely on a spotlighted stage."
DECODE_TILE = 256  # pixels: the VAE Decode node's default tile size


@dataclass(frozen=True)
class PipelineCase:
    name: str
    task: str
    cap_gib: float
    model: str  # "A14B" | "5B" (wan_core.hardware's names)
    resolution: str
    width: int
    height: int
    frames: int

    @property
    def dit_config(self) -> str:
        return "t2v-A14B" if self.model == "A14B" else "ti2v-5B"

    @property
    def vae(self) -> str:
        return "wan2.1" if self.model == "A14B" else "wan2.2"


CASES = (
    PipelineCase("a14b-12gib-480p-81f", "t2v-A14B", 12, "A14B", "480p", 832, 480, 81),
    PipelineCase("a14b-16gib-720p-81f", "t2v-A14B", 16, "A14B", "720p", 1280, 720, 81),
    PipelineCase("a14b-24gib-720p-81f", "t2v-A14B", 24, "A14B", "720p", 1280, 720, 81),
    PipelineCase("ti2v5b-8gib-720p-121f", "ti2v-5B", 8, "5B", "720p", 1280, 704, 121),
)
TINY_SIZE = {"A14B": (64, 64, 5), "5B": (64, 64, 5)}  # width, height, frames of the --tiny wiring check


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = case_parser(__doc__, "denoising steps (A14B: 1 high-noise, the rest low-noise)")
    p.add_argument("--dir", default="/tmp/wan22_low_vram_files", help="where the model files are written once")
    return p.parse_args(argv)


def recommended_setup(case: PipelineCase) -> Setup:
    """The fp8 setup the GPU Check node recommends for the case's card (block swap, T5 placement, tiled decode)."""
    fits = [s for s in candidates(case.model, case.resolution, case.cap_gib) if s.weights == "fp8"]
    if not fits:
        raise SystemExit(f"{case.name}: no fp8 setup fits {case.cap_gib} GiB by wan_core.hardware's estimates")
    return fits[0]


def model_files(case: PipelineCase, root: Path, tiny: bool, device: torch.device, log=print) -> dict[str, Path]:
    """The case's expert, T5 and VAE files under `root` (written once, reused by later cases and runs)."""
    scale = "tiny" if tiny else "real"
    vae = f"tiny-{case.vae}" if tiny else case.vae
    folder = root / scale
    wanted = {
        "expert": (folder / f"{case.dit_config}_fp8_scaled.safetensors", lambda: dit_specs(scale, case.dit_config)),
        "t5": (folder / T5_FILE, lambda: umt5_specs(scale)),
        "vae": (folder / f"{vae}_vae.safetensors", lambda: vae_specs(vae)),
    }
    for seed, (path, specs) in enumerate(wanted.values()):
        if not path.is_file():
            started = time.perf_counter()
            write_streamed(path, specs(), seed=seed, device=device)
            log(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB, {time.perf_counter() - started:.0f} s)")
    return {key: path for key, (path, _) in wanted.items()}


def ram_at_end() -> dict:
    """The process's resident memory by kind now, and torch's pinned host allocator (CUDA builds), in GiB."""
    status = ram.meminfo("/proc/self/status")
    out = {key: round(status[key] / GIB, 2) for key in ("RssAnon", "RssFile", "RssShmem") if key in status}
    stats = torch.cuda.memory.host_memory_stats() if hasattr(torch.cuda.memory, "host_memory_stats") else {}
    for key, name in (("allocated_bytes.current", "pinned_owned"), ("active_bytes.current", "pinned_in_use")):
        if key in stats:
            out[name] = round(stats[key] / GIB, 2)
    return out


def pinned_experts(pipeline: WanPipeline) -> list[str]:
    """Which experts hold pinned block-swap masters now."""
    experts = {"high": pipeline.high_noise_model, "low": pipeline.low_noise_model}
    return [name for name, model in experts.items()
            if getattr(getattr(model, "block_swap", None), "pinned", False)]


def free_host_cache() -> None:
    """Give the spare and torch's cached pinned memory back, so that a case does not start with the previous case's."""
    drop_spares()
    empty = getattr(torch._C, "_host_emptyCache", None)
    if empty is not None:
        empty()


class Stages:
    """Seconds, peak GPU and peak RAM of each stage of one case (peaks reset at each stage's start)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.results: dict[str, dict] = {}

    def run(self, name: str, fn):  # noqa: ANN001, ANN201 - any stage callable and its result
        reset_peaks(self.device)
        sync(self.device)
        started = time.perf_counter()
        try:
            return fn()
        except torch.cuda.OutOfMemoryError as error:  # the pack's GPUOutOfMemoryError is one too
            self.results[name] = {"error": f"out of memory: {str(error).splitlines()[0]}"}
            raise
        finally:
            sync(self.device)
            entry = self.results.setdefault(name, {})
            entry["seconds"] = round(time.perf_counter() - started, 3)
            entry.update(peaks(self.device))
            entry["ram_at_end"] = ram_at_end()

    def maxima(self) -> dict:
        out = {}
        for key in ("peak_resident_ram_gib", "peak_gpu_allocated_gib", "peak_gpu_reserved_gib"):
            values = [r[key] for r in self.results.values() if key in r]
            if values:
                out[key] = max(values)
        return out


def run_case(case: PipelineCase, args: argparse.Namespace, device: torch.device) -> dict:
    files = model_files(case, Path(args.dir), args.tiny, device, log=lambda text: print(text, file=sys.stderr))
    setup = recommended_setup(case)
    resident = 1 if args.tiny else setup.resident_blocks
    t5_cpu = T5_CPU in setup.settings
    tile = (32 if args.tiny else DECODE_TILE) if TILED_DECODE in setup.settings else None
    width, height, frames = TINY_SIZE[case.model] if args.tiny else (case.width, case.height, case.frames)
    result = {"case": case.name, "task": case.task, "cap_gib": case.cap_gib, "size": f"{width}x{height}",
              "frames": frames, "steps": args.steps, "setup": setup.label, "resident_blocks": resident,
              "t5": "cpu" if t5_cpu else "gpu", "decode_tile": tile, "estimated_gpu_gib": setup.need_gib}
    stages = Stages(device)
    set_cap(device, case.cap_gib)
    step_seconds: list[dict] = []
    try:
        runtime = Runtime.create(device, offload=True, t5_cpu=t5_cpu, attention="auto")

        def load() -> WanPipeline:
            experts = [load_dit(files["expert"], device="cpu", fp8_compute=device.type == "cuda")
                       for _ in range(2 if case.model == "A14B" else 1)]
            for expert in experts:
                if resident is not None and resident < len(expert.blocks):
                    enable_block_swap(expert, resident)
            text_encoder = load_text_encoder(files["t5"], device=runtime.text_encoder_device)
            vae = load_vae(files["vae"], device="cpu", dtype=torch.float32)
            return WanPipeline(case.task, text_encoder=text_encoder, vae=vae, high_noise_model=experts[0],
                               low_noise_model=experts[1] if len(experts) > 1 else None, runtime=runtime)

        pipeline = stages.run("load", load)
        result["num_blocks"] = len(pipeline.high_noise_model.blocks)

        def encode() -> tuple[torch.Tensor, torch.Tensor]:
            embeddings = pipeline.encode_prompts(PROMPT)
            pipeline.text_encoder = None  # a one-shot run needs it no more: its RAM (or GPU memory) goes back
            gc.collect()
            return embeddings

        cond, uncond = stages.run("text_encoding", encode)
        request = SamplingRequest.create(
            case.task, width=width, height=height, frame_num=frames, seed=0, steps=args.steps,
            boundary_step=1 if case.model == "A14B" else None)
        result["latent"] = list(request.latent_shape[1:])

        def progress(info) -> None:  # noqa: ANN001 - wan_core.pipeline.denoise.StepInfo
            step_seconds.append({"step": info.step, "expert": info.expert, "seconds": round(info.seconds, 3),
                                 "ram_after": ram_at_end(), "pinned_experts": pinned_experts(pipeline)})

        latents = stages.run("denoise", lambda: pipeline.sample(cond, uncond, request, progress=progress))
        video = stages.run("decode", lambda: pipeline.decode(latents, tile_size=tile))
        result["video_shape"] = list(video.shape)
        result["finite"] = bool(torch.isfinite(video).all())
    except torch.cuda.OutOfMemoryError:
        result["error"] = "out of memory"
    finally:
        set_cap(device, None)
        pipeline = cond = uncond = latents = video = None  # noqa: F841 - drop the models before the next case
        gc.collect()
        free_host_cache()
        reset_peaks(device)
    result.update({"stages": stages.results, "denoise_steps": step_seconds, **stages.maxima()})
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = bench_device(args.device)
    report = {
        **report_head(device), "tiny": args.tiny,
        "note": "whole pipeline per case under the cap: load, T5 (dropped after encoding), both experts with the "
                "MoE switch (offload_model, block swap as GPU Check recommends), VAE decode; random weights at "
                "real shape read from files; peaks per stage",
        "cases": [],
    }
    for case in select_cases(CASES, args.cases):
        result = run_case(case, args, device)
        report["cases"].append(result)
        print(json.dumps(result), file=sys.stderr, flush=True)
    emit(report, args.json)
    return report


if __name__ == "__main__":
    main()
