"""wan_core: a PyTorch implementation of Wan2.2 (DiT with MoE experts, Wan VAEs, UMT5-XXL) and its loaders.

Imports nothing from ComfyUI. The public names are resolved lazily so that `import wan_core` stays cheap.
"""

from __future__ import annotations

from wan_core._lazy import lazy_getattr

_EXPORTS = {
    "load_dit": "wan_core.dit.loader",
    "WanDiT": "wan_core.dit.model",
    "WanDiTConfig": "wan_core.configs",
    "DIT_CONFIGS": "wan_core.configs",
    "load_vae": "wan_core.vae.loader",
    "WanVAE": "wan_core.vae.model",
    "load_text_encoder": "wan_core.text.encoder",
    "TextEncoder": "wan_core.text.encoder",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
