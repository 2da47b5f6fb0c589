"""A test-only executor of ComfyUI API-format graphs: runs each node class in dependency order, as ComfyUI would.

It checks what ComfyUI checks before running (combo values in their lists unless VALIDATE_INPUTS takes the input,
VALIDATE_INPUTS itself) and fills the hidden inputs (`UNIQUE_ID`, `PROMPT`, `EXTRA_PNGINFO`).
"""

from __future__ import annotations

import inspect
from typing import Any


class GraphError(AssertionError):
    pass


def _declared(cls: type) -> dict[str, dict]:
    declared = cls.INPUT_TYPES()
    return {section: declared.get(section, {}) for section in ("required", "optional", "hidden")}


def _check_combos(node_id: str, cls: type, inputs: dict[str, Any]) -> None:
    validated = set()
    if hasattr(cls, "VALIDATE_INPUTS"):
        validated = set(inspect.signature(cls.VALIDATE_INPUTS).parameters)
        verdict = cls.VALIDATE_INPUTS(**{name: inputs[name] for name in validated if name in inputs})
        if verdict is not True:
            raise GraphError(f"node {node_id} ({cls.__name__}): VALIDATE_INPUTS refused: {verdict}")
    declared = _declared(cls)
    for name, spec in (declared["required"] | declared["optional"]).items():
        if isinstance(spec[0], list) and name in inputs and name not in validated and inputs[name] not in spec[0]:
            raise GraphError(f"node {node_id} ({cls.__name__}): {name}={inputs[name]!r} is not in {spec[0]}")


def run_graph(
    graph: dict[str, dict],
    classes: dict[str, type],
    *,
    workflow: dict | None = None,
) -> tuple[dict[str, tuple], dict[str, dict]]:
    """Run every node of `graph`; returns ({node id: outputs}, {node id: ui dict of output nodes})."""
    outputs: dict[str, tuple] = {}
    ui: dict[str, dict] = {}

    def run(node_id: str, trail: tuple[str, ...] = ()) -> tuple:
        if node_id in outputs:
            return outputs[node_id]
        if node_id in trail:
            raise GraphError(f"cycle through node {node_id}")
        node = graph[node_id]
        cls = classes.get(node["class_type"])
        if cls is None:
            raise GraphError(f"node {node_id}: unknown class_type {node['class_type']!r}")
        values = {}
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                source, slot = str(value[0]), value[1]
                values[name] = run(source, (*trail, node_id))[slot]
            else:
                values[name] = value
        declared = _declared(cls)
        missing = set(declared["required"]) - set(values)
        if missing:
            raise GraphError(f"node {node_id} ({node['class_type']}): required inputs missing: {sorted(missing)}")
        _check_combos(node_id, cls, values)
        hidden = {"UNIQUE_ID": node_id, "PROMPT": graph, "EXTRA_PNGINFO": {"workflow": workflow} if workflow else None}
        for name, kind in declared["hidden"].items():
            values[name] = hidden[kind]
        result = getattr(cls(), cls.FUNCTION)(**values)
        if isinstance(result, dict):
            ui[node_id] = result.get("ui", {})
            result = result.get("result", ())
        outputs[node_id] = tuple(result)
        return outputs[node_id]

    for node_id in graph:
        run(node_id)
    return outputs, ui
