"""The `torchrun` side of the CLI: one process per device, all sampling the same video with the DiT split over them.

    torchrun --nproc_per_node=2 -m wan_core.generate --task t2v-A14B --ckpt_dir ... --ulysses_size 2
    torchrun --nproc_per_node=4 -m wan_core.generate ... --ulysses_size 2 --ring_size 2   # ring: heads % 4 != 0

Every rank loads the models, encodes the prompt and runs the whole denoising loop on the same noise (the seed is
rank 0's, broadcast); only the DiT's tokens are split (`UlyssesAttention`, or `RingAttention` with `--ring_size` >
1: the process count is ulysses_size * ring_size, as in the official code), and its output is gathered on every
rank, so every rank holds the same latents. `--dit_fsdp` / `--t5_fsdp` shard the DiT experts / the text encoder
with FSDP2; every rank then encodes the same prompt. Rank 0 writes the outputs; the other ranks print nothing to
stdout. NCCL on CUDA (rank r on `cuda:LOCAL_RANK`), gloo on the CPU.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist

from ..dit.attention import AttentionBackend
from ..errors import InputError
from .ring import sequence_parallel_attention
from .ulysses import require_yunchang


@dataclass(frozen=True)
class DistributedRun:
    rank: int
    world_size: int
    device: torch.device
    ring_size: int = 1  # the ring degree; the Ulysses degree is world_size // ring_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. builds the demo checkpoint), the others after it."""
        if not self.is_main:
            dist.barrier()
        yield
        if self.is_main:
            dist.barrier()

    def shared_seed(self, seed: int) -> int:
        """Rank 0's seed on every rank (a random seed is drawn per process)."""
        value = torch.tensor([seed], dtype=torch.int64, device=self._comm_device)
        dist.broadcast(value, src=0)
        return int(value.item())

    @property
    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def attention(self, local: AttentionBackend) -> AttentionBackend:
        """The sequence-parallel self-attention around the runtime's backend `local`."""
        return sequence_parallel_attention(local, self.world_size // self.ring_size, self.ring_size)

    def adapt(self, request: Any, fsdp: bool = False, t5_fsdp: bool = False) -> Any:
        """The CLI's resolved request for this rank: its device, the sequence-parallel attention, rank 0's seed;
        with `fsdp` the experts (with `t5_fsdp` the text encoder) load into CPU RAM until `shard_experts`
        (`shard_text_encoder`) spreads them over the devices."""
        runtime = request.runtime.replace(device=self.device, attention=self.attention(request.runtime.attention))
        if fsdp:
            runtime = runtime.replace(offload=True)
        if t5_fsdp:
            runtime = runtime.replace(text_device=torch.device("cpu"))
        return replace(request, runtime=runtime, sampling=request.sampling.replace(seed=self.shared_seed(
            request.sampling.seed)))

    def shard_experts(self, pipeline: Any) -> None:
        """FSDP2 (`fully_shard`): each DiT expert's weights split over the ranks (per block, the rest at the root),
        so a device holds 1/N of them; the shards go from CPU RAM (where `adapt(fsdp=True)` had them loaded) to the
        rank's device, and sampling then runs without offload."""
        experts = (pipeline.high_noise_model, pipeline.low_noise_model)
        for model in {id(m): m for m in experts if m is not None}.values():
            self._fully_shard(model, model.blocks)
        pipeline.runtime = pipeline.runtime.replace(offload=False)

    def shard_text_encoder(self, pipeline: Any) -> None:
        """FSDP2 for the UMT5 encoder (per encoder block, the embedding and final norm at the root), from CPU RAM
        (`adapt(t5_fsdp=True)`) to the rank's device, where it then runs; every rank encodes the same prompts (the
        forward all-gathers each block's weights)."""
        model = pipeline.text_encoder.model
        self._fully_shard(model, model.encoder.block)
        pipeline.runtime = pipeline.runtime.replace(text_device=None)

    def _fully_shard(self, model: torch.nn.Module, blocks: Any) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(self.device.type, (self.world_size,))
        for block in blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)

    def close(self, completed: bool) -> None:
        """Tears the process group down. After a `completed` run every rank first waits for the others (rank 0 may
        still be decoding and writing the video): a rank that tears down and exits early can abort at exit, and
        torchrun then stops rank 0 before the video is written. After an error no rank waits, as the others may
        never arrive (torchrun stops them when this one exits with an error)."""
        if not dist.is_initialized():
            return
        if completed:
            dist.barrier()
        dist.destroy_process_group()


def start(
    ulysses_size: int, ring_size: int, device: str | None, dit_fsdp: bool = False, t5_fsdp: bool = False
) -> DistributedRun | None:
    """The process group of a `torchrun` launch with `--ulysses_size` x `--ring_size` > 1 (None for a plain
    one-process run)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    for flag, on in (("--dit_fsdp", dit_fsdp), ("--t5_fsdp", t5_fsdp)):
        if on and world_size == 1:
            raise InputError(f"{flag} shards weights over several processes: start them with torchrun "
                             f"--nproc_per_node=N ... --ulysses_size N {flag}.")
    if ulysses_size < 1 or ring_size < 1:
        raise InputError(f"--ulysses_size and --ring_size must be 1 or more, got {ulysses_size} and {ring_size}.")
    parallel = ulysses_size * ring_size
    if parallel == 1 and world_size == 1:
        return None
    if parallel != world_size:
        flags = f"--ulysses_size {ulysses_size}" + (f" --ring_size {ring_size}" if ring_size > 1 else "")
        raise InputError(
            f"{flags} with {world_size} process(es): start one process per GPU, ulysses_size x ring_size of them, "
            f"e.g. torchrun --nproc_per_node={parallel} -m wan_core.generate ... {flags}."
        )
    require_yunchang()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise InputError(f"local rank {local_rank}, but this machine has {torch.cuda.device_count()} GPU(s): "
                             "start at most one process per GPU.")
        run_device = torch.device("cuda", local_rank)
        torch.cuda.set_device(run_device)
        dist.init_process_group("nccl", device_id=run_device)
    else:
        run_device = torch.device("cpu")
        dist.init_process_group("gloo")
    run = DistributedRun(rank=dist.get_rank(), world_size=world_size, device=run_device, ring_size=ring_size)
    if not run.is_main:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - one line per rank would repeat every message
    return run
