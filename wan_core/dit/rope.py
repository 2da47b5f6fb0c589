"""3-D rotary position embedding of the Wan DiT.

The head dimension's complex pairs (c = head_dim / 2) are split into c - 2*(c//3) frame pairs, c//3 height pairs and
c//3 width pairs; part j of size d_j (in reals) rotates pair i by `pos * 10000^(-2i/d_j)`, exactly as the official
`rope_params` / `rope_apply`. The angles are computed once per grid in float64 on the CPU (a few MB), then kept as
float32 cos/sin on the device: nothing runs in float64 on the GPU.
"""

from __future__ import annotations

import torch


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Complex pairs given to frame, height and width."""
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


def _part_angles(positions: int, pairs: int, theta: float) -> torch.Tensor:
    dim = 2 * pairs
    inv = 1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    return torch.outer(torch.arange(positions, dtype=torch.float64), inv)


def rope_angles(head_dim: int, grid: tuple[int, int, int], theta: float = 10000.0) -> torch.Tensor:
    """`[f*h*w, head_dim/2]` float64 angles (CPU) for the tokens of a grid in (frame, row, column) order."""
    f, h, w = grid
    pt, ph, pw = rope_split(head_dim)
    af = _part_angles(f, pt, theta).view(f, 1, 1, pt).expand(f, h, w, pt)
    ah = _part_angles(h, ph, theta).view(1, h, 1, ph).expand(f, h, w, ph)
    aw = _part_angles(w, pw, theta).view(1, 1, w, pw).expand(f, h, w, pw)
    return torch.cat([af, ah, aw], dim=-1).reshape(f * h * w, head_dim // 2)


def rope_freqs(head_dim: int, grid: tuple[int, int, int], device: torch.device | str,
               theta: float = 10000.0) -> torch.Tensor:
    """complex64 `exp(i*angle)` of shape `[L, head_dim/2]` on `device`."""
    angles = rope_angles(head_dim, grid, theta)
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64).to(device)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of the float32 `x` `[B, L, H, D]` by the per-token `freqs` `[L, D/2]` (complex64).

    One complex multiply: the pairs are read as complex numbers, as the official `rope_apply` does.
    """
    b, seq, heads, d = x.shape
    xc = torch.view_as_complex(x.reshape(b, seq, heads, d // 2, 2))
    return torch.view_as_real(xc * freqs.view(1, seq, 1, d // 2)).view(b, seq, heads, d)
