"""Regional torch.compile of the DiT blocks: compiled and eager agree, the blocks share one graph (no recompile per
block or per call), no graph break inside a block (`fullgraph=True` would raise). CPU inductor needs a C++ compiler."""

from __future__ import annotations

import shutil

import pytest

from tests.test_fp8 import _rel, fp8_tiny_dit
from wan_core.dit.attention import SdpaAttention
from wan_core.dit.compiled import compilable, compile_blocks

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None,
                                reason="torch.compile on the CPU needs a C++ compiler")


def test_compiled_fp8_blocks_match_eager_and_compile_once(monkeypatch):
    import torch._dynamo

    torch._dynamo.reset()
    model, reference = fp8_tiny_dit(monkeypatch)  # the fp8 rows path: the most the block can trace
    gen = torch.Generator().manual_seed(5)
    x, t = torch.randn(1, 16, 2, 4, 4, generator=gen), torch.tensor([400.0])
    context = [torch.randn(9, 64, generator=gen).bfloat16()]
    attention = compilable(SdpaAttention())
    with torch.no_grad():
        eager = model(x, t, context, attention=attention)
        compile_blocks(model)
        compile_blocks(model)  # idempotent
        compiled = model(x, t, context, attention=attention)
        with torch._dynamo.config.patch(error_on_recompile=True):
            again = model(x * 0.5, torch.tensor([300.0]), context, attention=attention)
        want = reference(x, t, [context[0].float()])
    # Inductor keeps float32 where eager rounds to bf16, so a few fp8 roundings flip: 1.1% apart, each within the
    # fp8 bound of the float32 model.
    assert _rel(compiled, eager) < 0.02
    assert _rel(compiled, want) < 0.04 and _rel(eager, want) < 0.04
    assert torch.isfinite(again).all()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
