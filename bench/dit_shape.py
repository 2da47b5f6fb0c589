"""The A14B-expert shape flags the DiT benchmarks share, and the config they describe."""

from __future__ import annotations

import argparse

import torch

from wan_core.configs import WanDiTConfig


def add_shape_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--layers", type=int, default=40)
    p.add_argument("--dim", type=int, default=5120)
    p.add_argument("--ffn-dim", type=int, default=13824)
    p.add_argument("--heads", type=int, default=40)
    p.add_argument("--text-dim", type=int, default=4096)
    p.add_argument("--text-len", type=int, default=512)


def shape_config(args: argparse.Namespace) -> WanDiTConfig:
    """A t2v expert config (16 latent channels) with the shape the flags give."""
    return WanDiTConfig(model_type="t2v", dim=args.dim, ffn_dim=args.ffn_dim, num_heads=args.heads,
                        num_layers=args.layers, in_dim=16, out_dim=16, text_dim=args.text_dim, text_len=args.text_len)
