"""ComfyUI nodes of comfyui-wan22 (classic API). Node ids carry the `Wan22` prefix and never change."""

from . import host
from .batch_queue import Wan22BatchQueueManager
from .frame_interpolate import Wan22FrameInterpolate
from .gpu_check import Wan22GPUCheck
from .loaders import Wan22ModelLoader, Wan22T5Loader, Wan22VAELoader
from .long_video import Wan22LongVideo
from .lora_loader import Wan22LoraLoader
from .sampler import Wan22DiTSampler
from .save_video import Wan22SaveVideo
from .set_device import Wan22SetDevice
from .styler import Wan22PromptStyler
from .text_encode import Wan22T5Encode
from .vae_nodes import Wan22VAEDecode, Wan22VAEEncode

host.follow_host_settings()

NODE_CLASS_MAPPINGS: dict[str, type] = {
    "Wan22ModelLoader": Wan22ModelLoader,
    "Wan22T5Loader": Wan22T5Loader,
    "Wan22VAELoader": Wan22VAELoader,
    "Wan22PromptStyler": Wan22PromptStyler,
    "Wan22T5Encode": Wan22T5Encode,
    "Wan22SetDevice": Wan22SetDevice,
    "Wan22DiTSampler": Wan22DiTSampler,
    "Wan22VAEDecode": Wan22VAEDecode,
    "Wan22VAEEncode": Wan22VAEEncode,
    "Wan22SaveVideo": Wan22SaveVideo,
    "Wan22BatchQueueManager": Wan22BatchQueueManager,
    "Wan22GPUCheck": Wan22GPUCheck,
    "Wan22FrameInterpolate": Wan22FrameInterpolate,
    "Wan22LongVideo": Wan22LongVideo,
    "Wan22LoraLoader": Wan22LoraLoader,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "Wan22ModelLoader": "Wan2.2 Model Loader",
    "Wan22T5Loader": "Wan2.2 T5 Loader",
    "Wan22VAELoader": "Wan2.2 VAE Loader",
    "Wan22PromptStyler": "Wan2.2 Prompt Styler",
    "Wan22T5Encode": "Wan2.2 T5 Encode",
    "Wan22SetDevice": "Wan2.2 Set Device",
    "Wan22DiTSampler": "Wan2.2 DiT Sampler",
    "Wan22VAEDecode": "Wan2.2 VAE Decode",
    "Wan22VAEEncode": "Wan2.2 VAE Encode",
    "Wan22SaveVideo": "Wan2.2 Save Video",
    "Wan22BatchQueueManager": "Wan2.2 Batch Queue Manager",
    "Wan22GPUCheck": "Wan2.2 GPU Check",
    "Wan22FrameInterpolate": "Wan2.2 Frame Interpolate (RIFE)",
    "Wan22LongVideo": "Wan2.2 Long Video (chunks)",
    "Wan22LoraLoader": "Wan2.2 LoRA Loader",
}
