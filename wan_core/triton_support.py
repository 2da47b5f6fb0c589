"""Triton where it is installed (CPU-only installs lack it), and the switches every kernel module honours:
`WAN_CORE_TRITON=0` turns our Triton kernels off; `TRITON_INTERPRET=1` runs them on CPU tensors (tests)."""

from __future__ import annotations

import os

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the install
    triton = None
    tl = None

ENABLED = os.environ.get("WAN_CORE_TRITON", "1") != "0"
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
