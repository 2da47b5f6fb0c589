"""A tiny checkpoint with RANDOM weights in the official folder layout, for `--demo`.

It goes through exactly the loading code a real download does (expert shards + config.json, VAE `.pth`, T5 `.pth`,
tokenizer folder), so the demo checks the whole pipeline in seconds on a CPU. The video it makes is noise.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint_dir import DIT_CONFIG_FILE, T5_FILE, TOKENIZER_DIR, get_layout, resolve_checkpoint
from .errors import InputError, MissingFileError

DEMO_DIR_ENV = "WAN22_DEMO_DIR"
DEMO_SEED = 0
# Written last: its presence (with matching content) says the folder is a complete demo checkpoint.
MARKER_FILE = "wan22-demo.json"
DEMO_WARNING = (
    "DEMO MODE: the weights are RANDOM (a tiny synthesized checkpoint in {folder}). The video will be noise; this "
    "only checks that the pipeline runs. For real videos pass --ckpt_dir with an official Wan2.2 download."
)


@dataclass(frozen=True)
class DemoModels:
    dit: str  # a key of wan_core.configs.DIT_CONFIGS
    vae: str  # a key of wan_core.vae.VAE_CONFIGS


DEMO_MODELS = {
    "t2v-A14B": DemoModels("tiny-t2v", "tiny-wan2.1"),
    "i2v-A14B": DemoModels("tiny-i2v", "tiny-wan2.1"),
    "ti2v-5B": DemoModels("tiny-ti2v", "tiny-wan2.2"),
}


def default_demo_dir(task: str) -> Path:
    """`$WAN22_DEMO_DIR/<task>` when the variable is set, else `~/.cache/comfyui-wan22/demo/<task>`."""
    base = os.environ.get(DEMO_DIR_ENV)
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "comfyui-wan22" / "demo"
    return root / task


def _demo_models(task: str) -> DemoModels:
    get_layout(task)  # names the known tasks when `task` is not one
    return DEMO_MODELS[task]


def _marker(task: str, seed: int) -> dict:
    """What the marker file records; a change here (or in the tiny configs) makes the cache rebuild."""
    from .configs import DIT_CONFIGS

    models = _demo_models(task)
    return {"task": task, "seed": seed, "dit": DIT_CONFIGS[models.dit].to_official_json(), "vae": models.vae}


def _is_complete(folder: Path, task: str, seed: int) -> bool:
    marker = folder / MARKER_FILE
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text())
    except ValueError:
        return False
    if recorded != json.loads(json.dumps(_marker(task, seed))):
        return False
    try:
        resolve_checkpoint(task, folder)
    except MissingFileError:
        return False
    return True


def write_demo_checkpoint(task: str, folder: str | Path, *, seed: int = DEMO_SEED) -> Path:
    """Write a tiny random checkpoint for `task` into `folder` in the official layout; deterministic for `seed`."""
    from .configs import DIT_CONFIGS
    from .dit.model import WanDiT
    from .io.writers import write_sharded
    from .text.demo import build_tiny_umt5
    from .text.keymap import to_official
    from .text.tokenizer import build_demo_tokenizer
    from .vae.model import build_vae, official_state_dict

    folder = Path(folder)
    models = _demo_models(task)
    layout = get_layout(task)
    dit_config = DIT_CONFIGS[models.dit]
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for sub in layout.expert_dirs:
            expert_dir = folder / sub if sub else folder
            write_sharded(WanDiT(dit_config).state_dict(), expert_dir)
            (expert_dir / DIT_CONFIG_FILE).write_text(json.dumps(dit_config.to_official_json(), indent=2))
        torch.save(official_state_dict(build_vae(models.vae)), folder / layout.vae_file)
    # The tiny T5's vocabulary is the demo tokenizer's size (DEMO_VOCAB_SIZE); it seeds its own generator.
    build_demo_tokenizer(folder / TOKENIZER_DIR)
    torch.save(to_official(build_tiny_umt5(seed=seed).state_dict()), folder / T5_FILE)
    (folder / MARKER_FILE).write_text(json.dumps(_marker(task, seed), indent=2))
    return folder


def ensure_demo_checkpoint(task: str, folder: str | Path | None = None, *, seed: int = DEMO_SEED) -> Path:
    """The demo checkpoint folder for `task`: reused when complete, else (re)built there.

    It is built in a sibling temporary folder and moved into place, so an interrupted run never leaves a folder
    that looks complete. An existing folder is only replaced when it is a demo checkpoint (it has the marker file).
    """
    folder = Path(folder) if folder is not None else default_demo_dir(task)
    if _is_complete(folder, task, seed):
        return folder
    if folder.exists() and any(folder.iterdir()) and not (folder / MARKER_FILE).is_file():
        raise InputError(
            f"The demo checkpoint folder {folder} already holds other files. Point {DEMO_DIR_ENV} at a new or empty "
            "folder (the demo writes <folder>/<task> there)."
        )
    staging = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    write_demo_checkpoint(task, staging, seed=seed)
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    return folder
