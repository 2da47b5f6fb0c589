"""Frame interpolation: RIFE's IFNet with the published weights, or ffmpeg's `minterpolate` without them."""

from .ifnet import IFNet, IFNetArch
from .run import AUTO, FFMPEG, MULTIPLIERS, Interpolation, interpolate_frames, resolve_weights
from .weights import MODEL_KIND, RECOMMENDED_FILES, default_folders, load_ifnet

__all__ = [
    "AUTO", "FFMPEG", "MODEL_KIND", "MULTIPLIERS", "RECOMMENDED_FILES", "IFNet", "IFNetArch", "Interpolation",
    "default_folders", "interpolate_frames", "load_ifnet", "resolve_weights",
]
