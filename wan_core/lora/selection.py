"""Which LoRAs go on which expert: `PATH[:STRENGTH]` specs (the CLI's `--lora`, `--lora_high`, `--lora_low`) turned
into one tuple of patches per expert, every file read and checked before any model loads."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import InputError
from ..pipeline.tasks import TaskConfig
from .files import read_lora
from .patch import LoraPatch


def parse_lora_spec(text: str) -> LoraPatch:
    """`PATH` or `PATH:STRENGTH` (strength 1.0 by default; a path may itself hold colons, e.g. `C:\\loras\\x`)."""
    path, sep, strength = text.rpartition(":")
    if sep and path:
        try:
            return LoraPatch(path, float(strength))
        except ValueError:
            pass
    if not text:
        raise InputError("A LoRA spec is empty; give PATH or PATH:STRENGTH, e.g. lightning_high.safetensors:1.0")
    return LoraPatch(text, 1.0)


def patches_per_expert(
    task: TaskConfig, both: Sequence[LoraPatch], high: Sequence[LoraPatch], low: Sequence[LoraPatch]
) -> tuple[tuple[LoraPatch, ...], ...]:
    """One tuple of patches per model of `task`, high-noise expert first (`both` first on each); reads every file
    once (cached for the merge) so a missing or foreign file fails now."""
    if not task.is_moe and (high or low):
        raise InputError(f"{task.name} has one model: give its LoRAs with --lora (--lora_high / --lora_low are for "
                         "the two-expert A14B tasks).")
    for patch in (*both, *high, *low):
        read_lora(patch.path)
    if not task.is_moe:
        return (tuple(both),)
    return tuple(both) + tuple(high), tuple(both) + tuple(low)
