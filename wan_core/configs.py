"""Model configurations of Wan2.2 (numbers from the official `wan/configs/`), and the tiny test configurations.

`WanDiTConfig` reads and writes the `config.json` the official expert folders carry (a diffusers-style config of
`WanModel`) and also reads the diffusers `WanTransformer3DModel` config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import CheckpointError, ConfigMismatchError

MODEL_TYPES = ("t2v", "i2v", "ti2v")

# Defaults of the official `WanModel.__init__` (used for keys an official config.json leaves out).
_OFFICIAL_DEFAULTS: dict[str, Any] = {
    "model_type": "t2v",
    "patch_size": (1, 2, 2),
    "text_len": 512,
    "in_dim": 16,
    "dim": 2048,
    "ffn_dim": 8192,
    "freq_dim": 256,
    "text_dim": 4096,
    "out_dim": 16,
    "num_heads": 16,
    "num_layers": 32,
    "qk_norm": True,
    "cross_attn_norm": True,
    "eps": 1e-6,
}
# The keys `WanModel.save_config` writes; the other fields are in its `ignore_for_config`.
_OFFICIAL_KEYS = ("dim", "eps", "ffn_dim", "freq_dim", "in_dim", "model_type", "num_heads", "num_layers", "out_dim",
                  "text_len")


def model_type_for_in_dim(in_dim: int) -> str:
    """The Wan2.2 model type a patch embedding of `in_dim` channels belongs to."""
    return {36: "i2v", 48: "ti2v"}.get(in_dim, "t2v")


@dataclass(frozen=True)
class WanDiTConfig:
    """Hyper-parameters of one Wan DiT (one expert of an A14B model, or the TI2V-5B model)."""

    model_type: str  # 't2v' | 'i2v' | 'ti2v'
    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_dim: int
    out_dim: int
    patch_size: tuple[int, int, int] = (1, 2, 2)
    freq_dim: int = 256
    text_len: int = 512
    text_dim: int = 4096
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    extra: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if self.model_type not in MODEL_TYPES:
            raise CheckpointError(f"model_type {self.model_type!r} is not one of {', '.join(MODEL_TYPES)}.")
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ConfigMismatchError(
                f"dim={self.dim} is not divisible into num_heads={self.num_heads} heads of an even size."
            )
        if len(self.patch_size) != 3:
            raise ConfigMismatchError(f"patch_size must have 3 entries, not {self.patch_size}.")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def patch_volume(self) -> int:
        return math.prod(self.patch_size)

    def replace(self, **changes: Any) -> WanDiTConfig:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return WanDiTConfig(**values)

    # --- official config.json --------------------------------------------------------------------------------
    def to_official_json(self) -> dict:
        """The `config.json` of an official Wan2.2 expert folder (`WanModel`'s registered config).

        The official file only holds the keys below; `text_dim`, `patch_size`, `qk_norm` and `cross_attn_norm`
        are written only where they differ from the official defaults (the tiny test configs).
        """
        out: dict[str, Any] = {"_class_name": "WanModel", "_diffusers_version": "0.33.0"}
        for key in _OFFICIAL_KEYS:
            out[key] = getattr(self, key)
        for key in ("text_dim", "patch_size", "qk_norm", "cross_attn_norm"):
            value = getattr(self, key)
            if value != _OFFICIAL_DEFAULTS[key]:
                out[key] = list(value) if isinstance(value, tuple) else value
        return dict(sorted(out.items(), key=lambda kv: (not kv[0].startswith("_"), kv[0])))

    def to_diffusers_json(self) -> dict:
        """The `config.json` of a diffusers `WanTransformer3DModel` folder with the same weights."""
        return {
            "_class_name": "WanTransformer3DModel",
            "_diffusers_version": "0.35.0",
            "added_kv_proj_dim": None,
            "attention_head_dim": self.head_dim,
            "cross_attn_norm": self.cross_attn_norm,
            "eps": self.eps,
            "ffn_dim": self.ffn_dim,
            "freq_dim": self.freq_dim,
            "image_dim": None,
            "in_channels": self.in_dim,
            "num_attention_heads": self.num_heads,
            "num_layers": self.num_layers,
            "out_channels": self.out_dim,
            "patch_size": list(self.patch_size),
            "pos_embed_seq_len": None,
            "qk_norm": "rms_norm_across_heads" if self.qk_norm else None,
            "rope_max_seq_len": 1024,
            "text_dim": self.text_dim,
        }

    @classmethod
    def from_official_json(cls, data: dict) -> WanDiTConfig:
        """A config from an official `config.json` (or a diffusers `WanTransformer3DModel` one)."""
        if not isinstance(data, dict):
            raise CheckpointError(f"A DiT config must be a JSON object, not {type(data).__name__}.")
        if "num_attention_heads" in data or data.get("_class_name") == "WanTransformer3DModel":
            return cls._from_diffusers_json(data)
        values = dict(_OFFICIAL_DEFAULTS)
        values.update({k: v for k, v in data.items() if k in _OFFICIAL_DEFAULTS})
        if values["model_type"] not in MODEL_TYPES:
            raise CheckpointError(
                f"config.json has model_type {values['model_type']!r}; wan_core runs {', '.join(MODEL_TYPES)} "
                "(Wan2.2 T2V-A14B, I2V-A14B, TI2V-5B)."
            )
        extra = {k: v for k, v in data.items() if k not in _OFFICIAL_DEFAULTS}
        return cls(**values, extra=extra)

    @classmethod
    def _from_diffusers_json(cls, data: dict) -> WanDiTConfig:
        if data.get("image_dim") or data.get("added_kv_proj_dim"):
            raise CheckpointError(
                "This diffusers transformer has a CLIP image branch (image_dim / added_kv_proj_dim set): it is a "
                "Wan2.1 I2V model. wan_core runs the Wan2.2 models (T2V-A14B, I2V-A14B, TI2V-5B)."
            )
        heads = int(data.get("num_attention_heads", 40))
        in_dim = int(data.get("in_channels", 16))
        qk_norm = data.get("qk_norm", "rms_norm_across_heads")
        if qk_norm not in (None, "rms_norm_across_heads"):
            raise CheckpointError(f"qk_norm {qk_norm!r} is not the Wan norm (rms_norm_across_heads).")
        return cls(
            model_type=model_type_for_in_dim(in_dim),
            dim=heads * int(data.get("attention_head_dim", 128)),
            ffn_dim=int(data.get("ffn_dim", 13824)),
            num_heads=heads,
            num_layers=int(data.get("num_layers", 40)),
            in_dim=in_dim,
            out_dim=int(data.get("out_channels") or in_dim),
            patch_size=tuple(data.get("patch_size", (1, 2, 2))),
            freq_dim=int(data.get("freq_dim", 256)),
            text_dim=int(data.get("text_dim", 4096)),
            eps=float(data.get("eps", 1e-6)),
            qk_norm=qk_norm is not None,
            cross_attn_norm=bool(data.get("cross_attn_norm", True)),
        )


def _a14b(model_type: str, in_dim: int) -> WanDiTConfig:
    return WanDiTConfig(model_type=model_type, dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=in_dim,
                        out_dim=16)


def _tiny(model_type: str, in_dim: int, out_dim: int) -> WanDiTConfig:
    return WanDiTConfig(model_type=model_type, dim=64, ffn_dim=128, num_heads=4, num_layers=2, in_dim=in_dim,
                        out_dim=out_dim, text_dim=64, text_len=512)


DIT_CONFIGS: dict[str, WanDiTConfig] = {
    "t2v-A14B": _a14b("t2v", 16),
    "i2v-A14B": _a14b("i2v", 36),
    "ti2v-5B": WanDiTConfig(model_type="ti2v", dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, in_dim=48,
                            out_dim=48),
    "tiny-t2v": _tiny("t2v", 16, 16),
    "tiny-i2v": _tiny("i2v", 36, 16),
    "tiny-ti2v": _tiny("ti2v", 48, 48),
}
