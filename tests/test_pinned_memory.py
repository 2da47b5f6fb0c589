"""Pinned RAM refused or turned off (`wan_core.pinned_memory`): the first refusal turns pinning off for the process
with its reason, ComfyUI's `--disable-pinned-memory` turns it off through the nodes, and block swap then keeps plain
CPU masters and computes the same output; a large pinned copy is only made where the RAM has room for it. On a GPU
(skipped elsewhere) the staged copies fall back to plain ones, block swap runs from pageable masters, and a model
evicted by the memory manager comes back to a pinned copy in few buffers, with no staging copy."""

from __future__ import annotations

import gc
import logging
import sys
import types

import pytest
import torch
from test_block_swap import _run
from test_block_swap_ram import _in_map, mapped_model  # noqa: F401  (fixture)

from nodes import host
from nodes.memory_manager import ManagedModel
from wan_core import host_buffers, host_copy, pinned_memory
from wan_core.configs import DIT_CONFIGS
from wan_core.dit import block_swap
from wan_core.dit.block_swap import enable_block_swap
from wan_core.dit.model import WanDiT, init_random_
from wan_core.host_copy import STAGE_BYTES, copy_tensors, to_host

SWAP_CFG = DIT_CONFIGS["tiny-t2v"].replace(dim=256, ffn_dim=1024, num_heads=2, num_layers=4)


@pytest.fixture(autouse=True)
def pinning_on(monkeypatch):
    """Every test starts with pinning on, and leaves the process as it found it."""
    monkeypatch.setattr(pinned_memory, "_refusal", None)
    monkeypatch.setattr(pinned_memory, "_in_place_refusal", None)
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


def _meminfo(tmp_path, name: str, total_gib: float, available_gib: float) -> str:
    path = tmp_path / name
    path.write_text(f"MemTotal: {int(total_gib * 2**20)} kB\nMemAvailable: {int(available_gib * 2**20)} kB\n")
    return str(path)


def test_pinning_leaves_four_gib_or_a_tenth_of_the_ram_available(tmp_path, monkeypatch):
    assert pinned_memory.room_to_pin(_meminfo(tmp_path, "a", 60, 6))
    assert not pinned_memory.room_to_pin(_meminfo(tmp_path, "b", 60, 5.99))
    assert pinned_memory.room_to_pin(_meminfo(tmp_path, "c", 16, 4))
    assert not pinned_memory.room_to_pin(_meminfo(tmp_path, "d", 16, 3.99))
    monkeypatch.setattr(pinned_memory, "available_ram", lambda path: None)  # an OS that does not say: no pinning
    assert not pinned_memory.room_to_pin(_meminfo(tmp_path, "e", 16, 8))


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


class _RecordingCudart:
    """torch's cudart with its host registrations recorded, and refused with `refuse`; `real` None: no CUDA at all
    (registrations succeed on paper)."""

    def __init__(self, real=None, refuse: bool = False) -> None:
        self.real, self.refuse, self.calls = real, refuse, []

    def cudaHostRegister(self, pointer: int, nbytes: int, flags: int):
        self.calls.append(("register", pointer, nbytes))
        if self.refuse:
            return 2  # cudaErrorMemoryAllocation
        return self.real.cudaHostRegister(pointer, nbytes, flags) if self.real else 0

    def cudaHostUnregister(self, pointer: int):
        self.calls.append(("unregister", pointer))
        return self.real.cudaHostUnregister(pointer) if self.real else 0


@pytest.fixture
def fake_cudart(monkeypatch) -> _RecordingCudart:
    """Pinning on, as on a CUDA machine, with the registrations recorded (and made nowhere)."""
    cudart = _RecordingCudart()
    monkeypatch.setattr(torch.cuda, "cudart", lambda: cudart)
    monkeypatch.setattr(pinned_memory, "allowed", lambda: pinned_memory.refusal() is None)
    monkeypatch.setattr(pinned_memory, "_discard_last_cuda_error", lambda: cudart.calls.append(("discard", 0, 0)))
    monkeypatch.setattr(pinned_memory, "room_to_pin", lambda meminfo="/proc/meminfo": True)
    yield cudart
    gc.collect()  # the maps of the test unregister with this cudart


def test_pin_in_place_registers_each_pageable_map_once_and_unregisters_it_when_freed(fake_cudart):
    like = [torch.empty(3000, dtype=torch.float32), torch.empty(10, dtype=torch.bfloat16),
            torch.empty(900, dtype=torch.uint8)]
    homes = host_buffers.host_buffers(like, pin=False, chunk_bytes=8192)  # two buffers: 12,032 and 960 + 64 bytes
    others = [torch.zeros(5), torch.frombuffer(bytearray(64), dtype=torch.uint8)]  # not from `pageable`
    assert pinned_memory.pin_in_place([*homes, *others]) == 12032 + 1024
    registered = {pointer: nbytes for _, pointer, nbytes in fake_cudart.calls}
    assert sorted(registered.values()) == [1024, 12032]
    assert set(registered) == {homes[0].untyped_storage().data_ptr(), homes[1].untyped_storage().data_ptr()}
    assert pinned_memory.pin_in_place(homes) == 0 and len(fake_cudart.calls) == 2  # pinned already
    first = homes[0]
    del homes, like
    gc.collect()
    assert [call for call, *_ in fake_cudart.calls] == ["register", "register", "unregister"]  # `first` holds one
    del first
    gc.collect()
    assert sorted(pointer for call, pointer, *_ in fake_cudart.calls if call == "unregister") == sorted(registered)


def test_pin_in_place_without_room_or_with_pinning_refused(fake_cudart, monkeypatch, caplog):
    homes = host_buffers.host_buffers([torch.empty(4096, dtype=torch.uint8)], pin=False)
    monkeypatch.setattr(pinned_memory, "room_to_pin", lambda meminfo="/proc/meminfo": False)
    assert pinned_memory.pin_in_place(homes) == 0 and fake_cudart.calls == []
    monkeypatch.setattr(pinned_memory, "room_to_pin", lambda meminfo="/proc/meminfo": True)
    fake_cudart.refuse = True
    with caplog.at_level(logging.WARNING, logger=pinned_memory.__name__):
        assert pinned_memory.pin_in_place(homes) == 0
    assert [call for call, *_ in fake_cudart.calls] == ["register", "discard"]  # the refusal's CUDA error taken
    assert caplog.messages == ["Kept CPU copies stay in pageable RAM: pinning 0 MiB in place failed (cudaHostRegister "
                               "returned 2). Loads from them copy through the pinned stages (slower)."]
    assert pinned_memory.pin_in_place(homes) == 0 and len(fake_cudart.calls) == 2  # not tried again
    assert pinned_memory.refusal() is None  # new pinned memory (block swap's masters) is still asked for


@cuda
def test_large_pinned_buffers_are_registered_maps_unregistered_when_the_last_view_goes(monkeypatch):
    cudart = _RecordingCudart(torch.cuda.cudart())
    monkeypatch.setattr(torch.cuda, "cudart", lambda: cudart)
    small = pinned_memory.empty(pinned_memory.MIN_REGISTERED_BYTES // 2 - 1, torch.int16)  # torch's allocator
    assert small.is_pinned() and cudart.calls == []
    nbytes = pinned_memory.MIN_REGISTERED_BYTES + 4096
    big = pinned_memory.empty((nbytes // 4 // 16, 16), torch.float32)
    assert big.is_pinned() and big.shape == (nbytes // 64, 16)
    assert cudart.calls == [("register", big.data_ptr(), nbytes)]
    gpu = torch.randn(big.shape, device="cuda")
    big.copy_(gpu, non_blocking=True)
    torch.cuda.synchronize()
    view = big[3:5]
    assert torch.equal(view, gpu[3:5].cpu())
    pointer = big.data_ptr()
    del big
    assert len(cudart.calls) == 1  # a view still uses the map
    del view
    gc.collect()
    assert cudart.calls[1:] == [("unregister", pointer)]


def _round_trips(trips: int, inference: bool = False
                 ) -> tuple[list[dict[str, torch.Tensor]], list[int], list[bool]]:
    """A model loaded onto the GPU and evicted to the CPU by the memory manager `trips` times; returns its CPU weights
    as built and after each eviction, the number of staged copies of each load, and whether all its CPU weights were
    pinned after each eviction."""
    cfg = SWAP_CFG.replace(dim=512, ffn_dim=2048)  # FFN weights of 2 MiB: above `host_copy.MIN_BYTES`, so staged
    with torch.inference_mode(inference):
        model = init_random_(WanDiT(cfg), torch.Generator().manual_seed(0)).to(torch.bfloat16).eval()
    weight = model.blocks[0].ffn[0].weight
    patcher = ManagedModel(model, torch.device("cuda"))
    states, staged, pinned = [dict(model.state_dict())], [], []
    real = host_copy._through_stages
    for _ in range(trips):
        with pytest.MonkeyPatch.context() as patched:
            staged.append(0)
            patched.setattr(host_copy, "_through_stages", lambda d, pairs: staged.__setitem__(-1, staged[-1] + 1) or
                            real(d, pairs))
            patcher.partially_load(torch.device("cuda"), 1e12)
        assert {t.device.type for t in model.state_dict().values()} == {"cuda"}
        patcher.partially_unload(torch.device("cuda"))
        states.append(dict(model.state_dict()))
        pinned.append(all(t.is_pinned() for t in states[-1].values() if t.numel()))
    assert model.blocks[0].ffn[0].weight is weight  # the Parameter objects stay, as `module.to` keeps them
    return states, staged, pinned


def _same_values(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _addresses(state: dict[str, torch.Tensor]) -> dict[str, int]:
    return {name: t.data_ptr() for name, t in state.items()}


@cuda
@pytest.mark.parametrize("inference", [False, True], ids=["plain", "inference-mode"])
def test_a_kept_cpu_copy_is_pinned_when_it_is_come_back_to_and_then_loads_without_a_stage(monkeypatch, inference):
    """Two experts under one budget load from their kept CPU copies every run; pinned, those loads are the copy
    engine's alone (the staged path copies each byte through the CPU first)."""
    monkeypatch.setattr(pinned_memory, "room_to_pin", lambda meminfo="/proc/meminfo": True)
    states, staged, pinned = _round_trips(3, inference)
    built, first, second, third = states
    assert pinned == [False, True, True]  # pinned at the second eviction
    assert staged[0] > 0 and staged[1] > 0 and staged[2] == 0
    assert _addresses(first) == _addresses(second) == _addresses(third)  # the kept copy, pinned where it was
    assert all(_same_values(built, state) for state in (first, second, third))
    storages = {t.untyped_storage().data_ptr() for t in third.values() if t.numel()}
    assert len(storages) <= -(-sum(t.nbytes for t in third.values()) // host_buffers.CHUNK_BYTES) + 1  # packed


@cuda
def test_without_room_in_ram_the_kept_copy_stays_pageable(monkeypatch):
    monkeypatch.setattr(pinned_memory, "room_to_pin", lambda meminfo="/proc/meminfo": False)
    (built, *evicted), staged, pinned = _round_trips(3)
    assert pinned == [False] * 3 and all(n > 0 for n in staged)
    assert all(_addresses(state) == _addresses(evicted[0]) and _same_values(built, state) for state in evicted)


@cuda
def test_a_refused_registration_leaves_the_kept_copy_pageable(monkeypatch):
    monkeypatch.setattr(pinned_memory, "room_to_pin", lambda meminfo="/proc/meminfo": True)
    cudart = _RecordingCudart(torch.cuda.cudart(), refuse=True)
    monkeypatch.setattr(torch.cuda, "cudart", lambda: cudart)
    (built, *evicted), staged, pinned = _round_trips(3)
    assert cudart.calls and pinned_memory.refusal() is None
    assert pinned == [False] * 3 and all(n > 0 for n in staged)
    assert all(_same_values(built, state) for state in evicted)


@cuda
def test_a_registration_the_driver_refuses_leaves_no_cuda_error_for_later_launches(monkeypatch):
    """cudaHostRegister's error stays as the thread's last CUDA error; torch's next launch check would raise it."""
    monkeypatch.setattr(pinned_memory, "room_to_pin", lambda meminfo="/proc/meminfo": True)
    homes = host_buffers.host_buffers([torch.empty(2**20, dtype=torch.uint8)], pin=False)
    pointer = homes[0].untyped_storage().data_ptr()
    assert int(torch.cuda.cudart().cudaHostRegister(pointer, 2**20, 0)) == 0  # registered behind the pack's back
    try:
        assert pinned_memory.pin_in_place(homes) == 0  # so the driver refuses the pack's registration
        assert pinned_memory.allowed() and pinned_memory._in_place_refusal.startswith("cudaHostRegister returned")
        assert torch.equal(torch.ones(4, device="cuda").mul_(2).cpu(), torch.full((4,), 2.0))
    finally:
        torch.cuda.cudart().cudaHostUnregister(pointer)
