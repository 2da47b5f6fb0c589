"""The Wan VAEs: Wan2.1 (z 16, 4x8x8) and Wan2.2 (z 48, 4x16x16), their loaders and spatial tiling."""

from .config import VAE_CONFIGS, VAEConfig
from .loader import load_vae, load_vae_state_dict
from .model import WanVAE, build_vae, official_state_dict

__all__ = ["VAE_CONFIGS", "VAEConfig", "WanVAE", "build_vae", "load_vae", "load_vae_state_dict", "official_state_dict"]
