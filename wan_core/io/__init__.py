"""Reading weight files: safetensors (single and sharded), official .pth, ComfyUI fp8."""
