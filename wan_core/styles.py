"""Prompt styles: JSON style files in the SDXL-prompt-styler format, applied to video prompts.

A style file is a JSON list of `{"name": ..., "prompt": "... {prompt} ...", "negative_prompt": ...}` (the format of
twri/sdxl_prompt_styler, so users' existing files work when dropped into the styles folder). Every `*.json` in the
folder is read in file-name order; when two styles share a name, the first one read wins.

A prompt may carry inline tags, `[Style: NAME]` (also `[风格: NAME]`, full-width brackets and colon), which are removed
from the text and applied in the order they appear, after the style chosen on the node.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from wan_core.errors import InputError

LOG = logging.getLogger("comfyui-wan22")

NO_STYLE = "none"
PROMPT_PLACEHOLDER = "{prompt}"
STYLES_DIR = Path(__file__).resolve().parent.parent / "styles"

# A tag name stops at the next bracket and is at most 100 characters, so matching stays linear in the prompt length.
_STYLE_TAG = re.compile(r"[\[【]\s*(?:style|风格)\s*[:：]\s*([^\]】\[【]{1,100}?)\s*[\]】]", re.IGNORECASE)
MAX_STYLE_TAGS = 16  # different styles per prompt (a repeated tag counts once)
MAX_STYLE_FILE_BYTES = 4 * 1024 * 1024
# Separators left dangling when a tag or an empty prompt is removed: "a, , b" -> "a, b".
_DOUBLED_SEPARATOR = re.compile(r"\s*([,，、;；])(?:\s*[,，、;；])+")
_EDGE_SEPARATORS = " \t\r\n,，、;；"


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str
    negative_prompt: str = ""
    source: str = ""

    def apply(self, prompt: str, negative_prompt: str = "") -> tuple[str, str]:
        """(positive, negative): the prompt placed into the style's template (appended when the template has no
        `{prompt}`), and the style's negative followed by the given one."""
        if PROMPT_PLACEHOLDER in self.prompt:
            # The prompt goes into the first placeholder only: with two, each applied style would double it.
            before, _, after = self.prompt.partition(PROMPT_PLACEHOLDER)
            positive = before + prompt + after.replace(PROMPT_PLACEHOLDER, "")
        else:
            positive = join_prompts([prompt, self.prompt])
        return tidy_prompt(positive), join_prompts([self.negative_prompt, negative_prompt])


def join_prompts(parts: Iterable[str]) -> str:
    """Non-empty parts joined with ", ", each given once."""
    kept: list[str] = []
    for part in parts:
        part = tidy_prompt(part)
        if part and part not in kept:
            kept.append(part)
    return ", ".join(kept)


def tidy_prompt(text: str) -> str:
    """Collapse repeated separators and trim separators and spaces at both ends."""
    text = _DOUBLED_SEPARATOR.sub(r"\1", text)
    return re.sub(r"[ \t]{2,}", " ", text).strip(_EDGE_SEPARATORS)


def load_styles(folder: str | Path = STYLES_DIR) -> dict[str, Style]:
    """Every style of the `*.json` files in `folder`, by name, in file-name order (first name wins).

    A file that cannot be used is skipped with a warning naming it and what to fix, so that one broken file dropped
    into the folder does not take the node away."""
    styles: dict[str, Style] = {}
    for path in sorted(Path(folder).glob("*.json")):
        try:
            entries = _read_style_file(path)
        except InputError as error:
            LOG.warning("[Wan2.2] skipping style file: %s", error)
            continue
        for style in entries:
            if style.name.casefold() == NO_STYLE:
                LOG.warning("[Wan2.2] style name %r in %s is reserved for 'no style'; rename it.", style.name, path)
            elif style.name in styles:
                LOG.info("[Wan2.2] style %r in %s is shadowed by %s", style.name, path, styles[style.name].source)
            else:
                styles[style.name] = style
    return styles


def _read_style_file(path: Path) -> list[Style]:
    try:
        size = path.stat().st_size
        if size > MAX_STYLE_FILE_BYTES:
            raise InputError(f"{path} is {size} bytes; style files are read up to {MAX_STYLE_FILE_BYTES} bytes. "
                             "Split it into several files.")
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path} is not a readable UTF-8 JSON file ({error}); fix or remove it.") from error
    except RecursionError as error:
        raise InputError(f"{path} is nested too deeply to be a style file (a flat list of objects); fix or remove "
                         "it.") from error
    if not isinstance(data, list):
        raise InputError(f"{path} must hold a JSON list of {{name, prompt, negative_prompt}} objects.")
    styles = []
    for index, entry in enumerate(data):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name.strip() or not isinstance(entry.get("prompt", ""), str):
            LOG.warning("[Wan2.2] %s entry %d needs a text 'name' and 'prompt'; skipped.", path, index)
            continue
        negative = entry.get("negative_prompt") or ""
        styles.append(Style(name.strip(), entry.get("prompt") or PROMPT_PLACEHOLDER, str(negative), str(path)))
    return styles


def find_style(styles: dict[str, Style], name: str) -> Style:
    """The style called `name` (exact, else the only case-insensitive match); InputError naming close matches."""
    if name in styles:
        return styles[name]
    folded = [style for key, style in styles.items() if key.casefold() == name.casefold()]
    if len(folded) == 1:
        return folded[0]
    close = difflib.get_close_matches(name, list(styles), n=5, cutoff=0.5)
    by_lower = {key.casefold(): key for key in styles}
    close += [by_lower[key] for key in difflib.get_close_matches(name.casefold(), list(by_lower), n=5, cutoff=0.5)]
    hint = f" Did you mean: {', '.join(dict.fromkeys(close))}?" if close else ""
    raise InputError(
        f"Unknown prompt style {name!r}.{hint} Styles come from the *.json files in the styles folder "
        f"({len(styles)} loaded); check the spelling or add the style to a file there."
    )


def extract_style_tags(prompt: str) -> tuple[str, list[str]]:
    """The prompt without its `[Style: NAME]` tags, and the tag names in order of appearance."""
    names = [match.strip() for match in _STYLE_TAG.findall(prompt)]
    return tidy_prompt(_STYLE_TAG.sub(" ", prompt)), names


def style_prompt(
    styles: dict[str, Style], prompt: str, negative_prompt: str = "", style: str = NO_STYLE
) -> tuple[str, str]:
    """(positive, negative) after applying `style` (NO_STYLE for none) and then each inline tag of the prompt.

    Every name is checked before any is applied, so one typo reports at once."""
    text, tag_names = extract_style_tags(prompt)
    names = list(dict.fromkeys(([] if style.casefold() == NO_STYLE else [style]) + tag_names))
    if len(names) > MAX_STYLE_TAGS:
        raise InputError(f"The prompt asks for {len(names)} different styles; at most {MAX_STYLE_TAGS} apply to one "
                         "prompt. Remove some [Style: ...] tags.")
    chosen = list({id(entry): entry for entry in (find_style(styles, name) for name in names)}.values())
    positive, negative = text, tidy_prompt(negative_prompt)
    for entry in chosen:
        positive, negative = entry.apply(positive, negative)
    return positive, negative
