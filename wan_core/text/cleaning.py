"""Prompt cleaning as the reference does it (`wan/modules/tokenizers.py`, `clean='whitespace'`).

`basic_clean`: ftfy fixes mojibake and odd Unicode, HTML entities are unescaped twice (`&amp;amp;` -> `&`), the ends are
stripped. `whitespace_clean`: every run of whitespace becomes one space. The reference applies both, in that order.
"""

from __future__ import annotations

import html

import ftfy

from ..errors import InputError

try:  # the reference uses the `regex` module; its `\s` is the Unicode White_Space set
    import regex as _re
except ImportError:  # pragma: no cover - `regex` comes with transformers
    import re as _re

_WHITESPACE = _re.compile(r"\s+")


def basic_clean(text: str) -> str:
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def whitespace_clean(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


def clean_prompt(text: str) -> str:
    """The text the reference hands to the tokenizer for `text`."""
    if not isinstance(text, str):
        raise InputError(f"A prompt must be a str, not {type(text).__name__}.")
    return whitespace_clean(basic_clean(text))
