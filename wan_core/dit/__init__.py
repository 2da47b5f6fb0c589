"""The Wan2.2 diffusion transformer (`WanDiT`) and its checkpoint loader (`load_dit`)."""

from .loader import load_dit
from .model import WanDiT

__all__ = ["WanDiT", "load_dit"]
