"""Wan22PromptStyler: wraps a prompt in a style from the pack's `styles/*.json` files (SDXL-prompt-styler format)."""

from __future__ import annotations

from wan_core.styles import NO_STYLE, STYLES_DIR, load_styles, style_prompt


class Wan22PromptStyler:
    """Positive and negative prompt text after a style (and any inline `[Style: NAME]` tags) is applied."""

    CATEGORY = "Wan2.2"
    FUNCTION = "style"
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("positive", "negative")
    DESCRIPTION = (
        "Applies a prompt style from the styles/*.json files (drop SDXL-prompt-styler files there too). Inline "
        "[Style: NAME] tags in the prompt apply further styles in order. The style's negative comes before yours."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        # Listed when ComfyUI asks for the node definitions, so files added to styles/ show after a refresh.
        names = [NO_STYLE, *load_styles(STYLES_DIR)]
        return {
            "required": {
                "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "Chinese or English; may hold "
                                      "[Style: NAME] tags."}),
                "style": (names, {"default": NO_STYLE}),
                "negative_prompt": ("STRING", {"multiline": True, "default": "",
                                               "tooltip": "Appended after the style's negative prompt."}),
            }
        }

    def style(self, prompt: str, style: str, negative_prompt: str) -> tuple[str, str]:
        return style_prompt(load_styles(STYLES_DIR), prompt, negative_prompt, style)
