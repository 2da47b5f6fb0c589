"""System RAM: how much is available (before a load, with a clear error instead of a killed process), the process's
peak resident memory, and giving back the pages of memory-mapped weight files.

Reads `/proc/meminfo` (Linux); elsewhere falls back to `os.sysconf` (macOS, BSDs) and, failing that, does not check.
"""

from __future__ import annotations

import mmap
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from .errors import WanError

GIB = 1024**3
# What the OS and the rest of the process keep beyond what a load itself needs.
RAM_HEADROOM_BYTES = GIB


class NotEnoughRAMError(WanError, MemoryError):
    """The machine's available RAM is less than a load needs."""


def meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    """The fields of /proc/meminfo in bytes (empty when it cannot be read)."""
    fields: dict[str, int] = {}
    try:
        with open(path) as handle:
            for line in handle:
                name, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    fields[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError:
        return {}
    return fields


def available_ram(path: str = "/proc/meminfo") -> tuple[int, int] | None:
    """(available, total) bytes of RAM, or None when this OS does not say."""
    info = meminfo(path)
    if "MemAvailable" in info and "MemTotal" in info:
        return info["MemAvailable"], info["MemTotal"]
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page
    except (ValueError, OSError, AttributeError):
        return None


def check_ram(needed: int, what: str, hint: str, path: str = "/proc/meminfo") -> None:
    """Raise `NotEnoughRAMError` naming `what` when `needed` bytes (plus headroom) exceed the available RAM."""
    ram = available_ram(path)
    if ram is None:
        return
    available, total = ram
    if needed + RAM_HEADROOM_BYTES > available:
        raise NotEnoughRAMError(
            f"Loading {what} needs about {needed / GIB:.1f} GiB of RAM, but only {available / GIB:.1f} GiB of the "
            f"machine's {total / GIB:.1f} GiB are available. {hint}"
        )


def peak_resident_bytes() -> int:
    """The process's peak resident set size since it started or since `reset_peak_resident()` (file-backed pages of
    memory-mapped files included): /proc's VmHWM, else getrusage."""
    status = meminfo("/proc/self/status")
    if "VmHWM" in status:
        return status["VmHWM"]
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_peak_resident() -> bool:
    """Start a new peak for `peak_resident_bytes` (Linux: /proc/self/clear_refs); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def resident_bytes() -> int | None:
    """The process's current resident set size, or None when /proc is not there."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _advise(mapped: Iterable[mmap.mmap], advice: int) -> bool:
    """`advice` on every open map; False when the kernel rejects it (a closed map is skipped)."""
    for region in mapped:
        try:
            region.madvise(advice)
        except ValueError:  # a closed map
            continue
        except OSError:  # a kernel without the advice (older Linux, gVisor)
            return False
    return True


def release_pages(mapped: Iterable[mmap.mmap]) -> bool:
    """Hand the pages of memory-mapped files back to the OS (they are read again from the file when touched):
    MADV_PAGEOUT where the kernel has it (pages written in place are swapped, never lost), else MADV_COLD. False when
    the kernel has neither (gVisor): nothing was given back."""
    mapped = list(mapped)
    names = ("MADV_PAGEOUT", "MADV_COLD")
    return any(_advise(mapped, getattr(mmap, name)) for name in names if hasattr(mmap, name))


def forget_read_pages(mapped: Iterable[mmap.mmap]) -> bool:
    """Unmap the pages of memory-mapped files that were only read (MADV_DONTNEED): the process's resident memory
    drops, the pages stay in the OS file cache, and touching them again reads no disk. Only for maps nothing was
    written to: on a private map it would drop written pages (use `release_pages` there). False where it failed."""
    return hasattr(mmap, "MADV_DONTNEED") and _advise(mapped, mmap.MADV_DONTNEED)


def drop_file_cache(paths: Iterable[str | Path]) -> None:
    """Ask the OS to drop the page cache of files read once (clean pages only: nothing is lost)."""
    advice = getattr(os, "POSIX_FADV_DONTNEED", None)
    if advice is None:
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, advice)
        finally:
            os.close(fd)
