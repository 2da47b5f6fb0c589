"""DiT forwards replayed from CUDA graphs: one launch per forward instead of some 600 kernel launches.

At small shapes (a few thousand tokens: short or small videos, batch jobs) the Python that issues a forward's kernels
takes a third to a half of the forward's GPU time. Two GPUs driven from one process (the batch queue's replica per
GPU) then share one interpreter lock for it. A captured graph replays the whole forward from one call.

`graphed(model)` wraps a `WanDiT`: the first forward of a new signature (shapes, dtypes, attention backend, autocast)
runs eagerly on static input buffers and is then captured; later forwards of that signature copy their inputs into
those buffers and replay. The outputs are the eager forward's, bit for bit (the same kernels on the same buffers).
Forwards the graphs cannot serve run eagerly: per-token timesteps (their distinct values decide shapes), block swap
(it copies weights in and out), sequence parallelism (collectives), compiled blocks, grad mode, CPU models,
attention backends whose kernels launch outside the current stream (SageAttention 2: `graph_safe`), and processes
whose CUDA memory comes from the `cudaMallocAsync` allocator backend rather than torch's own caching allocator: that
backend allows one capture at a time per process, without pools, and freeing a captured graph's memory there ended
ComfyUI (which picks it by default; its `--disable-cuda-malloc` keeps torch's allocator).

The graphs stay with the model (`wan_core.placement_state`) until its weights move (a parameter's address changes, or
`move_weights` moves them, off the GPU too), or more signatures than `MAX_GRAPHS` are captured.
A graph reads addresses, so whatever it reads must live as long as it does: its static inputs, its output, the
weights (checked by address), the model's RoPE table for its grid (held, since the model's cache drops tables), and
the autocast casts of float32 weights, which are captured as kernels (autocast's own cache of them is freed at the
end of each autocast region). Their activation memory stays reserved meanwhile; a model's graphs share one memory
pool (a forward's worth, not one per signature), which is safe because each replay's output is copied out before the
next replay. Each model has its own pool: a pool lives only while a graph holds it, and the expert that is not
sampling can leave the GPU alone.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..placement_state import drop_state, peek_state, state_of, weight_places
from .attention import AttentionBackend
from .compiled import blocks_compiled
from .model import WanDiT

log = logging.getLogger(__name__)

Context = torch.Tensor | Sequence[torch.Tensor]  # the model's text contexts: `[B, L, dim]` or a list of `[L_i, dim]`

MAX_GRAPHS = 4  # signatures kept per model
STATE_KEY = "cuda_graphs"
_WARNED: set[str] = set()  # reasons already logged for forwards running eagerly (`_explain_once`)
_CAPTURE_STREAMS = threading.local()  # `_capture_stream`


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    x: torch.Tensor
    t: torch.Tensor
    context: torch.Tensor
    y: torch.Tensor | None
    out: torch.Tensor
    rope: torch.Tensor  # read by the graph, made outside it: held so that the model's RoPE cache cannot free it


class _Graphs:
    """The captured forwards of one model, by signature, valid for one set of weight addresses."""

    def __init__(self) -> None:
        self.weights: tuple = ()
        self.captured: OrderedDict[tuple, _Captured] = OrderedDict()
        self.refused: set[tuple] = set()  # signatures whose capture failed: they run eagerly
        self.lock = threading.Lock()


def graphable(model: object, x: torch.Tensor, t: torch.Tensor | float, attention: AttentionBackend | None) -> bool:
    """Whether a forward of `model` on `x` at `t` can replay from a graph (see the module docstring)."""
    return (
        isinstance(model, WanDiT)
        and model.device.type == "cuda"
        and x.device == model.device
        and isinstance(t, torch.Tensor) and t.dim() <= 1 and t.device == model.device
        and not torch.is_grad_enabled()
        and getattr(model, "block_swap", None) is None
        and not blocks_compiled(model)
        and getattr(attention, "sequence", None) is None
        and getattr(attention, "graph_safe", True)
        and torch.cuda.get_allocator_backend() == "native"
    )


def _signature(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, y: torch.Tensor | None,
               attention: AttentionBackend | None) -> tuple:
    def spec(tensor: torch.Tensor | None) -> tuple | None:
        return None if tensor is None else (tuple(tensor.shape), tensor.dtype)

    autocast = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
    return spec(x), spec(t), spec(context), spec(y), type(attention), getattr(attention, "name", None), autocast


def _uncached_autocast() -> contextlib.AbstractContextManager:
    """CUDA autocast as it is, but without its cache of weight casts. A capture that read a cached cast would replay
    reading it after the autocast region that made it has ended and freed it (float32 weights under a bf16 autocast);
    uncached, the casts are kernels of the graph, into its own memory."""
    if not torch.is_autocast_enabled("cuda"):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)


def _capture_stream(device: torch.device) -> torch.cuda.Stream:
    """This thread's side stream for captures on `device`, made once. cuBLAS keeps a workspace per stream for the
    life of the process, made at the stream's first matmul: with a new stream for each capture, each capture left one
    behind in its graph's memory pool (33 MiB a capture on an H100). Per thread, since two captures cannot share a
    stream."""
    streams = _CAPTURE_STREAMS.__dict__.setdefault("by_device", {})
    if device not in streams:
        streams[device] = torch.cuda.Stream(device)
    return streams[device]


def _capture(model: WanDiT, static: list, attention: AttentionBackend | None, pool: tuple | None) -> _Captured:
    """Capture the forward on the static inputs `static` (x, t, context, y), which an eager forward has just run on
    (so every kernel is compiled and tuned for exactly these buffers), into `pool` (None: a new one)."""
    device = model.device
    graph = torch.cuda.CUDAGraph()
    stream = _capture_stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream), _uncached_autocast():
        # thread_local: the other threads of the process (another GPU's stages, this GPU's decode) keep working.
        graph.capture_begin(pool=pool, capture_error_mode="thread_local")
        try:
            out = model(*static[:3], y=static[3], attention=attention)
        finally:
            graph.capture_end()
    torch.cuda.current_stream(device).wait_stream(stream)
    return _Captured(graph, *static, out, rope=model.rope_table(static[0].shape))


def _explain_once(model: WanDiT, attention: AttentionBackend | None) -> None:
    """Log, once per process and reason, why forwards that asked for graphs run eagerly."""
    if model.device.type != "cuda":
        return
    reasons = {}
    if not getattr(attention, "graph_safe", True):
        reasons[attention.name] = (f"forwards with the {attention.name} attention run eagerly (its kernels launch "
                                   "outside the captured stream); int8_triton, flash_attn and sdpa can be captured")
    backend = torch.cuda.get_allocator_backend()
    if backend != "native":
        reasons[backend] = (f"off with the {backend} allocator backend (ComfyUI's default; start ComfyUI with "
                            "--disable-cuda-malloc to have them)")
    for reason, text in reasons.items():
        if reason not in _WARNED:
            _WARNED.add(reason)
            log.info("CUDA graphs: %s", text)


def graphed_forward(model: WanDiT, x: torch.Tensor, t: torch.Tensor | float, context: Context,
                    y: torch.Tensor | None = None, attention: AttentionBackend | None = None) -> torch.Tensor:
    """`model(x, t, context, y=y, attention=attention)`, replayed from a graph where it can be (module docstring)."""
    _explain_once(model, attention)
    if not graphable(model, x, t, attention):
        return model(x, t, context, y=y, attention=attention)
    padded = model.padded_context(context, x.shape[0])  # prompts of any length then share a graph
    graphs = state_of(model, STATE_KEY, _Graphs)
    key = _signature(x, t, padded, y, attention)
    weights = weight_places(model)
    with graphs.lock, torch.cuda.device(model.device):
        if graphs.weights != weights:
            graphs.captured.clear()
            graphs.weights = weights
        if key in graphs.refused:
            return model(x, t, context, y=y, attention=attention)
        captured = graphs.captured.get(key)
        if captured is None:
            while len(graphs.captured) >= MAX_GRAPHS:
                graphs.captured.popitem(last=False)
            static = [x.clone(), t.clone(), padded, None if y is None else y.clone()]
            with _uncached_autocast():  # the kernels the capture will run
                out = model(*static[:3], y=static[3], attention=attention)
            try:
                pool = next(iter(graphs.captured.values())).graph.pool() if graphs.captured else None
                graphs.captured[key] = _capture(model, static, attention, pool)
                log.info("CUDA graphs: captured the forward of latents %s on %s", list(x.shape), model.device)
            except RuntimeError as err:  # an op of this forward that a graph cannot hold (e.g. a host sync)
                graphs.refused.add(key)
                log.warning("CUDA graphs: this forward runs eagerly (its capture failed: %s)", err)
            return out
        graphs.captured.move_to_end(key)
        for static, value in ((captured.x, x), (captured.t, t), (captured.context, padded), (captured.y, y)):
            if static is not None:
                static.copy_(value)
        captured.graph.replay()
        return captured.out.clone()


def graphed(model: Callable) -> Callable:
    """`model` as a callable that replays CUDA graphs where it can (`graphed_forward`); other callables unchanged."""
    if not isinstance(model, WanDiT):
        return model

    def forward(x, t, context, y=None, attention=None):  # noqa: ANN001, ANN202 - the model's own signature
        return graphed_forward(model, x, t, context, y=y, attention=attention)

    return forward


def captured_signatures(model: object) -> int:
    """How many forward signatures of `model` replay from graphs now."""
    graphs = peek_state(model, STATE_KEY)
    return len(graphs.captured) if isinstance(graphs, _Graphs) else 0


def release_cuda_graphs(model: object) -> None:
    """Drop `model`'s captured graphs (and whatever else is kept for where its weights are)."""
    drop_state(model)
