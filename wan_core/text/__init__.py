"""The UMT5-XXL text encoder of Wan (transformers' `UMT5EncoderModel`), its tokenizer, key maps and prompt cleaning.

The public names are resolved lazily so that `import wan_core.text` does not import transformers.
"""

from __future__ import annotations

from wan_core._lazy import lazy_getattr

_EXPORTS = {
    "load_text_encoder": "wan_core.text.encoder",
    "text_encoder_from_state_dict": "wan_core.text.encoder",
    "TextEncoder": "wan_core.text.encoder",
    "infer_config": "wan_core.text.encoder",
    "UMT5Tokenizer": "wan_core.text.tokenizer",
    "load_tokenizer": "wan_core.text.tokenizer",
    "tokenizer_from_spiece": "wan_core.text.tokenizer",
    "build_demo_tokenizer": "wan_core.text.tokenizer",
    "build_demo_spiece_model": "wan_core.text.tokenizer",
    "TINY_UMT5_CONFIG": "wan_core.text.demo",
    "build_tiny_umt5": "wan_core.text.demo",
    "from_official": "wan_core.text.keymap",
    "to_official": "wan_core.text.keymap",
    "clean_prompt": "wan_core.text.cleaning",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
