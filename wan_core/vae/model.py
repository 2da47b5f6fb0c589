"""`WanVAE`: the Wan2.1 / Wan2.2 VAE with normalized latents, spatial tiling and a CUDA out-of-memory fallback."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn

from ..errors import InputError
from ..finite import check_finite
from .config import VAE_CONFIGS, VAEConfig, resolve_config
from .network import WanVAENet
from .tiling import DEFAULT_OVERLAP, latent_tiles, run_tiled

logger = logging.getLogger(__name__)

__all__ = ["VAE_CONFIGS", "VAEConfig", "WanVAE", "build_vae", "official_state_dict"]

# Tile size (pixels) used when an untiled pass runs out of CUDA memory; halved on each further failure down to
# MIN_FALLBACK_TILE.
FALLBACK_TILE = (256, 256)
VAE_CAUSES = "a VAE weight file holding NaN/Inf, fp16 overflow in the VAE (use bf16 or fp32), or non-finite latents"
MIN_FALLBACK_TILE = 64


def _free_cuda_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class WanVAE(nn.Module):
    """A Wan VAE. `encode(video) -> latents` and `decode(latents) -> video`, both as the official wrapper
    (`Wan2_1_VAE` / `Wan2_2_VAE`) computes them: latents normalized with the published per-channel mean/std,
    decoded video clamped to [-1, 1], both returned in float32 on the model's device.

    `self.model` is the network with the official state-dict keys. Compute runs in the weights' dtype.
    """

    def __init__(self, config: VAEConfig | str, network: WanVAENet | None = None) -> None:
        super().__init__()
        config = resolve_config(config)
        self.config = config
        self.variant = config.variant
        self.z_dim = config.z_dim
        self.stride = config.stride
        self.model = network if network is not None else WanVAENet(config)
        self.fallback_tile_size = FALLBACK_TILE

    # -- helpers ----------------------------------------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return self.model.conv2.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.conv2.weight.device

    @property
    def latents_mean(self) -> torch.Tensor:
        """The published per-channel latent mean, float32 [z] (kept in the config, so `.to(dtype)` cannot round it)."""
        return torch.tensor(self.config.latents_mean, dtype=torch.float32, device=self.device)

    @property
    def latents_std(self) -> torch.Tensor:
        """The published per-channel latent std, float32 [z]."""
        return torch.tensor(self.config.latents_std, dtype=torch.float32, device=self.device)

    def _stat(self, name: str) -> torch.Tensor:
        return getattr(self, name).view(1, self.z_dim, 1, 1, 1)

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, z_dim={self.z_dim}, stride={self.stride}"

    def _run(
        self,
        what: str,
        untiled: Callable[[], torch.Tensor],
        tiled: Callable[[tuple[int, int]], torch.Tensor],
        tile_size: tuple[int, int] | None,
        shape: tuple[int, ...],
    ) -> torch.Tensor:
        """Run untiled (or tiled when `tile_size` is given); on CUDA out-of-memory, retry in smaller tiles."""
        if isinstance(tile_size, int):
            tile_size = (tile_size, tile_size)
        while True:
            try:
                return untiled() if tile_size is None else tiled(tile_size)
            except torch.cuda.OutOfMemoryError:
                previous = tile_size
            # retry outside the except block, so that the failed attempt's tensors are freed first
            _free_cuda_memory()
            if previous is None:
                tile_size = tuple(self.fallback_tile_size)
                logger.warning(
                    "VAE %s of shape %s ran out of CUDA memory; retrying in tiles of %dx%d pixels.",
                    what, tuple(shape), *tile_size,
                )  # fmt: skip
            elif min(previous) > MIN_FALLBACK_TILE:
                tile_size = tuple(max(MIN_FALLBACK_TILE, t // 2) for t in previous)
                logger.warning(
                    "VAE %s in %dx%d-pixel tiles ran out of CUDA memory; retrying in tiles of %dx%d pixels.",
                    what, *previous, *tile_size,
                )  # fmt: skip
            else:
                raise torch.cuda.OutOfMemoryError(
                    f"VAE {what} of shape {tuple(shape)} ran out of CUDA memory even in {previous[0]}x{previous[1]}"
                    "-pixel tiles: free GPU memory or run the VAE on another device."
                )

    # -- public API -------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(
        self,
        video: torch.Tensor,
        *,
        tile_size: tuple[int, int] | None = None,
        tile_overlap: float | int = DEFAULT_OVERLAP,
    ) -> torch.Tensor:
        """Normalized latents [B, z, (F-1)/4+1, H/s, W/s] of `video` [B, 3, F, H, W] in [-1, 1], F = 4k+1.

        `tile_size` (pixels, (height, width)) encodes in overlapping spatial tiles; `tile_overlap` is a fraction of
        the tile (float) or a number of pixels (int).
        """
        if video.ndim != 5 or video.shape[1] != 3:
            raise InputError(f"video must be [B, 3, F, H, W], got shape {tuple(video.shape)}")
        _, _, frames, height, width = video.shape
        st, ss = self.stride[0], self.stride[1]
        if (frames - 1) % st:
            raise InputError(f"the frame count must be {st}k+1 (1, 5, 9, ..., 81), got {frames}")
        if height % ss or width % ss:
            raise InputError(f"height and width must be multiples of {ss} for this VAE, got {height}x{width}")
        x = video.to(self.device, self.dtype)

        def tiled(size: tuple[int, int]) -> torch.Tensor:
            lat, ov = latent_tiles(size, tile_overlap, ss)
            return run_tiled(
                self.model.encode_raw,
                x,
                (lat[0] * ss, lat[1] * ss),
                (ov[0] * ss, ov[1] * ss),
                1 / ss,
                (frames - 1) // st + 1,
                self.z_dim,
            )

        mu = self._run("encode", lambda: self.model.encode_raw(x), tiled, tile_size, tuple(video.shape))
        # as the reference: (mu - mean) * (1 / std)
        return (mu.float() - self._stat("latents_mean")) * (1.0 / self._stat("latents_std"))

    @torch.no_grad()
    def decode(
        self,
        latents: torch.Tensor,
        *,
        tile_size: tuple[int, int] | None = None,
        tile_overlap: float | int = DEFAULT_OVERLAP,
    ) -> torch.Tensor:
        """Video [B, 3, 4(T-1)+1, H*s, W*s] in [-1, 1] of normalized `latents` [B, z, T, H, W].

        `tile_size` (pixels, (height, width)) decodes in overlapping spatial tiles; `tile_overlap` is a fraction of
        the tile (float) or a number of pixels (int). Without it, a CUDA out-of-memory error makes the decode retry
        in tiles of `self.fallback_tile_size` pixels (and smaller), with a warning in the log.
        """
        st, ss = self.stride[0], self.stride[1]
        z = self._denormalized(latents)

        def tiled(size: tuple[int, int]) -> torch.Tensor:
            lat, ov = latent_tiles(size, tile_overlap, ss)
            return run_tiled(self.model.decode_raw, z, lat, ov, ss, (z.shape[2] - 1) * st + 1, 3)

        video = self._run("decode", lambda: self.model.decode_raw(z), tiled, tile_size, tuple(latents.shape))
        check_finite(video, "the VAE's decoded video", VAE_CAUSES)
        return video.float().clamp_(-1.0, 1.0)

    @torch.no_grad()
    def decode_chunks(self, latents: torch.Tensor) -> Iterator[torch.Tensor]:
        """`decode`'s video a latent frame at a time (`[B, 3, 1, ...]`, then `[B, 3, 4, ...]` each), so each part
        can be written while the next is decoded. Untiled: a CUDA out-of-memory error reaches the caller, whose
        fallback is `decode` (which retries in tiles)."""
        for chunk in self.model.decode_chunks(self._denormalized(latents)):
            check_finite(chunk, "the VAE's decoded video", VAE_CAUSES)
            yield chunk.float().clamp_(-1.0, 1.0)

    def _denormalized(self, latents: torch.Tensor) -> torch.Tensor:
        """The VAE's own latents (model dtype and device) of normalized `latents` [B, z, T, H, W]."""
        if latents.ndim != 5 or latents.shape[1] != self.z_dim:
            raise InputError(f"latents must be [B, {self.z_dim}, T, H, W], got shape {tuple(latents.shape)}")
        # as the reference: z / (1 / std) + mean
        z = latents.to(self.device, torch.float32) / (1.0 / self._stat("latents_std")) + self._stat("latents_mean")
        return z.to(self.dtype)


def build_vae(name_or_config: str | VAEConfig = "wan2.1") -> WanVAE:
    """A randomly initialized `WanVAE` of a config or a name in `VAE_CONFIGS` ("wan2.1", "wan2.2", "tiny-...")."""
    return WanVAE(resolve_config(name_or_config)).eval()


def official_state_dict(vae: WanVAE | WanVAENet) -> dict[str, torch.Tensor]:
    """The weights under the official key names (`encoder.*`, `decoder.*`, `conv1.*`, `conv2.*`): what
    `torch.save` writes as `Wan2.x_VAE.pth`, and what ComfyUI's `wan_2.1_vae.safetensors` holds."""
    net = vae.model if isinstance(vae, WanVAE) else vae
    return {k: v.detach().contiguous() for k, v in net.state_dict().items()}
