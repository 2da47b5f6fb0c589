"""The benchmarks' output: one JSON object on stdout, and the same in a file when one is named."""

from __future__ import annotations

import json
from pathlib import Path


def emit(report: dict, json_path: str | None = None) -> None:
    text = json.dumps(report, indent=2)
    print(text)
    if json_path:
        Path(json_path).write_text(text + "\n")
