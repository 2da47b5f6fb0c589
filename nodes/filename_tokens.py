"""Tokens in filename prefixes, expanded as ComfyUI does.

`%date:FORMAT%` is what ComfyUI's frontend expands when it queues a prompt (`applyTextReplacements` / `formatDate`:
`yyyy`, `yy`, `M`/`MM`, `d`/`dd`, `h`/`hh`, `m`/`mm`, `s`/`ss`); graphs queued through the API arrive unexpanded, so
it is expanded here too. `%year%`, `%month%`, `%day%`, `%hour%`, `%minute%`, `%second%`, `%width%`, `%height%` are
what the server's `folder_paths.get_save_image_path` expands for its own save nodes.
"""

from __future__ import annotations

import re
import time

_DATE_TOKEN = re.compile(r"%date:([^%]*)%")
_DATE_PART = re.compile(r"dd?|MM?|hh?|mm?|ss?|yyy?y?")


def format_date(pattern: str, now: time.struct_time) -> str:
    parts = {"d": now.tm_mday, "M": now.tm_mon, "h": now.tm_hour, "m": now.tm_min, "s": now.tm_sec}

    def part(match: re.Match) -> str:
        text = match.group(0)
        if text == "yy":
            return str(now.tm_year)[2:]
        if text == "yyyy":
            return str(now.tm_year)
        if text[0] in parts:
            return str(parts[text[0]]).zfill(len(text))
        return text

    return _DATE_PART.sub(part, pattern)


def expand_filename_tokens(prefix: str, width: int, height: int, now: time.struct_time | None = None) -> str:
    """`prefix` with ComfyUI's date, time and size tokens replaced (local time, as ComfyUI uses)."""
    if "%" not in prefix:
        return prefix
    now = now or time.localtime()
    prefix = _DATE_TOKEN.sub(lambda match: format_date(match.group(1), now), prefix)
    values = {
        "width": width, "height": height, "year": now.tm_year, "month": f"{now.tm_mon:02d}",
        "day": f"{now.tm_mday:02d}", "hour": f"{now.tm_hour:02d}", "minute": f"{now.tm_min:02d}",
        "second": f"{now.tm_sec:02d}",
    }
    for name, value in values.items():
        prefix = prefix.replace(f"%{name}%", str(value))
    return prefix
