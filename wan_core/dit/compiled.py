"""Regional `torch.compile`: each transformer block's forward compiled, the rest of the DiT eager.

All blocks of a model share one code object, so they share one compiled graph (parameters are graph inputs): the
first forward compiles once (about a minute for A14B on an H100), later ones recompile only for a new shape (token
count, batch, dtype). The fused Triton kernels run as opaque custom ops (`kernels.py`) and the attention kernels
that are not PyTorch's as the custom op below, so a block traces without a graph break.
"""

from __future__ import annotations

import torch

from .attention import BACKENDS, AttentionBackend


@torch.library.custom_op("wan_core::attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    return BACKENDS[backend]().kernel(q, k, v)


@_attention_op.register_fake
def _(q, k, v, backend):
    return torch.empty_like(q)


class CompilableAttention(AttentionBackend):
    """A registry backend whose kernel is called through `torch.ops.wan_core.attention` (SDPA is traced as is)."""

    def __init__(self, inner: AttentionBackend) -> None:
        self.inner = inner
        self.name = inner.name

    def takes(self, q: torch.Tensor) -> bool:
        return self.inner.takes(q)

    def kernel(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.ops.wan_core.attention(q, k, v, self.name)


def compilable(attention: AttentionBackend) -> AttentionBackend:
    """`attention` as a compiled block can call it (backends outside the registry are left as they are)."""
    if isinstance(attention, CompilableAttention) or type(attention) is not BACKENDS.get(attention.name):
        return attention
    return CompilableAttention(attention)


def blocks_compiled(model: torch.nn.Module) -> bool:
    """Whether `compile_blocks` compiled the blocks of `model`."""
    return getattr(model, "_blocks_compiled", False)


def compile_blocks(model: torch.nn.Module) -> torch.nn.Module:
    """Compile each block of `model` (a `WanDiT`) in place, once; other callables are returned unchanged."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or blocks_compiled(model):
        return model
    for block in blocks:
        block.compile(fullgraph=True, dynamic=False)
    model._blocks_compiled = True
    return model
