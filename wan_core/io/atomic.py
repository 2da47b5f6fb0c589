"""Output files that are either complete or absent: a temporary file beside the target, renamed into place once it is
whole; writability probed before any work; unique names reserved atomically; OS errors said in words."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from ..errors import WanError

_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EFBIG: "the file size limit was reached (disk full or ulimit -f)",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
}


class OutputWriteError(WanError, OSError):
    """A result file could not be written completely; nothing was left under its name."""


def describe_os_error(error: OSError) -> str:
    """`the disk is full`, `permission denied`, ... or the OS's own words for other errors."""
    return _CAUSES.get(error.errno or 0) or error.strerror or str(error)


def describe_message(text: str) -> str:
    """The cause named in a tool's error text (ffmpeg's, safetensors'), in the words of `describe_os_error`."""
    lowered = text.lower()
    for code in _CAUSES:
        if os.strerror(code).lower() in lowered or f"os error {code})" in lowered:
            return _CAUSES[code]
    return text.strip().splitlines()[-1] if text.strip() else "unknown error"


def temporary_path(target: Path) -> Path:
    """A fresh hidden name beside `target` with the same suffix (ffmpeg picks the container from it). The file is
    not created here, so the writer creates it with the usual permissions."""
    return target.parent / f".{target.stem}.{uuid.uuid4().hex[:12]}.partial{target.suffix}"


@contextlib.contextmanager
def atomic_target(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on a clean exit it replaces `target`, on an error it is removed (an
    existing `target` stays as it was). OS errors become an `OutputWriteError` naming the path and the cause."""
    target = Path(target)
    scratch = temporary_path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputWriteError(f"cannot write {target}: {describe_os_error(error)}") from error
    try:
        yield scratch
        os.replace(scratch, target)
    except OutputWriteError:
        raise
    except OSError as error:
        raise OutputWriteError(f"cannot write {target}: {describe_os_error(error)}") from error
    finally:
        with contextlib.suppress(FileNotFoundError):
            scratch.unlink()


def probe_writable(folder: str | Path, what: str) -> None:
    """Create and remove a file in `folder` (made if missing), so an unwritable output folder is found before any
    model loads. Raises `OutputWriteError` naming the folder and the cause."""
    folder = Path(folder) if str(folder) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=".wan22-write-probe-", dir=folder)
        os.close(handle)
        os.unlink(name)
    except OSError as error:
        raise OutputWriteError(f"{what}: cannot write into {folder}: {describe_os_error(error)}") from error


def reserve_numbered(folder: Path, stem: str, suffix: str, digits: int = 5) -> Path:
    """Create an empty `<stem>_NNNNN<suffix>` in `folder` with O_EXCL, numbered above every existing one, and return
    it: two writers running at once never get the same name. The caller replaces or removes the placeholder."""
    pattern = re.compile(rf"^{re.escape(stem)}_(\d{{{digits}}})")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        taken = [int(m.group(1)) for name in os.listdir(folder) if (m := pattern.match(name))]
        number = max(taken, default=0) + 1
        while True:
            path = folder / f"{stem}_{number:0{digits}d}{suffix}"
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                return path
            except FileExistsError:
                number += 1
    except OSError as error:
        raise OutputWriteError(f"cannot create a file in {folder}: {describe_os_error(error)}") from error


def write_safetensors_atomic(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """`safetensors.torch.save_file` through `atomic_target`; its errors name the path and the cause."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_target(path) as scratch:
        try:
            save_file(tensors, str(scratch), metadata=metadata)
        except OSError:
            raise
        except Exception as error:  # safetensors raises its own error type carrying the OS message
            raise OutputWriteError(f"cannot write {path}: {describe_message(str(error))}") from error
    return path
