"""Errors that name what was wrong and how to fix it."""

from __future__ import annotations


class WanError(Exception):
    """Base class of every error wan_core raises on purpose."""


class CheckpointError(WanError):
    """A weight file or folder cannot be used as it is."""


class MissingFileError(CheckpointError, FileNotFoundError):
    """A file the checkpoint needs is not on disk (a shard, a config, a tokenizer)."""


class CorruptFileError(CheckpointError):
    """A file exists but cannot be read (truncated download, wrong format)."""


class KeyMismatchError(CheckpointError):
    """The weights do not carry the parameter names the model expects."""


class ConfigMismatchError(CheckpointError):
    """A config value disagrees with the shapes of the weights."""


class InputError(WanError, ValueError):
    """A user-supplied value (size, frame count, solver, ...) is not valid."""


def describe_keys(keys: list[str] | set[str], limit: int = 8) -> str:
    """`'a', 'b', ... (N in all)`: the first few names of a long list and the count."""
    ordered = sorted(keys)
    shown = ", ".join(repr(k) for k in ordered[:limit])
    more = f", ... ({len(ordered)} in all)" if len(ordered) > limit else ""
    return shown + more


def describe_key_mismatch(missing: list[str] | set[str], unexpected: list[str] | set[str]) -> str:
    """`missing N: ...; unexpected M: ...` for the key sets of a failed strict load (empty when both are)."""
    parts = []
    if missing:
        parts.append(f"missing {len(missing)}: {describe_keys(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)}: {describe_keys(unexpected)}")
    return "; ".join(parts)
