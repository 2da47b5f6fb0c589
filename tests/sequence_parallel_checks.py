"""Functions run in each process of a 2-process gloo group by tests/test_sequence_parallel.py (spawned, so they live
in an importable module)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from wan_core.configs import DIT_CONFIGS, WanDiTConfig
from wan_core.dit.attention import SdpaAttention
from wan_core.dit.model import WanDiT, init_random_
from wan_core.errors import InputError
from wan_core.parallel.ulysses import UlyssesAttention


def run_in_group(rank: int, world_size: int, init_file: str, check: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        results[rank] = CHECKS[check]()
    finally:
        dist.destroy_process_group()


def _forward_pair(config: WanDiTConfig, latent: tuple[int, ...], t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(one-process forward, sequence-parallel forward) of one random tiny DiT on the same inputs."""
    model = init_random_(WanDiT(config), torch.Generator().manual_seed(1)).eval()
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(1, *latent, generator=generator)
    context = [torch.randn(7, config.text_dim, generator=generator)]
    with torch.no_grad():
        return model(x, t, context), model(x, t, context, attention=UlyssesAttention(SdpaAttention()))


def ti2v_uneven_per_token_time() -> tuple[torch.Tensor, torch.Tensor]:
    # 3 x 3 x 5 = 45 tokens: rank 1 holds 22 tokens and one padded token; the first frame's 15 tokens have t = 0.
    seq = 45
    t = torch.cat([torch.zeros(1, 15), torch.full((1, seq - 15), 700.0)], dim=1)
    return _forward_pair(DIT_CONFIGS["tiny-ti2v"], (48, 3, 6, 10), t)


def heads_that_do_not_split() -> str:
    config = WanDiTConfig(model_type="t2v", dim=48, ffn_dim=96, num_heads=3, num_layers=1, in_dim=16, out_dim=16,
                          text_dim=64, text_len=512)
    try:
        _forward_pair(config, (16, 1, 4, 4), torch.tensor([500.0]))
    except InputError as err:
        return str(err)
    return "no error"


CHECKS = {"ti2v_uneven": ti2v_uneven_per_token_time, "heads": heads_that_do_not_split}
