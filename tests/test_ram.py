"""System RAM: /proc/meminfo, the check before a load, memory-mapped CPU loads and giving their pages back."""

from __future__ import annotations

import ctypes

import pytest
import torch

from wan_core import ram
from wan_core.configs import DIT_CONFIGS
from wan_core.dit.loader import load_dit
from wan_core.dit.model import WanDiT, init_random_
from wan_core.io.writers import write_safetensors

CFG = DIT_CONFIGS["tiny-t2v"]


def test_meminfo_and_the_check(tmp_path):
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:       16384000 kB\nMemFree:         1000 kB\nMemAvailable:    4096000 kB\n")
    assert ram.available_ram(str(info)) == (4096000 * 1024, 16384000 * 1024)
    ram.check_ram(2 * ram.GIB, "the expert", "hint", str(info))
    with pytest.raises(ram.NotEnoughRAMError, match=r"needs about 5\.0 GiB .* only 3\.9 GiB of the machine's "
                                                    r"15\.6 GiB are available\. Use fp8"):
        ram.check_ram(5 * ram.GIB, "the expert", "Use fp8.", str(info))
    assert isinstance(ram.NotEnoughRAMError("x"), MemoryError)
    assert ram.peak_resident_bytes() > 100 * 2**20 and ram.resident_bytes() > 100 * 2**20  # torch alone


@pytest.fixture
def tiny_file(tmp_path):
    model = init_random_(WanDiT(CFG), torch.Generator().manual_seed(1))
    path = tmp_path / "tiny.safetensors"
    write_safetensors(model.state_dict(), path)
    return path


def _inside(tensor: torch.Tensor, region) -> bool:
    start = ctypes.addressof(ctypes.c_char.from_buffer(region))
    return start <= tensor.data_ptr() < start + len(region)


def test_cpu_load_is_a_view_of_the_file_and_pages_can_be_given_back(tiny_file):
    model = load_dit(tiny_file)
    (region,) = model.mapped_files
    assert _inside(model.blocks[1].ffn[0].weight, region)  # no copy in the process's memory
    inputs = (torch.randn(1, 16, 1, 4, 4), torch.tensor([300.0]), [torch.randn(4, 64)])
    with torch.no_grad():
        before = model(*inputs)
        ram.release_pages(model.mapped_files)
        assert torch.equal(model(*inputs), before)  # read again from the file
    converted = load_dit(tiny_file, dtype=torch.bfloat16)
    assert not _inside(converted.blocks[1].ffn[0].weight, converted.mapped_files[0])


def test_load_checks_the_ram_first(tiny_file, monkeypatch):
    monkeypatch.setattr(ram, "available_ram", lambda path="": (ram.RAM_HEADROOM_BYTES, 8 * ram.GIB))
    load_dit(tiny_file)  # memory-mapped as stored: nothing to copy
    with pytest.raises(ram.NotEnoughRAMError, match="tiny.safetensors needs about 0.0 GiB"):
        load_dit(tiny_file, dtype=torch.bfloat16)


def _mapped_resident_kib(path) -> int:
    """Resident KiB of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps").read().splitlines():
        if line[:1].isdigit() or line[:1] in "abcdef" and "-" in line.split(" ")[0]:
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not ram.meminfo("/proc/self/status"), reason="needs Linux /proc")
def test_a_loaded_expert_keeps_none_of_its_file_resident(tmp_path):
    """The NaN scan reads every page of the expert's file; a 14 GB expert would then count 14 GB of resident memory
    until it is moved. The load hands the read pages back (they stay in the OS file cache)."""
    model = init_random_(WanDiT(CFG.replace(dim=512, ffn_dim=2048, num_heads=4)), torch.Generator().manual_seed(2))
    path = tmp_path / "wide.safetensors"
    write_safetensors(model.state_dict(), path)
    size_kib = path.stat().st_size // 1024
    loaded = load_dit(path)
    assert size_kib > 20_000
    assert _mapped_resident_kib(path) < size_kib // 20
    assert torch.equal(loaded.blocks[1].ffn[0].weight, model.blocks[1].ffn[0].weight)  # read again from the file
    assert _mapped_resident_kib(path) > 0
