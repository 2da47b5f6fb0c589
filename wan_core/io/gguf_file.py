"""GGUF files (city96's ComfyUI-GGUF conversions of Wan2.2 experts): tensors as memory-mapped raw bytes.

The tensor names are ComfyUI's `diffusion_model` keys (bare or prefixed), so the loader maps them like a ComfyUI
single file. Shapes are stored reversed (ggml order); tensors of more than 4 dims (the Conv3d patch embedding) carry
their real shape in a `comfy.gguf.orig_shape.<name>` metadata array.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CorruptFileError, WanError
from .gguf_dequant import FLOAT_TYPES, check_supported, dequantize, raw_shape

ORIG_SHAPE_KEY = "comfy.gguf.orig_shape."
GGUF_SUFFIX = ".gguf"
_CHUNK_VALUES = 1 << 24  # values dequantized at once (64 MB of float32)


@dataclass(frozen=True)
class GGUFTensor:
    qtype: int
    shape: tuple[int, ...]  # logical (torch) shape
    raw: torch.Tensor  # uint8 bytes, memory-mapped from the file, rows along the last dim

    @property
    def quantized(self) -> bool:
        return self.qtype not in FLOAT_TYPES

    @property
    def stored_dtype(self) -> torch.dtype:
        """The torch dtype of a float tensor; uint8 for quantized blocks."""
        return FLOAT_TYPES.get(self.qtype, torch.uint8)


def is_gguf(path: str | Path) -> bool:
    """Whether `path` names a GGUF file (by its suffix, in any case)."""
    return Path(path).suffix.lower() == GGUF_SUFFIX


def _import_gguf():  # noqa: ANN202 - the optional package's module
    try:
        import gguf
    except ImportError as err:
        raise WanError("Reading .gguf models needs the gguf package: pip install gguf") from err
    return gguf


def _orig_shape(reader: object, name: str) -> tuple[int, ...] | None:
    field = reader.get_field(ORIG_SHAPE_KEY + name)
    if field is None:
        return None
    return tuple(int(field.parts[i][0]) for i in field.data)


class GGUFFile:
    """The tensors of one .gguf file (memory-mapped copy-on-write: reading pages, never the whole file, into RAM)."""

    def __init__(self, path: str | Path) -> None:
        gguf = _import_gguf()
        self.path = Path(path)
        try:
            reader = gguf.GGUFReader(str(self.path), "c")
        except Exception as err:  # the reader raises ValueError / struct errors for a damaged file
            raise CorruptFileError(
                f"{self.path} cannot be read as GGUF ({type(err).__name__}: {err}). The file is truncated or "
                "damaged: download it again."
            ) from err
        self._reader = reader
        self.architecture = self.field("general.architecture")
        self.tensors: dict[str, GGUFTensor] = {}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            for tensor in reader.tensors:
                qtype = int(tensor.tensor_type)
                check_supported(qtype, f"{self.path}: tensor {tensor.name!r}")
                shape = _orig_shape(reader, tensor.name) or tuple(int(d) for d in reversed(tensor.shape.tolist()))
                raw = torch.from_numpy(tensor.data.reshape(-1).view("uint8"))
                self.tensors[tensor.name] = GGUFTensor(qtype, shape, raw.view(raw_shape(qtype, shape)))

    def field(self, key: str) -> str | int | float | bool | list | None:
        """Metadata entry `key` as Python values (a list for arrays), or None where the file lacks it."""
        field = self._reader.get_field(key)
        if field is None:
            return None
        string = _import_gguf().GGUFValueType.STRING

        def value(index: int) -> str | int | float | bool:
            part = field.parts[index]
            return str(bytes(part), "utf-8") if field.types[-1] == string else part[0].item()

        values = [value(index) for index in field.data]
        return values if len(field.types) > 1 else values[0]  # types: [ARRAY, element type] for arrays

    def dequantized(self, name: str, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Tensor `name` on `device`: float tensors in their stored dtype, quantized ones in float32 (or `dtype`)."""
        tensor = self.tensors[name]
        target = dtype or (tensor.stored_dtype if not tensor.quantized else torch.float32)
        rows = max(1, _CHUNK_VALUES // math.prod(tensor.shape[1:])) if len(tensor.shape) > 1 else tensor.shape[0]
        if not tensor.quantized or rows >= tensor.shape[0]:
            return dequantize(tensor.raw.to(device), tensor.qtype, tensor.shape, target)
        # in slices of rows: UMT5's Q8_0 token embedding (256384 x 4096) would need GBs of float32 temporaries at once
        out = torch.empty(tensor.shape, dtype=target, device=device)
        for start in range(0, tensor.shape[0], rows):
            raw = tensor.raw[start : start + rows]
            out[start : start + rows] = dequantize(raw.to(device), tensor.qtype, (len(raw), *tensor.shape[1:]), target)
        return out
