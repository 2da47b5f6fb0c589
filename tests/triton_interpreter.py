"""Running a test script under Triton's CPU interpreter (`TRITON_INTERPRET=1` must be set before triton is imported,
so the script runs in a child process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def assert_runs_in_interpreter(script: str) -> None:
    """Run `script` with the repository importable; it must exit 0 and print `ok`."""
    root = Path(__file__).resolve().parents[1]
    path = os.pathsep.join(filter(None, (str(root), os.environ.get("PYTHONPATH"))))  # keep wheels carried there
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
