"""ComfyUI nodes of comfyui-wan22 (classic API). Node ids carry the `Wan22` prefix and never change."""

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
