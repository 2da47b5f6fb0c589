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


def next_counter(folder: Path, stem: str) -> int:
    """1 + the highest `<stem>_NNNNN` already in `folder` (so nothing is overwritten)."""
    pattern = re.compile(rf"^{re.escape(stem)}_(\d{{5}})")
    found = [int(m.group(1)) for name in os.listdir(folder) if (m := pattern.match(name))] if folder.is_dir() else []
    return max(found, default=0) + 1


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
    import imageio_ffmpeg

    lines = [";FFMETADATA1"] + [key + "=" + _FFMETADATA_SPECIAL.sub(r"\\\1", value) for key, value in tags.items()]
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        meta_file = Path(scratch) / "metadata.txt"
        meta_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tagged = Path(scratch) / path.name
        subprocess.run(
            [
                imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(path), "-i", str(meta_file),
                "-map", "0", "-map_metadata", "1", "-c", "copy", "-movflags", "use_metadata_tags", str(tagged),
            ],
            check=True,
            capture_output=True,
        )
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
        prefix = expand_filename_tokens(filename_prefix, int(images.shape[2]), int(images.shape[1]))
        folder, stem = resolve_prefix(output_dir, prefix)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{stem}_{next_counter(folder, stem):05d}"
        path = folder / f"{name}.mp4"
        frames_dir = folder / f"{name}_frames" if save_frames else None
        save_video(path, images_to_video(images), fps, frames_dir=frames_dir)
        tags = workflow_metadata(prompt, extra_pnginfo)
        if tags:
            embed_metadata(path, tags)
        subfolder = os.path.relpath(folder, Path(output_dir).resolve()).replace(os.sep, "/")
        saved = {"filename": path.name, "subfolder": "" if subfolder == "." else subfolder, "type": "output"}
        return {"ui": {"images": [saved], "animated": (True,)}, "result": ()}
