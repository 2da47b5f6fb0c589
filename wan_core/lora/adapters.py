"""The weight changes a LoRA layer can hold, each added to a weight as one float32 product:
- `LowRank`: up @ down (LoRA, LoCon);
- `Hadamard`: (w1_a @ w1_b) * (w2_a @ w2_b) (LyCORIS LoHa);
- `Kronecker`: kron(w1, w2), each factor whole or a low-rank pair (LyCORIS LoKr).
`rank` is what a file's `alpha` is divided by, as ComfyUI's `comfy/weight_adapter` divides it: the pair's rank; LoHa's
`w1_b` rank; LoKr's rank of a factor given as a pair (w2's when both are), none when both factors are whole (alpha then
has no effect, as in LyCORIS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def _f32(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    return tensor.to(device, torch.float32)


@dataclass(frozen=True)
class LowRank:
    down: torch.Tensor  # [rank, in, ...]
    up: torch.Tensor  # [out, rank, ...]
    kind = "low-rank pair (down/up)"

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return self.up.shape[0], math.prod(self.down.shape[1:])

    def add_to(self, target: torch.Tensor, scale: float) -> None:
        """target [out, in x kernel] += scale x up @ down."""
        device = target.device
        target.addmm_(_f32(self.up, device).flatten(1), _f32(self.down, device).flatten(1), alpha=scale)


@dataclass(frozen=True)
class Hadamard:
    w1_a: torch.Tensor  # [out, rank]
    w1_b: torch.Tensor  # [rank, in x kernel]
    w2_a: torch.Tensor
    w2_b: torch.Tensor
    kind = "LoHa product (hada_w1_a/b, hada_w2_a/b)"

    @property
    def rank(self) -> int:
        return self.w1_b.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return self.w1_a.shape[0], math.prod(self.w1_b.shape[1:])

    def add_to(self, target: torch.Tensor, scale: float) -> None:
        device = target.device
        first = _f32(self.w1_a, device) @ _f32(self.w1_b, device).flatten(1)
        first.mul_(_f32(self.w2_a, device) @ _f32(self.w2_b, device).flatten(1))
        target.add_(first, alpha=scale)


@dataclass(frozen=True)
class Kronecker:
    w1: torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # whole [a, b] or (w1_a [a, r], w1_b [r, b])
    w2: torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # whole [c, d, ...] or (w2_a [c, r], w2_b [r, d])
    kind = "LoKr product (lokr_w1, lokr_w2)"

    @property
    def rank(self) -> int | None:
        for factor in (self.w2, self.w1):
            if isinstance(factor, tuple):
                return factor[1].shape[0]
        return None

    @staticmethod
    def _shape(factor: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> tuple[int, int]:
        if isinstance(factor, tuple):
            return factor[0].shape[0], math.prod(factor[1].shape[1:])
        return factor.shape[0], math.prod(factor.shape[1:])

    @property
    def shape(self) -> tuple[int, int]:
        (a, b), (c, d) = self._shape(self.w1), self._shape(self.w2)
        return a * c, b * d

    @staticmethod
    def _whole(factor: torch.Tensor | tuple[torch.Tensor, torch.Tensor], device: torch.device) -> torch.Tensor:
        if isinstance(factor, tuple):
            return _f32(factor[0], device) @ _f32(factor[1], device)
        return _f32(factor, device)

    def add_to(self, target: torch.Tensor, scale: float) -> None:
        w1, w2 = self._whole(self.w1, target.device), self._whole(self.w2, target.device)
        w1 = w1.reshape(*w1.shape, *[1] * (w2.dim() - w1.dim()))  # a convolution's w2 carries the kernel
        target.add_(torch.kron(w1, w2).reshape(target.shape), alpha=scale)


Adapter = LowRank | Hadamard | Kronecker
