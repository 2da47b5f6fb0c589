"""Reading LoRA files, with a small cache: switching a LoRA's strength (or moving it to the other expert) does not
read the file again. A file changed on disk (size or time) is read again."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from ..errors import MissingFileError
from ..io.state_dict import read_safetensors, read_torch_file
from .formats import LoraWeights, parse_lora

# Two experts x two LoRAs each (Lightning + one style LoRA) stay parsed in CPU RAM.
CACHE_SIZE = 4
_cache: OrderedDict[tuple, LoraWeights] = OrderedDict()
_lock = threading.Lock()


def read_lora(path: str | os.PathLike) -> LoraWeights:
    """The parsed LoRA of `path` (cached); raises naming the file when it is missing, damaged or not a Wan LoRA."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"The LoRA file {path} does not exist. Put it in ComfyUI/models/loras/ (CLI: give "
                               "its path) or fix the name.")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    state_dict = read_safetensors(path) if path.suffix == ".safetensors" else read_torch_file(path)
    lora = parse_lora(state_dict, str(path))
    with _lock:
        _cache[key] = lora
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return lora


def clear_cache() -> None:
    with _lock:
        _cache.clear()
