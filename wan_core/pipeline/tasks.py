"""The three Wan2.2 tasks and their official sampling defaults (``wan/configs/*.py`` of the official code)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from ..sampling.schedule import NUM_TRAIN_TIMESTEPS

# wan/configs/shared_config.py: sample_neg_prompt (data; keep byte for byte).
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


@dataclass(frozen=True)
class TaskConfig:
    """What one task needs to sample: model kind, MoE boundary, solver defaults, output format, latent geometry."""

    name: str
    model_type: str  # "t2v" | "i2v" | "ti2v"
    boundary: float | None  # fraction of num_train_timesteps; None: one model (ti2v-5B)
    sample_shift: float
    sample_steps: int
    guide_scale: tuple[float, float]  # (low_noise, high_noise), as the official sample_guide_scale
    fps: int
    frame_num: int
    sizes: tuple[str, ...]  # "W*H", the first is the default
    size_multiple: int  # width and height must be multiples of this (vae stride x patch size)
    vae: str  # "wan2.1" | "wan2.2"
    z_dim: int
    vae_stride: tuple[int, int, int]
    patch_size: tuple[int, int, int]
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS

    @property
    def is_moe(self) -> bool:
        """Two experts (high-noise / low-noise) switched at ``boundary``."""
        return self.boundary is not None

    @property
    def needs_image(self) -> bool:
        return self.model_type == "i2v"

    @property
    def accepts_image(self) -> bool:
        return self.model_type in ("i2v", "ti2v")

    @property
    def boundary_timestep(self) -> float | None:
        """The switch timestep: the high-noise expert runs while ``t >= boundary * num_train_timesteps``."""
        return None if self.boundary is None else self.boundary * self.num_train_timesteps

    @property
    def default_size(self) -> tuple[int, int]:
        """``(width, height)`` of the first supported size."""
        return parse_size(self.sizes[0])

    def latent_shape(self, width: int, height: int, frame_num: int) -> tuple[int, int, int, int]:
        """``(z, F', H', W')`` of the latents of a ``width`` x ``height`` x ``frame_num`` video."""
        st, sh, sw = self.vae_stride
        return (self.z_dim, (frame_num - 1) // st + 1, height // sh, width // sw)



def parse_size(size: str) -> tuple[int, int]:
    """``"1280*720"`` -> ``(1280, 720)`` (width, height), the official ``--size`` format."""
    try:
        w, h = (int(v) for v in size.replace("x", "*").split("*"))
    except ValueError:
        raise InputError(f"size {size!r} is not 'W*H' (for example '1280*720')") from None
    return w, h


# Fields the two A14B MoE tasks share: same sampling length, output format, Wan2.1 VAE and latent geometry.
_A14B = dict(
    sample_steps=40,
    fps=16,
    frame_num=81,
    sizes=("1280*720", "720*1280", "832*480", "480*832"),
    size_multiple=16,
    vae="wan2.1",
    z_dim=16,
    vae_stride=(4, 8, 8),
    patch_size=(1, 2, 2),
)

TASKS: dict[str, TaskConfig] = {
    "t2v-A14B": TaskConfig(
        name="t2v-A14B", model_type="t2v", boundary=0.875, sample_shift=12.0, guide_scale=(3.0, 4.0), **_A14B
    ),
    "i2v-A14B": TaskConfig(
        name="i2v-A14B", model_type="i2v", boundary=0.900, sample_shift=5.0, guide_scale=(3.5, 3.5), **_A14B
    ),
    "ti2v-5B": TaskConfig(
        name="ti2v-5B",
        model_type="ti2v",
        boundary=None,
        sample_shift=5.0,
        sample_steps=50,
        guide_scale=(5.0, 5.0),
        fps=24,
        frame_num=121,
        sizes=("1280*704", "704*1280"),
        size_multiple=32,
        vae="wan2.2",
        z_dim=48,
        vae_stride=(4, 16, 16),
        patch_size=(1, 2, 2),
    ),
}


def get_task(name: str | TaskConfig) -> TaskConfig:
    """The task called ``name`` (a TaskConfig is returned as it is)."""
    if isinstance(name, TaskConfig):
        return name
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown task {name!r}: valid tasks are {', '.join(TASKS)}") from None
