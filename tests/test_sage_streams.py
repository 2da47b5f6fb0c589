"""How the SageAttention backend orders its calls around the caller's CUDA stream
(`attention._ordered_with_legacy_stream`), with the streams stood in for on the CPU: on the legacy stream it runs as
it is; elsewhere the output is allocated on the caller's stream first, the legacy stream waits for the caller, the
kernels run there writing into that output, and the caller waits for them. On a GPU
`tests/test_gpu.py::test_sage_keeps_order_on_a_stream_of_its_own` checks the result on a busy stream."""

from __future__ import annotations

import contextlib

import pytest
import torch

from wan_core.dit import attention, sage_sm90


class _Stream:
    def __init__(self, name: str, log: list) -> None:
        self.name, self.log = name, log

    def wait_stream(self, other: _Stream) -> None:
        self.log.append(f"{self.name} waits for {other.name}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Stream) and other.name == self.name

    __hash__ = object.__hash__


def _streams(monkeypatch, current_name: str) -> tuple[list, dict]:
    log: list = []
    legacy = _Stream("legacy", log)
    state = {"current": legacy if current_name == "legacy" else _Stream(current_name, log)}

    @contextlib.contextmanager
    def stream(s):
        before, state["current"] = state["current"], s
        log.append(f"enter {s.name}")
        yield
        state["current"] = before
        log.append(f"leave {s.name}")

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: state["current"])
    monkeypatch.setattr(torch.cuda, "default_stream", lambda device=None: legacy)
    monkeypatch.setattr(torch.cuda, "stream", stream)
    return log, state


def _qkv():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(1, 6, 2, 8, generator=gen) for _ in range(3)]


def _sm90_kernel(log, state):
    def run(q, k, v, out=None):
        log.append(f"kernel on {state['current'].name} into {'a given output' if out is not None else 'its own'}")
        result = q * 2 + k - v
        return result if out is None else out.copy_(result)

    return run


@pytest.mark.parametrize(("current", "want"), [
    ("legacy", ["kernel on legacy into its own"]),  # there it runs as it is
    ("lane", ["legacy waits for lane", "enter legacy", "kernel on legacy into a given output", "leave legacy",
              "lane waits for legacy"]),  # a stream of its own: ordered, into the caller's output
])
def test_the_sm90_kernel_is_ordered_with_the_callers_stream(monkeypatch, current, want):
    log, state = _streams(monkeypatch, current)
    monkeypatch.setattr(sage_sm90, "supported", lambda q, k, v: True)
    monkeypatch.setattr(sage_sm90, "attention", _sm90_kernel(log, state))
    q, k, v = _qkv()
    out = attention.SageAttention().kernel(q, k, v)
    assert torch.equal(out, q * 2 + k - v)
    assert log == want


def test_sageattn_on_other_gpus_is_copied_into_the_callers_output(monkeypatch):
    log, state = _streams(monkeypatch, "lane")
    monkeypatch.setattr(sage_sm90, "supported", lambda q, k, v: False)
    kernel = _sm90_kernel(log, state)
    monkeypatch.setattr(attention, "_sage_fn", lambda: lambda q, k, v, tensor_layout, is_causal: kernel(q, k, v))
    q, k, v = _qkv()
    out = attention.SageAttention().kernel(q, k, v)
    assert torch.equal(out, q * 2 + k - v)
    assert log == ["legacy waits for lane", "enter legacy", "kernel on legacy into its own", "leave legacy",
                        "lane waits for legacy"]


def _rms_norm_rope(x, weight, eps, freqs, head_dim):  # the norm without RoPE, which these tests do not need
    return (torch.nn.functional.rms_norm(x.float(), (x.shape[-1],), weight, eps)).to(x.dtype)


def test_a_normed_q_goes_to_the_fused_sm90_kernel_in_the_callers_order(monkeypatch):
    log, state = _streams(monkeypatch, "lane")
    monkeypatch.setattr(sage_sm90, "supported", lambda q, k, v: True)
    monkeypatch.setattr(attention.SageAttention, "takes", lambda self, q: True)
    kernel = _sm90_kernel(log, state)
    calls = []

    def fused(x, weight, eps, freqs, k, v, out=None):
        calls.append((x, weight, eps, freqs))
        return kernel(x.unflatten(-1, k.shape[2:]), k, v, out)

    monkeypatch.setattr(sage_sm90, "attention_normed_q", fused)
    q, k, v = _qkv()
    x, weight = q.flatten(2), torch.ones(16)
    out = attention.SageAttention().normed_q_attention(x, weight, 1e-6, None, k, v)
    assert torch.equal(out, q * 2 + k - v) and calls == [(x, weight, 1e-6, None)]
    assert log == ["legacy waits for lane", "enter legacy", "kernel on legacy into a given output", "leave legacy",
                   "lane waits for legacy"]


@pytest.mark.parametrize("why", ["not supported", "traced by torch.compile"])
def test_a_normed_q_the_fused_kernel_does_not_take_is_normed_first(monkeypatch, why):
    log, state = _streams(monkeypatch, "legacy")
    kernel = _sm90_kernel(log, state)
    monkeypatch.setattr(attention.kernels, "rms_norm_rope", _rms_norm_rope)
    monkeypatch.setattr(attention.SageAttention, "takes", lambda self, q: True)
    monkeypatch.setattr(sage_sm90, "attention_normed_q", lambda *args, **kwargs: pytest.fail("fused kernel called"))
    monkeypatch.setattr(sage_sm90, "supported", lambda q, k, v: why != "not supported")
    monkeypatch.setattr(sage_sm90, "attention", kernel)
    monkeypatch.setattr(attention, "_sage_fn", lambda: lambda q, k, v, tensor_layout, is_causal: kernel(q, k, v))
    if why == "traced by torch.compile":
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    q, k, v = _qkv()
    weight = torch.rand(16) + 0.5
    out = attention.SageAttention().normed_q_attention(q.flatten(2), weight, 1e-6, None, k, v)
    assert torch.equal(out, _rms_norm_rope(q.flatten(2), weight, 1e-6, None, 8).unflatten(-1, (2, 8)) * 2 + k - v)
    assert log == ["kernel on legacy into its own"]
