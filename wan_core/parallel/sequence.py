"""The token split of one DiT forward over the ranks of a process group.

Rank r holds tokens `[r * chunk, (r + 1) * chunk)` of the sequence padded to `chunk * world_size` (zero tokens at
the end, on the last rank(s)). The RoPE table and the per-token time index (TI2V) are padded and sliced the same
way. The model gathers after the head, not before it: the head's output (`prod(patch) * out_dim`, 64 or 192
channels) is 30-80x smaller than the residual stream, and the head is per token, so it runs on the local tokens.
Padded tokens are never attended to (`UlyssesAttention` drops them from the keys) and are cut off after the gather.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


class SequenceSplit:
    """This rank's part of the token sequence; `split` at the start of a forward sets `seq_len` for that forward."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.seq_len = 0  # the unpadded length of the current forward

    @property
    def padded_len(self) -> int:
        return -(-self.seq_len // self.world_size) * self.world_size

    def _local(self, x: torch.Tensor, dim: int, fill: float | complex = 0) -> torch.Tensor:
        """The rank's chunk of `x` along `dim` (of length `seq_len`), padded with `fill` to `padded_len`."""
        extra = self.padded_len - self.seq_len
        if extra:
            shape = list(x.shape)
            shape[dim] = extra
            x = torch.cat([x, torch.full(shape, fill, dtype=x.dtype, device=x.device)], dim=dim)
        chunk = self.padded_len // self.world_size
        return x.narrow(dim, self.rank * chunk, chunk)

    def split(
        self, hidden: torch.Tensor, time: object, freqs: torch.Tensor
    ) -> tuple[torch.Tensor, object, torch.Tensor]:
        """`hidden` `[B, L, dim]`, its `TimeCond` and RoPE table `[L, D/2]` -> this rank's tokens of each."""
        self.seq_len = hidden.shape[1]
        index = getattr(time, "index", None)
        if index is not None:
            time = type(time)(time.e, time.e0, self._local(index, 1))
        return self._local(hidden, 1), time, self._local(freqs, 0, fill=1)

    def gather(self, out: torch.Tensor) -> torch.Tensor:
        """Every rank's `[B, chunk, C]` -> the whole `[B, L, C]` on every rank (padding cut off)."""
        parts = [torch.empty_like(out) for _ in range(self.world_size)]
        dist.all_gather(parts, out.contiguous(), group=self.group)
        return torch.cat(parts, dim=1)[:, : self.seq_len]

    def drop_padding(self, x: torch.Tensor) -> torch.Tensor:
        """`x` `[B, padded_len, ...]` (a whole sequence after the all-to-all) without its padded tokens."""
        return x[:, : self.seq_len]

    def restore_padding(self, x: torch.Tensor) -> torch.Tensor:
        """`x` `[B, seq_len, H, D]` back to `[B, padded_len, H, D]` (zero rows for the padded tokens)."""
        return F.pad(x, (0, 0, 0, 0, 0, self.padded_len - self.seq_len))
