"""Pinned RAM refused or turned off (`wan_core.pinned_memory`): the first refusal turns pinning off for the process
with its reason, ComfyUI's `--disable-pinned-memory` turns it off through the nodes, and block swap then keeps plain
CPU masters and computes the same output; on a GPU (skipped elsewhere) the staged copies fall back to plain ones and
block swap runs from pageable masters."""

from __future__ import annotations

import logging
import sys
import types

import pytest
import torch
from test_block_swap import _run
from test_block_swap_ram import _in_map, mapped_model  # noqa: F401  (fixture)

from nodes import host
from wan_core import host_copy, pinned_memory
from wan_core.configs import DIT_CONFIGS
from wan_core.dit import block_swap, host_buffers
from wan_core.dit.block_swap import enable_block_swap
from wan_core.dit.model import WanDiT, init_random_
from wan_core.host_copy import STAGE_BYTES, copy_tensors, to_host

SWAP_CFG = DIT_CONFIGS["tiny-t2v"].replace(dim=256, ffn_dim=1024, num_heads=2, num_layers=4)


@pytest.fixture(autouse=True)
def pinning_on(monkeypatch):
    """Every test starts with pinning on, and leaves the process as it found it."""
    monkeypatch.setattr(pinned_memory, "_refusal", None)
    host_buffers.drop_spares()
    yield
    host_buffers.drop_spares()


@pytest.fixture
def refusing_driver(monkeypatch) -> list[tuple]:
    """A driver that refuses every pinned allocation; returns the shapes it was asked for."""
    asked: list[tuple] = []
    real = torch.empty

    def empty(*args, pin_memory: bool = False, **kwargs):
        if pin_memory:
            asked.append(args)
            raise RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "empty", empty)
    return asked


def test_the_first_refusal_turns_pinning_off_with_its_reason(refusing_driver, caplog):
    with caplog.at_level(logging.WARNING, logger=pinned_memory.__name__):
        with pytest.raises(pinned_memory.PinnedMemoryUnavailable, match="out of memory"):
            pinned_memory.empty(3 * 2**20, torch.uint8)
        with pytest.raises(pinned_memory.PinnedMemoryUnavailable):
            pinned_memory.empty((2, 4), torch.float32)
    assert refusing_driver == [(3 * 2**20,)]  # not asked again
    assert pinned_memory.refusal() == "pinning 3 MiB of RAM failed (CUDA error: out of memory)"
    assert not pinned_memory.allowed()
    assert [r.getMessage() for r in caplog.records] == [
        "Pinned RAM is off: pinning 3 MiB of RAM failed (CUDA error: out of memory). Copies between RAM and the GPU "
        "go through pageable memory (slower)."]


def test_disable_keeps_the_first_reason():
    pinned_memory.disable("first")
    pinned_memory.disable("second")
    assert pinned_memory.refusal() == "first" and not pinned_memory.allowed()


def test_host_buffers_raise_where_pinning_is_refused(refusing_driver):
    like = [torch.zeros(3, 5), torch.zeros(7, dtype=torch.bfloat16)]
    with pytest.raises(pinned_memory.PinnedMemoryUnavailable):
        host_buffers.host_buffers(like, pin=True)
    plain = host_buffers.host_buffers(like, pin=False)
    assert [(t.shape, t.dtype) for t in plain] == [(t.shape, t.dtype) for t in like]


@pytest.mark.parametrize("flag", [True, False])
def test_comfyui_disable_pinned_memory_turns_the_pack_s_pinning_off(monkeypatch, flag):
    monkeypatch.setitem(sys.modules, "comfy.cli_args", types.SimpleNamespace(
        args=types.SimpleNamespace(disable_pinned_memory=flag, disable_metadata=False)))
    host.follow_host_settings()
    assert pinned_memory.refusal() == ("ComfyUI runs with --disable-pinned-memory" if flag else None)


def test_block_swap_keeps_plain_masters_where_pinning_is_refused(mapped_model, refusing_driver,  # noqa: F811
                                                               monkeypatch):
    expected = _run(mapped_model)
    swap = enable_block_swap(mapped_model, 1)
    swap.pin = True  # as on a CUDA machine
    monkeypatch.setattr(block_swap, "host_buffers", lambda like, pin: host_buffers.host_buffers(like, pin=True))
    before = swap.masters()
    swap.pin_masters()
    after = swap.masters()
    assert refusing_driver and pinned_memory.refusal() is not None
    assert not swap.pin and not swap.pinned
    assert after.keys() == before.keys()
    assert all(after[k].data_ptr() == before[k].data_ptr() for k in before)  # still the file's own pages
    assert all(_in_map(t, mapped_model) for t in after.values())
    assert torch.equal(_run(mapped_model), expected)
    swap.pin_masters()  # pinning stays off: nothing is tried again
    assert len(refusing_driver) == 1 and not swap.pinned


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_copies_between_the_gpu_and_ram_fall_back_to_plain_ones(refusing_driver, monkeypatch):
    gen = torch.Generator("cuda").manual_seed(0)
    on_gpu = torch.randint(0, 256, (3 * STAGE_BYTES + 5,), dtype=torch.uint8, device="cuda", generator=gen)
    on_cpu = to_host(on_gpu)  # the stages are refused: plain copies
    assert torch.equal(on_cpu, on_gpu.cpu())
    assert refusing_driver and pinned_memory.refusal() is not None
    monkeypatch.setattr(host_copy, "_through_stages", lambda device, pairs: pytest.fail("staged with pinning off"))
    back = torch.empty_like(on_gpu)
    copy_tensors([(back, on_cpu)])
    assert torch.equal(back, on_gpu)


@cuda
def test_block_swap_on_a_gpu_runs_from_plain_masters_where_pinning_is_refused(refusing_driver):
    model = init_random_(WanDiT(SWAP_CFG), torch.Generator().manual_seed(0)).to(torch.bfloat16).cuda().eval()
    gen = torch.Generator().manual_seed(1)
    inputs = (torch.randn(1, 16, 2, 8, 8, generator=gen).cuda(), torch.tensor([800.0], device="cuda"),
              [torch.randn(7, 64, generator=gen).to("cuda", torch.bfloat16)])
    with torch.no_grad():
        expected = model(*inputs)
    swap = enable_block_swap(model, 1)
    model.cuda()
    masters = swap.masters().values()
    assert refusing_driver and not swap.pinned
    assert all(m.device.type == "cpu" and not m.is_pinned() for m in masters)
    with torch.no_grad():
        for _ in range(2):
            assert torch.equal(model(*inputs), expected)
