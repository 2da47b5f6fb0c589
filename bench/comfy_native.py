"""ComfyUI native's `comfy.ldm.wan.model.WanModel`, built in this process over our weight tensors, for side-by-side
timing in bench/dit_step.py.

ComfyUI is not a dependency: its `comfy/` package is exported from a Comfy-Org/ComfyUI snapshot into `.comfyui/`
(ignored by git, never committed; see `export_comfyui.sh`) and carried to the GPU machine. Where it is absent the
comparison is skipped with a note. Its parameter names are the official ones, so our state dict loads as is.

Settings, as a ComfyUI user has them: bf16 weights (`disable_weight_init` ops); fp8 weights + fp8 matmul (`--fast`
/ `fp8_e4m3fn` weight dtype: `fp8_ops`, block Linear weights cast to e4m3 without scale, activations clamped and
cast, `torch._scaled_mm` per tensor); in ComfyUI >= 0.1x also the template's `*_fp8_scaled.safetensors` files as
that ComfyUI runs them (`build_comfy_scaled`); attention `attention_pytorch` (SDPA) or `attention_sage`
(SageAttention).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1] / ".comfyui"


def load_comfy(device: torch.device) -> tuple[object, str] | tuple[None, str]:
    """`(comfy module namespace, version)` or `(None, why not)`."""
    if not (ROOT / "comfy" / "ldm" / "wan" / "model.py").exists():
        return None, f"ComfyUI's comfy/ package is not in {ROOT} (run bench/export_comfyui.sh GIT_DIR and carry it)"
    sys.path.insert(0, str(ROOT))
    argv = sys.argv
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        sys.argv = [argv[0]] + (["--cpu"] if device.type == "cpu" else [])
        import comfy.ldm.modules.attention as attention
        import comfy.ldm.wan.model as wan
        import comfy.ops as ops
    except Exception as err:  # a ComfyUI import problem must not cost our measurement
        return None, f"ComfyUI's comfy/ package does not import: {type(err).__name__}: {err}"
    finally:
        sys.argv = argv
    try:
        from comfyui_version import __version__ as version
    except ImportError:
        version = "unknown"
    return {"wan": wan, "ops": ops, "attention": attention}, version


def _meta_wan_model(comfy: dict, cfg: object, dtype: torch.dtype, operations: object) -> torch.nn.Module:
    """ComfyUI's WanModel of our config on the meta device, for a state dict to be assigned."""
    with torch.device("meta"):
        return comfy["wan"].WanModel(
            model_type="t2v", patch_size=cfg.patch_size, text_len=cfg.text_len, in_dim=cfg.in_dim, dim=cfg.dim,
            ffn_dim=cfg.ffn_dim, freq_dim=cfg.freq_dim, text_dim=cfg.text_dim, out_dim=cfg.out_dim,
            num_heads=cfg.num_heads, num_layers=cfg.num_layers, qk_norm=cfg.qk_norm,
            cross_attn_norm=cfg.cross_attn_norm, eps=cfg.eps, dtype=dtype, operations=operations,
        )  # fmt: skip


def _assigned(model: torch.nn.Module, state: dict[str, torch.Tensor], device: torch.device) -> torch.nn.Module:
    """`model` holding `state` (assigned, not copied), on `device`, frozen; every tensor must come from `state`."""
    model.load_state_dict(state, strict=False, assign=True)
    model.requires_grad_(False)
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.device.type == "meta":  # ComfyUI-only buffers (e.g. fp8 scales None -> none), rope tables
            raise RuntimeError(f"ComfyUI WanModel parameter {name} has no weight in our state dict")
    return model.to(device).eval()


def build_comfy(comfy: dict, ours: torch.nn.Module, dtype: torch.dtype, fp8: bool) -> torch.nn.Module:
    """ComfyUI's WanModel over our weights (each in the dtype its model declares, as ComfyUI loads them); with `fp8`
    the block Linear weights are cast to e4m3 (new tensors) and the layers run ComfyUI's fp8 ops."""
    from wan_core.dit.model import FP8, fp8_capable

    cfg = ours.config
    operations = comfy["ops"].fp8_ops if fp8 else comfy["ops"].disable_weight_init
    model = _meta_wan_model(comfy, cfg, dtype, operations)
    declared = {name: t.dtype for name, t in model.state_dict().items()}  # its patch embedding is float32
    state = {}
    for name, tensor in ours.state_dict().items():
        want = FP8 if fp8 and fp8_capable(name) else declared.get(name, dtype)
        state[name] = tensor if tensor.dtype == want else tensor.to(want)
    return _assigned(model, state, ours.device)


def build_comfy_scaled(comfy: dict, ours: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module | None:
    """ComfyUI's WanModel as ComfyUI >= 0.1x runs a `*_fp8_scaled.safetensors` file (the files its Wan2.2 templates
    name; `convert_old_quants`): every block Linear an e4m3 weight with a per-tensor scale under
    `mixed_precision_ops` (comfy-kitchen's fp8 tensor layout: the input quantized per tensor, `torch._scaled_mm`),
    fp8 compute where the GPU has it, as `pick_operations` decides. None where ComfyUI has no such ops (0.3.x)."""
    import json

    from wan_core.dit.model import fp8_capable
    from wan_core.io.quant import quantize_per_tensor

    mixed = getattr(comfy["ops"], "mixed_precision_ops", None)
    if mixed is None:
        return None
    cfg, device = ours.config, ours.device
    fp8_compute = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)
    operations = mixed({}, dtype, disabled=set() if fp8_compute else {"float8_e4m3fn"})
    model = _meta_wan_model(comfy, cfg, dtype, operations)
    declared = {name: t.dtype for name, t in model.state_dict().items() if t is not None}
    layer_conf = torch.frombuffer(bytearray(json.dumps({"format": "float8_e4m3fn"}).encode()), dtype=torch.uint8)
    state = {}
    for name, tensor in ours.state_dict().items():
        if fp8_capable(name):
            layer = name[: -len(".weight")]
            state[name], state[layer + ".weight_scale"] = quantize_per_tensor(tensor)
            state[layer + ".comfy_quant"] = layer_conf
        else:
            want = declared.get(name, dtype)
            state[name] = tensor if tensor.dtype == want else tensor.to(want)
    return _assigned(model, state, device)


NATIVE_BACKENDS = ("sdpa", "sage")  # the attention choices ComfyUI native has for Wan


def set_attention(comfy: dict, backend: str) -> None:
    """Point ComfyUI's Wan model at SDPA (`sdpa`) or SageAttention (`sage`), as `--use-sage-attention` does."""
    attention = comfy["attention"]
    comfy["wan"].optimized_attention = attention.attention_sage if backend == "sage" else attention.attention_pytorch


def comfy_forward(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                  dtype: torch.dtype) -> torch.Tensor:
    """One forward as ComfyUI's model_base calls it: latents and text in the model dtype, `[B]` timesteps."""
    return model(x.to(dtype), t, context.to(dtype))
