"""Opt-in checks against a real ComfyUI checkout (`WAN22_COMFYUI_DIR`, run with its own Python,
`WAN22_COMFYUI_PYTHON`): each probe script runs there and prints one JSON line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

COMFYUI_DIR = os.environ.get("WAN22_COMFYUI_DIR", "")
needs_comfyui = pytest.mark.skipif(
    not COMFYUI_DIR, reason="set WAN22_COMFYUI_DIR (and WAN22_COMFYUI_PYTHON) to a ComfyUI checkout"
)


def run_probe(script: str) -> subprocess.CompletedProcess:
    """`tests/<script>` run with the checkout's Python, given the checkout and this pack."""
    python = os.environ.get("WAN22_COMFYUI_PYTHON", sys.executable)
    here = Path(__file__).parent
    return subprocess.run([python, str(here / script), COMFYUI_DIR, str(here.parent)], capture_output=True, text=True,
                          timeout=600)
