"""A memory-mapped expert parked after a device move: its parameters are the file views again (no copy), its file
pages are given back, and weights patched in place survive. The "device" is torch's meta device: moving there reads
no data, and moving back can only work without a copy (a meta tensor has no data to copy)."""

from __future__ import annotations

import mmap

import pytest
import torch
from test_ram import _inside, _mapped_resident_kib

from wan_core import mapped_weights, patching, ram
from wan_core.configs import DIT_CONFIGS
from wan_core.dit.block_swap import enable_block_swap
from wan_core.dit.loader import load_dit
from wan_core.dit.model import WanDiT, init_random_
from wan_core.io.writers import write_safetensors
from wan_core.patching import PatchedWeights
from wan_core.runtime import Runtime, move_to

CFG = DIT_CONFIGS["tiny-t2v"].replace(dim=512, ffn_dim=2048, num_heads=4, num_layers=3)
META = torch.device("meta")
needs_proc = pytest.mark.skipif(not ram.meminfo("/proc/self/status"), reason="needs Linux /proc")


@pytest.fixture(scope="module")
def wide_file(tmp_path_factory):
    model = init_random_(WanDiT(CFG), torch.Generator().manual_seed(3))
    path = tmp_path_factory.mktemp("mapped") / "wide.safetensors"
    write_safetensors(model.state_dict(), path)
    return path


def _inputs():
    gen = torch.Generator().manual_seed(4)
    context = [torch.randn(6, CFG.text_dim, generator=gen)]
    return torch.randn(1, 16, 1, 4, 4, generator=gen), torch.tensor([500.0]), context


def _run(model: WanDiT) -> torch.Tensor:
    with torch.no_grad():
        return model(*_inputs())


def _all_in_map(model: WanDiT) -> bool:
    (region,) = model.mapped_files
    return all(_inside(t, region) for t in [*model.parameters(), *model.buffers()])


@pytest.fixture
def no_pageout(monkeypatch):
    """A kernel without MADV_PAGEOUT / MADV_COLD (gVisor): the advice is rejected with EINVAL."""
    for name in ("MADV_PAGEOUT", "MADV_COLD"):
        monkeypatch.setattr(mmap, name, 0x7FFF, raising=False)


@needs_proc
@pytest.mark.parametrize("swapped", [False, True], ids=["resident", "block-swap"])
def test_a_parked_expert_holds_no_copy_and_none_of_its_file(wide_file, no_pageout, swapped):
    model = load_dit(wide_file)
    if swapped:
        enable_block_swap(model, 1).pin = True  # pinned masters as on a GPU machine (plain buffers here)
    expected = _run(model)  # reads every page of the file
    size_kib = wide_file.stat().st_size // 1024
    assert _mapped_resident_kib(wide_file) > size_kib // 2
    move_to(model, META)
    assert model.blocks[0].ffn[0].weight.device == META
    assert _mapped_resident_kib(wide_file) < size_kib // 20  # dropped although the kernel cannot page out
    Runtime(offload=True).park(model)  # a copy out of meta would raise
    assert _all_in_map(model)
    assert _mapped_resident_kib(wide_file) < size_kib // 20
    assert torch.equal(_run(model), expected)
    move_to(model, META)  # a second round trip
    move_to(model, "cpu")
    assert _all_in_map(model) and torch.equal(_run(model), expected)


def test_weights_patched_in_place_survive_parking(wide_file, no_pageout):
    model = load_dit(wide_file)
    name = "blocks.1.ffn.0.weight"
    patched = model.get_parameter(name).detach().clone() + 0.25
    PatchedWeights(model).set(name, patched)  # a LoRA merge on the CPU: written into the private map
    move_to(model, META)
    Runtime(offload=True).park(model)
    assert _all_in_map(model)
    assert torch.equal(model.get_parameter(name), patched)  # no written page dropped


def test_weights_patched_on_the_device_are_copied_back(wide_file):
    model = load_dit(wide_file)
    move_to(model, META)
    patching._weights_changed(model)  # what a patch applied on the device does (meta has no data to patch)
    with pytest.raises(NotImplementedError, match="meta"):  # torch's copy of the patched (here: data-less) weights
        move_to(model, "cpu")


def test_pages_given_back_with_the_advice_the_kernel_has(tmp_path, no_pageout, monkeypatch):
    region = mmap.mmap(-1, 4 * mmap.PAGESIZE)
    assert not ram.release_pages([region])  # neither PAGEOUT nor COLD: says so
    assert ram.forget_read_pages([region])
    advised = []
    monkeypatch.setattr(mapped_weights, "forget_read_pages", lambda maps: advised.append("dontneed") or True)
    monkeypatch.setattr(mapped_weights, "release_pages", lambda maps: advised.append("pageout") or False)
    model = torch.nn.Linear(2, 2)
    model.mapped_files = [region]
    mapped_weights.release_file_pages(model)
    PatchedWeights(model).set("weight", torch.ones(2, 2))
    mapped_weights.release_file_pages(model)
    assert advised == ["dontneed", "pageout"]


def test_a_parked_block_swapped_expert_holds_no_pinned_masters(wide_file):
    """`Module.to` moves the blocks before the head: the head (a tensor of it converted at the load, so not pointed
    back at the file) was still on the GPU when the blocks' masters were re-taken, so they were pinned again, and
    both experts held pinned RAM after the MoE switch (seen on an H100: 17 GB)."""
    model = load_dit(wide_file)
    expected = _run(model)
    swap = enable_block_swap(model, 1)
    swap.pin = True  # pinned masters as on a GPU machine (plain buffers here)
    swap.pin_masters()
    model.head.to(META)  # the rest of the model still on the device while the blocks come back
    model.blocks._apply(lambda t: t.to("cpu"))
    assert not swap.pinned
    (region,) = model.mapped_files
    assert all(_inside(t, region) for t in model.blocks.parameters())  # the file's views again
    model.head.to_empty(device="cpu").load_state_dict(load_dit(wide_file).head.state_dict())
    assert torch.equal(_run(model), expected)


def test_an_expert_leaves_the_cpu_block_by_block_giving_pages_back_after_each(wide_file, monkeypatch):
    """Moving a whole 14 GB expert with one `.to()` read all of its file before any page went back (a 24 GiB card
    case peaked at 25 GiB of RAM); now the pages go back after each block."""
    from wan_core import mapped_weights

    model = load_dit(wide_file)
    moved_at_each_release: list[int] = []
    real = mapped_weights.release_file_pages

    def recording(m):  # noqa: ANN001, ANN202
        moved_at_each_release.append(sum(b.ffn[0].weight.device == META for b in model.blocks))
        return real(m)

    monkeypatch.setattr(mapped_weights, "release_file_pages", recording)
    move_to(model, META)
    blocks = len(model.blocks)
    assert all(p.device == META for p in model.parameters())
    assert [n for n in range(1, blocks + 1) if n in moved_at_each_release] == list(range(1, blocks + 1))


def test_a_patch_on_the_device_keeps_the_file_view_as_its_original(wide_file):
    """A Lightning LoRA changes every block Linear of an expert: its originals kept as CPU copies were the whole
    expert again in RAM (14 GB per expert). Weights that left the CPU untouched keep their file view instead."""
    reference = load_dit(wide_file)
    model = load_dit(wide_file)
    move_to(model, META)
    weights = PatchedWeights(model)
    name = "blocks.1.ffn.0.weight"
    weights.set(name, torch.zeros(model.get_parameter(name).shape, device=META))
    original = weights._originals[name]
    (region,) = model.mapped_files
    assert _inside(original, region) and torch.equal(original, reference.get_parameter(name))

    patched_first = load_dit(wide_file)  # written on the CPU before it left: its views are not the loaded bytes
    PatchedWeights(patched_first).set(name, reference.get_parameter(name) + 0.5)
    move_to(patched_first, META)
    assert mapped_weights.pristine_view(patched_first, "blocks.2.ffn.0.weight") is None
    assert mapped_weights.pristine_view(model, "blocks.2.ffn.0.weight") is not None
