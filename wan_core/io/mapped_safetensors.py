"""A safetensors file memory-mapped as torch tensors: CPU tensors that are views of the file's pages.

`safetensors.safe_open(...).get_tensor` copies every tensor into the process's own memory; a view of a private
(copy-on-write) map does not: the pages are read from the file when used, count as reclaimable file cache rather than
process memory, and can be handed back (`wan_core.ram.release_pages`) when the expert is not sampling. Writing to such
a tensor (a LoRA merge) copies only the pages written.
"""

from __future__ import annotations

import json
import mmap
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import CorruptFileError
from ..ram import forget_read_pages

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("F8_E8M0", "float8_e8m0fnu")):
    if hasattr(torch, _attr):
        SAFETENSORS_DTYPES[_name] = getattr(torch, _attr)


class MappedSafetensors:
    """The tensors of one safetensors file as views of a copy-on-write memory map."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(length))
                self.map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError, struct.error) as err:
            raise CorruptFileError(f"{self.path} cannot be memory-mapped as safetensors ({err}): download it "
                                   "again.") from err
        header.pop("__metadata__", None)
        self._start = 8 + length
        self._header = header

    def keys(self) -> list[str]:
        return list(self._header)

    def get(self, key: str) -> torch.Tensor:
        info = self._header[key]
        begin, end = info["data_offsets"]
        dtype = SAFETENSORS_DTYPES[info["dtype"]]
        if end == begin:
            return torch.empty(info["shape"], dtype=dtype)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*not writable.*")
            raw = torch.frombuffer(self.map, dtype=torch.uint8, count=end - begin, offset=self._start + begin)
        if (self._start + begin) % dtype.itemsize:  # unaligned (rare writers): a copy
            raw = raw.clone()
        return raw.view(dtype).view(info["shape"])


def unreadable_tensor(path: str | Path, key: str, err: Exception) -> CorruptFileError:
    """The error for a tensor of a weight file that cannot be read."""
    return CorruptFileError(f"{path} cannot be read at tensor {key!r} ({type(err).__name__}: {err}). The file is "
                            "truncated or damaged: download it again.")


RELEASE_EVERY_BYTES = 2**30  # how much of a mapped file is read between two page drops


class PageDropper:
    """Drops the read pages of memory-mapped weight files (MADV_DONTNEED) after every `every` bytes a load has read
    from them, so that reading a whole file (a NaN scan, a conversion to bf16) never holds more than about `every`
    of it resident. Only for maps nothing was written to: a load, before any patch."""

    def __init__(self, maps: Sequence[mmap.mmap], every: int | None = None) -> None:
        self.maps = list(maps)
        self.every = RELEASE_EVERY_BYTES if every is None else every
        self._read = 0

    def read(self, tensor: torch.Tensor) -> None:
        """Count `tensor`'s bytes as read; drop the pages when `every` bytes have been."""
        if not self.maps:
            return
        self._read += tensor.numel() * tensor.element_size()
        if self._read >= self.every:
            self.drop()

    def drop(self) -> None:
        forget_read_pages(self.maps)
        self._read = 0


class DroppingStateDict(dict):
    """A state dict of mapped tensors whose file pages are dropped as its entries are taken out (`pop`, as a
    consuming conversion does), through a `PageDropper`."""

    def __init__(self, tensors: dict[str, torch.Tensor], dropper: PageDropper) -> None:
        super().__init__(tensors)
        self.dropper = dropper

    def pop(self, key, *default):  # noqa: ANN001, ANN002, ANN201 - dict's signature
        value = super().pop(key, *default)
        if isinstance(value, torch.Tensor):
            self.dropper.read(value)
        return value


def read_mapped(paths: Sequence[str | Path]) -> tuple[dict[str, torch.Tensor], list[mmap.mmap]]:
    """All tensors of safetensors files as views of their private maps (nothing copied), and the maps."""
    out: dict[str, torch.Tensor] = {}
    maps = []
    for path in map(Path, paths):
        mapped = MappedSafetensors(path)
        maps.append(mapped.map)
        for key in mapped.keys():
            try:
                out[key] = mapped.get(key)
            except (ValueError, RuntimeError, KeyError) as err:
                raise unreadable_tensor(path, key, err) from err
    return out, maps
