"""Model files for the host benchmark: random weights in ComfyUI's own single-file layouts, the names the native
Wan2.2 template and our workflows load.

- `diffusion_models/wan2.2_t2v_{high,low}_noise_14B_fp8_scaled.safetensors`: official key names without prefix
  (what `comfy/model_detection.py` reads: `head.modulation` -> Wan, `dim // 128` heads, `ffn.0` width, block count),
  every 2-D Linear weight e4m3 with a 0-d float32 `<layer>.scale_weight`, the rest bf16, and an empty e4m3
  `scaled_fp8` marker. An empty marker (not 2 elements) turns on ComfyUI's fp8 matmuls on GPUs that have them
  (`comfy/ops.py` `scaled_fp8_ops`), the native side's fastest setting for these files.
- `text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors`: transformers names (`shared.weight`,
  `encoder.block.N.layer...`), Linear weights e4m3 + `scale_weight`, embeddings and norms bf16, `scaled_fp8`, and the
  sentencepiece model as the uint8 `spiece_model` tensor, which both ComfyUI's `UMT5XXlTokenizer` and our loader
  read. It is the demo tokenizer (wan_core.text): its ids fit the real 256384-row embedding as well as the tiny one.
- `vae/wan_2.1_vae.safetensors`: the official names, bf16, always at real size (ComfyUI builds this VAE with a
  fixed width).
- `loras/wan2.2_t2v_lightx2v_4steps_lora_v1.1_{high,low}_noise.safetensors`: the published Lightning LoRA names, in
  the ComfyUI / lightx2v layout (`diffusion_model.<module>.lora_A.weight` `[64, in]`, `lora_B.weight` `[out, 64]`,
  `.alpha` = 64) for every Linear of the blocks, bf16; small enough that the merged weights stay in range.

`scale="tiny"` shrinks the DiT (dim 256, 2 blocks) and the UMT5 (2 heads, d_ff 64, 1024 tokens; d_model stays
4096 and 24 blocks, because native ComfyUI fixes the DiT's text width and detects a UMT5 by its 24th block; the
server then needs `TINY_UMT5_SHIM`). Tensors are generated and written one at a time (a 14B expert never sits in
memory twice), on the GPU when there is one.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

HIGH_NOISE_FILE = "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"
LOW_NOISE_FILE = "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"
T5_FILE = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
VAE_FILE = "wan_2.1_vae.safetensors"
LIGHTNING_HIGH_FILE = "wan2.2_t2v_lightx2v_4steps_lora_v1.1_high_noise.safetensors"
LIGHTNING_LOW_FILE = "wan2.2_t2v_lightx2v_4steps_lora_v1.1_low_noise.safetensors"
LORA_RANK = 64
# (ComfyUI model folder, file name) of every file written.
MODEL_FILES = (
    ("diffusion_models", HIGH_NOISE_FILE),
    ("diffusion_models", LOW_NOISE_FILE),
    ("text_encoders", T5_FILE),
    ("vae", VAE_FILE),
    ("loras", LIGHTNING_HIGH_FILE),
    ("loras", LIGHTNING_LOW_FILE),
)
MARKER = "wan22-host-models.json"
FORMAT_VERSION = 2

FP8 = torch.float8_e4m3fn
_DTYPE_CODES = {torch.float8_e4m3fn: "F8_E4M3", torch.bfloat16: "BF16", torch.float32: "F32", torch.uint8: "U8"}

UMT5_SHAPES = {
    "real": {"vocab_size": 256384, "d_model": 4096, "num_layers": 24, "num_heads": 64, "d_kv": 64, "d_ff": 10240,
             "relative_attention_num_buckets": 32},
    "tiny": {"vocab_size": 1024, "d_model": 4096, "num_layers": 24, "num_heads": 2, "d_kv": 64, "d_ff": 64,
             "relative_attention_num_buckets": 32},
}
TINY_DIT = {"dim": 256, "ffn_dim": 512, "num_heads": 2, "num_layers": 2}

# A custom node (written into the server's custom_nodes for `scale="tiny"` only) that makes ComfyUI's Wan text
# encoder use the tiny UMT5 shapes, through the `<model_name>_model_config` override of `comfy/sd1_clip.py`.
TINY_UMT5_SHIM = '''"""Benchmark shim (tiny CPU smoke only): ComfyUI's umt5 for the tiny text encoder file."""
import comfy.text_encoders.wan as _wan

_TINY = {tiny}
_init = _wan.WanT5Model.__init__


def _tiny_init(self, device="cpu", dtype=None, model_options={{}}, **kwargs):
    model_options = {{**model_options, "umt5xxl_model_config": dict(_TINY)}}
    _init(self, device=device, dtype=dtype, model_options=model_options, **kwargs)


_wan.WanT5Model.__init__ = _tiny_init
NODE_CLASS_MAPPINGS = {{}}
'''


def tiny_umt5_shim() -> str:
    """The shim's source, for a `custom_nodes/<name>/__init__.py`."""
    return TINY_UMT5_SHIM.format(tiny=repr(UMT5_SHAPES["tiny"]))


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    make: Callable[[torch.Generator, torch.device], torch.Tensor]


# ------------------------------------------------------------------------------------------------ safetensors


def _header(specs: list[TensorSpec], metadata: dict[str, str]) -> bytes:
    header: dict = {"__metadata__": metadata}
    offset = 0
    for spec in specs:
        size = math.prod(spec.shape) * torch.empty((), dtype=spec.dtype).element_size()
        header[spec.name] = {"dtype": _DTYPE_CODES[spec.dtype], "shape": list(spec.shape),
                             "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)


def write_streamed(path: Path, specs: list[TensorSpec], *, seed: int, device: torch.device,
                   metadata: dict[str, str] | None = None) -> Path:
    """Write a `.safetensors` file tensor by tensor (each made by its spec on `device`, seeded by its index)."""
    header = _header(specs, metadata or {"format": "pt"})
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    generator = torch.Generator(device=device)
    with open(partial, "wb") as out:
        out.write(struct.pack("<Q", len(header)))
        out.write(header)
        for index, spec in enumerate(specs):
            generator.manual_seed(seed * 100_003 + index)
            tensor = spec.make(generator, device)
            if tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
                raise RuntimeError(f"{spec.name}: made {tuple(tensor.shape)} {tensor.dtype}, declared {spec}")
            out.write(tensor.detach().reshape(-1).view(torch.uint8).cpu().numpy())
    partial.replace(path)
    return path


# ------------------------------------------------------------------------------------------------ values


def _normal(shape: tuple[int, ...], std: float, dtype: torch.dtype) -> Callable:
    def make(generator: torch.Generator, device: torch.device) -> torch.Tensor:
        return (torch.randn(shape, generator=generator, device=device) * std).to(dtype)
    return make


def _const(shape: tuple[int, ...], value: float, dtype: torch.dtype) -> Callable:
    return lambda generator, device: torch.full(shape, value, dtype=dtype, device=device)


def _fan_in(shape: tuple[int, ...]) -> int:
    return math.prod(shape[1:])


def _plain(name: str, shape: tuple[int, ...]) -> TensorSpec:
    """A bf16 tensor with a value range that keeps random activations finite."""
    if name.endswith("bias"):
        return TensorSpec(name, shape, torch.bfloat16, _const(shape, 0.0, torch.bfloat16))
    if len(shape) == 1 or name.endswith("gamma"):  # norms (RMS gains, layer-norm weights)
        return TensorSpec(name, shape, torch.bfloat16, _const(shape, 1.0, torch.bfloat16))
    if "modulation" in name:
        return TensorSpec(name, shape, torch.bfloat16, _normal(shape, 0.02, torch.bfloat16))
    if "relative_attention_bias" in name or name == "shared.weight":
        return TensorSpec(name, shape, torch.bfloat16, _normal(shape, 0.1, torch.bfloat16))
    return TensorSpec(name, shape, torch.bfloat16, _normal(shape, _fan_in(shape) ** -0.5, torch.bfloat16))


def _fp8_scaled(name: str, shape: tuple[int, ...]) -> list[TensorSpec]:
    """An e4m3 weight of N(0, 1) values and the 0-d scale that gives it a 1/sqrt(fan_in) spread."""
    layer = name[: -len(".weight")]
    scale = _fan_in(shape) ** -0.5
    return [
        TensorSpec(name, shape, FP8, _normal(shape, 1.0, FP8)),
        TensorSpec(layer + ".scale_weight", (), torch.float32, _const((), scale, torch.float32)),
    ]


def _scaled_file(shapes: dict[str, tuple[int, ...]], quantized: Callable[[str, tuple[int, ...]], bool]
                 ) -> list[TensorSpec]:
    specs: list[TensorSpec] = []
    for name, shape in shapes.items():
        specs.extend(_fp8_scaled(name, shape) if quantized(name, shape) else [_plain(name, shape)])
    specs.append(TensorSpec("scaled_fp8", (0,), FP8, lambda generator, device: torch.empty(0, dtype=FP8,
                                                                                          device=device)))
    return specs


# ------------------------------------------------------------------------------------------------ models


def dit_shapes(scale: str, config_name: str = "t2v-A14B") -> dict[str, tuple[int, ...]]:
    """Official key -> shape of one expert of `config_name` (a T2V A14B one; `scale="tiny"`: `TINY_DIT`)."""
    import dataclasses

    from wan_core.configs import DIT_CONFIGS
    from wan_core.dit.model import WanDiT

    config = DIT_CONFIGS[config_name]
    if scale == "tiny":
        config = dataclasses.replace(config, **TINY_DIT)
    with torch.device("meta"):
        model = WanDiT(config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def dit_specs(scale: str, config_name: str = "t2v-A14B") -> list[TensorSpec]:
    return _scaled_file(dit_shapes(scale, config_name),
                        lambda name, shape: name.endswith(".weight") and len(shape) == 2)


def lora_specs(scale: str, rank: int = LORA_RANK) -> list[TensorSpec]:
    """A rank-`rank` LoRA for every Linear of the DiT's blocks, lightx2v key names, alpha = rank (scale 1)."""
    specs: list[TensorSpec] = []
    for name, shape in dit_shapes(scale).items():
        if not (name.startswith("blocks.") and name.endswith(".weight") and len(shape) == 2):
            continue
        module, (out_features, in_features) = "diffusion_model." + name[: -len(".weight")], shape
        specs += [
            TensorSpec(f"{module}.lora_A.weight", (rank, in_features), torch.bfloat16,
                       _normal((rank, in_features), in_features ** -0.5, torch.bfloat16)),
            TensorSpec(f"{module}.lora_B.weight", (out_features, rank), torch.bfloat16,
                       _normal((out_features, rank), 0.01 * rank ** -0.5, torch.bfloat16)),
            TensorSpec(f"{module}.alpha", (), torch.float32, _const((), float(rank), torch.float32)),
        ]
    return specs


def umt5_shapes(scale: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ComfyUI's umt5 file (transformers names, one stored embedding)."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(**UMT5_SHAPES[scale], feed_forward_proj="gated-gelu")
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items() if name != "encoder.embed_tokens.weight"}


def umt5_specs(scale: str) -> list[TensorSpec]:
    from wan_core.text.tokenizer import build_demo_spiece_model

    linear = (".q.weight", ".k.weight", ".v.weight", ".o.weight", ".wi_0.weight", ".wi_1.weight", ".wo.weight")
    specs = _scaled_file(umt5_shapes(scale), lambda name, shape: name.endswith(linear))
    spiece = torch.frombuffer(bytearray(build_demo_spiece_model()), dtype=torch.uint8)
    specs.append(TensorSpec("spiece_model", tuple(spiece.shape), torch.uint8, lambda g, device: spiece.to(device)))
    return specs


def vae_specs(name: str = "wan2.1") -> list[TensorSpec]:
    from wan_core.vae import build_vae
    from wan_core.vae.model import official_state_dict

    with torch.device("meta"):
        vae = build_vae(name)
    return [_plain(name, tuple(t.shape)) for name, t in official_state_dict(vae).items()]


def _file_specs(scale: str) -> Iterator[tuple[str, str, Callable[[], list[TensorSpec]]]]:
    yield "diffusion_models", HIGH_NOISE_FILE, lambda: dit_specs(scale)
    yield "diffusion_models", LOW_NOISE_FILE, lambda: dit_specs(scale)
    yield "text_encoders", T5_FILE, lambda: umt5_specs(scale)
    yield "vae", VAE_FILE, vae_specs
    yield "loras", LIGHTNING_HIGH_FILE, lambda: lora_specs(scale)
    yield "loras", LIGHTNING_LOW_FILE, lambda: lora_specs(scale)


def ensure_model_files(root: str | Path, scale: str = "real", *, device: str | torch.device | None = None,
                       log: Callable[[str], None] = print) -> Path:
    """`root/<folder>/<file>` for every file of `MODEL_FILES`, written unless `root`'s marker says they are there
    already for this `scale`. Returns `root` (a ComfyUI `models/` folder)."""
    if scale not in UMT5_SHAPES:
        raise ValueError(f"scale must be one of {sorted(UMT5_SHAPES)}, not {scale!r}")
    root = Path(root)
    marker = root / MARKER
    wanted = {"scale": scale, "version": FORMAT_VERSION, "files": [f"{d}/{n}" for d, n in MODEL_FILES]}
    if marker.is_file() and json.loads(marker.read_text()) == wanted and all(
            (root / d / n).is_file() for d, n in MODEL_FILES):
        log(f"model files already in {root} ({scale})")
        return root
    marker.unlink(missing_ok=True)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    for seed, (folder, name, specs) in enumerate(_file_specs(scale)):
        path = write_streamed(root / folder / name, specs(), seed=seed, device=device)
        log(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB)")
    marker.write_text(json.dumps(wanted, indent=1) + "\n")
    return root


if __name__ == "__main__":  # python bench/host_models.py ROOT [real|tiny]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    ensure_model_files(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "real")
