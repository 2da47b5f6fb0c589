"""The Wan2.2 diffusion transformer (official `wan/modules/model.py` `WanModel`, inference only).

Parameter names and shapes are exactly the official ones, so an official state dict loads with `strict=True`.
What differs from the reference is how, not what, it computes:
- a `[B]` timestep gives one time embedding and one 6-way modulation per sample, broadcast over the tokens (the
  reference builds them per token in fp32: `[B, L, 6, dim]`, about 9 GB at 720p for A14B); per-token timesteps
  (TI2V-5B) are embedded once per distinct value and gathered;
- the residual stream is float32 (as under the reference's fp32 autocast regions); norms, modulation, time embedding
  and the head are computed in float32; the matmuls and attention run in the model's dtype;
- a LayerNorm and its modulation are one `layer_norm` call with `1 + scale` / `shift` as its affine (on CUDA: one
  fused Triton kernel that also writes the compute dtype, see `kernels.py`; likewise q/k RMSNorm + RoPE);
- the 3-D RoPE is a float32 complex multiply with a table computed once per grid (never float64 on the GPU);
- the patch embedding is the equivalent matmul over patches (Conv3d with kernel == stride).

Attention: `model(x, t, context, attention=backend)` with a backend object of `wan_core.dit.attention` (the runtime
holds it; SDPA when None). The float32 regions (time embedding, modulation sums, head) run with autocast off, so a
caller's `torch.autocast` reaches only the matmuls and attention of the blocks.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..configs import WanDiTConfig
from ..errors import InputError, WanError
from . import fp8, kernels
from .attention import AttentionBackend, SdpaAttention
from .compiled import blocks_compiled
from .kernels import Residual
from .rope import apply_rope, rope_freqs

FP8 = fp8.FP8
_SDPA = SdpaAttention()

# Parameters kept (and always computed) in float32, whatever the model's dtype.
_FP32_PATTERNS = ("time_embedding.", "time_projection.", "modulation", "norm3.", "norm_q.", "norm_k.")
# Linear layers that fp8 compute may keep in fp8 (the transformer blocks' matmuls).
_FP8_LAYERS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
               "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


def keeps_fp32(name: str) -> bool:
    """Whether the parameter `name` is stored in float32 by the loader (time embedding, modulations, norms)."""
    return any(p in name for p in _FP32_PATTERNS)


def fp8_capable(name: str) -> bool:
    """Whether `name` is the weight of a block Linear that fp8 compute may keep in fp8."""
    return name.startswith("blocks.") and name.endswith(".weight") and any(
        name[: -len(".weight")].endswith(layer) for layer in _FP8_LAYERS
    )


class FP8Linear(nn.Module):
    """A Linear whose weight stays float8 e4m3 with a float32 scale (`weight_scale`) per tensor or per channel.

    With `scaled_mm`, on CUDA devices with fp8 tensor cores (compute capability 8.9+) and bf16 compute the matmul is
    `torch._scaled_mm` on the input quantized per row (`fp8.py`; the block hands over rows its norm kernel already
    quantized); otherwise (or elsewhere) the weight is dequantized for each call: fp8 storage, full-precision math.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, scaled_mm: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.scaled_mm = scaled_mm
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=FP8), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None
        self.register_buffer("weight_scale", torch.ones((), dtype=torch.float32), persistent=False)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3, scaled_mm={self.scaled_mm}"

    def takes_fp8_rows(self, device: torch.device, dtype: torch.dtype) -> bool:
        """Whether an input on `device` in `dtype` runs as a rowwise-scaled fp8 matmul."""
        return (
            self.scaled_mm
            and dtype == torch.bfloat16
            and self.in_features % 16 == 0
            and self.out_features % 16 == 0
            and fp8.rowwise_supported(device)
        )

    def forward(self, x: torch.Tensor | fp8.Fp8Rows) -> torch.Tensor:
        if self.takes_fp8_rows(x.device, x.dtype):
            return fp8.rowwise_linear(x, self.weight, self.weight_scale, self.bias)
        if isinstance(x, fp8.Fp8Rows):
            x = x.dequantize()
        weight = (self.weight.float() * self.weight_scale.float().reshape(-1, 1)).to(x.dtype)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, weight, bias)


def _linear_fp32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` in float32; call it inside `float32_region` (autocast would otherwise run it in its dtype)."""
    bias = layer.bias.float() if layer.bias is not None else None
    return F.linear(x.float(), layer.weight.float(), bias)


def linear_gelu(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """GELU-tanh of `layer(x)`. For a plain `nn.Linear` on CUDA without autograd, cuBLASLt applies the bias and the
    GELU to the float32 accumulator in the matmul's epilogue (`torch._addmm_activation`), which saves a pass over the
    hidden layer (`[L, ffn_dim]`, the block's largest tensor) and rounds to the compute dtype once, after the GELU."""
    if not (type(layer) is nn.Linear and layer.bias is not None and x.is_cuda and not torch.is_grad_enabled()
            and not layer._forward_hooks and not layer._forward_pre_hooks):
        return F.gelu(layer(x), approximate="tanh")
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype
    rows = x.reshape(-1, x.shape[-1]).to(dtype)
    with torch.autocast("cuda", enabled=False):
        out = torch._addmm_activation(layer.bias.to(dtype), rows, layer.weight.to(dtype).t(), use_gelu=True)
    return out.view(*x.shape[:-1], out.shape[-1])


def launching_on(device: torch.device) -> contextlib.AbstractContextManager:
    """`device` as the current CUDA device for the block (a no-op elsewhere). Kernels that are not PyTorch ops (our
    Triton kernels, SageAttention's) launch on the current device whatever their tensors' device, so a model on
    cuda:1 called from a thread whose current device is cuda:0 (ComfyUI's, with Set Device gpu:1) would race."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def float32_region(device: torch.device) -> torch.autocast:
    """Autocast off: what runs inside computes in float32 as the reference does, under any caller's autocast."""
    return torch.autocast(device.type, enabled=False)


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """`[N, dim]` float32 `cat(cos, sin)` of `t * 10000^(-i/half)`, computed in float64 like the reference."""
    half = dim // 2
    high = torch.float32 if t.device.type == "mps" else torch.float64
    pos = t.to(high)
    freqs = torch.pow(10000, -torch.arange(half, device=t.device, dtype=high).div(half))
    sinusoid = torch.outer(pos, freqs)
    return torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], dim=1).float()


@dataclass
class TimeCond:
    """Time conditioning: embeddings of N distinct timesteps and how tokens pick them.

    `e` `[N, dim]` and `e0` `[N, 6, dim]` (float32). With `index` None, N == B and sample b uses row b for all its
    tokens; otherwise `index` `[B, L]` names each token's row.
    """

    e: torch.Tensor
    e0: torch.Tensor
    index: torch.Tensor | None

    def pick(self, table: torch.Tensor) -> torch.Tensor:
        """`table` `[N, dim]` as a tensor broadcastable to `[B, L, dim]`."""
        return table.unsqueeze(1) if self.index is None else table[self.index]

    def block_chunks(self, modulation: torch.Tensor, which: Sequence[int]) -> list[torch.Tensor]:
        mod = modulation.float().view(-1, modulation.shape[-1])
        return [self.pick(mod[k] + self.e0[:, k]) for k in which]

    def head_chunks(self, modulation: torch.Tensor) -> list[torch.Tensor]:
        mod = modulation.float().view(-1, modulation.shape[-1])
        return [self.pick(mod[k] + self.e) for k in (0, 1)]


def pending(x: torch.Tensor, update: Residual) -> tuple[torch.Tensor, Residual | None]:
    """`(x, update)` for the next norm to make in place, or, where `x` must not change in place (autograd),
    `(x + update, None)`."""
    if torch.is_grad_enabled():
        return update.add_to(x, inplace=False), None
    return x, update


def modulated_norm(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float, dtype: torch.dtype, rows: bool = False,
    residual: Residual | None = None,
) -> torch.Tensor | fp8.Fp8Rows:
    """`layer_norm(x) * (1 + scale) + shift` in float32, returned in `dtype` (with `rows`: as fp8 rows). With
    `residual`, `x` is first updated in place by it (in the norm kernel's pass where that runs)."""
    if kernels.usable(x):
        if rows:
            return fp8.Fp8Rows(*kernels.modulated_layer_norm_fp8(x, scale, shift, eps, residual=residual), dtype)
        return kernels.modulated_layer_norm(x, scale, shift, eps, dtype, residual=residual)
    if residual is not None:
        residual.add_to(x)
    if rows:
        return fp8.quantize_rows(modulated_norm(x, shift, scale, eps, dtype))
    batch, seq, dim = x.shape
    if shift.shape[1] == 1:
        if batch == 1:
            return F.layer_norm(x, (dim,), 1 + scale[0, 0], shift[0, 0], eps).to(dtype)
        out = torch.empty(batch, seq, dim, dtype=dtype, device=x.device)
        for b in range(batch):
            out[b] = F.layer_norm(x[b], (dim,), 1 + scale[b, 0], shift[b, 0], eps)
        return out
    normed = F.layer_norm(x, (dim,), eps=eps)
    return torch.addcmul(shift, normed, 1 + scale).to(dtype)


class WanRMSNorm(nn.Module):
    """RMSNorm over the whole projection (all heads together), computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps)


class WanSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim)

    def _fused(self, x: torch.Tensor) -> bool:
        return isinstance(self.norm_q, WanRMSNorm) and kernels.usable(x)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor, attention: AttentionBackend) -> torch.Tensor:
        dtype = x.dtype
        if self._fused(x):
            k = self._heads(kernels.rms_norm_rope(self.k(x), self.norm_k.weight, self.norm_k.eps, freqs,
                                                  self.head_dim))
            v = self._heads(self.v(x))
            out = attention.normed_q_attention(self.q(x), self.norm_q.weight, self.norm_q.eps, freqs, k, v)
            return self.o(out.reshape(x.shape[0], x.shape[1], self.dim))
        q = apply_rope(self._heads(self.norm_q(self.q(x)).float()), freqs).to(dtype)
        k = apply_rope(self._heads(self.norm_k(self.k(x)).float()), freqs).to(dtype)
        v = self._heads(self.v(x))
        out = attention(q, k, v)
        return self.o(out.reshape(x.shape[0], x.shape[1], self.dim))


class WanCrossAttention(WanSelfAttention):
    def forward(  # type: ignore[override]
        self, x: torch.Tensor, context: torch.Tensor, attention: AttentionBackend
    ) -> torch.Tensor:
        dtype = x.dtype
        v = self._heads(self.v(context))
        if self._fused(x):
            k = self._heads(kernels.rms_norm_rope(self.k(context), self.norm_k.weight, self.norm_k.eps, None,
                                                  self.head_dim))
            out = attention.normed_q_attention(self.q(x), self.norm_q.weight, self.norm_q.eps, None, k, v)
        else:
            q = self._heads(self.norm_q(self.q(x)).to(dtype))
            k = self._heads(self.norm_k(self.k(context)).to(dtype))
            out = attention(q, k, v)
        return self.o(out.reshape(x.shape[0], x.shape[1], self.dim))


class WanAttentionBlock(nn.Module):
    def __init__(self, cfg: WanDiTConfig) -> None:
        super().__init__()
        dim = cfg.dim
        self.eps = cfg.eps
        self.self_attn = WanSelfAttention(dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm3 = nn.LayerNorm(dim, cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = WanCrossAttention(dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def _takes_fp8_rows(self, x: torch.Tensor, dtype: torch.dtype) -> bool:
        """Whether the block's Linears take fp8 rows (the loader makes all of them FP8Linear or none)."""
        q = self.self_attn.q
        return isinstance(q, FP8Linear) and q.takes_fp8_rows(x.device, dtype)

    def _norm3(
        self, x: torch.Tensor, dtype: torch.dtype, rows: bool, residual: Residual | None = None
    ) -> torch.Tensor | fp8.Fp8Rows:
        """The cross-attention's input norm; with `residual`, `x` is first updated in place by it."""
        if isinstance(self.norm3, nn.LayerNorm) and kernels.usable(x):
            weight, bias = self.norm3.weight, self.norm3.bias
            if rows:
                data, scale = kernels.modulated_layer_norm_fp8(x, weight, bias, self.eps, plus_one=False,
                                                               residual=residual)
                return fp8.Fp8Rows(data, scale, dtype)
            return kernels.modulated_layer_norm(x, weight, bias, self.eps, dtype, plus_one=False, residual=residual)
        if residual is not None:
            residual.add_to(x)
        if isinstance(self.norm3, nn.LayerNorm):
            normed = F.layer_norm(x, (x.shape[-1],), self.norm3.weight.float(), self.norm3.bias.float(), self.eps)
        else:
            normed = x
        return fp8.quantize_rows(normed.to(dtype)) if rows else normed.to(dtype)

    def _ffn(self, x: torch.Tensor | fp8.Fp8Rows, rows: bool) -> torch.Tensor:
        """The hidden layer's GELU takes no pass of its own: with fp8 rows it is computed in the pass that quantizes
        the hidden layer for the second Linear, else in the first Linear's epilogue (`linear_gelu`)."""
        up, _, down = self.ffn
        if not rows:
            return down(linear_gelu(up, x))
        return down(fp8.quantize_rows(up(x), gelu=True))

    def forward(
        self, x: torch.Tensor, time: TimeCond, context: torch.Tensor, freqs: torch.Tensor, attention: AttentionBackend,
        carry: list[Residual] | None = None,
    ) -> torch.Tensor:
        """`x`: float32 residual stream `[B, L, dim]`; `context`: embedded text `[B, text_len, dim]`. Without
        autograd `x` is updated in place, each residual update made by the next norm in its pass over `x`. With
        `carry` (a list the caller passes from block to block) that holds across blocks too: the first norm makes
        the update the previous block left there, and the FFN's update is left there for the next norm (the next
        block's or the head's) instead of getting a pass of its own."""
        dtype = context.dtype
        rows = self._takes_fp8_rows(x, dtype)
        shift, scale, gate = time.block_chunks(self.modulation, (0, 1, 2))
        y = self.self_attn(modulated_norm(x, shift, scale, self.eps, dtype, rows, carry.pop() if carry else None),
                           freqs, attention)
        x, residual = pending(x, Residual(y, gate))
        y = self.cross_attn(self._norm3(x, dtype, rows, residual), context, getattr(attention, "local", attention))
        x, residual = pending(x, Residual(y))
        shift, scale, gate = time.block_chunks(self.modulation, (3, 4, 5))
        y = self._ffn(modulated_norm(x, shift, scale, self.eps, dtype, rows, residual), rows)
        x, residual = pending(x, Residual(y, gate))
        if residual is not None and carry is not None:
            carry.append(residual)
            return x
        return residual.add_to(x) if residual is not None else x


class Head(nn.Module):
    def __init__(self, cfg: WanDiTConfig) -> None:
        super().__init__()
        self.eps = cfg.eps
        self.head = nn.Linear(cfg.dim, cfg.patch_volume * cfg.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, time: TimeCond, residual: Residual | None = None) -> torch.Tensor:
        """With `residual`, `x` is first updated in place by it (the last block's pending update)."""
        with float32_region(x.device):
            shift, scale = time.head_chunks(self.modulation)
            return _linear_fp32(self.head, modulated_norm(x, shift, scale, self.eps, torch.float32,
                                                          residual=residual))


class WanDiT(nn.Module):
    """The Wan2.2 DiT. `forward(x, t, context, y=None, attention=None)`; see the module docstring."""

    def __init__(self, config: WanDiTConfig) -> None:
        super().__init__()
        self.config = config
        cfg = config
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.dim, cfg.dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList([WanAttentionBlock(cfg) for _ in range(cfg.num_layers)])
        self.head = Head(cfg)
        self._rope_cache: dict[tuple, torch.Tensor] = {}

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (matmuls, attention): the dtype of the patch embedding."""
        return self.patch_embedding.bias.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.bias.device

    # --- pieces -----------------------------------------------------------------------------------------------
    def _rope(self, grid: tuple[int, int, int], device: torch.device) -> torch.Tensor:
        key = (grid, str(device))
        freqs = self._rope_cache.get(key)
        if freqs is None:
            if len(self._rope_cache) >= 4:
                self._rope_cache.clear()
            freqs = rope_freqs(self.config.head_dim, grid, device)
            self._rope_cache[key] = freqs
        return freqs

    def rope_table(self, latent_shape: Sequence[int]) -> torch.Tensor:
        """The RoPE table that forwards on latents of `latent_shape` `[B, C, F, H, W]` read (cached per grid)."""
        return self._rope(self._grid(latent_shape), self.device)

    def _grid(self, latent_shape: Sequence[int]) -> tuple[int, int, int]:
        """The token grid (frames, height, width in patches) of latents `[B, C, F, H, W]`."""
        *_, frames, height, width = latent_shape
        pt, ph, pw = self.config.patch_size
        if frames % pt or height % ph or width % pw:
            raise InputError(
                f"Latent size {frames}x{height}x{width} is not a multiple of the patch size {self.config.patch_size}."
            )
        return frames // pt, height // ph, width // pw

    def _time(self, t: torch.Tensor | float, batch: int, seq: int, device: torch.device) -> TimeCond:
        t = torch.as_tensor(t, device=device)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.dim() == 1 and t.shape[0] == 1 and batch > 1:
            t = t.expand(batch)
        index = None
        if t.dim() == 2:
            if t.shape[0] != batch or t.shape[1] < seq:
                raise InputError(f"Per-token timesteps must be [B, L] = [{batch}, {seq}] (or longer), not "
                                 f"{list(t.shape)}.")
            t = t[:, :seq]
            if bool((t == t[:, :1]).all()):
                t = t[:, 0]
            else:
                t, index = torch.unique(t, return_inverse=True)
        elif t.dim() != 1 or t.shape[0] != batch:
            raise InputError(f"Timesteps must be [B] = [{batch}] or per token [B, L], not {list(t.shape)}.")
        with float32_region(device):
            e = _linear_fp32(self.time_embedding[0], sinusoidal_embedding(self.config.freq_dim, t))
            e = _linear_fp32(self.time_embedding[2], F.silu(e))
            e0 = _linear_fp32(self.time_projection[1], F.silu(e)).unflatten(1, (6, self.config.dim))
        return TimeCond(e, e0, index)

    def padded_context(self, context: torch.Tensor | Sequence[torch.Tensor], batch: int) -> torch.Tensor:
        """The text contexts (a list of `[L_i, text_dim]`, or `[B, L, text_dim]`) as one zero-padded
        `[batch, text_len, text_dim]` tensor in the compute dtype on the model's device, as the reference pads them."""
        cfg = self.config
        if isinstance(context, torch.Tensor):
            items = [context] if context.dim() == 2 else list(context.unbind(0))
        else:
            items = list(context)
        if len(items) == 1 and batch > 1:
            items = items * batch
        if len(items) != batch:
            raise InputError(f"{len(items)} text contexts for a batch of {batch} latents.")
        padded = torch.zeros(batch, cfg.text_len, cfg.text_dim, dtype=self.dtype, device=self.device)
        for i, u in enumerate(items):
            if u.dim() != 2 or u.shape[1] != cfg.text_dim:
                raise InputError(
                    f"Text context {i} has shape {list(u.shape)}; the model takes [L, {cfg.text_dim}] embeddings."
                )
            if u.shape[0] > cfg.text_len:
                raise InputError(f"Text context {i} has {u.shape[0]} tokens; the model takes at most {cfg.text_len}.")
            padded[i, : u.shape[0]] = u
        return padded

    def _patchify(self, x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, tuple[int, int, int]]:
        cfg = self.config
        batch, channels = x.shape[:2]
        pt, ph, pw = cfg.patch_size
        f, h, w = self._grid(x.shape)
        patches = (
            x.to(dtype)
            .view(batch, channels, f, pt, h, ph, w, pw)
            .permute(0, 2, 4, 6, 1, 3, 5, 7)
            .reshape(batch, f * h * w, channels * pt * ph * pw)
        )
        weight = self.patch_embedding.weight.to(dtype).reshape(cfg.dim, -1)
        return F.linear(patches, weight, self.patch_embedding.bias.to(dtype)), (f, h, w)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """`[B, L, prod(patch) * out_dim]` -> `[B, out_dim, F, H, W]`."""
        cfg = self.config
        batch = x.shape[0]
        f, h, w = grid
        pt, ph, pw = cfg.patch_size
        x = x.view(batch, f, h, w, pt, ph, pw, cfg.out_dim)
        x = torch.einsum("bfhwpqrc->bcfphqwr", x)
        return x.reshape(batch, cfg.out_dim, f * pt, h * ph, w * pw)

    # --- forward ----------------------------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        context: torch.Tensor | Sequence[torch.Tensor],
        y: torch.Tensor | None = None,
        attention: AttentionBackend | None = None,
    ) -> torch.Tensor:
        """Predict the flow for latents `x` `[B, C, F, H, W]` at timesteps `t` (`[B]` in [0, 1000], or `[B, L]`
        per token) given text embeddings `context` (a list of `[L_i, text_dim]` or a `[B, L, text_dim]` tensor).

        `y` (i2v): the conditioning channels (4 mask + 16 image latent), concatenated to `x` on the channel axis.
        `attention`: the backend object (default SDPA). Returns float32 `[B, out_dim, F, H, W]`.
        """
        cfg = self.config
        if x.dim() != 5:
            raise InputError(f"Latents must be [B, C, F, H, W], not {list(x.shape)}.")
        if y is not None:
            if y.dim() == 4:
                y = y.unsqueeze(0)
            x = torch.cat([x, y.to(x.dtype).expand(x.shape[0], *y.shape[1:])], dim=1)
        if x.shape[1] != cfg.in_dim:
            hint = " (i2v models take the conditioning channels as y)" if cfg.model_type == "i2v" else ""
            raise InputError(f"The model takes {cfg.in_dim} input channels, got {x.shape[1]}{hint}.")
        if any(p.device.type == "meta" for p in (self.patch_embedding.weight, self.head.head.weight)):
            raise WanError("The model has no weights yet (meta device): load it with wan_core.load_dit.")
        dtype, device = self.dtype, self.device
        x = x.to(device)
        batch = x.shape[0]

        with launching_on(device):  # Triton and custom kernels launch on the current device, not the tensors'
            hidden, grid = self._patchify(x, dtype)
            hidden = hidden.float()
            seq = hidden.shape[1]
            time = self._time(t, batch, seq, device)
            ctx = self.text_embedding(self.padded_context(context, batch))
            freqs = self._rope(grid, device)
            attention = attention or _SDPA
            sequence = getattr(attention, "sequence", None)  # sequence parallel (wan_core.parallel): this rank's tokens
            if sequence is not None:
                hidden, time, freqs = sequence.split(hidden, time, freqs)
            # The update a block leaves for the next norm (WanAttentionBlock.forward); compiled blocks make their own
            # (their kernels are opaque to the compiler) and would otherwise compile a second graph for the first block.
            carry: list[Residual] | None = None if blocks_compiled(self) else []
            for block in self.blocks:
                hidden = block(hidden, time, ctx, freqs, attention, carry)
            out = self.head(hidden, time, carry.pop() if carry else None)
            if sequence is not None:
                out = sequence.gather(out)
            return self.unpatchify(out, grid)


def init_random_(model: WanDiT, generator: torch.Generator | None = None, std: float = 1.0) -> WanDiT:
    """Fill every parameter with random values of a sensible scale (tests and benchmarks)."""
    device = generator.device if generator is not None else None  # a CUDA generator fills CUDA weights
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dtype not in (torch.float32, torch.float16, torch.bfloat16):
                continue
            if p.dim() >= 2 and "modulation" not in name:
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=generator, device=device) * (std / fan_in**0.5))
            elif name.endswith("norm_q.weight") or name.endswith("norm_k.weight") or name.endswith("norm3.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator, device=device))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator, device=device))
    return model
