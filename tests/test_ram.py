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


def _resident_at_each_drop(monkeypatch, path, every: int) -> list[int]:
    """Load with the page drops every `every` bytes; returns the mapped resident KiB of `path` just before each."""
    from wan_core.io import mapped_safetensors

    seen: list[int] = []
    real = ram.forget_read_pages

    def spying(maps):  # noqa: ANN001, ANN202
        seen.append(_mapped_resident_kib(path))
        return real(maps)

    monkeypatch.setattr(mapped_safetensors, "RELEASE_EVERY_BYTES", every)
    monkeypatch.setattr(mapped_safetensors, "forget_read_pages", spying)  # what the page drops call
    return seen


@pytest.mark.skipif(not ram.meminfo("/proc/self/status"), reason="needs Linux /proc")
def test_an_fp8_text_encoder_load_reads_its_file_in_slices_and_keeps_none_resident(tmp_path, monkeypatch):
    """An fp8 umt5-xxl file is 6.7 GB: converting it and scanning it used to hold all of it resident, and its bf16
    tensors (embedding, norms), being views of the file, kept it so after the load. Now the read pages are dropped
    every RELEASE_EVERY_BYTES and at the end."""
    from safetensors.torch import save_file
    from transformers import UMT5Config, UMT5EncoderModel

    from wan_core.io.quant import quantize_fp8_scaled
    from wan_core.text import keymap
    from wan_core.text.demo import TINY_UMT5_CONFIG
    from wan_core.text.encoder import load_text_encoder
    from wan_core.text.tokenizer import build_demo_spiece_model

    torch.manual_seed(0)
    wide = UMT5EncoderModel(UMT5Config(**{**TINY_UMT5_CONFIG, "d_model": 512, "d_ff": 2048, "num_heads": 8,
                                          "d_kv": 64, "num_layers": 4}))
    sd = {k: v.contiguous() for k, v in wide.state_dict().items() if k != keymap.EMBED_TOKENS}
    path = tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
    spiece = torch.frombuffer(bytearray(build_demo_spiece_model()), dtype=torch.uint8)
    quantized = quantize_fp8_scaled(sd)
    del quantized["shared.scale_weight"]
    quantized["shared.weight"] = sd["shared.weight"].to(torch.bfloat16)  # stored in bf16: loaded as a view
    save_file({**quantized, "spiece_model": spiece}, path)
    size_kib = path.stat().st_size // 1024
    seen = _resident_at_each_drop(monkeypatch, path, every=size_kib * 1024 // 8)
    encoder = load_text_encoder(path)
    assert len(seen) >= 5, (seen, size_kib)
    assert max(seen) < size_kib // 2, (seen, size_kib)  # never the whole file at once
    assert torch.isfinite(encoder.encode(["a red fox"])[0]).all()
    _resident_at_each_drop(monkeypatch, path, every=size_kib * 1024 * 10)  # no drop while reading: one at the end
    encoder = load_text_encoder(path)
    assert _mapped_resident_kib(path) < size_kib // 20


@pytest.mark.skipif(not ram.meminfo("/proc/self/status"), reason="needs Linux /proc")
def test_the_nan_scan_of_an_expert_reads_its_file_in_slices(tmp_path, monkeypatch):
    model = init_random_(WanDiT(CFG.replace(dim=512, ffn_dim=2048, num_heads=4)), torch.Generator().manual_seed(3))
    path = tmp_path / "wide.safetensors"
    write_safetensors(model.state_dict(), path)
    size_kib = path.stat().st_size // 1024
    seen = _resident_at_each_drop(monkeypatch, path, every=size_kib * 1024 // 8)
    load_dit(path)
    assert len(seen) >= 5 and max(seen) < size_kib // 2, (seen, size_kib)


def test_an_fp8_text_encoder_load_lets_each_fp8_weight_go_once_converted(tmp_path, monkeypatch):
    """On its way to the GPU every weight is moved first (6.7 GB of fp8 there), then converted to bf16: each fp8
    weight must die as it is converted, or a 16 GiB card holds both (seen: out of memory at the load)."""
    import weakref

    from safetensors.torch import save_file
    from test_text_encoder import alive_at_each_conversion

    from wan_core.io.quant import quantize_fp8_scaled
    from wan_core.text import encoder as encoder_module
    from wan_core.text import keymap
    from wan_core.text.demo import build_tiny_umt5
    from wan_core.text.tokenizer import build_demo_spiece_model

    sd = {k: v.contiguous() for k, v in build_tiny_umt5().state_dict().items() if k != keymap.EMBED_TOKENS}
    path = tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
    spiece = torch.frombuffer(bytearray(build_demo_spiece_model()), dtype=torch.uint8)
    save_file({**quantize_fp8_scaled(sd), "spiece_model": spiece}, path)
    fp8: list[weakref.ref] = []
    real_read = encoder_module.read_mapped

    def reading(files):  # noqa: ANN001, ANN202
        tensors, maps = real_read(files)
        fp8.extend(weakref.ref(t) for t in tensors.values() if t.dtype == torch.float8_e4m3fn)
        return tensors, maps

    monkeypatch.setattr(encoder_module, "read_mapped", reading)
    alive_at_each = alive_at_each_conversion(monkeypatch, fp8)
    encoder_module.load_text_encoder(path)
    assert len(alive_at_each) > 10
    assert alive_at_each == [len(fp8) - i for i in range(len(alive_at_each))]
