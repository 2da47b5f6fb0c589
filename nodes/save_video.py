"""Wan22SaveVideo: IMAGE frames -> H.264 MP4 (and optional PNG frames) in the output folder, workflow embedded."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch

from wan_core.errors import InputError
from wan_core.finite import check_finite_number
from wan_core.io.atomic import OutputWriteError, describe_message, probe_writable, reserve_numbered
from wan_core.io.ffmpeg_binary import FfmpegMissingError, ffmpeg_executable
from wan_core.video_io import save_video

from . import host
from .filename_tokens import expand_filename_tokens
from .vae_nodes import images_to_video

CATEGORY = "Wan2.2"
_FFMETADATA_SPECIAL = re.compile(r"([=;#\\\n])")


def resolve_prefix(output_dir: str, prefix: str) -> tuple[Path, str]:
    """(folder inside `output_dir`, file stem) for a prefix such as `wan22/video`; refuses any way out of it."""
    cleaned = prefix.strip().replace("\\", "/")
    parts = PurePosixPath(cleaned).parts
    if (
        not cleaned
        or cleaned.startswith("/")
        or PureWindowsPath(prefix).drive
        or ".." in parts
        or cleaned.endswith("/")
    ):
        raise InputError(
            f"filename_prefix {prefix!r} must be a relative name such as 'wan22/video' (no '..', no absolute path, "
            "not ending in '/'); files are always written inside ComfyUI's output folder."
        )
    root = Path(output_dir).resolve()
    folder = (root / PurePosixPath(cleaned).parent).resolve()
    if folder != root and root not in folder.parents:  # a symlinked subfolder pointing elsewhere
        raise InputError(f"filename_prefix {prefix!r} leads outside the output folder {root}; pick another name.")
    return folder, PurePosixPath(cleaned).name


def workflow_metadata(prompt: Any, extra_pnginfo: Any) -> dict[str, str]:
    """MP4 tags as ComfyUI's SaveVideo writes them (`prompt`, `workflow`, ...) plus a `comment` holding both, the form
    VideoHelperSuite reads. Values are JSON text. None when ComfyUI runs with `--disable-metadata`."""
    tags: dict[str, str] = {}
    if host.metadata_disabled():
        return tags
    if prompt is not None:
        tags["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        tags[key] = json.dumps(value)
    if tags:
        tags["comment"] = json.dumps({key: json.loads(value) for key, value in tags.items()})
    return tags


def embed_metadata(path: Path, tags: dict[str, str]) -> None:
    """Rewrite the MP4 with `tags` (stream copy, no re-encode). The tags go through an FFMETADATA file, so large
    workflows do not hit the command-line length limit."""
    lines = [";FFMETADATA1"] + [key + "=" + _FFMETADATA_SPECIAL.sub(r"\\\1", value) for key, value in tags.items()]
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        meta_file = Path(scratch) / "metadata.txt"
        meta_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tagged = Path(scratch) / path.name
        result = subprocess.run(
            [
                ffmpeg_executable(), "-v", "error", "-y", "-i", str(path), "-i", str(meta_file),
                "-map", "0", "-map_metadata", "1", "-c", "copy", "-movflags", "use_metadata_tags", str(tagged),
            ],
            capture_output=True,
        )
        if result.returncode != 0:
            cause = describe_message(result.stderr.decode("utf-8", "replace"))
            raise OutputWriteError(f"cannot embed the workflow into {path}: {cause}")
        os.replace(tagged, path)


class Wan22SaveVideo:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "images": ("IMAGE",),
                "filename_prefix": ("STRING", {
                    "default": "wan22/video",
                    "tooltip": "Relative to ComfyUI's output folder; a '/' makes subfolders. '..' is refused. "
                    "ComfyUI's tokens work: %date:yyyy-MM-dd%, %year%, %month%, %day%, %hour%, %width%, %height%.",
                }),
                "fps": ("FLOAT", {"default": 16.0, "min": 1.0, "max": 120.0, "step": 1.0}),
                "save_frames": ("BOOLEAN", {"default": False, "tooltip": "Also write every frame as a PNG."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix: str) -> bool | str:
        """Run by ComfyUI before the graph executes: a bad prefix, an unwritable output folder or a missing ffmpeg
        is reported before any model works, not after the whole generation."""
        try:
            resolve_prefix(host.output_directory(), filename_prefix)  # %tokens% are filled in later
            probe_writable(host.output_directory(), "Save Video")
            ffmpeg_executable()
        except (InputError, OutputWriteError, FfmpegMissingError) as error:
            return str(error)
        return True

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"
    CATEGORY = CATEGORY
    DESCRIPTION = "Saves an H.264 MP4 into the output folder (workflow embedded) and previews it on the node."

    def save(
        self,
        images: torch.Tensor,
        filename_prefix: str,
        fps: float,
        save_frames: bool,
        prompt: Any = None,
        extra_pnginfo: Any = None,
        unique_id: str | None = None,
    ) -> dict:
        output_dir = host.output_directory()
        check_finite_number("fps", fps)
        prefix = expand_filename_tokens(filename_prefix, int(images.shape[2]), int(images.shape[1]))
        folder, stem = resolve_prefix(output_dir, prefix)
        path = reserve_numbered(folder, stem, ".mp4")  # an empty placeholder: concurrent saves get other numbers
        frames_dir = folder / f"{path.stem}_frames" if save_frames else None
        tags = workflow_metadata(prompt, extra_pnginfo)
        try:
            save_video(path, images_to_video(images), fps, frames_dir=frames_dir,
                       finalize=(lambda scratch: embed_metadata(scratch, tags)) if tags else None)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        subfolder = os.path.relpath(folder, Path(output_dir).resolve()).replace(os.sep, "/")
        saved = {"filename": path.name, "subfolder": "" if subfolder == "." else subfolder, "type": "output"}
        return {"ui": {"images": [saved], "animated": (True,)}, "result": ()}
