"""Loader nodes: they pick files from ComfyUI's model folders and return handles; weights are read later, on use."""

from __future__ import annotations

import posixpath

from wan_core.dit.attention import NAMES as ATTENTION_BACKENDS
from wan_core.dit.block_swap import BLOCKS_ON_GPU_CHOICES
from wan_core.errors import InputError, MissingFileError
from wan_core.io.lightx2v import is_split_file
from wan_core.pipeline.tasks import TASKS

from . import host
from .handles import COMPUTE_DTYPES, DIT_WEIGHT_FORMATS, DiTHandle, T5Handle, VAEHandle

CATEGORY = "Wan2.2"
NO_MODEL = "none"
# Shards of an official expert folder (`high_noise_model/diffusion_pytorch_model-00001-of-00006.safetensors`) and
# the files of a LightX2V `*_split` folder (`block_N.safetensors`, `non_block.safetensors`) are offered as their folder.
_OFFICIAL_SHARD_STEM = "diffusion_pytorch_model"


def check_choice(name: str, value: object, choices: list[str] | tuple[str, ...] | dict) -> None:
    """InputError naming the valid choices when `value` is not one of them (an API prompt may send anything)."""
    if value not in choices:
        raise InputError(f"Unknown {name} {value!r}; choose one of {', '.join(map(str, choices))}.")


# Diffusion models live in `diffusion_models` and, for GGUF conversions by habit, in the legacy `unet` folder.
DIFFUSION_MODEL_KINDS = ("diffusion_models", "unet")


def diffusion_model_choices() -> list[str]:
    """Single-file models (safetensors, GGUF, ...) of `diffusion_models` and `unet`, plus each official (sharded)
    expert folder and each LightX2V `*_split` folder as `folder/`."""
    choices = set()
    for kind in DIFFUSION_MODEL_KINDS:
        for name in host.list_models(kind):
            folder, file = posixpath.split(name)
            if folder and (file.startswith(_OFFICIAL_SHARD_STEM) or is_split_file(file)):
                choices.add(folder + "/")
            else:
                choices.add(name)
    return sorted(choices)


def diffusion_model_path(name: str) -> str:
    """The full path of a diffusion model choice, looked up in `diffusion_models`, then `unet`."""
    errors = []
    for kind in DIFFUSION_MODEL_KINDS:
        try:
            return host.model_path(kind, name)
        except MissingFileError as error:
            errors.append(error)
    raise errors[0]


class Wan22ModelLoader:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        models = diffusion_model_choices()
        return {
            "required": {
                "task": (list(TASKS), {"tooltip": "Which Wan2.2 model: the A14B pair (t2v, i2v) or TI2V-5B."}),
                "model": (models, {"tooltip": "A14B: the HIGH-noise expert. TI2V-5B: the model."}),
                "low_noise_model": ([NO_MODEL, *models], {"tooltip": "A14B: the LOW-noise expert. 5B: none."}),
                "weight_dtype": (list(DIT_WEIGHT_FORMATS), {
                    "default": "default",
                    "tooltip": "default keeps the file's dtype (fp8_scaled files stay fp8); fp8_e4m3fn halves memory; "
                    "fp8_e4m3fn_fast also computes in fp8 (Hopper/Ada/Blackwell).",
                }),
                "attention": (list(ATTENTION_BACKENDS), {
                    "default": "auto",
                    "tooltip": "auto = the fastest that runs here: SageAttention 2, else our 8-bit Triton kernel "
                    "(int8_triton; Hopper, or RTX 40xx/50xx when picked by name), else FlashAttention, else SDPA.",
                }),
                "offload": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "Keep the expert that is not sampling in CPU RAM (needed on 24 GB cards for A14B).",
                }),
            },
            "optional": {
                "blocks_on_gpu": (list(BLOCKS_ON_GPU_CHOICES), {
                    "default": "all",
                    "tooltip": "Block swap for small cards: all = no swap; auto = as many transformer blocks as fit, "
                    "the rest streamed from CPU RAM while the previous block computes; or a block count.",
                }),
            },
        }

    RETURN_TYPES = ("WAN22_MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Picks the Wan2.2 diffusion model(s). Weights are read when the sampler first runs."

    def load(
        self, task: str, model: str, low_noise_model: str, weight_dtype: str, attention: str, offload: bool,
        blocks_on_gpu: str = "all",
    ) -> tuple:
        check_choice("task", task, TASKS)
        check_choice("weight_dtype", weight_dtype, DIT_WEIGHT_FORMATS)
        check_choice("attention", attention, ATTENTION_BACKENDS)
        two_experts = TASKS[task].is_moe
        if two_experts and low_noise_model == NO_MODEL:
            raise InputError(f"{task} has two experts: choose the low-noise model file in 'low_noise_model'.")
        if not two_experts and low_noise_model != NO_MODEL:
            raise InputError("ti2v-5B is one model: set 'low_noise_model' to none.")
        return (DiTHandle(
            task=task,
            high_noise_path=diffusion_model_path(model),
            low_noise_path=diffusion_model_path(low_noise_model) if two_experts else None,
            weight_dtype=weight_dtype,
            attention=attention,
            offload=offload,
            blocks_on_gpu=blocks_on_gpu,
        ),)


class Wan22T5Loader:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "t5_name": (host.list_models("text_encoders"), {
                    "tooltip": "UMT5-XXL: ComfyUI's umt5_xxl_*.safetensors, city96's umt5-xxl-encoder-*.gguf "
                    "or the official models_t5_umt5-xxl-enc-bf16.pth (with google/umt5-xxl/ beside it).",
                }),
                "weight_dtype": (list(COMPUTE_DTYPES), {"default": "default"}),
            }
        }

    RETURN_TYPES = ("WAN22_T5",)
    RETURN_NAMES = ("t5",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, t5_name: str, weight_dtype: str) -> tuple:
        check_choice("weight_dtype", weight_dtype, COMPUTE_DTYPES)
        return (T5Handle(path=host.model_path("text_encoders", t5_name), weight_dtype=weight_dtype),)


class Wan22VAELoader:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "vae_name": (host.list_models("vae"), {
                    "tooltip": "A14B: wan_2.1_vae (Wan2.1_VAE.pth). TI2V-5B: wan2.2_vae (Wan2.2_VAE.pth).",
                }),
                "weight_dtype": (list(COMPUTE_DTYPES), {"default": "default"}),
            }
        }

    RETURN_TYPES = ("WAN22_VAE",)
    RETURN_NAMES = ("vae",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, vae_name: str, weight_dtype: str) -> tuple:
        check_choice("weight_dtype", weight_dtype, COMPUTE_DTYPES)
        return (VAEHandle(path=host.model_path("vae", vae_name), weight_dtype=weight_dtype),)
