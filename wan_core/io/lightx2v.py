"""LightX2V's own quantized DiT checkpoints (ModelTC/LightX2V, e.g. lightx2v/Wan2.2-Distill-Models'
`*_fp8_e4m3_lightx2v_4step.safetensors` and `*_int8_lightx2v_4step.safetensors`), as its converter writes them.

What the files hold (LightX2V at f8aee98b):
- Which layers: `tools/convert/converter.py` `quantize_model` with the `wan_dit` entry of `main()`'s
  `model_type_keys_map` (`key_idx` 2, `target_keys` `self_attn`, `cross_attn`, `ffn`) quantizes the 2-D weights of
  `blocks.N.{self_attn,cross_attn}.{q,k,v,o}` and `blocks.N.ffn.{0,2}`; every other tensor (biases, norms,
  modulations, embeddings, the head) is cast to `--non_linear_dtype` (bfloat16 in the published recipes of
  `tools/convert/readme.md`, float32 by default). Keys are the official `WanModel` names, no prefix.
- How: `tools/convert/quant/quant.py` `QuantWeightINT8` / `QuantWeightFP8`, symmetric per output channel:
  `scale = max|row| (at least 1e-5) / 127` (int8, `round`, clamped to [-128, 127]) or `/ 448` (`float8_e4m3fn`),
  stored as `<layer>.weight_scale` (`quantize_model`: `key + "_scale"`) of shape `[out, 1]`, in the dtype of the
  source weight. A weight stands for `weight * weight_scale`, row by row: LightX2V's loader reads
  `<layer>.weight_scale` beside `<layer>.weight` (`lightx2v/common/ops/mm/mm_weight.py` `MMWeightQuantTemplate`) and
  hands it to its scaled matmuls as the weight's per-channel scale (`fp8-sgl`, `int8-vllm`, ... in the same file).
- No marker tensor, no header entry: LightX2V learns the scheme from its config (`dit_quant_scheme`,
  `lightx2v/models/networks/base_model.py` `_load_quant_ckpt`), so the layout is recognised by its tensors.
  `*_scaled_fp8_e4m3_lightx2v_4step.safetensors` is this per-channel format despite its name (LightX2V runs it as
  `fp8-sgl`, `configs/distill/wan22/wan_moe_i2v_distill_quant.json`).
- `--comfyui_mode` writes ComfyUI's fp8_scaled format instead (one `<layer>.scale_weight` per tensor and the
  `scaled_fp8` marker, `quantize_model`): the `*_comfyui.safetensors` files, read by `wan_core.io.quant`.
- nvfp4, mxfp4, mxfp6, mxfp8 (`--linear_type`, quantized by `lightx2v_kernel/python/lightx2v_kernel/gemm.py`): uint8
  codes and block scales in the swizzled layout of LightX2V's sm120 kernels; nvfp4 adds `<layer>.weight_global_scale`
  (or `.input_global_scale` and `.alpha`, `tools/convert/add_scale_to_models.py`). Not read here (`kernel_format`).
- Files (`convert_weights`): one `.safetensors` (`--single_file`), a `.pth` (`torch.save` of the dict), or a folder
  with `diffusion_pytorch_model.safetensors.index.json` holding `block_N.safetensors` + `non_block.safetensors`
  (`--save_by_block`, the published `*_split` folders) or `<name>_partN.safetensors` chunks.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import CheckpointError
from .quant import E8M0

NVFP4_SIDES = (".weight_global_scale", ".input_global_scale", ".alpha")
_BLOCK_FILE = re.compile(r"^block_(\d+)\.safetensors$")
_NON_BLOCK_FILE = "non_block.safetensors"


def kernel_format(weight_dtype: torch.dtype, sides: dict[str, torch.dtype]) -> str | None:
    """The LightX2V kernel format a layer without a ComfyUI format config is stored in (uint8 codes with e4m3 block
    scales: nvfp4; with e8m0 ones: an mx format), or None. `sides`: the dtype of each of the layer's quantization
    side tensors, by suffix (`.weight_scale`, ...)."""
    if weight_dtype != torch.uint8 or ".weight_scale_2" in sides:  # `.weight_scale_2`: ComfyUI's nvfp4
        return None
    scale = sides.get(".weight_scale")
    if scale == torch.float8_e4m3fn:
        return "nvfp4"
    return "mxfp4, mxfp6 or mxfp8" if scale is not None and scale == E8M0 else None


def unreadable(layer: str, fmt: str, where: str) -> CheckpointError:
    return CheckpointError(
        f"Layer {layer!r} of {where} is stored in LightX2V's {fmt} format (uint8 codes with block scales laid out "
        "for LightX2V's own kernels), which wan_core cannot read. Download this model's per-channel fp8 or int8 "
        "file from LightX2V (`*_fp8_e4m3_lightx2v*.safetensors`, `*_int8_lightx2v*.safetensors`), its "
        "`*_comfyui.safetensors` fp8_scaled file or its bf16 file instead; an nvfp4 model also works converted to "
        "ComfyUI's nvfp4 format (e.g. Kijai/WanVideo_comfy_nvfp4)."
    )


def is_split_file(name: str) -> bool:
    """Whether a file name is one of a `--save_by_block` folder's (`non_block.safetensors`, `block_N.safetensors`)."""
    return name == _NON_BLOCK_FILE or _BLOCK_FILE.match(name) is not None


def split_files(folder: Path) -> list[Path]:
    """The files of a `--save_by_block` folder (`non_block.safetensors` + `block_N.safetensors`, block order), for
    when its index is missing; empty when `folder` is not one."""
    non_block = folder / _NON_BLOCK_FILE
    if not non_block.is_file():
        return []
    blocks = sorted((int(m[1]), p) for p in folder.glob("block_*.safetensors") if (m := _BLOCK_FILE.match(p.name)))
    return [non_block, *(p for _, p in blocks)]
