"""comfyui-wan22: Wan2.2 video nodes for ComfyUI (classic node API).

ComfyUI imports this folder as a package. The model core, `wan_core`, is a plain top-level package so that it also
serves the CLI and scripts; this folder goes on sys.path (at the end, never shadowing the host's modules) so the nodes
can import it.
"""

import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
if _PACK_DIR not in sys.path:
    sys.path.append(_PACK_DIR)

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

WEB_DIRECTORY = "./js"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
