"""The one adapter between our nodes and the ComfyUI host (progress, interrupt, model folders, server messages).

ComfyUI has imported `folder_paths`, `comfy.utils`, `comfy.model_management` and `server` before it loads custom
nodes, so the host is looked up in `sys.modules` when a service is used; nothing is imported from the host at import
time. Outside ComfyUI (tests, scripts) every service falls back to plain behaviour:
- model folders: `$WAN22_MODELS_DIR/<kind>/` (default `./models/<kind>/`), kinds `diffusion_models`, `unet`,
  `text_encoders`, `vae`, `loras`;
- output / input folders: `$WAN22_OUTPUT_DIR` / `$WAN22_INPUT_DIR` (default `./output`, `./input`);
- progress and server messages do nothing; an interrupt is never raised.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from wan_core import pinned_memory
from wan_core.errors import MissingFileError
from wan_core.io.state_dict import WEIGHT_SUFFIXES

LOG = logging.getLogger("comfyui-wan22")

# Model files that ComfyUI's own folder lists leave out (its loaders cannot read them), listed by walking the folders.
EXTRA_MODEL_EXTENSIONS = (".gguf",)
MODELS_DIR_ENV = "WAN22_MODELS_DIR"
OUTPUT_DIR_ENV = "WAN22_OUTPUT_DIR"
INPUT_DIR_ENV = "WAN22_INPUT_DIR"
PREVIEW_MAX_SIZE = 512


def _host(name: str) -> ModuleType | None:
    return sys.modules.get(name)


def in_comfyui() -> bool:
    """True when the nodes run inside a ComfyUI process."""
    return _host("folder_paths") is not None and _host("comfy.model_management") is not None


# ----------------------------------------------------------------------------------------------- model folders
def model_folders(kind: str) -> list[str]:
    """The folders searched for models of `kind` (`diffusion_models`, `text_encoders`, `vae`)."""
    folder_paths = _host("folder_paths")
    if folder_paths is not None:
        return list(folder_paths.get_folder_paths(kind))
    root = os.environ.get(MODELS_DIR_ENV) or os.path.join(os.getcwd(), "models")
    return [os.path.join(root, kind)]


def register_model_kind(kind: str, extra_folders: list[str] | tuple[str, ...] = ()) -> None:
    """Make `kind` a ComfyUI model folder kind: `models/<kind>/` plus `extra_folders` (no-op outside ComfyUI)."""
    folder_paths = _host("folder_paths")
    if folder_paths is None:
        return
    known = folder_paths.folder_names_and_paths.get(kind, ([], set()))[0]
    for folder in (os.path.join(folder_paths.models_dir, kind), *extra_folders):
        if folder not in known:
            folder_paths.add_model_folder_path(kind, folder)


def _walk_models(kind: str, extensions: tuple[str, ...]) -> set[str]:
    names: set[str] = set()
    for folder in model_folders(kind):
        seen: set[str] = set()
        for parent, dirs, files in os.walk(folder, followlinks=True):
            real = os.path.realpath(parent)
            if real in seen:  # a symlink back into a folder already listed (a loop, or a second link)
                dirs.clear()
                continue
            seen.add(real)
            for file in files:
                if file.lower().endswith(extensions):
                    names.add(os.path.relpath(os.path.join(parent, file), folder).replace(os.sep, "/"))
    return names


def list_models(kind: str) -> list[str]:
    """Model files of `kind` (GGUF files included), as paths relative to their model folder (`/` separated), sorted."""
    folder_paths = _host("folder_paths")
    if folder_paths is not None:
        return sorted(set(folder_paths.get_filename_list(kind)) | _walk_models(kind, EXTRA_MODEL_EXTENSIONS))
    return sorted(_walk_models(kind, WEIGHT_SUFFIXES + EXTRA_MODEL_EXTENSIONS))


def model_path(kind: str, name: str) -> str:
    """The full path of model file or folder `name` (relative to a `kind` model folder); raises if absent."""
    relative = os.path.normpath(name)
    if os.path.isabs(relative) or relative.startswith(".."):
        raise MissingFileError(f"Model name {name!r} must be relative to a {kind!r} model folder; pick it in the list.")
    folders = model_folders(kind)
    for folder in folders:
        candidate = os.path.join(folder, relative)
        if os.path.exists(candidate):
            return candidate
    raise MissingFileError(
        f"Model {name!r} was not found in the {kind!r} folders ({', '.join(folders)}). Put the file there "
        f"(or point ComfyUI's extra_model_paths.yaml, or ${MODELS_DIR_ENV} outside ComfyUI, at its folder) and "
        "refresh the node list."
    )


def output_directory() -> str:
    folder_paths = _host("folder_paths")
    if folder_paths is not None:
        return folder_paths.get_output_directory()
    return os.environ.get(OUTPUT_DIR_ENV) or os.path.join(os.getcwd(), "output")


def input_directory() -> str:
    folder_paths = _host("folder_paths")
    if folder_paths is not None:
        return folder_paths.get_input_directory()
    return os.environ.get(INPUT_DIR_ENV) or os.path.join(os.getcwd(), "input")


# ------------------------------------------------------------------------------------------ progress, interrupt
class Progress:
    """A ComfyUI progress bar bound to one node. The node id is passed explicitly because ComfyUI keeps the
    executing node in a context variable that worker threads do not inherit."""

    def __init__(self, total: int, node_id: str | None) -> None:
        utils = _host("comfy.utils")
        self._bar = utils.ProgressBar(total, node_id=node_id) if utils is not None else None
        self.total = total

    def update(self, value: int, preview: Callable[[], Any] | None = None) -> None:
        """Set the bar to `value` of `total`; `preview` makes a PIL image to show on the node, called only when
        ComfyUI shows sampler previews (`preview_setting`)."""
        if self._bar is None:
            return
        shown = None
        if preview is not None:
            wanted, size = preview_setting()
            shown = ("JPEG", preview(), size) if wanted else None
        self._bar.update_absolute(value, self.total, shown)


def preview_setting() -> tuple[bool, int]:
    """(whether samplers show previews, their largest side), as native samplers honour them: ComfyUI's
    `--preview-method` (where newer versions also put the frontend's per-prompt choice) and `--preview-size`."""
    args = getattr(_host("comfy.cli_args"), "args", None)
    method = getattr(args, "preview_method", None)
    return getattr(method, "value", method) != "none", int(getattr(args, "preview_size", PREVIEW_MAX_SIZE))


def interrupted() -> bool:
    """True when the user pressed Cancel in ComfyUI."""
    management = _host("comfy.model_management")
    return bool(management is not None and management.processing_interrupted())


def raise_if_interrupted() -> None:
    """Raise ComfyUI's own interrupt exception (so ComfyUI reports 'interrupted', not an error) when cancelled."""
    management = _host("comfy.model_management")
    if management is not None:
        management.throw_exception_if_processing_interrupted()


def default_torch_device() -> Any | None:
    """ComfyUI's main device (honours `--cpu`, `--cuda-device`), or None outside ComfyUI."""
    management = _host("comfy.model_management")
    return management.get_torch_device() if management is not None else None


def latent_rgb_factors(latent_channels: int) -> tuple[list[list[float]], list[float] | None] | None:
    """ComfyUI's latent-to-RGB preview factors for Wan latents (16 or 48 channels), when the host has them."""
    formats = _host("comfy.latent_formats")
    if formats is None:
        return None
    for name in ("Wan21", "Wan22"):
        fmt = getattr(formats, name, None)
        if fmt is not None and fmt.latent_channels == latent_channels:
            instance = fmt()
            return instance.latent_rgb_factors, getattr(instance, "latent_rgb_factors_bias", None)
    return None


def _cli_flag(name: str) -> bool:
    """A switch of the ComfyUI process's command line (False outside ComfyUI)."""
    cli_args = _host("comfy.cli_args")
    return bool(getattr(getattr(cli_args, "args", None), name, False))


def metadata_disabled() -> bool:
    """True when ComfyUI runs with `--disable-metadata` (no workflow in saved files)."""
    return _cli_flag("disable_metadata")


def follow_host_settings() -> None:
    """Make the core follow the ComfyUI process's own settings: `--disable-pinned-memory` turns off the pack's pinned
    RAM too."""
    if _cli_flag("disable_pinned_memory"):
        pinned_memory.disable("ComfyUI runs with --disable-pinned-memory")


# ---------------------------------------------------------------------------------------------- server messages
def send_event(event: str, data: dict[str, Any]) -> None:
    """Send a websocket message to the client that queued the prompt (no-op outside ComfyUI)."""
    server = _host("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    if instance is None:
        return
    try:
        instance.send_sync(event, data, instance.client_id)
    except Exception as error:  # a message lost to a closed socket must not fail the generation
        LOG.debug("could not send %s: %s", event, error)


# ----------------------------------------------------------------------------------------------- memory manager
class _FallbackMemoryManager:
    """What `comfy.model_management` does with loaded models, reduced to a list, for use outside ComfyUI."""

    def __init__(self) -> None:
        self.loaded: list[Any] = []  # ModelPatcher-like objects, most recently loaded first

    def load_models_gpu(self, models: list[Any], memory_required: int = 0) -> None:
        for model in models:
            if model in self.loaded:
                self.loaded.remove(model)
            model.partially_load(model.load_device, 1e32)
            self.loaded.insert(0, model)

    def free_memory(self, memory_required: int, device: Any) -> list[Any]:
        """Unload the least recently loaded models on `device` until `memory_required` bytes were freed."""
        freed, unloaded = 0, []
        for model in reversed(list(self.loaded)):
            if freed >= memory_required:
                break
            if str(model.load_device) == str(device):
                freed += model.loaded_size()
                model.detach()
                self.loaded.remove(model)
                unloaded.append(model)
        return unloaded

    def unload_all_models(self) -> None:
        for model in list(self.loaded):
            model.detach()
        self.loaded.clear()


FALLBACK_MEMORY = _FallbackMemoryManager()


def load_models_gpu(models: list[Any], memory_required: int = 0) -> None:
    """Register ModelPatcher-like `models` with ComfyUI's memory manager and load them (it unloads others to make
    room, honouring --lowvram / --reserve-vram); outside ComfyUI, with the fallback list."""
    management = _host("comfy.model_management")
    if management is not None:
        management.load_models_gpu(models, memory_required=memory_required)
    else:
        FALLBACK_MEMORY.load_models_gpu(models, memory_required)


def free_memory(memory_required: int, device: Any) -> list[Any]:
    """Unload models (ours and, in ComfyUI, other packs') from `device` until `memory_required` bytes are free."""
    management = _host("comfy.model_management")
    if management is not None:
        return management.free_memory(memory_required, device)
    return FALLBACK_MEMORY.free_memory(memory_required, device)


def unload_all_models() -> None:
    """What ComfyUI's "Unload models" does."""
    management = _host("comfy.model_management")
    if management is not None:
        management.unload_all_models()
    else:
        FALLBACK_MEMORY.unload_all_models()
