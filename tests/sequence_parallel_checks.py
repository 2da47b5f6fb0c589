"""Functions run in each process of a 2-process gloo group by tests/test_sequence_parallel.py (spawned, so they live
in an importable module)."""

from __future__ import annotations

import functools
import time

import torch
import torch.distributed as dist

from wan_core.configs import DIT_CONFIGS, WanDiTConfig
from wan_core.dit.attention import SdpaAttention
from wan_core.dit.model import WanDiT, init_random_
from wan_core.errors import InputError
from wan_core.parallel.launch import DistributedRun
from wan_core.parallel.ring import RingAttention
from wan_core.parallel.ulysses import UlyssesAttention


def run_in_group(rank: int, world_size: int, init_file: str, check: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        results[rank] = CHECKS[check]()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _forward_pair(config: WanDiTConfig, latent: tuple[int, ...], t: torch.Tensor, attention: object = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(one-process forward, sequence-parallel forward) of one random tiny DiT on the same inputs (default: Ulysses
    over the whole group)."""
    model = init_random_(WanDiT(config), torch.Generator().manual_seed(1)).eval()
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(1, *latent, generator=generator)
    context = [torch.randn(7, config.text_dim, generator=generator)]
    with torch.no_grad():
        return model(x, t, context), model(x, t, context, attention=attention or UlyssesAttention(SdpaAttention()))


def ti2v_uneven_per_token_time(attention: object = None) -> tuple[torch.Tensor, torch.Tensor]:
    # 3 x 3 x 5 = 45 tokens: rank 1 holds 22 tokens and one padded token; the first frame's 15 tokens have t = 0.
    # (4 ranks: 12 tokens each, the last one 9 and 3 padded ones.)
    seq = 45
    t = torch.cat([torch.zeros(1, 15), torch.full((1, seq - 15), 700.0)], dim=1)
    return _forward_pair(DIT_CONFIGS["tiny-ti2v"], (48, 3, 6, 10), t, attention)


THREE_HEADS = WanDiTConfig(model_type="t2v", dim=48, ffn_dim=96, num_heads=3, num_layers=1, in_dim=16, out_dim=16,
                           text_dim=64, text_len=512)


def ring_and_t5_fsdp() -> dict:
    """Ring attention over both ranks (heads that Ulysses cannot split, uneven tokens), and the FSDP2-sharded text
    encoder against the unsharded one."""
    ring = RingAttention(SdpaAttention(), ulysses_size=1, ring_size=2)
    return {
        "ti2v": ti2v_uneven_per_token_time(ring),
        "three_heads": _forward_pair(THREE_HEADS, (16, 3, 6, 10), torch.tensor([500.0]), ring),
        "t5": _text_encoder_pair(),
    }


def _text_encoder_pair() -> tuple[list[torch.Tensor], list[torch.Tensor], int, int]:
    """(unsharded embeddings, sharded embeddings, this rank's parameter count when sharded, the whole count)."""
    from types import SimpleNamespace

    from wan_core.runtime import Runtime
    from wan_core.text.demo import build_tiny_umt5
    from wan_core.text.encoder import TextEncoder, _EncodeCache
    from wan_core.text.tokenizer import build_demo_spiece_model, tokenizer_from_spiece

    prompts = ["A white cat wearing sunglasses sits on a surfboard.", "blurry, static"]
    tokenizer = tokenizer_from_spiece(build_demo_spiece_model())
    encoder = TextEncoder(build_tiny_umt5(tokenizer.vocab_size, seed=3), tokenizer, cache=_EncodeCache(0))
    whole = [e.clone() for e in encoder.encode(prompts)]
    total = sum(p.numel() for p in encoder.model.parameters())
    pipeline = SimpleNamespace(text_encoder=encoder, runtime=Runtime(text_device=torch.device("cpu")))
    DistributedRun(dist.get_rank(), dist.get_world_size(), torch.device("cpu")).shard_text_encoder(pipeline)
    shards = [p.to_local().numel() for p in encoder.model.parameters()]
    return whole, encoder.encode(prompts), sum(shards), total


def hybrid_ulysses_ring() -> tuple[torch.Tensor, torch.Tensor]:
    """4 ranks: Ulysses over pairs of ranks x ring over the 2 pairs."""
    return ti2v_uneven_per_token_time(RingAttention(SdpaAttention(), ulysses_size=2, ring_size=2))


def heads_that_do_not_split() -> str:
    try:
        _forward_pair(THREE_HEADS, (16, 1, 4, 4), torch.tensor([500.0]))
    except InputError as err:
        return str(err)
    return "no error"


def _close_times(completed: bool) -> float:
    """Rank 0 takes 1 s longer to finish (as when it writes the video) and gives the time it closes; the others give
    the time their `close` returns."""
    run = DistributedRun(dist.get_rank(), dist.get_world_size(), torch.device("cpu"))
    if run.is_main:
        time.sleep(1.0)
        closing = time.time()
        run.close(completed)
        return closing
    run.close(completed)
    return time.time()


CHECKS = {"ti2v_uneven": ti2v_uneven_per_token_time, "heads": heads_that_do_not_split, "ring_t5": ring_and_t5_fsdp,
          "hybrid": hybrid_ulysses_ring, "close_completed": functools.partial(_close_times, True),
          "close_failed": functools.partial(_close_times, False)}
