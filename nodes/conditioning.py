"""ComfyUI's CONDITIONING <-> our WAN22_CONDITIONING.

Native `CLIPTextEncode` with the umt5 text encoder (CLIPLoader type `wan`) gives `[[embeddings [1, L, 4096], {...}]]`
with L >= 512: the prompt's tokens followed by zero rows (`zero_out_masked`). Ours keeps `[L, 4096]` trimmed to the
real tokens; the DiT pads with zeros to 512 itself, so both give the same context. Native samplers get ours padded
to 512, as CLIPTextEncode would hand them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wan_core.errors import InputError

TEXT_LEN = 512


@dataclass(frozen=True)
class WanConditioning:
    """Prompt embeddings (`[L_i, 4096]` each, trimmed to the real token count); `to()` carries them to another GPU."""

    positive: tuple[torch.Tensor, ...]
    negative: tuple[torch.Tensor, ...]

    def to(self, device: torch.device) -> WanConditioning:
        return WanConditioning(
            positive=tuple(t.to(device) for t in self.positive), negative=tuple(t.to(device) for t in self.negative)
        )


def from_comfy(conditioning: list, name: str) -> torch.Tensor:
    """The `[L, C]` prompt embedding of a native CONDITIONING, trailing zero (padding) rows dropped."""
    if not isinstance(conditioning, list) or not conditioning or not isinstance(conditioning[0][0], torch.Tensor):
        raise InputError(f"'{name}' must be a ComfyUI CONDITIONING (CLIPTextEncode with the umt5 text encoder).")
    if len(conditioning) > 1:
        raise InputError(
            f"'{name}' holds {len(conditioning)} combined conditionings; the Wan2.2 sampler takes one prompt per input."
        )
    embedding = conditioning[0][0]
    if embedding.ndim == 3:
        if embedding.shape[0] != 1:
            raise InputError(f"'{name}' holds a batch of {embedding.shape[0]} prompts; connect one.")
        embedding = embedding[0]
    used = embedding.abs().amax(dim=-1).nonzero()
    length = int(used[-1]) + 1 if len(used) else 1
    return embedding[:length]


def conditioning_from_comfy(positive: list, negative: list) -> WanConditioning:
    """Our conditioning from a native positive / negative pair."""
    return WanConditioning(positive=(from_comfy(positive, "positive"),), negative=(from_comfy(negative, "negative"),))


def to_comfy(embedding: torch.Tensor) -> list:
    """A native CONDITIONING of one `[L, C]` embedding, zero-padded to 512 tokens as CLIPTextEncode makes it."""
    padded = embedding.new_zeros(1, max(TEXT_LEN, embedding.shape[0]), embedding.shape[-1])
    padded[0, : embedding.shape[0]] = embedding
    return [[padded.to("cpu"), {"pooled_output": None}]]
