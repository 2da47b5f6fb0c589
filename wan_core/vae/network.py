"""The Wan VAE network (official `WanVAE_` of vae2_1.py and vae2_2.py), one class for both variants.

The two variants share the stem, the middle and the head; they differ in the stages (Wan2.1: a flat list of residual
blocks and resamplers, the decoder halving the width at each upsampling; Wan2.2: residual down/up stages with
parameter-free shortcuts), in a 2x2 pixel patchify (Wan2.2) and in the decoder width (Wan2.2: `dec_dim`). The state
dict keys are the official ones (`encoder.*`, `decoder.*`, `conv1.*`, `conv2.*`), so `net.state_dict()` saved with
`torch.save` is an official `.pth`.

`encode_raw`/`decode_raw` are the reference's chunked causal passes, without the latent normalization: encode runs
the first frame, then 4 frames at a time; decode runs one latent frame at a time; a fresh `FeatureCache` carries the
causal context from chunk to chunk.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn

from .config import VAEConfig
from .layers import (
    CausalConv3d,
    DownResidualBlock,
    FeatureCache,
    Head,
    Middle,
    Resample,
    ResidualBlock,
    UpResidualBlock,
    cached_conv,
    count_cache_slots,
    patchify,
    unpatchify,
)


class Encoder3d(nn.Module):
    def __init__(self, config: VAEConfig, dropout: float = 0.0) -> None:
        super().__init__()
        dim, mult, nrb = config.dim, config.dim_mult, config.num_res_blocks
        dims = [dim * u for u in (1, *mult)]
        self.conv1 = CausalConv3d(3 * config.patch_size**2, dims[0], 3, padding=1)
        stages: list[nn.Module] = []
        last = len(mult) - 1
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            temporal = config.temperal_downsample[i] if i < last else False
            if config.residual:
                stages.append(DownResidualBlock(in_dim, out_dim, dropout, nrb, temporal=temporal, down=i != last))
                continue
            for _ in range(nrb):
                stages.append(ResidualBlock(in_dim, out_dim, dropout))
                in_dim = out_dim
            if i != last:
                stages.append(Resample(out_dim, "downsample3d" if temporal else "downsample2d"))
        self.downsamples = nn.Sequential(*stages)
        self.middle = Middle(dims[-1], dropout)
        self.head = Head(dims[-1], config.z_dim * 2)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        x = cached_conv(self.conv1, x, cache)
        for stage in self.downsamples:
            x = stage(x, cache)
        return self.head(self.middle(x, cache), cache)


class Decoder3d(nn.Module):
    def __init__(self, config: VAEConfig, dropout: float = 0.0) -> None:
        super().__init__()
        dim, mult, nrb = config.dec_dim, config.dim_mult, config.num_res_blocks
        dims = [dim * u for u in (mult[-1], *mult[::-1])]
        temperal_upsample = config.temperal_downsample[::-1]
        self.conv1 = CausalConv3d(config.z_dim, dims[0], 3, padding=1)
        self.middle = Middle(dims[0], dropout)
        stages: list[nn.Module] = []
        last = len(mult) - 1
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            temporal = temperal_upsample[i] if i < last else False
            if config.residual:
                stages.append(UpResidualBlock(in_dim, out_dim, dropout, nrb + 1, temporal=temporal, up=i != last))
                continue
            if i > 0:
                in_dim //= 2  # the Wan2.1 upsamplers halve the width
            for _ in range(nrb + 1):
                stages.append(ResidualBlock(in_dim, out_dim, dropout))
                in_dim = out_dim
            if i != last:
                stages.append(Resample(out_dim, "upsample3d" if temporal else "upsample2d"))
        self.upsamples = nn.Sequential(*stages)
        self.head = Head(dims[-1], 3 * config.patch_size**2)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None, first_chunk: bool = False) -> torch.Tensor:
        x = cached_conv(self.conv1, x, cache)
        x = self.middle(x, cache)
        for stage in self.upsamples:
            x = stage(x, cache, first_chunk) if isinstance(stage, UpResidualBlock) else stage(x, cache)
        return self.head(x, cache)


class WanVAENet(nn.Module):
    """The official `WanVAE_`: encoder, `conv1` (2z -> 2z, gives mu and log-variance), `conv2` (z -> z), decoder."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.z_dim = config.z_dim
        self.encoder = Encoder3d(config)
        self.conv1 = CausalConv3d(config.z_dim * 2, config.z_dim * 2, 1)
        self.conv2 = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder3d(config)
        self._encoder_slots = count_cache_slots(self.encoder)
        self._decoder_slots = count_cache_slots(self.decoder)

    def encode_raw(self, video: torch.Tensor) -> torch.Tensor:
        """Unnormalized latent mean `mu` of `video` [B, 3, 1 + 4k, H, W] (the model's dtype and device)."""
        x = patchify(video, self.config.patch_size)
        cache = FeatureCache(self._encoder_slots)
        outs = []
        for i in range(1 + (x.shape[2] - 1) // 4):
            cache.begin_chunk()
            chunk = x[:, :, :1] if i == 0 else x[:, :, 1 + 4 * (i - 1) : 1 + 4 * i]
            outs.append(self.encoder(chunk, cache))
        del cache
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        del outs
        return self.conv1(out)[:, : self.z_dim]

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Video [B, 3, 1 + 4(T-1), H*s, W*s] of unnormalized latents `z` [B, z, T, H, W], not clamped."""
        outs = list(self.decode_chunks(z))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)

    def decode_chunks(self, z: torch.Tensor) -> Iterator[torch.Tensor]:
        """`decode_raw`'s video a latent frame at a time: its first frame, then 4 frames per later latent frame."""
        x = self.conv2(z)
        cache = FeatureCache(self._decoder_slots)
        for i in range(x.shape[2]):
            cache.begin_chunk()
            yield unpatchify(self.decoder(x[:, :, i : i + 1], cache, first_chunk=i == 0), self.config.patch_size)
