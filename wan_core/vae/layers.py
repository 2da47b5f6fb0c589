"""Building blocks of the Wan VAEs (2.1 and 2.2): causal 3-D convolution with a feature cache, RMS norm, resampling,
residual and attention blocks, and the 2.2-only residual down/up blocks with their parameter-free shortcuts.

Module and parameter names follow the official code (`wan/modules/vae2_1.py`, `vae2_2.py`), so a network built from
these blocks has the official state-dict keys. The chunked causal inference follows the reference exactly: every
causal 3-D conv keeps the last `CACHE_T` frames of its input from the previous chunk (`FeatureCache`), the 3-D
resamplers keep their own entries, and the order in which the cache entries are visited is the reference's.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

CACHE_T = 2


class _FirstChunk:
    """The marker the reference stores (as the string 'Rep') for a temporal upsampler that has seen one chunk."""

    def __repr__(self) -> str:
        return "REP"


REP = _FirstChunk()


class FeatureCache:
    """The per-layer cache of one chunked encode or decode pass.

    `slots[i]` holds what the i-th cached layer (in forward order) kept from the previous chunk: the last input frames
    of a causal conv, or the resamplers' own entries. `begin_chunk()` rewinds the cursor before each chunk.
    """

    def __init__(self, size: int) -> None:
        self.slots: list = [None] * size
        self.cursor = 0

    def begin_chunk(self) -> None:
        self.cursor = 0

    def next_slot(self) -> int:
        index = self.cursor
        self.cursor += 1
        return index


class CausalConv3d(nn.Conv3d):
    """A 3-D convolution that pads time only on the past side (`2 * padding_t` frames) and spatially as usual.

    With a cache entry, the cached frames take the place of (part of) the zero padding. The spatial padding is done by
    the convolution itself; the reference pads with `F.pad`, which computes the same thing with an extra copy.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.time_pad = 2 * self.padding[0]
        self.padding = (0, self.padding[1], self.padding[2])

    def forward(self, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        pad = self.time_pad
        if pad > 0:
            parts = [x]
            if cache_x is not None:
                parts.insert(0, cache_x.to(x.device, x.dtype))
                pad -= cache_x.shape[2]
            if pad > 0:
                parts.insert(0, x.new_zeros(x.shape[0], x.shape[1], pad, x.shape[3], x.shape[4]))
            if len(parts) > 1:
                x = torch.cat(parts, dim=2)
        return super().forward(x)


def cached_conv(conv: CausalConv3d, x: torch.Tensor, cache: FeatureCache | None) -> torch.Tensor:
    """Run `conv` on one chunk, reading and updating its cache entry as the reference does."""
    if cache is None:
        return conv(x)
    index = cache.next_slot()
    previous = cache.slots[index]
    keep = x[:, :, -CACHE_T:].clone()
    if keep.shape[2] < CACHE_T and previous is not None:
        # a one-frame chunk: keep the last frame of the chunk before it as well
        keep = torch.cat([previous[:, :, -1:].to(keep.device), keep], dim=2)
    out = conv(x, previous)
    cache.slots[index] = keep
    return out


class RMS_norm(nn.Module):  # noqa: N801 - the official class name
    """`F.normalize` over channels times sqrt(dim) times a per-channel `gamma` (no bias in any Wan VAE).

    Half-precision inputs are normalized in fp32 (as diffusers does); fp32 is the reference computation.
    """

    def __init__(self, dim: int, images: bool = True) -> None:
        super().__init__()
        shape = (dim, 1, 1) if images else (dim, 1, 1, 1)
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            normed = F.normalize(x.float(), dim=1).to(x.dtype)
        else:
            normed = F.normalize(x, dim=1)
        return normed * self.scale * self.gamma.to(x.dtype)


def _per_frame(x: torch.Tensor, fn) -> torch.Tensor:
    """Apply a 2-D op to every frame: [B, C, T, H, W] -> [B*T, C, H, W] -> fn -> [B, C', T, H', W']."""
    b, c, t, h, w = x.shape
    y = fn(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
    return y.reshape(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4)


class _Upsample2x(nn.Module):
    """Nearest-exact 2x spatial upsampling computed in fp32 (the reference's bf16 fix); no parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact").type_as(x)


class Resample(nn.Module):
    """Spatial 2x up/down sampling, with a causal temporal 2x up/down conv in the `*3d` modes.

    `upsample_out_dim` is `dim // 2` in Wan2.1 and `dim` in Wan2.2.
    """

    MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim: int, mode: str, upsample_out_dim: int | None = None) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"Resample mode must be one of {self.MODES}, not {mode!r}")
        self.dim = dim
        self.mode = mode
        if mode.startswith("upsample"):
            out = dim // 2 if upsample_out_dim is None else upsample_out_dim
            self.resample = nn.Sequential(_Upsample2x(), nn.Conv2d(dim, out, 3, padding=1))
            if mode == "upsample3d":
                self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=(2, 2)))
            if mode == "downsample3d":
                self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=(0, 0, 0))

    def _upsample_time(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        index = cache.next_slot()
        previous = cache.slots[index]
        if previous is None:
            # first chunk: its single frame is not doubled in time
            cache.slots[index] = REP
            return x
        keep = x[:, :, -CACHE_T:].clone()
        if keep.shape[2] < CACHE_T:
            head = torch.zeros_like(keep) if previous is REP else previous[:, :, -1:].to(keep.device)
            keep = torch.cat([head, keep], dim=2)
        y = self.time_conv(x) if previous is REP else self.time_conv(x, previous)
        cache.slots[index] = keep
        b, c, t, h, w = x.shape
        # [B, 2C, T] -> interleave the two halves as frames 2t and 2t+1
        return torch.stack((y[:, :c], y[:, c:]), dim=3).reshape(b, c, t * 2, h, w)

    def _downsample_time(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        index = cache.next_slot()
        previous = cache.slots[index]
        if previous is None:
            # first chunk: kept whole, not downsampled in time
            cache.slots[index] = x.clone()
            return x
        keep = x[:, :, -1:].clone()
        y = self.time_conv(torch.cat([previous[:, :, -1:].to(x.device), x], dim=2))
        cache.slots[index] = keep
        return y

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        if self.mode == "upsample3d" and cache is not None:
            x = self._upsample_time(x, cache)
        x = _per_frame(x, self.resample)
        if self.mode == "downsample3d" and cache is not None:
            x = self._downsample_time(x, cache)
        return x


class ResidualBlock(nn.Module):
    """norm-SiLU-conv-norm-SiLU-dropout-conv plus a 1x1x1 conv shortcut when the width changes."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.residual = nn.Sequential(
            RMS_norm(in_dim, images=False),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMS_norm(out_dim, images=False),
            nn.SiLU(),
            nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        h = self.shortcut(x)
        for layer in self.residual:
            x = cached_conv(layer, x, cache) if isinstance(layer, CausalConv3d) else layer(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (no attention across time)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.norm = RMS_norm(dim)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        nn.init.zeros_(self.proj.weight)  # as the reference constructs it (loaded weights replace it)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(n, 1, c * 3, h * w).permute(0, 1, 3, 2).contiguous()
        q, k, v = qkv.chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.squeeze(1).permute(0, 2, 1).reshape(n, c, h, w))

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        return x + _per_frame(x, self._attend)


class Head(nn.Sequential):
    """The output block of the encoder and the decoder: RMS norm, SiLU, causal 3x3x3 conv."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(RMS_norm(in_dim, images=False), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        x = self[1](self[0](x))
        return cached_conv(self[2], x, cache)


class Middle(nn.Sequential):
    """ResidualBlock, AttentionBlock, ResidualBlock at the lowest resolution."""

    def __init__(self, dim: int, dropout: float = 0.0) -> None:
        super().__init__(ResidualBlock(dim, dim, dropout), AttentionBlock(dim), ResidualBlock(dim, dim, dropout))

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        for layer in self:
            x = layer(x, cache)
        return x


# --- Wan2.2 only -------------------------------------------------------------------------------------------------


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, F, H*p, W*p] -> [B, C*p*p, F, H, W], channels ordered (c, w-offset, h-offset) as the reference."""
    if p == 1:
        return x
    b, c, f, h, w = x.shape
    x = x.reshape(b, c, f, h // p, p, w // p, p).permute(0, 1, 6, 4, 2, 3, 5)
    return x.reshape(b, c * p * p, f, h // p, w // p)


def unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """The inverse of `patchify`."""
    if p == 1:
        return x
    b, cpp, f, h, w = x.shape
    x = x.reshape(b, cpp // (p * p), p, p, f, h, w).permute(0, 1, 4, 5, 3, 6, 2)
    return x.reshape(b, cpp // (p * p), f, h * p, w * p)


class _RearrangeShortcut(nn.Module):
    """Shared fields of the parameter-free shortcuts that trade (time, space) blocks for channels."""

    def __init__(self, out_channels: int, factor_t: int, factor_s: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.factor_t = factor_t
        self.factor_s = factor_s

    def _whole_ratio(self, channels: int, divisor: int) -> int:
        """``channels * factor_t * factor_s**2 / divisor``, which must be a whole number."""
        factor = self.factor_t * self.factor_s * self.factor_s
        if channels * factor % divisor:
            raise ValueError(f"{type(self).__name__}: {channels} * {factor} is not a multiple of {divisor}")
        return channels * factor // divisor


class AvgDown3D(_RearrangeShortcut):
    """Parameter-free shortcut: space/time-to-channel rearrangement followed by a mean over channel groups."""

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int = 1) -> None:
        super().__init__(out_channels, factor_t, factor_s)
        self.group_size = self._whole_ratio(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ft, fs = self.factor_t, self.factor_s
        pad_t = (ft - x.shape[2] % ft) % ft
        if pad_t:
            x = F.pad(x, (0, 0, 0, 0, pad_t, 0))
        b, c, t, h, w = x.shape
        x = x.reshape(b, c, t // ft, ft, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6)
        x = x.reshape(b, self.out_channels, self.group_size, t // ft, h // fs, w // fs)
        return x.mean(dim=2)


class DupUp3D(_RearrangeShortcut):
    """Parameter-free shortcut: channel repetition rearranged into space/time (drops the padding frame at the start)."""

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int = 1) -> None:
        super().__init__(out_channels, factor_t, factor_s)
        self.repeats = self._whole_ratio(out_channels, in_channels)

    def forward(self, x: torch.Tensor, first_chunk: bool = False) -> torch.Tensor:
        ft, fs = self.factor_t, self.factor_s
        x = x.repeat_interleave(self.repeats, dim=1)
        b, _, t, h, w = x.shape
        x = x.reshape(b, self.out_channels, ft, fs, fs, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        x = x.reshape(b, self.out_channels, t * ft, h * fs, w * fs)
        return x[:, :, ft - 1 :] if first_chunk else x


class DownResidualBlock(nn.Module):
    """Wan2.2 encoder stage: residual blocks and an optional downsampler, plus an `AvgDown3D` shortcut."""

    def __init__(
        self, in_dim: int, out_dim: int, dropout: float, mult: int, temporal: bool = False, down: bool = False
    ) -> None:
        super().__init__()
        self.avg_shortcut = AvgDown3D(in_dim, out_dim, factor_t=2 if temporal else 1, factor_s=2 if down else 1)
        blocks: list[nn.Module] = []
        for _ in range(mult):
            blocks.append(ResidualBlock(in_dim, out_dim, dropout))
            in_dim = out_dim
        if down:
            blocks.append(Resample(out_dim, "downsample3d" if temporal else "downsample2d"))
        self.downsamples = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        shortcut = self.avg_shortcut(x)
        for block in self.downsamples:
            x = block(x, cache)
        return x + shortcut


class UpResidualBlock(nn.Module):
    """Wan2.2 decoder stage: residual blocks and an optional upsampler, plus a `DupUp3D` shortcut when upsampling."""

    def __init__(
        self, in_dim: int, out_dim: int, dropout: float, mult: int, temporal: bool = False, up: bool = False
    ) -> None:
        super().__init__()
        self.avg_shortcut = DupUp3D(in_dim, out_dim, factor_t=2 if temporal else 1, factor_s=2) if up else None
        blocks: list[nn.Module] = []
        for _ in range(mult):
            blocks.append(ResidualBlock(in_dim, out_dim, dropout))
            in_dim = out_dim
        if up:
            blocks.append(Resample(out_dim, "upsample3d" if temporal else "upsample2d", upsample_out_dim=out_dim))
        self.upsamples = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None, first_chunk: bool = False) -> torch.Tensor:
        out = x
        for block in self.upsamples:
            out = block(out, cache)
        if self.avg_shortcut is None:
            return out
        return out + self.avg_shortcut(x, first_chunk)


def count_cache_slots(module: nn.Module) -> int:
    """How many cache entries one chunk of `module` visits: one per causal conv (the reference's count)."""
    return sum(isinstance(m, CausalConv3d) for m in module.modules())
