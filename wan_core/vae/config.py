"""Configurations of the Wan VAEs and the published latent statistics (wan/modules/vae2_1.py, vae2_2.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

# Per-channel latent mean/std of the Wan2.1 VAE (Wan2_1_VAE.__init__). Encode returns (mu - mean) / std.
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip

# The same for the Wan2.2 VAE (Wan2_2_VAE.__init__).
WAN22_LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)  # fmt: skip
WAN22_LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)  # fmt: skip

VARIANTS = ("wan2.1", "wan2.2")

_PUBLISHED_STATS = {
    ("wan2.1", 16): (WAN21_LATENTS_MEAN, WAN21_LATENTS_STD),
    ("wan2.2", 48): (WAN22_LATENTS_MEAN, WAN22_LATENTS_STD),
}


def published_stats(variant: str, z_dim: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The published latent (mean, std) of a variant, or None when no model of that z_dim was published."""
    return _PUBLISHED_STATS.get((variant, z_dim))


@dataclass(frozen=True)
class VAEConfig:
    """Shape of a Wan VAE. `variant` picks the architecture family:

    - "wan2.1": plain encoder/decoder stages, the decoder halves the width at each upsampling (`WanVAE_` of vae2_1).
    - "wan2.2": residual down/up stages with parameter-free shortcuts and a 2x2 pixel patchify (`WanVAE_` of vae2_2);
      its decoder has its own base width `dec_dim`.
    """

    variant: str = "wan2.1"
    dim: int = 96
    z_dim: int = 16
    dec_dim: int | None = None
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    latents_mean: tuple[float, ...] = field(default=(), repr=False)
    latents_std: tuple[float, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"VAE variant must be one of {VARIANTS}, not {self.variant!r}")
        object.__setattr__(self, "dim_mult", tuple(int(m) for m in self.dim_mult))
        object.__setattr__(self, "temperal_downsample", tuple(bool(t) for t in self.temperal_downsample))
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"temperal_downsample needs {len(self.dim_mult) - 1} entries (one per downsampling), "
                f"got {len(self.temperal_downsample)}"
            )
        if self.dec_dim is None:
            object.__setattr__(self, "dec_dim", self.dim)
        if self.variant == "wan2.1" and self.dec_dim != self.dim:
            raise ValueError("the Wan2.1 VAE has one base width: dec_dim must equal dim")
        if not self.latents_mean and not self.latents_std:
            stats = published_stats(self.variant, self.z_dim)
            if stats is None:
                raise ValueError(
                    f"no published latent mean/std for a {self.variant} VAE with z_dim {self.z_dim}: pass "
                    "latents_mean and latents_std"
                )
            object.__setattr__(self, "latents_mean", stats[0])
            object.__setattr__(self, "latents_std", stats[1])
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(f"latents_mean and latents_std need {self.z_dim} values each")

    @property
    def patch_size(self) -> int:
        """Pixel patchify before the encoder (Wan2.2: 2x2 pixels -> 12 channels)."""
        return 2 if self.variant == "wan2.2" else 1

    @property
    def residual(self) -> bool:
        """Whether the stages are Wan2.2's residual down/up blocks."""
        return self.variant == "wan2.2"

    @property
    def stride(self) -> tuple[int, int, int]:
        """(time, height, width) compression: (4, 8, 8) for Wan2.1, (4, 16, 16) for Wan2.2."""
        spatial = 2 ** (len(self.dim_mult) - 1) * self.patch_size
        return (2 ** sum(self.temperal_downsample), spatial, spatial)


VAE_CONFIGS: dict[str, VAEConfig] = {
    # Wan2.1_VAE.pth: used by T2V-A14B and I2V-A14B (and all of Wan2.1)
    "wan2.1": VAEConfig(variant="wan2.1", dim=96, z_dim=16),
    # Wan2.2_VAE.pth: used by TI2V-5B
    "wan2.2": VAEConfig(variant="wan2.2", dim=160, dec_dim=256, z_dim=48),
    # Tiny random-weight models for tests and demos: real z_dim, strides and latent statistics.
    "tiny-wan2.1": VAEConfig(variant="wan2.1", dim=8, z_dim=16),
    "tiny-wan2.2": VAEConfig(variant="wan2.2", dim=8, dec_dim=12, z_dim=48),
}


def resolve_config(name_or_config: str | VAEConfig) -> VAEConfig:
    """A `VAEConfig` from itself or from a name in `VAE_CONFIGS`."""
    if isinstance(name_or_config, VAEConfig):
        return name_or_config
    try:
        return VAE_CONFIGS[name_or_config]
    except KeyError:
        raise ValueError(f"unknown VAE config {name_or_config!r}; known: {', '.join(sorted(VAE_CONFIGS))}") from None
