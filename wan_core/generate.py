"""Command-line video generation with the flags of the official Wan2.2 `generate.py`.

    python -m wan_core.generate --task t2v-A14B --size 1280*720 --ckpt_dir ./Wan2.2-T2V-A14B --prompt "..."
    python -m wan_core.generate --demo        # tiny random checkpoint, runs on CPU in seconds
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .checkpoint_dir import LAYOUTS
from .cli_outputs import check_cli_files, decode_and_write, decode_latents_file, write_outputs
from .dit.attention import NAMES as ATTENTION_BACKENDS
from .errors import CheckpointError, InputError, WanError
from .interpolate.cli import add_interpolation_flags
from .io.images import read_rgb_image
from .lora.selection import parse_lora_spec, patches_per_expert
from .memory import GPUOutOfMemoryError
from .pipeline.conditioning import cover_and_crop, official_image_input
from .pipeline.long_video_cli import add_chunk_flags, check_chunk_args, chunked_generate
from .pipeline.request import SamplingRequest
from .pipeline.step_cache import METHODS as STEP_CACHES
from .pipeline.tasks import TASKS, TaskConfig, get_task, parse_size
from .pipeline.validation import check_image_use, check_last_frame_use
from .runtime import Runtime, pick_device
from .sampling import SOLVERS

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from .parallel.launch import DistributedRun
    from .pipeline.denoise import StepInfo

PROG = "python -m wan_core.generate"
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# The official example prompts (generate.py's EXAMPLE_PROMPT), used when --prompt is not given.
_CATS_BOXING = "Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely on a spotlighted stage."
EXAMPLE_PROMPTS = {
    "t2v-A14B": _CATS_BOXING,
    "i2v-A14B": (
        "Summer beach vacation style, a white cat wearing sunglasses sits on a surfboard. The fluffy-furred feline "
        "gazes directly at the camera with a relaxed expression. Blurred beach scenery forms the background featuring "
        "crystal-clear waters, distant green hills, and a blue sky dotted with white clouds. The cat assumes a "
        "naturally relaxed posture, as if savoring the sea breeze and warm sunlight. A close-up shot highlights the "
        "feline's intricate details and the refreshing atmosphere of the seaside."
    ),
    "ti2v-5B": _CATS_BOXING,
}
# --demo defaults: small enough that the whole run takes seconds on a CPU, with both experts used (t2v, i2v).
DEMO_SIZE = "128*96"
DEMO_FRAME_NUM = 9
DEMO_STEPS = 8


def str2bool(text: str) -> bool:
    """The official `str2bool`: yes/true/t/y/1 and no/false/f/n/0, any case."""
    value = text.strip().lower()
    if value in ("yes", "true", "t", "y", "1"):
        return True
    if value in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false, yes/no, 1/0), got {text!r}")


def parse_guide_scale(text: str) -> float | tuple[float, float]:
    """One scale for every expert, or `low,high` (the low-noise expert's scale first, as the official configs)."""
    parts = text.split(",")
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise argparse.ArgumentTypeError(
        f"expected a number such as 5.0, or two numbers low,high such as 3.0,4.0; got {text!r}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Generate a video from a text prompt (and an image for i2v/ti2v) with Wan2.2. "
        "The flags are those of the official Wan2.2 generate.py.",
    )
    parser.add_argument("--task", default="t2v-A14B", choices=list(TASKS), help="The task to run.")
    parser.add_argument(
        "--size",
        default=None,
        help="width*height of the video, e.g. 1280*720 or 832*480 (ti2v-5B: 1280*704 or 704*1280). For i2v the "
        f"area counts and the aspect ratio follows the image. Default: the task's first size (1280*720; ti2v-5B: "
        f"1280*704), {DEMO_SIZE} with --demo.",
    )
    parser.add_argument("--frame_num", type=int, default=None, help="Number of frames, 4n+1. Default: the task's.")
    parser.add_argument("--ckpt_dir", default=None, help="The folder of the official checkpoint download.")
    parser.add_argument(
        "--offload_model",
        type=str2bool,
        default=None,
        help="Keep the expert not in use in CPU RAM and move models back to the CPU after the run, "
        "reducing GPU memory use. Default: true on a GPU, false on the CPU and under torchrun.",
    )
    parser.add_argument("--t5_cpu", action="store_true", help="Run the T5 text encoder on the CPU.")
    parser.add_argument(
        "--convert_model_dtype", action="store_true", help="Store the DiT weights in bf16 (the param dtype)."
    )
    parser.add_argument("--prompt", default=None, help="The prompt. Default: the official example prompt.")
    _add_prompt_extend_flags(parser)
    parser.add_argument("--image", default=None, help="The first frame (required for i2v-A14B, optional for ti2v-5B).")
    parser.add_argument(
        "--last_frame", default=None,
        help="i2v-A14B: the last frame, for a video from --image to it (Wan2.1 flf2v's flag; fitted to the first "
        "frame's size by cover and center crop).",
    )  # fmt: skip
    parser.add_argument("--base_seed", type=int, default=-1, help="The seed; -1 picks a random one.")
    parser.add_argument("--sample_solver", default="unipc", choices=SOLVERS, help="The sampler.")
    parser.add_argument("--sample_steps", type=int, default=None, help="Sampling steps. Default: the task's.")
    parser.add_argument("--sample_shift", type=float, default=None, help="Flow-matching shift. Default: the task's.")
    parser.add_argument(
        "--sample_guide_scale",
        type=parse_guide_scale,
        default=None,
        help="Classifier-free guidance scale: one number, or low,high for the two experts. Default: the task's.",
    )
    parser.add_argument(
        "--boundary_step", type=int, default=None,
        help="The first step of the low-noise expert (Lightning: 2 of 4). Default: the task's timestep boundary.",
    )  # fmt: skip
    for flag, which in (("--lora", "both experts (or the one model of ti2v-5B)"),
                        ("--lora_high", "the high-noise expert"), ("--lora_low", "the low-noise expert")):
        parser.add_argument(
            flag, action="append", default=[], type=parse_lora_spec, metavar="PATH[:STRENGTH]",
            help=f"A LoRA file for {which}, strength 1.0 unless given; repeat the flag for several.",
        )  # fmt: skip
    parser.add_argument(
        "--save_file", default=None, help="The MP4 to write. Default: the official name from task, size, prompt."
    )
    parser.add_argument(
        "--save_tensor", default=None, metavar="PATH", help="Also save the video as safetensors [3,F,H,W] in [-1,1]."
    )
    parser.add_argument("--save_frames", default=None, metavar="DIR", help="Also save every frame as a PNG in DIR.")
    parser.add_argument("--overwrite", action="store_true", help="Replace existing output files (refused otherwise).")
    parser.add_argument(
        "--decode_latents", default=None, metavar="FILE",
        help="Only decode latents kept by a failed run (the error names the file) and write the outputs.",
    )  # fmt: skip
    parser.add_argument(
        "--demo",
        action="store_true",
        help="Run on a tiny checkpoint with RANDOM weights, synthesized into a cache folder (WAN22_DEMO_DIR): "
        "checks the whole pipeline in seconds on a CPU; the video is noise.",
    )
    parser.add_argument("--device", default=None, help="torch device, e.g. cuda:1 or cpu. Default: cuda if present.")
    parser.add_argument(
        "--attention",
        default="auto",
        choices=ATTENTION_BACKENDS,
        help="Attention kernel. auto: the fastest that runs here (SageAttention 2, our 8-bit Triton kernel int8_triton "
        "on Hopper, FlashAttention, else PyTorch SDPA). int8_triton also runs on RTX 40xx/50xx when named.",
    )
    add_interpolation_flags(parser)
    add_chunk_flags(parser)
    parser.add_argument(
        "--ulysses_size", type=int, default=1, help="Split one video over N processes (Ulysses sequence "
        "parallelism; needs yunchang): torchrun --nproc_per_node=N -m wan_core.generate ... --ulysses_size N.",
    )
    parser.add_argument("--ring_size", type=int, default=1, help="Ring attention degree (for head counts that do "
                        "not divide): nproc_per_node = ulysses_size * ring_size.")
    parser.add_argument("--dit_fsdp", action="store_true", help="Shard the DiT weights over the processes (FSDP2).")
    parser.add_argument("--t5_fsdp", action="store_true", help="Shard the T5 weights over the processes (FSDP2).")
    parser.add_argument(
        "--cache", default="off", choices=STEP_CACHES,
        help="Step cache: skip DiT forwards predictable from the last computed one (easycache: adaptive, no "
        "calibration; magcache: the published Wan2.2 magnitude ratios). Faster; the video changes slightly.",
    )  # fmt: skip
    parser.add_argument(
        "--cache_threshold", type=parse_guide_scale, default=None,
        help="Step-cache threshold, one number or low,high per expert; higher skips more, 0 never. Default: "
        "easycache 0.05, magcache 0.06.",
    )  # fmt: skip
    parser.add_argument("--compile", action="store_true", help="torch.compile each transformer block (GPU).")
    parser.add_argument(
        "--cfg_batch", action="store_true", help="Run cond and uncond as one forward of batch 2 (more GPU memory)."
    )
    parser.add_argument(
        "--cuda_graphs", action="store_true",
        help="Replay each DiT forward from a CUDA graph (less CPU time per step; keeps one forward's activation "
        "memory reserved; not with --compile or block swap).",
    )
    return parser


def _add_prompt_extend_flags(parser: argparse.ArgumentParser) -> None:
    """The official prompt-extension flags, so that an official command line parses; `--use_prompt_extend` itself is
    refused with a clear message (`resolve_request`), the others only matter with it (as in the official script)."""
    unsupported = "Official flag, accepted; prompt extension is not part of this CLI (pass the extended --prompt)."
    parser.add_argument("--use_prompt_extend", action="store_true", help=unsupported)
    parser.add_argument("--prompt_extend_method", default="local_qwen", choices=["dashscope", "local_qwen"],
                        help=unsupported)
    parser.add_argument("--prompt_extend_model", default=None, help=unsupported)
    parser.add_argument("--prompt_extend_target_lang", default="zh", choices=["zh", "en"], help=unsupported)


@dataclass
class Request:
    """A generation request with every default filled in and every value checked."""

    ckpt_dir: Path | None  # None with --demo until the demo checkpoint is built
    prompt: str
    image: torch.Tensor | None  # the start frame [3, H, W] in [-1, 1]
    sampling: SamplingRequest
    runtime: Runtime
    save_file: Path
    patches: tuple[tuple, ...] = ()  # LoRA patches per model, high-noise expert first
    last_image: torch.Tensor | None = None  # i2v's last frame [3, H, W] in [-1, 1], at the output size

    @property
    def task(self) -> str:
        return self.sampling.task.name


# The official name keeps the prompt but for spaces and "/"; also replaced here: what no file name may hold on Windows
# and control characters (newlines).
_NOT_IN_FILE_NAMES = re.compile(r'[\s/\\:*?"<>|\x00-\x1f]')


def _default_save_file(args: argparse.Namespace, size: str, prompt: str) -> Path:
    """The official default `<task>_<size>_<ulysses_size>_<prompt>_<time>.mp4`, the size with `x` for `*` (as the
    official script writes it on Windows), the prompt's first 50 characters; `demo_` first with --demo."""
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    words = _NOT_IN_FILE_NAMES.sub("_", prompt)[:50]
    name = f"{args.task}_{size.replace('*', 'x')}_{args.ulysses_size}_{words}_{stamp}.mp4"
    return Path(f"demo_{name}" if args.demo else name)


def _open_image(path: str | None, demo_fallback: bool, flag: str = "--image") -> PILImage | None:
    """The image of `flag` as an RGB PIL image; without it, None (or a gradient when `demo_fallback`)."""
    if path is None:
        return _demo_image() if demo_fallback else None
    return read_rgb_image(path, flag)


def _demo_image() -> PILImage:
    """A smooth color gradient as the demo's i2v first frame."""
    from PIL import Image

    width, height = 256, 192
    ramp_x = torch.linspace(0, 255, width).expand(height, width)
    ramp_y = torch.linspace(0, 255, height)[:, None].expand(height, width)
    pixels = torch.stack([ramp_x, ramp_y, 255 - ramp_x], dim=-1).to(torch.uint8)
    return Image.fromarray(pixels.numpy())


def _check_unsupported_uses(args: argparse.Namespace, task: TaskConfig) -> None:
    """Refuse what would otherwise be dropped without a word: prompt extension, a cache threshold with no cache,
    and a `low,high` pair for ti2v-5B's one model (only the first number would be used)."""
    if args.use_prompt_extend:
        raise InputError(
            "--use_prompt_extend: prompt extension (the official Qwen / DashScope prompt rewriting) is not part of "
            "this CLI; drop it and pass the extended prompt with --prompt."
        )
    if args.cache_threshold is not None and args.cache == "off":
        raise InputError(
            "--cache_threshold sets the step cache's threshold, but no step cache is on: add --cache easycache or "
            "--cache magcache, or drop --cache_threshold."
        )
    if task.is_moe:
        return
    for flag, value in (("--sample_guide_scale", args.sample_guide_scale), ("--cache_threshold", args.cache_threshold)):
        if isinstance(value, tuple):
            raise InputError(
                f"{flag} {value[0]:g},{value[1]:g}: {task.name} has one model, so it takes one number, e.g. "
                f"{flag} {value[0]:g} (low,high pairs are for the two experts of the A14B tasks)."
            )


def default_offload(device: torch.device, distributed: bool) -> bool:
    """--offload_model when not given: on for a one-process GPU run, off under torchrun (as the official
    generate.py, whose default is `world_size == 1`) and on the CPU."""
    return device.type != "cpu" and not distributed


def resolve_request(args: argparse.Namespace, distributed: bool = False) -> Request:
    """Fill the task's defaults into the parsed flags and validate everything before any model is loaded;
    `distributed`: one process of a torchrun launch."""
    task = get_task(args.task)
    if args.demo and args.ckpt_dir is not None:
        raise InputError(
            "--demo builds its own tiny random checkpoint; drop --ckpt_dir (to choose where the demo checkpoint "
            "is kept, set the environment variable WAN22_DEMO_DIR)."
        )
    if not args.demo and args.ckpt_dir is None:
        raise InputError(
            "Pass --ckpt_dir with the folder of an official Wan2.2 download (e.g. hf download "
            f"{LAYOUTS[args.task].hf_repo} --local-dir ./ckpt), or --demo to try a tiny random checkpoint."
        )
    _check_unsupported_uses(args, task)
    size = args.size or (DEMO_SIZE if args.demo else task.sizes[0])
    width, height = parse_size(size)
    image = _open_image(args.image, task.needs_image and args.demo)
    frame_num = args.frame_num if args.frame_num is not None else DEMO_FRAME_NUM if args.demo else task.frame_num
    last_image = _open_image(args.last_frame, False, "--last_frame")
    if last_image is not None:
        check_image_use(task, image is not None)
        check_last_frame_use(task, frame_num)
        last_image = cover_and_crop(last_image, image.width, image.height)  # as Wan2.1's flf2v fits it
    if image is not None and task.accepts_image:
        # As the official generate.py: --size gives the area; the output's aspect ratio follows the image.
        area = width * height
        image, width, height = official_image_input(image, task, max_area=area)
        if last_image is not None:
            last_image = official_image_input(last_image, task, max_area=area)[0]
    steps = args.sample_steps if args.sample_steps is not None else DEMO_STEPS if args.demo else task.sample_steps
    sampling = SamplingRequest.create(
        task, width=width, height=height, frame_num=frame_num, seed=args.base_seed, solver=args.sample_solver,
        steps=steps, shift=args.sample_shift, guide_scale=args.sample_guide_scale, has_image=image is not None,
        boundary_step=args.boundary_step,
        cache=args.cache, cache_threshold=args.cache_threshold,
    )  # fmt: skip
    patches = patches_per_expert(task, args.lora, args.lora_high, args.lora_low)

    device = pick_device(args.device)
    runtime = Runtime.create(
        device,
        offload=args.offload_model if args.offload_model is not None else default_offload(device, distributed),
        t5_cpu=args.t5_cpu,
        attention=args.attention,
        compile=args.compile,
        cfg_batch=args.cfg_batch,
        cuda_graphs=args.cuda_graphs,
    )
    prompt = args.prompt if args.prompt is not None else EXAMPLE_PROMPTS[args.task]
    save_file = Path(args.save_file) if args.save_file else _default_save_file(args, size, prompt)
    check_cli_files(args, save_file)
    return Request(
        ckpt_dir=Path(args.ckpt_dir) if args.ckpt_dir else None,
        prompt=prompt,
        image=image,
        sampling=sampling,
        runtime=runtime,
        save_file=save_file,
        patches=patches,
        last_image=last_image,
    )


class ProgressBar:
    """A tqdm bar fed by the pipeline's progress callback: step i of n, the expert in use, seconds per step."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc="denoising", unit="step", dynamic_ncols=True)

    def __call__(self, info: StepInfo) -> None:
        self._bar.set_postfix_str(f"expert={info.expert} t={info.timestep} {info.seconds:.2f}s/step", refresh=False)
        self._bar.update(info.step - self._bar.n)  # info.step is 1-based
        if info.step == info.total:
            self.close()  # stop the clock before the VAE decode

    def close(self) -> None:
        self._bar.close()


def _say(message: str) -> None:
    print(message, flush=True)


def run(args: argparse.Namespace) -> int:
    from .parallel.launch import start as start_distributed

    distributed = start_distributed(args.ulysses_size, args.ring_size, args.device, args.dit_fsdp, args.t5_fsdp)
    if distributed is None:
        return _generate(args, None)
    completed = False
    try:
        code = _generate(args, distributed)
        completed = True
        return code
    finally:
        distributed.close(completed)


def _generate(args: argparse.Namespace, distributed: DistributedRun | None) -> int:
    from .checkpoint_dir import load_pipeline

    request = resolve_request(args, distributed=distributed is not None)
    check_chunk_args(args)
    if args.chunks > 1 and request.last_image is not None:
        raise InputError("--last_frame ends one video; --chunks continues each chunk from the last one's end. Drop "
                         "one of the two.")
    if distributed is not None:
        if args.chunks > 1:
            raise InputError("--chunks runs on one GPU; drop --ulysses_size (or run the chunks without torchrun).")
        request = distributed.adapt(request, fsdp=args.dit_fsdp, t5_fsdp=args.t5_fsdp)
    if args.demo:
        from .demo import DEMO_WARNING, ensure_demo_checkpoint

        with distributed.main_first() if distributed is not None else contextlib.nullcontext():
            request.ckpt_dir = ensure_demo_checkpoint(request.task)
        _say(DEMO_WARNING.format(folder=request.ckpt_dir))
    if args.decode_latents:
        return decode_latents_file(request, args, _say)

    _say(f"Loading {request.task} from {request.ckpt_dir} onto {request.runtime.device} ...")
    started = time.perf_counter()
    pipeline = load_pipeline(
        request.task, request.ckpt_dir, request.runtime, convert_model_dtype=args.convert_model_dtype,
        patches=request.patches,
    )
    if args.dit_fsdp:
        distributed.shard_experts(pipeline)
    if args.t5_fsdp:
        distributed.shard_text_encoder(pipeline)
    sampling = request.sampling
    _say(f"Loaded in {time.perf_counter() - started:.1f}s. Generating {sampling.frame_num} frames at "
         f"{sampling.width}x{sampling.height}, {sampling.steps} {sampling.solver} steps, seed {sampling.seed}, "
         f"attention {request.runtime.attention.name}.")
    if args.chunks > 1:  # each chunk's video is kept by the chunk engine; a failed write is redone on resume
        video = chunked_generate(args, pipeline, ProgressBar, _say)(request.prompt, sampling, image=request.image)
        write_outputs(video, request, args, _say)
        return 0
    bar = ProgressBar(sampling.steps) if distributed is None or distributed.is_main else None
    try:
        cond, uncond = pipeline.encode_prompts(request.prompt, None)
        latents = pipeline.sample(
            cond, uncond, sampling, image=request.image, last_image=request.last_image, progress=bar
        )
    finally:
        if bar is not None:
            bar.close()
    if distributed is not None and not distributed.is_main:
        return 0  # rank 0 decodes and writes the outputs
    decode_and_write(pipeline, latents, request, args, _say)  # keeps the latents if decoding or writing fails
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m wan_core.generate`. Returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (InputError, CheckpointError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (GPUOutOfMemoryError, WanError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
