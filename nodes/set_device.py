"""Wan22SetDevice: bind a model handle (DiT, T5 or VAE) to a device; the weights move when the consumer runs."""

from __future__ import annotations

from wan_core.errors import InputError

from .devices import ALL_GPUS, announce_device, check_device_name, list_devices, resolve_device
from .handles import DiTHandle, ModelHandle

CATEGORY = "Wan2.2"
# One node for every handle type: a comma list is a union type in ComfyUI (an output connects where any matches).
ANY_HANDLE = "WAN22_MODEL,WAN22_T5,WAN22_VAE"


class Wan22SetDevice:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (ANY_HANDLE, {"tooltip": "A Wan2.2 DiT, T5 or VAE handle."}),
                "device": (list_devices(), {
                    "default": "auto",
                    "tooltip": "auto = ComfyUI's main device. A GPU this machine lacks falls back to auto (warning). "
                               f"{ALL_GPUS}: the DiT samples one video on every GPU together.",
                }),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = (ANY_HANDLE,)
    RETURN_NAMES = ("model",)
    FUNCTION = "set_device"
    CATEGORY = CATEGORY
    DESCRIPTION = "Runs the connected model on the chosen device (e.g. T5 on gpu:0, DiT and VAE on gpu:1)."

    @classmethod
    def VALIDATE_INPUTS(cls, device: str) -> bool | str:
        # Declaring `device` here makes ComfyUI skip its list check, so a workflow saved on a 2-GPU machine still
        # queues on a 1-GPU one (and then falls back).
        try:
            check_device_name(device)
        except InputError as error:
            return str(error)
        return True

    def set_device(self, model: ModelHandle, device: str, unique_id: str | None = None) -> tuple:
        if not isinstance(model, ModelHandle):
            raise InputError(f"Wan22SetDevice takes a Wan2.2 model, T5 or VAE handle, got {type(model).__name__}.")
        if device == ALL_GPUS and not isinstance(model, DiTHandle):
            raise InputError(f"'{ALL_GPUS}' is for the DiT (Model Loader); put the T5 and the VAE on one device.")
        announce_device(unique_id, resolve_device(device))
        return (model.bind(device),)
