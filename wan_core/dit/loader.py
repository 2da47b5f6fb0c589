"""`load_dit`: a `WanDiT` from any checkpoint layout users have, detected by itself.

1. official expert folder (`high_noise_model/`, `low_noise_model/`, or the TI2V-5B root): `config.json` +
   `diffusion_pytorch_model-0000k-of-0000n.safetensors` + `.safetensors.index.json` (shards renamed by mirrors,
   e.g. `...-00001-of-00006-bf16.safetensors`, and a missing index are fine);
2. a ComfyUI single file, keys bare or prefixed `model.diffusion_model.`, fp16/bf16/fp32, or quantized:
   `*_fp8_scaled` (`<layer>.scale_weight` + `scaled_fp8`) and the newer `weight_scale` / `comfy_quant` format
   (fp8, int8, nvfp4 and mxfp8 layers, read by `wan_core.io.quant`), and LightX2V's per-channel fp8 and int8 files
   (`<layer>.weight_scale` `[out, 1]`, `wan_core.io.lightx2v`), single or split by block (`block_N.safetensors` +
   `non_block.safetensors`);
3. a diffusers `WanTransformer3DModel` folder (`transformer/`, `transformer_2/`) or single file;
plus an official `.pth` state dict (read with `weights_only=True`), and a GGUF file (city96's conversions: the block
matmul weights stay quantized, `GGUFLinear`, and are dequantized on the device as each layer runs).

The weights are read tensor by tensor with safetensors (memory-mapped), straight to the target device and dtype, and
assigned into a model built on the meta device: no second copy, no full fp32 copy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..configs import DIT_CONFIGS, WanDiTConfig, model_type_for_in_dim
from ..errors import (
    CheckpointError,
    ConfigMismatchError,
    CorruptFileError,
    KeyMismatchError,
    MissingFileError,
    WanError,
    describe_key_mismatch,
    describe_keys,
)
from ..finite import check_weight_dtypes, scan_weights
from ..io.files import find_weight_files
from ..io.gguf_file import GGUFFile, is_gguf
from ..io.lightx2v import NVFP4_SIDES, kernel_format, split_files, unreadable
from ..io.mapped_safetensors import SAFETENSORS_DTYPES as _SAFETENSORS_DTYPES
from ..io.mapped_safetensors import MappedSafetensors, PageDropper, unreadable_tensor
from ..io.quant import check_format, dequantize, layer_formats, logical_shape
from ..io.state_dict import (
    FP8_DTYPES,
    SAFETENSORS_SUFFIXES,
    WEIGHT_SUFFIXES,
    is_torch_file,
    read_safetensors_metadata,
    read_torch_file,
)
from ..ram import check_ram, forget_read_pages
from .fp8 import quantize_weight
from .gguf_linear import GGUFLinear
from .keymap import diffusers_to_official_key, is_diffusers_layout
from .model import FP8, FP8Linear, WanDiT, fp8_capable, keeps_fp32

_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.")
_QUANT_SUFFIXES = (".scale_weight", ".weight_scale", ".scale_input", ".input_scale", ".comfy_quant",
                   ".weight_scale_2", ".pre_quant_scale", *NVFP4_SIDES)
_MARKERS = ("scaled_fp8",)
_MODEL_ROOT_CHILDREN = ("high_noise_model", "low_noise_model", "transformer", "transformer_2")


@dataclass
class _Entry:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]


class _Checkpoint:
    """The tensors of one checkpoint (one or several files), read lazily."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.config_json: dict | None = None
        self.config_path: Path | None = None
        self.files: list[Path] = []
        self.entries: dict[str, _Entry] = {}
        self.metadata: dict[str, str] = {}
        self._torch_tensors: dict[str, torch.Tensor] | None = None
        self.gguf: GGUFFile | None = None
        self._resolve()

    # --- finding the files -------------------------------------------------------------------------------------
    def _resolve(self) -> None:
        path = self.path
        if not path.exists():
            raise MissingFileError(f"DiT checkpoint {path} does not exist.")
        in_folder = path.is_file() and path.name.startswith("diffusion_pytorch_model")
        if in_folder and (path.parent / "config.json").is_file():
            path = self.path = path.parent  # a file of an official/diffusers folder: load the folder
        if path.is_dir():
            config_path = path / "config.json"
            if config_path.is_file():
                self.config_path = config_path
                try:
                    self.config_json = json.loads(config_path.read_text())
                except (OSError, ValueError) as err:
                    raise CorruptFileError(f"{config_path} is not valid JSON ({err}): download it again.") from err
            try:
                self.files = find_weight_files(path, "diffusion_pytorch_model")
            except MissingFileError:
                children = [c for c in _MODEL_ROOT_CHILDREN if (path / c).is_dir()]
                if children and not any(path.glob("diffusion_pytorch_model*.safetensors")):
                    options = " or ".join(str(path / c) for c in children)
                    raise MissingFileError(
                        f"{path} is a model root, not a DiT folder: point load_dit at {options}."
                    ) from None
                split, singles = split_files(path), sorted(path.glob("*.safetensors"))
                if not split and len(singles) != 1:
                    raise
                self.files = split or singles
        elif path.suffix.lower() in WEIGHT_SUFFIXES or is_gguf(path):
            self.files = [path]
        else:
            raise CheckpointError(f"{path} is neither a folder, a .safetensors, .gguf nor a .pth file.")
        for file in self.files:
            self._read_header(file)

    def _read_header(self, file: Path) -> None:
        if is_gguf(file):
            self.gguf = GGUFFile(file)
            for key, tensor in self.gguf.tensors.items():
                self.entries[key] = _Entry(file, tensor.stored_dtype, tensor.shape)
            return
        if is_torch_file(file):
            tensors = read_torch_file(file)
            self._torch_tensors = {**(self._torch_tensors or {}), **tensors}
            for key, value in tensors.items():
                self.entries[key] = _Entry(file, value.dtype, tuple(value.shape))
            return
        self.metadata.update(read_safetensors_metadata(file))  # raises CorruptFileError naming the file
        from safetensors import safe_open

        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    sl = handle.get_slice(key)
                    dtype = _SAFETENSORS_DTYPES.get(sl.get_dtype())
                    if dtype is None:
                        raise CheckpointError(f"{file}: tensor {key!r} has dtype {sl.get_dtype()}, which torch "
                                              "cannot hold here.")
                    self.entries[key] = _Entry(file, dtype, tuple(sl.get_shape()))
        except WanError:
            raise
        except Exception as err:
            raise CorruptFileError(
                f"{file} cannot be read ({type(err).__name__}: {err}). The file is truncated or damaged: "
                "download it again."
            ) from err

    # --- reading ----------------------------------------------------------------------------------------------
    def reader(self, device: torch.device) -> _Reader:
        return _Reader(self, device)


class _Reader:
    """Reads tensors from the checkpoint's files onto a device, keeping each file open once."""

    def __init__(self, ckpt: _Checkpoint, device: torch.device) -> None:
        self.ckpt = ckpt
        self.device = device
        self._handles: dict[Path, object] = {}
        self.mapped: list[MappedSafetensors] = []  # CPU loads: tensors are views of these maps, not copies

    def get(self, key: str) -> torch.Tensor:
        entry = self.ckpt.entries[key]
        if self.ckpt.gguf is not None:
            return self.ckpt.gguf.dequantized(key, self.device)
        if self.ckpt._torch_tensors is not None and key in self.ckpt._torch_tensors:
            return self.ckpt._torch_tensors[key].to(self.device)
        from safetensors import safe_open

        load_device = str(self.device) if self.device.type in ("cpu", "cuda") else "cpu"
        try:
            handle = self._handles.get(entry.file)
            if handle is None and self.device.type == "cpu":
                handle = self._handles[entry.file] = MappedSafetensors(entry.file)
                self.mapped.append(handle)
            if isinstance(handle, MappedSafetensors):
                return handle.get(key)
            if handle is None:
                handle = safe_open(str(entry.file), framework="pt", device=load_device)
                self._handles[entry.file] = handle
            tensor = handle.get_tensor(key)
        except Exception as err:
            raise unreadable_tensor(entry.file, key, err) from err
        return tensor.to(self.device)

    def close(self) -> None:
        self._handles.clear()


# --- names -------------------------------------------------------------------------------------------------------
def _normalize_names(raw_keys: list[str]) -> dict[str, str]:
    """Official name for each raw key (prefix stripped, diffusers names mapped); keys of other models dropped."""
    keys = [k for k in raw_keys if k not in _MARKERS]
    chosen = ""
    for prefix in _PREFIXES:
        inside = [k for k in keys if k.startswith(prefix)]
        if not inside:
            continue
        # model.diffusion_model.* in a full ComfyUI checkpoint: keep the DiT's keys only
        if prefix == "model.diffusion_model." or len(inside) == len(keys):
            chosen = prefix
            break
    names = {k[len(chosen) :]: k for k in keys if k.startswith(chosen)}
    if is_diffusers_layout(names):
        names = {diffusers_to_official_key(k): raw for k, raw in names.items()}
    return {raw: name for name, raw in names.items()}


def _split_quant(names: dict[str, str]) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """(official name -> raw key of each tensor, layer -> {suffix: raw key} of the quantization side keys)."""
    main: dict[str, str] = {}
    aux: dict[str, dict[str, str]] = {}
    for raw, name in names.items():
        if name in _MARKERS:
            continue
        for suffix in _QUANT_SUFFIXES:
            if name.endswith(suffix):
                aux.setdefault(name[: -len(suffix)], {})[suffix] = raw
                break
        else:
            main[name] = raw
    return main, aux


def _quant_formats(ckpt: _Checkpoint, main: dict[str, str], aux: dict[str, dict[str, str]]) -> dict[str, dict]:
    """Official layer name -> its ComfyUI quantization config (the `.comfy_quant` tensors and the
    `_quantization_metadata` header), each checked to be a format `wan_core.io.quant` reads; a layer without one that
    is in a LightX2V kernel format (`wan_core.io.lightx2v.kernel_format`) raises."""
    layers = {raw.removesuffix(".weight"): name.removesuffix(".weight") for name, raw in main.items()
              if name.endswith(".weight")}
    configs = [side[".comfy_quant"] for side in aux.values() if ".comfy_quant" in side]
    reader = ckpt.reader(torch.device("cpu"))
    try:
        tensors = {raw: reader.get(raw) for raw in configs}
    finally:
        reader.close()
    formats = {layers[raw]: fmt for raw, fmt in layer_formats(tensors, ckpt.metadata).items() if raw in layers}
    for layer, fmt in formats.items():
        check_format(layer, fmt)
    for layer, side in aux.items():
        weight = main.get(layer + ".weight")
        kernel = layer not in formats and weight is not None and kernel_format(
            ckpt.entries[weight].dtype, {suffix: ckpt.entries[raw].dtype for suffix, raw in side.items()})
        if kernel:
            raise unreadable(layer, kernel, str(ckpt.path))
    return formats


# --- config ------------------------------------------------------------------------------------------------------
_SHAPE_FIELDS = ("dim", "in_dim", "out_dim", "patch_size", "ffn_dim", "num_layers", "text_dim", "freq_dim",
                 "qk_norm", "cross_attn_norm")


def _shape_facts(shapes: dict[str, tuple[int, ...]], where: str) -> dict[str, tuple[object, str]]:
    """What the weight shapes say about the config: field -> (value, evidence)."""
    need = ("patch_embedding.weight", "head.head.weight", "blocks.0.ffn.0.weight", "text_embedding.0.weight",
            "time_embedding.0.weight")
    absent = [k for k in need if k not in shapes]
    if absent:
        raise KeyMismatchError(
            f"{where} does not hold a Wan DiT: {len(absent)} of its core keys are missing ({describe_keys(absent)}). "
            f"It has {len(shapes)} tensors, e.g. {describe_keys(list(shapes), 5)}. Point load_dit at a Wan2.2 "
            "diffusion model (an expert folder, a ComfyUI diffusion_models/ file or a diffusers transformer/ folder)."
        )
    patch = shapes["patch_embedding.weight"]
    if len(patch) != 5:
        raise ConfigMismatchError(f"{where}: patch_embedding.weight has shape {list(patch)}, not a Conv3d weight.")
    patch_size = tuple(int(p) for p in patch[2:])
    head_out = shapes["head.head.weight"][0]
    blocks = {int(k.split(".")[1]) for k in shapes if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    return {
        "dim": (patch[0], f"patch_embedding.weight {list(patch)}"),
        "in_dim": (patch[1], f"patch_embedding.weight {list(patch)}"),
        "patch_size": (patch_size, f"patch_embedding.weight {list(patch)}"),
        "out_dim": (head_out // max(1, patch_size[0] * patch_size[1] * patch_size[2]),
                    f"head.head.weight {list(shapes['head.head.weight'])}"),
        "ffn_dim": (shapes["blocks.0.ffn.0.weight"][0],
                    f"blocks.0.ffn.0.weight {list(shapes['blocks.0.ffn.0.weight'])}"),
        "num_layers": (len(blocks), f"blocks.0 ... blocks.{max(blocks) if blocks else -1}"),
        "text_dim": (shapes["text_embedding.0.weight"][1],
                     f"text_embedding.0.weight {list(shapes['text_embedding.0.weight'])}"),
        "freq_dim": (shapes["time_embedding.0.weight"][1],
                     f"time_embedding.0.weight {list(shapes['time_embedding.0.weight'])}"),
        "qk_norm": ("blocks.0.self_attn.norm_q.weight" in shapes, "blocks.0.self_attn.norm_q.weight present"),
        "cross_attn_norm": ("blocks.0.norm3.weight" in shapes, "blocks.0.norm3.weight present"),
    }


def _infer_config(facts: dict[str, tuple[object, str]]) -> WanDiTConfig:
    values = {k: v for k, (v, _) in facts.items()}
    for known in DIT_CONFIGS.values():
        if all(getattr(known, k) == values[k] for k in _SHAPE_FIELDS):
            return known
    dim = int(values["dim"])
    heads = dim // 128 if dim % 128 == 0 else max(1, dim // 64)
    return WanDiTConfig(model_type=model_type_for_in_dim(int(values["in_dim"])), num_heads=heads, **values)


def _check_config(cfg: WanDiTConfig, facts: dict[str, tuple[object, str]], source: str, where: str) -> None:
    wrong = [(k, getattr(cfg, k), v, ev) for k, (v, ev) in facts.items() if getattr(cfg, k) != v]
    if wrong:
        detail = "; ".join(f"{k}={c!r} in the config but {v!r} in the weights ({ev})" for k, c, v, ev in wrong)
        if source.endswith("config.json"):
            fix = (f"Fix or replace {source} with the one published with these weights, or delete it to take the "
                   "config from the weight shapes.")
        else:
            fix = "Pass the config of these weights, or leave config=None to take it from config.json or the shapes."
        raise ConfigMismatchError(f"The config ({source}) does not match the weights in {where}: {detail}. {fix}")


# --- loading -----------------------------------------------------------------------------------------------------
def _target_dtype(dtype: torch.dtype | None, ckpt: _Checkpoint, main: dict[str, str]) -> torch.dtype:
    if dtype is not None:
        if not dtype.is_floating_point or dtype in FP8_DTYPES:
            raise WanError(f"dtype={dtype} is not a compute dtype; use torch.bfloat16, float16 or float32 "
                           "(fp8 weights: fp8_compute=True).")
        return dtype
    probe = main.get("blocks.0.ffn.0.weight")
    stored = ckpt.entries[probe].dtype if probe else torch.bfloat16
    if stored in (torch.float32, torch.float16, torch.bfloat16):
        return stored
    return torch.bfloat16


def _keeps_fp8(name: str, stored: torch.dtype, fp8_compute: bool, fp8_weights: bool | None) -> bool:
    if fp8_compute or fp8_weights:
        return True
    return fp8_weights is None and stored == FP8


def _replace_linears(model: WanDiT, names: list[str], make: Callable[[str, torch.nn.Linear], torch.nn.Module]) -> None:
    """Replace the Linear of each weight name by `make(name, old)`, built on the meta device."""
    for name in names:
        module_path = name[: -len(".weight")]
        parent_path, _, attr = module_path.rpartition(".")
        parent = model.get_submodule(parent_path)
        old = getattr(parent, attr)
        with torch.device("meta"):
            setattr(parent, attr, make(name, old))


def load_dit(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    config: WanDiTConfig | None = None,
    fp8_compute: bool = False,
    fp8_weights: bool | None = False,
) -> WanDiT:
    """Load a Wan2.2 DiT from an official folder, a ComfyUI single file, or a diffusers folder/file.

    `dtype`: the compute dtype (None: as stored; fp8 files: bfloat16). The time embedding, modulations and norm
    weights are kept in float32. `config`: overrides config.json / the shapes (checked against the weights).
    `fp8_compute`: keep the block matmul weights in float8 e4m3 with a per-tensor scale (fp8 files as stored,
    others quantized on load) and run them with `torch._scaled_mm` where the GPU has fp8 tensor cores.
    `fp8_weights`: keep the block matmul weights in float8 (half the memory) but multiply in `dtype` (each weight
    dequantized when its layer runs, as ComfyUI does with fp8_scaled files): True quantizes a non-fp8 file on load,
    None keeps fp8 only where the file stores it ("as stored"), False dequantizes fp8 files on load.
    """
    device = torch.device(device)
    if fp8_compute and FP8 is None:
        raise WanError("fp8_compute needs a torch with float8_e4m3fn (torch >= 2.1).")
    ckpt = _Checkpoint(Path(path))
    where = str(ckpt.path)
    names = _normalize_names(list(ckpt.entries))
    main, aux = _split_quant(names)
    formats = _quant_formats(ckpt, main, aux)
    shapes = {name: logical_shape(ckpt.entries[raw].shape, formats.get(name.removesuffix(".weight"), {}))
              for name, raw in main.items()}
    facts = _shape_facts(shapes, where)

    if config is not None:
        cfg, source = config, "the config= argument"
    elif ckpt.config_json is not None:
        cfg, source = WanDiTConfig.from_official_json(ckpt.config_json), str(ckpt.config_path)
    else:
        cfg, source = _infer_config(facts), "inferred from the weight shapes"
    _check_config(cfg, facts, source, where)

    with torch.device("meta"):
        model = WanDiT(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(main))
    unexpected = sorted(set(main) - set(expected))
    if missing or unexpected:
        hint = "A weight file may be missing or incomplete, or the file belongs to another model."
        if any(k.startswith("img_emb.") or ".k_img." in k for k in unexpected):
            hint = "These are Wan2.1 I2V weights (CLIP image branch); wan_core runs the Wan2.2 models."
        raise KeyMismatchError(
            f"The weights in {where} do not match the Wan DiT ({cfg.model_type}, dim {cfg.dim}, {cfg.num_layers} "
            f"layers): {describe_key_mismatch(missing, unexpected)}. {hint}"
        )
    bad_shapes = [
        f"{k}: {list(shapes[k])} (expected {list(expected[k])})" for k in expected if shapes[k] != expected[k]
    ]
    if bad_shapes:
        raise ConfigMismatchError(
            f"{len(bad_shapes)} tensor(s) in {where} do not have the shapes the config ({source}) gives: "
            f"{'; '.join(bad_shapes[:6])}{' ...' if len(bad_shapes) > 6 else ''}."
        )

    target = _target_dtype(dtype, ckpt, main)
    gguf = ckpt.gguf
    gguf_names = {k for k in expected if gguf is not None and fp8_capable(k) and gguf.tensors[main[k]].quantized}
    fp8_names = [k for k in expected if fp8_capable(k) and k not in gguf_names
                 and _keeps_fp8(k, ckpt.entries[main[k]].dtype, fp8_compute, fp8_weights)]
    _replace_linears(model, fp8_names, lambda name, old: FP8Linear(
        old.in_features, old.out_features, bias=old.bias is not None, scaled_mm=fp8_compute))
    _replace_linears(model, sorted(gguf_names), lambda name, old: GGUFLinear(
        old.in_features, old.out_features, gguf.tensors[main[name]].qtype, bias=old.bias is not None))
    model.requires_grad_(False)

    if device.type == "cpu":
        check_ram(_copied_bytes(ckpt, main, expected, target, set(fp8_names), gguf_names), where,
                  "Close other programs, pick fp8 or GGUF weights (or offload) in the loader, or add RAM / swap.")
    reader = ckpt.reader(device)
    state: dict[str, torch.Tensor] = {}
    scales: dict[str, torch.Tensor] = {}
    fp8_set = set(fp8_names)
    try:
        for name in expected:
            raw = main[name]
            layer = name[: -len(".weight")] if name.endswith(".weight") else None
            side = aux.get(layer, {}) if layer is not None else {}
            want = torch.float32 if keeps_fp32(name) else target
            if name in gguf_names:
                state[name] = gguf.tensors[raw].raw.to(device)
                continue
            tensor = reader.get(raw)
            quantized = tensor.dtype in FP8_DTYPES or tensor.dtype == torch.int8 or bool(side)
            scale_key = side.get(".weight_scale") or side.get(".scale_weight")
            if name in fp8_set:
                scale = _fp8_scale(reader, tensor, scale_key, formats.get(layer, {}))
                if scale is not None:  # e4m3 with a per-tensor or per-channel scale: kept as stored
                    state[name], scales[name] = tensor, scale
                    continue
                if quantized:
                    tensor = _dequantize_layer(reader, raw, tensor, side, torch.float32, ckpt.metadata)
                state[name], scales[name] = quantize_weight(tensor)  # one scale per output channel
                continue
            if quantized:
                state[name] = _dequantize_layer(reader, raw, tensor, side, want, ckpt.metadata)
            else:
                state[name] = tensor.to(want) if tensor.is_floating_point() else tensor
    finally:
        reader.close()

    check_weight_dtypes(state, {k: v.dtype for k, v in model.state_dict().items()}, where)
    scan_weights(state, where, read=PageDropper([m.map for m in reader.mapped]).read)
    model.load_state_dict(state, strict=True, assign=True)
    for name, scale in scales.items():
        model.get_submodule(name[: -len(".weight")]).weight_scale = scale.to(device)
    leftover = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.device.type == "meta"]
    if leftover:
        raise CheckpointError(f"Internal error: {describe_keys(leftover)} were not loaded from {where}.")
    model.eval()
    model.source = where
    model.mapped_files = [m.map for m in reader.mapped]  # for wan_core.ram.release_pages
    forget_read_pages(model.mapped_files)  # the scan read every page; nothing has been written to them yet
    return model


def _copied_bytes(ckpt: _Checkpoint, main: dict[str, str], expected: dict[str, tuple[int, ...]],
                  target: torch.dtype, fp8_names: set[str], gguf_names: set[str]) -> int:
    """The RAM a CPU load takes beyond the memory-mapped file: tensors converted to another dtype, .pth files."""
    total = 0
    for name, shape in expected.items():
        entry = ckpt.entries[main[name]]
        kept = FP8 if name in fp8_names else torch.float32 if keeps_fp32(name) else target
        mapped = entry.file.suffix.lower() in SAFETENSORS_SUFFIXES and entry.dtype == kept or name in gguf_names
        if not mapped:
            total += math.prod(shape) * kept.itemsize
    return total


def _fp8_scale(reader: _Reader, tensor: torch.Tensor, scale_key: str | None, fmt: dict) -> torch.Tensor | None:
    """The float32 scale an `FP8Linear` takes as it is for a stored weight (`[]` per tensor, `[out]` per output
    channel, from `[]`, `[1]`, `[out]` or `[out, 1]`), or None when the weight must be dequantized and quantized
    again (not e4m3, block scales)."""
    if tensor.dtype != FP8 or fmt.get("format", "float8_e4m3fn") != "float8_e4m3fn":
        return None
    if scale_key is None:
        return torch.ones((), device=tensor.device)
    entry = reader.ckpt.entries[scale_key]
    rows = tensor.shape[0]
    if entry.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return None
    if math.prod(entry.shape) == 1:
        return reader.get(scale_key).float().reshape(())
    if entry.shape in ((rows,), (rows, 1)):
        return reader.get(scale_key).float().reshape(rows)
    return None


def _dequantize_layer(
    reader: _Reader,
    raw: str,
    tensor: torch.Tensor,
    side: dict[str, str],
    dtype: torch.dtype,
    metadata: dict[str, str],
) -> torch.Tensor:
    """One quantized weight, dequantized with `wan_core.io.quant.dequantize` (only this layer in memory)."""
    mini = {raw: tensor}
    for raw_side in side.values():
        mini[raw_side] = reader.get(raw_side)
    out = dequantize(mini, dtype, metadata)
    return out[raw]
