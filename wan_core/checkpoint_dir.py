"""The official Wan2.2 checkpoint folder (`--ckpt_dir`): which files a task needs, and loading them into a pipeline.

Layouts, as in the Hugging Face repos `Wan-AI/Wan2.2-{T2V-A14B,I2V-A14B,TI2V-5B}`:
  A14B tasks: `high_noise_model/` and `low_noise_model/` (config.json + sharded diffusion_pytorch_model safetensors),
              `Wan2.1_VAE.pth`, `models_t5_umt5-xxl-enc-bf16.pth`, `google/umt5-xxl/` (tokenizer).
  ti2v-5B:    the one model's config.json + shards at the top of the folder, `Wan2.2_VAE.pth`, the same T5 files.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import CheckpointError, MissingFileError
from .io.files import find_weight_files

if TYPE_CHECKING:
    from .pipeline.pipeline import WanPipeline
    from .runtime import Runtime

T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
TOKENIZER_DIR = "google/umt5-xxl"
DIT_CONFIG_FILE = "config.json"
DIT_WEIGHTS_STEM = "diffusion_pytorch_model"
# One of these makes a tokenizer folder usable (the fast tokenizer file, or the sentencepiece model).
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")


@dataclass(frozen=True)
class CheckpointLayout:
    """Where a task's parts live inside its official download."""

    hf_repo: str
    vae_file: str
    # Expert sub-folders, high-noise first; "" is the folder itself (the single ti2v-5B model).
    expert_dirs: tuple[str, ...]


LAYOUTS: dict[str, CheckpointLayout] = {
    "t2v-A14B": CheckpointLayout("Wan-AI/Wan2.2-T2V-A14B", "Wan2.1_VAE.pth", ("high_noise_model", "low_noise_model")),
    "i2v-A14B": CheckpointLayout("Wan-AI/Wan2.2-I2V-A14B", "Wan2.1_VAE.pth", ("high_noise_model", "low_noise_model")),
    "ti2v-5B": CheckpointLayout("Wan-AI/Wan2.2-TI2V-5B", "Wan2.2_VAE.pth", ("",)),
}


@dataclass(frozen=True)
class CheckpointFiles:
    """The resolved parts of one checkpoint folder."""

    task: str
    root: Path
    expert_dirs: tuple[Path, ...]  # high-noise expert first; one entry for ti2v-5B
    vae: Path
    text_encoder: Path
    tokenizer: Path


@dataclass(frozen=True)
class _MissingPart:
    path: str  # relative to the checkpoint folder
    what: str
    download_pattern: str  # a `hf download --include` pattern that fetches it


def get_layout(task: str) -> CheckpointLayout:
    layout = LAYOUTS.get(task)
    if layout is None:
        raise CheckpointError(f"Unknown task {task!r}. Known tasks: {', '.join(LAYOUTS)}.")
    return layout


_EXPERT_LABELS = {"high_noise_model": "the high-noise expert", "low_noise_model": "the low-noise expert"}


def _expert_label(sub: str) -> str:
    return _EXPERT_LABELS.get(sub, "the model")


def _check_expert(root: Path, sub: str) -> list[_MissingPart]:
    folder = root / sub if sub else root
    prefix = f"{sub}/" if sub else ""
    pattern = f"{sub}/*" if sub else f"{DIT_WEIGHTS_STEM}*"
    label = _expert_label(sub)
    if sub and not folder.is_dir():
        return [_MissingPart(f"{sub}/", f"{label} (config.json + weight shards)", pattern)]
    missing = []
    if not (folder / DIT_CONFIG_FILE).is_file():
        missing.append(_MissingPart(prefix + DIT_CONFIG_FILE, f"{label}'s config", prefix + DIT_CONFIG_FILE))
    try:
        find_weight_files(folder, DIT_WEIGHTS_STEM)
    except MissingFileError as err:
        # Some shards present: the shard finder's message names the missing ones.
        detail = f": {err}" if any(folder.glob("*.safetensors")) else " (sharded safetensors + index.json)"
        missing.append(_MissingPart(prefix + f"{DIT_WEIGHTS_STEM}*.safetensors", f"{label}'s weights{detail}", pattern))
    return missing


def _check_tokenizer(root: Path) -> list[_MissingPart]:
    folder = root / TOKENIZER_DIR
    if folder.is_dir() and any((folder / name).is_file() for name in TOKENIZER_FILES):
        return []
    return [_MissingPart(f"{TOKENIZER_DIR}/", f"the umt5-xxl tokenizer ({' or '.join(TOKENIZER_FILES)})",
                         f"{TOKENIZER_DIR}/*")]


def _download_patterns(missing: list[_MissingPart]) -> list[str]:
    """The parts' download patterns without repeats and without files a folder pattern already fetches."""
    patterns = list(dict.fromkeys(part.download_pattern for part in missing))
    folders = [p for p in patterns if p.endswith("/*")]
    return [p for p in patterns if not any(p != f and fnmatch.fnmatch(p, f) for f in folders)]


def _missing_parts_error(task: str, root: Path, missing: list[_MissingPart]) -> MissingFileError:
    repo = get_layout(task).hf_repo
    lines = [f"The checkpoint folder {root} lacks {len(missing)} part(s) that task {task} needs:"]
    lines += [f"  - {part.path}: {part.what}" for part in missing]
    patterns = " ".join(f'"{pattern}"' for pattern in _download_patterns(missing))
    lines += [
        f"These files come from the Hugging Face repo {repo} (https://huggingface.co/{repo}). Fetch them with:",
        f"  hf download {repo} --include {patterns} --local-dir {root}",
        f"or download the whole checkpoint: hf download {repo} --local-dir {root}",
        "(To try the pipeline without any download: python -m wan_core.generate --demo, on a tiny random checkpoint.)",
    ]
    return MissingFileError("\n".join(lines))


def resolve_checkpoint(task: str, ckpt_dir: str | Path) -> CheckpointFiles:
    """Check that `ckpt_dir` holds every part of `task`'s official layout; name all missing parts at once."""
    layout = get_layout(task)
    root = Path(ckpt_dir).expanduser()
    if not root.is_dir():
        raise MissingFileError(
            f"The checkpoint folder {root} does not exist. Download the {task} checkpoint into it with:\n"
            f"  hf download {layout.hf_repo} --local-dir {root}\n"
            "or point --ckpt_dir at the folder you downloaded it to (or try python -m wan_core.generate --demo, no "
            "download)."
        )
    missing: list[_MissingPart] = []
    for sub in layout.expert_dirs:
        missing += _check_expert(root, sub)
    if not (root / layout.vae_file).is_file():
        missing.append(_MissingPart(layout.vae_file, "the VAE", layout.vae_file))
    if not (root / T5_FILE).is_file():
        missing.append(_MissingPart(T5_FILE, "the umt5-xxl text encoder", T5_FILE))
    missing += _check_tokenizer(root)
    if missing:
        raise _missing_parts_error(task, root, missing)
    return CheckpointFiles(
        task=task,
        root=root,
        expert_dirs=tuple(root / sub if sub else root for sub in layout.expert_dirs),
        vae=root / layout.vae_file,
        text_encoder=root / T5_FILE,
        tokenizer=root / TOKENIZER_DIR,
    )


def load_pipeline(
    task: str,
    ckpt_dir: str | Path,
    runtime: Runtime,
    *,
    convert_model_dtype: bool = False,
) -> WanPipeline:
    """Load a task's text encoder, VAE and expert(s) from an official checkpoint folder into a `WanPipeline`.

    Each expert is read once, straight into its final device and dtype: in CPU RAM when `runtime.offload` (the
    pipeline moves the expert in use to the device), else on the device. `convert_model_dtype` stores the DiT
    weights in the runtime's compute dtype; otherwise they keep the file's dtype. As in the official code, the VAE
    runs in float32 and the text encoder keeps its file dtype, on `runtime.text_encoder_device`.
    """
    from .dit.loader import load_dit
    from .pipeline.pipeline import WanPipeline
    from .text.encoder import load_text_encoder
    from .vae.loader import load_vae

    files = resolve_checkpoint(task, ckpt_dir)
    device = runtime.device
    expert_device = torch.device("cpu") if runtime.offload else device
    expert_dtype = runtime.compute_dtype if convert_model_dtype else None
    experts = [load_dit(folder, device=expert_device, dtype=expert_dtype) for folder in files.expert_dirs]
    text_encoder = load_text_encoder(files.text_encoder, tokenizer=files.tokenizer, device=runtime.text_encoder_device)
    vae = load_vae(files.vae, device=device, dtype=torch.float32)
    return WanPipeline(
        task,
        text_encoder=text_encoder,
        vae=vae,
        high_noise_model=experts[0],
        low_noise_model=experts[1] if len(experts) > 1 else None,
        runtime=runtime,
    )
