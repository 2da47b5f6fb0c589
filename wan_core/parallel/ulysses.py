"""Ulysses sequence-parallel self-attention: an attention backend that wraps the runtime's resolved backend.

Each rank holds `[B, L/P, H, D]` q/k/v of its tokens; one all-to-all (yunchang's `all_to_all_5D`, q/k/v stacked)
turns them into `[B, L, H/P, D]`: the whole sequence, a 1/P share of the heads. The wrapped backend (SDPA,
FlashAttention, SageAttention) attends over the whole sequence (without the padded tokens), and a second
all-to-all (`all_to_all_4D`) brings the output back to `[B, L/P, H, D]`. Text cross-attention stays local (every
rank has the whole text): the model passes `local` to it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..dit.attention import AttentionBackend
from ..errors import InputError
from .sequence import SequenceSplit

INSTALL_HINT = "pip install yunchang  (the sequence-parallel all-to-all of xDiT; `pip install comfyui-wan22[multigpu]`)"


def require_yunchang() -> object:
    """yunchang's all-to-all module, or an error that says how to install it."""
    try:
        from yunchang.comm import all_to_all
    except ImportError as err:
        raise InputError(f"Sequence parallelism (several GPUs for one video) needs yunchang: {INSTALL_HINT}.") from err
    return all_to_all


class UlyssesAttention(AttentionBackend):
    """Self-attention of a token sequence split over `group` (see the module docstring); `sequence` is the split the
    model applies to its tokens, `local` the wrapped backend (used as is for the cross-attention)."""

    def __init__(self, local: AttentionBackend, group: dist.ProcessGroup | None = None) -> None:
        self._comm = require_yunchang()
        self.local = local
        self.group = group
        self.sequence = SequenceSplit(group)
        self.name = f"ulysses{self.sequence.world_size}:{local.name}"

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        world = self.sequence.world_size
        heads = q.shape[2]
        if heads % world:
            divisors = [n for n in range(1, heads + 1) if heads % n == 0]
            raise InputError(
                f"Ulysses splits the {heads} attention heads over {world} ranks, and {heads} does not divide by "
                f"{world}; use a --ulysses_size (GPU count) of {', '.join(map(str, divisors[:8]))}, or ring "
                f"attention over the {world} processes: --ulysses_size 1 --ring_size {world}."
            )
        qkv = self._comm.all_to_all_5D(torch.stack([q, k, v], dim=2), 3, 1, group=self.group)
        q, k, v = (self.sequence.drop_padding(t) for t in qkv.unbind(2))
        out = self.sequence.restore_padding(self.local(q, k, v))
        return self._comm.all_to_all_4D(out, 1, 2, group=self.group)
