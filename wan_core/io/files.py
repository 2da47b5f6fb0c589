"""Finding the weight files of a checkpoint folder: single files, shards with or without an index,
and shards that mirrors renamed (`...-00001-of-00003-bf16.safetensors`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import CorruptFileError, InputError, MissingFileError

_SHARD = re.compile(r"^(?P<stem>.+?)-(?P<index>\d{5})-of-(?P<total>\d{5})(?P<tag>[-_.][\w.-]*?)?\.safetensors$")


def resolve_inside(name: str | Path, root_dir: str | Path, what: str, folder: str) -> Path:
    """`name` (relative to `root_dir`, or absolute) with symlinks resolved; InputError when it ends up outside
    `root_dir` (`..`, an absolute path elsewhere, a symlink pointing out): a workflow shared by someone else must not
    read arbitrary files of this machine. `what` and `folder` name the input and the folder in the message."""
    root = Path(root_dir).resolve()
    candidate = Path(name)
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not resolved.is_relative_to(root):
        raise InputError(
            f"{what} {str(name)!r} is outside {folder} {root}; it is only read from there. Copy the file into "
            f"{folder} and give its name relative to it."
        )
    return resolved


def _shard_number(name: str) -> tuple[str, int, int] | None:
    match = _SHARD.match(name)
    if match is None:
        return None
    return match["stem"], int(match["index"]), int(match["total"])


def _read_index(index_path: Path) -> list[str]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CorruptFileError(
            f"{index_path} is not a valid safetensors index ({err}). Delete it to let the shards be found by name, "
            "or download it again."
        ) from err
    return sorted(set(weight_map.values()))


def _sharded_files(folder: Path, stem: str) -> dict[int, tuple[int, Path]]:
    found: dict[int, tuple[int, Path]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        parsed = _shard_number(path.name)
        if parsed is not None and parsed[0] == stem:
            found[parsed[1]] = (parsed[2], path)
    return found


def _missing_shards_error(folder: Path, missing: list[str], present: list[Path]) -> MissingFileError:
    have = ", ".join(p.name for p in present) or "none"
    return MissingFileError(
        f"{len(missing)} weight shard(s) missing in {folder}: {', '.join(missing)}. Found: {have}. "
        "Download the missing shard(s) into that folder (shards renamed with a suffix such as '-bf16' are accepted)."
    )


def find_weight_files(folder: str | Path, stem: str = "diffusion_pytorch_model") -> list[Path]:
    """The safetensors files that together hold a checkpoint folder's weights, in shard order.

    Looks for `{stem}.safetensors.index.json` first, then a single `{stem}*.safetensors`, then shards named
    `{stem}-0000k-of-0000n*.safetensors`. A shard named in the index but renamed on disk is matched by its number.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"Checkpoint folder {folder} does not exist.")
    shards = _sharded_files(folder, stem)
    index_path = folder / f"{stem}.safetensors.index.json"
    if index_path.is_file():
        files, missing = [], []
        for name in _read_index(index_path):
            path = folder / name
            parsed = _shard_number(name)
            if not path.is_file() and parsed is not None and parsed[1] in shards:
                path = shards[parsed[1]][1]
            (files if path.is_file() else missing).append(path if path.is_file() else name)
        if missing:
            raise _missing_shards_error(folder, missing, files)
        return files
    singles = sorted(p for p in folder.glob(f"{stem}*.safetensors") if _shard_number(p.name) is None)
    if singles:
        return singles[:1]
    if shards:
        total = max(total for total, _ in shards.values())
        missing = [f"{stem}-{i:05d}-of-{total:05d}.safetensors" for i in range(1, total + 1) if i not in shards]
        present = [shards[i][1] for i in sorted(shards)]
        if missing:
            raise _missing_shards_error(folder, missing, present)
        return present
    listing = ", ".join(sorted(p.name for p in folder.iterdir())[:12]) or "(empty)"
    raise MissingFileError(
        f"No weights named {stem}*.safetensors in {folder} (it holds: {listing}). Point at the folder that holds "
        "the model's .safetensors files, or at a single .safetensors file."
    )
