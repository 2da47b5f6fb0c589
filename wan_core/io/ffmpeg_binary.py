"""The ffmpeg binary the pack runs (MP4 writes, their read-back check, minterpolate): imageio-ffmpeg's bundled one
(a requirement of the pack), else an `ffmpeg` on PATH, so a host that lacks the wheel but has ffmpeg still works."""

from __future__ import annotations

import shutil

from ..errors import WanError

NEEDED = "ffmpeg is needed to write (and to interpolate) videos"
HOW_TO_FIX = ("install imageio-ffmpeg into the Python that runs this (`python -m pip install imageio-ffmpeg`; for "
              "ComfyUI its own Python, e.g. python_embeded\\python.exe on the portable build), or put an ffmpeg "
              "binary on PATH")


class FfmpegMissingError(WanError):
    """No ffmpeg binary can be found."""


def ffmpeg_executable() -> str:
    """The path of the ffmpeg binary to run; `FfmpegMissingError` (saying how to get one) where there is none."""
    try:
        import imageio_ffmpeg
    except ImportError:
        found = shutil.which("ffmpeg")
        if found:
            return found
        raise FfmpegMissingError(f"{NEEDED}, and neither the imageio-ffmpeg package nor an ffmpeg on PATH was found: "
                                 f"{HOW_TO_FIX}.") from None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as error:  # a platform without a bundled binary, and none on PATH or in IMAGEIO_FFMPEG_EXE
        raise FfmpegMissingError(f"{NEEDED}, and none was found ({error}): {HOW_TO_FIX}.") from error
