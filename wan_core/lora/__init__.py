"""LoRA for the Wan2.2 DiT: one loader for the ComfyUI/lightx2v, kohya and diffusers layouts (`formats`), a cached
file reader (`files`), and `LoraPatch`, the weight patch that merges a file at a strength (`patch`)."""

from .files import read_lora
from .formats import LoraLayer, LoraWeights, parse_lora
from .patch import LoraPatch

__all__ = ["LoraLayer", "LoraPatch", "LoraWeights", "parse_lora", "read_lora"]
