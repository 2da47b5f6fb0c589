"""The GPU memory one DiT forward needs beyond its weights, estimated from its token count: what a memory manager
must keep free beside the model (ComfyUI's `load_models_gpu(memory_required=...)`, as its own samplers ask from their
model's estimate) so that the forward does not run out of memory after the weights were loaded."""

from __future__ import annotations

from ..configs import WanDiTConfig
from ..measured import ACTIVATION_BYTES_PER_TOKEN


def forward_activation_bytes(config: WanDiTConfig, tokens: int, batch: int = 1) -> int:
    """Peak bytes of one forward of `batch` latents of `tokens` tokens each, weights not counted."""
    per_width, per_ffn = ACTIVATION_BYTES_PER_TOKEN
    return int(batch * tokens * (per_width * config.dim + per_ffn * config.ffn_dim))
