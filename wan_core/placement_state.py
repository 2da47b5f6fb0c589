"""State kept on a model that holds only while its weights stay where they are (a CUDA graph holds their addresses).
`state_of` keeps it on the model; `drop_state` removes it, and every move of the weights calls it
(`wan_core.mapped_weights.move_weights`, which the runtime, the node handles and ComfyUI's memory manager all use)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")
_ATTRIBUTE = "_wan_placement_state"


def state_of(model: object, key: str, create: Callable[[], T]) -> T:
    """`model`'s state under `key`, made by `create` the first time."""
    states = model.__dict__.setdefault(_ATTRIBUTE, {})
    if key not in states:
        states[key] = create()
    return states[key]


def peek_state(model: object, key: str) -> object | None:
    """`model`'s state under `key`, or None."""
    return getattr(model, "__dict__", {}).get(_ATTRIBUTE, {}).get(key)


def drop_state(model: object) -> None:
    """Forget everything kept on `model` for where its weights are."""
    getattr(model, "__dict__", {}).pop(_ATTRIBUTE, None)


def weight_places(model: torch.nn.Module) -> tuple[tuple[torch.device, int], ...]:
    """Where each parameter and buffer of `model` is: (device, address), in module order."""
    return tuple((t.device, t.data_ptr()) for t in itertools.chain(model.parameters(), model.buffers()))
