"""Writing state dicts as safetensors: one file, or N shards with the `.safetensors.index.json` the official and
diffusers folders carry (`diffusion_pytorch_model-00001-of-00006.safetensors`, ...)."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def _prepared(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    for key, value in state_dict.items():
        tensor = value.detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        ptr = tensor.untyped_storage().data_ptr() if tensor.numel() else -1
        # safetensors refuses shared storage: give tensors that share memory their own copy.
        if ptr in seen or not tensor.is_contiguous():
            tensor = tensor.contiguous().clone()
        elif ptr != -1:
            seen[ptr] = key
        out[key] = tensor
    return out


def write_safetensors(
    state_dict: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Write `state_dict` to one `.safetensors` file (parent folders are created)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(_prepared(state_dict), str(path), metadata={str(k): str(v) for k, v in (metadata or {}).items()})
    return path


def write_sharded(
    state_dict: dict[str, torch.Tensor],
    folder: str | Path,
    stem: str = "diffusion_pytorch_model",
    num_shards: int = 2,
    suffix: str = "",
    *,
    write_index: bool = True,
    metadata: dict[str, str] | None = None,
) -> list[Path]:
    """Write `state_dict` as `num_shards` files `{stem}-0000k-of-0000n{suffix}.safetensors` in key order, sized
    evenly by bytes, plus `{stem}.safetensors.index.json` (weight_map to the names written) unless `write_index`
    is False. Returns the shard paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    keys = list(state_dict)
    num_shards = max(1, min(num_shards, len(keys)))
    total = sum(state_dict[k].nbytes for k in keys)
    groups: list[list[str]] = [[] for _ in range(num_shards)]
    running = 0
    for key in keys:
        shard = min(num_shards - 1, running * num_shards // max(total, 1))
        groups[shard].append(key)
        running += state_dict[key].nbytes
    # every shard gets at least one key
    for i in range(num_shards):
        if not groups[i]:
            donor = max(range(num_shards), key=lambda j: len(groups[j]))
            groups[i].append(groups[donor].pop())
    order = {k: i for i, k in enumerate(keys)}
    groups = sorted((sorted(g, key=order.__getitem__) for g in groups), key=lambda g: order[g[0]])
    paths: list[Path] = []
    weight_map: dict[str, str] = {}
    for i, group in enumerate(groups, start=1):
        name = f"{stem}-{i:05d}-of-{num_shards:05d}{suffix}.safetensors"
        write_safetensors({k: state_dict[k] for k in group}, folder / name, metadata or {"format": "pt"})
        weight_map.update({k: name for k in group})
        paths.append(folder / name)
    if write_index:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return paths
