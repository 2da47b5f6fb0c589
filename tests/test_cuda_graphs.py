"""What `wan_core.dit.cuda_graphs` decides on any machine: the padded context its graphs take gives the model's own
output, and the forwards it cannot replay (a CPU model here) run eagerly without capturing anything. The replays
themselves are checked on a GPU (`tests/test_gpu_cuda_graphs.py`)."""

from __future__ import annotations

import pytest
import torch

from wan_core.configs import DIT_CONFIGS
from wan_core.dit.cuda_graphs import captured_signatures, graphable, graphed, graphed_forward
from wan_core.dit.model import WanDiT, init_random_
from wan_core.errors import InputError
from wan_core.pipeline.forwards import step_forwards
from wan_core.runtime import Runtime


def _model_and_inputs():
    model = init_random_(WanDiT(DIT_CONFIGS["tiny-t2v"]), torch.Generator().manual_seed(1)).eval()
    gen = torch.Generator().manual_seed(2)
    x, t = torch.randn(1, 16, 2, 4, 4, generator=gen), torch.tensor([700.0])
    contexts = [[torch.randn(5, model.config.text_dim, generator=gen)], [torch.randn(3, model.config.text_dim)]]
    return model, x, t, contexts


def test_the_padded_context_gives_the_models_own_output():
    model, x, t, contexts = _model_and_inputs()
    text_len = model.config.text_len
    with torch.no_grad():
        for context in contexts:
            padded = model.padded_context(context, 1)
            assert padded.shape == (1, text_len, model.config.text_dim)
            assert torch.equal(model(x, t, padded), model(x, t, context))
        both = model.padded_context([contexts[0][0], contexts[1][0]], 2)
        assert torch.equal(model(x.expand(2, -1, -1, -1, -1), t.expand(2), both),
                           model(x.expand(2, -1, -1, -1, -1), t.expand(2), [contexts[0][0], contexts[1][0]]))
    too_long = torch.randn(text_len + 1, model.config.text_dim)
    with pytest.raises(InputError, match="at most"):
        model.padded_context([too_long], 1)
    with pytest.raises(InputError, match="3 text contexts for a batch of 2"):
        model.padded_context([too_long[:4]] * 3, 2)


def test_cpu_forwards_run_eagerly_and_capture_nothing():
    model, x, t, contexts = _model_and_inputs()
    assert not graphable(model, x, t, None)
    assert graphed(print) is print
    with torch.no_grad():
        assert torch.equal(graphed_forward(model, x, t, contexts[0]), model(x, t, contexts[0]))
        graphs_on = step_forwards(model, x, t, contexts, None, Runtime(cuda_graphs=True))
        graphs_off = step_forwards(model, x, t, contexts, None, Runtime())
    assert all(torch.equal(a, b) for a, b in zip(graphs_on, graphs_off, strict=True))
    assert captured_signatures(model) == 0


def test_the_cli_flag_reaches_the_runtime():
    from wan_core.generate import build_parser, resolve_request

    def runtime(*flags: str) -> Runtime:
        return resolve_request(build_parser().parse_args(["--demo", "--device", "cpu", *flags])).runtime

    assert runtime("--cuda_graphs").cuda_graphs and not runtime().cuda_graphs


def test_moving_the_weights_drops_what_was_kept_for_their_place_and_staying_keeps_it():
    from wan_core.mapped_weights import move_weights
    from wan_core.placement_state import peek_state, state_of

    model, *_ = _model_and_inputs()
    kept = state_of(model, "cuda_graphs", dict)
    assert state_of(model, "cuda_graphs", dict) is kept and peek_state(model, "cuda_graphs") is kept
    move_weights(model, "cpu")  # already there: nothing moved, so what was kept stays
    assert peek_state(model, "cuda_graphs") is kept
    move_weights(model, "meta")  # what the runtime, the node handles and ComfyUI's memory manager call
    assert peek_state(model, "cuda_graphs") is None


def test_why_forwards_run_eagerly_is_logged_once(monkeypatch, caplog):
    from wan_core.dit import cuda_graphs
    from wan_core.dit.attention import SageAttention

    class OnCuda(WanDiT):
        device = property(lambda self: torch.device("cuda"))

    monkeypatch.setattr(cuda_graphs, "_WARNED", set())
    monkeypatch.setattr(torch.cuda, "get_allocator_backend", lambda: "cudaMallocAsync")
    model = OnCuda(DIT_CONFIGS["tiny-t2v"])
    with caplog.at_level("INFO", logger=cuda_graphs.__name__):
        for _ in range(3):
            cuda_graphs._explain_once(model, SageAttention())
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert any("--disable-cuda-malloc" in line and "cudaMallocAsync" in line for line in lines)
    assert any("sage attention run eagerly" in line for line in lines)
