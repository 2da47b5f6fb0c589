"""Ring attention (Ulysses x ring hybrid, `--ulysses_size U --ring_size R`, U * R ranks): self-attention of a token
sequence split over the ranks for head counts that do not divide by the rank count.

The ranks form yunchang's groups (`set_seq_parallel_pg`, Ulysses groups of consecutive ranks): a Ulysses all-to-all
inside each group of U ranks turns its U token chunks into one contiguous segment (a 1/U share of the heads), then
the R segments pass around the ring group (yunchang's `RingComm`) and each rank merges the attention over every
segment's keys with yunchang's `update_out_and_lse`. This is the forward loop of yunchang's `ring_pytorch_attn_func`
with one change: a segment's padded key tokens (the end of the sequence, see `sequence.SequenceSplit`) are cut off
before its block is attended (yunchang's ring functions attend every key they are given and take no mask).

The blocks need the softmax log-sum-exp, which the runtime's backends (SageAttention, FlashAttention 3/4 through
`wan_core.dit.attention`) do not return: the ring blocks always run PyTorch's SDPA kernels (flash or memory-efficient
on CUDA, the CPU flash kernel on the CPU), whatever backend was chosen; the text cross-attention keeps the chosen one.
The backend name says so (`ring2:sdpa`, `ulysses2xring2:sdpa (self-attention; sage not used)`).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.distributed as dist

from ..dit.attention import AttentionBackend
from ..errors import InputError
from .sequence import SequenceSplit
from .ulysses import require_yunchang


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of `[B, Lq, H, D]` over `[B, Lk, H, D]`: `(out [B, Lq, H, D], lse [B, H, Lq] float32)`."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if not q.is_cuda:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)[:2]
    elif q.dtype in (torch.float16, torch.bfloat16):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[:2]
    else:
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True)[:2]
        lse = lse[..., : q.shape[2]]  # the kernel pads the log-sum-exp rows to a multiple of 32
    return out.transpose(1, 2), lse.float()


@functools.cache
def ring_groups(ulysses_size: int, ring_size: int) -> tuple[dist.ProcessGroup | None, dist.ProcessGroup | None]:
    """(Ulysses group, ring group) of this rank; None stands for the whole world. Every rank must call this (once
    per shape: `new_group` is collective)."""
    world = dist.get_world_size()
    if ulysses_size * ring_size != world:
        raise InputError(f"--ulysses_size {ulysses_size} x --ring_size {ring_size} must equal the process count "
                         f"({world}): torchrun --nproc_per_node={ulysses_size * ring_size} ...")
    if ulysses_size == 1:
        return None, None
    from yunchang import set_seq_parallel_pg
    from yunchang.globals import PROCESS_GROUP

    set_seq_parallel_pg(ulysses_size, ring_size, dist.get_rank(), world, use_ulysses_low=True)
    return PROCESS_GROUP.ULYSSES_PG, PROCESS_GROUP.RING_PG


class RingAttention(AttentionBackend):
    """Self-attention of a token sequence split over all ranks, `ulysses_size` x `ring_size` (see the module
    docstring); `local` is the runtime's backend, used as is for the text cross-attention."""

    def __init__(self, local: AttentionBackend, ulysses_size: int, ring_size: int) -> None:
        self._comm = require_yunchang()
        from yunchang.ring.utils import RingComm, update_out_and_lse

        self._ring_comm, self._merge = RingComm, update_out_and_lse
        self.local = local
        self.ulysses_size, self.ring_size = ulysses_size, ring_size
        self.ulysses_group, self.ring_group = ring_groups(ulysses_size, ring_size)
        self.sequence = SequenceSplit()
        prefix = f"ring{ring_size}" if ulysses_size == 1 else f"ulysses{ulysses_size}xring{ring_size}"
        unused = "" if local.name == "sdpa" else f" (self-attention; {local.name} not used)"
        self.name = f"{prefix}:sdpa{unused}"

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        heads = q.shape[2]
        if heads % self.ulysses_size:
            raise InputError(f"--ulysses_size {self.ulysses_size} splits the {heads} attention heads, and {heads} "
                             f"does not divide by it; lower --ulysses_size and raise --ring_size (their product is "
                             "the process count).")
        if self.ulysses_size > 1:
            qkv = self._comm.all_to_all_5D(torch.stack([q, k, v], dim=2), 3, 1, group=self.ulysses_group)
            q, k, v = qkv.unbind(2)
        out = self._ring(q, k.contiguous(), v.contiguous())
        if self.ulysses_size > 1:
            out = self._comm.all_to_all_4D(out, 1, 2, group=self.ulysses_group)
        return out

    def _ring(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """This segment's queries attended over every segment's (unpadded) keys, passed around the ring group."""
        comm = self._ring_comm(self.ring_group)
        segment = k.shape[1]
        out = lse = None
        for step in range(comm.world_size):
            if step + 1 != comm.world_size:
                next_k, next_v = comm.send_recv(k), comm.send_recv(v)
                comm.commit()
            source = (comm.rank - step) % comm.world_size  # the segment whose keys this rank holds now
            valid = min(max(self.sequence.seq_len - source * segment, 0), segment)
            if valid:  # the first segment always has keys
                block_out, block_lse = attention_with_lse(q, k[:, :valid], v[:, :valid])
                out, lse = self._merge(out, lse, block_out, block_lse)
            if step + 1 != comm.world_size:
                comm.wait()
                k, v = next_k, next_v
        return out.to(q.dtype)


def sequence_parallel_attention(local: AttentionBackend, ulysses_size: int, ring_size: int) -> AttentionBackend:
    """The self-attention of a sequence split over `ulysses_size` x `ring_size` ranks: Ulysses alone when there is no
    ring, else the hybrid."""
    from .ulysses import UlyssesAttention

    if ring_size == 1:
        return UlyssesAttention(local)
    return RingAttention(local, ulysses_size, ring_size)


def degrees_for_heads(num_heads: int, world_size: int) -> tuple[int, int]:
    """(ulysses_size, ring_size) for `num_heads` heads on `world_size` ranks: Ulysses over all of them where the heads
    divide (the fastest), else the largest Ulysses degree that divides both times a ring over the rest (40 heads on 3
    GPUs: a ring of 3; on 6 GPUs: Ulysses 2 x ring 3)."""
    ulysses = math.gcd(num_heads, world_size)
    return ulysses, world_size // ulysses
