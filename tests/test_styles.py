import json
import logging

import pytest

from nodes.styler import Wan22PromptStyler
from wan_core.errors import InputError
from wan_core.styles import STYLES_DIR, extract_style_tags, find_style, load_styles, style_prompt

REQUIRED_THEMES = ("cinematic", "product", "ink", "japanese", "documentary", "anime", "drone", "timelapse", "macro",
                   "noir", "cyberpunk", "claymation", "watercolor", "35mm", "slow motion", "underwater")


def write_styles(folder, name, entries):
    path = folder / name
    path.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture
def styles(tmp_path):
    write_styles(tmp_path, "b_user.json", [
        {"name": "Noir", "prompt": "noir film of {prompt}, high contrast", "negative_prompt": "color"},
        {"name": "Neon", "prompt": "{prompt}, neon glow", "negative_prompt": "daylight"},
    ])
    write_styles(tmp_path, "a_pack.json", [
        {"name": "Noir", "prompt": "PACK {prompt}", "negative_prompt": "pack"},
        {"name": "水墨", "prompt": "水墨画，{prompt}，留白", "negative_prompt": "写实照片"},
        {"name": "Suffix only", "prompt": "watercolor look"},
    ])
    return load_styles(tmp_path)


def test_first_file_in_name_order_wins_duplicates(styles):
    assert styles["Noir"].prompt == "PACK {prompt}"
    assert list(styles) == ["Noir", "水墨", "Suffix only", "Neon"]


def test_apply_style_appends_user_negative_after_style_negative(styles):
    assert style_prompt(styles, "a cat", "blurry", "Neon") == ("a cat, neon glow", "daylight, blurry")
    assert style_prompt(styles, "a cat", "", "none") == ("a cat", "")


def test_template_without_placeholder_appends_style_and_empty_prompt_leaves_no_dangling_comma(styles):
    assert style_prompt(styles, "a boat", "", "Suffix only") == ("a boat, watercolor look", "")
    assert style_prompt(styles, "", "", "Neon") == ("neon glow", "daylight")


def test_inline_tags_are_removed_and_compose_in_order_after_the_node_style(styles):
    positive, negative = style_prompt(styles, "[Style: Neon] a cat on a roof, [style:suffix only]", "blurry", "水墨")
    assert positive == "水墨画，a cat on a roof，留白, neon glow, watercolor look"
    assert negative == "daylight, 写实照片, blurry"


def test_chinese_prompt_and_chinese_tag_syntax(styles):
    text, names = extract_style_tags("一只白鹤飞过湖面【风格：水墨】")
    assert (text, names) == ("一只白鹤飞过湖面", ["水墨"])
    assert style_prompt(styles, "一只白鹤飞过湖面 [风格: 水墨]") == ("水墨画，一只白鹤飞过湖面，留白", "写实照片")


def test_unknown_style_names_close_matches(styles):
    with pytest.raises(InputError, match=r"Unknown prompt style 'Nior'.*Did you mean: Noir"):
        style_prompt(styles, "a cat [Style: Nior]")
    with pytest.raises(InputError, match="Neon"):
        find_style(styles, "neonn")
    assert find_style(styles, "NOIR").name == "Noir"


def test_broken_files_are_skipped_with_a_warning(tmp_path, caplog):
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    write_styles(tmp_path, "dict.json", {"name": "x"})
    write_styles(tmp_path, "ok.json", [{"name": "Good", "prompt": "{prompt}!"}, {"prompt": "nameless"}])
    with caplog.at_level(logging.WARNING, logger="comfyui-wan22"):
        loaded = load_styles(tmp_path)
    assert list(loaded) == ["Good"]
    assert "broken.json" in caplog.text and "dict.json" in caplog.text and "entry 1" in caplog.text


def test_shipped_styles_cover_video_themes():
    shipped = load_styles(STYLES_DIR)
    assert len(shipped) >= 30
    for style in shipped.values():
        assert "{prompt}" in style.prompt and style.negative_prompt, style.name
    corpus = " ".join(f"{s.name} {s.prompt}".lower() for s in shipped.values())
    missing = [theme for theme in REQUIRED_THEMES if theme not in corpus]
    assert not missing
    assert any("\u4e00" <= ch <= "\u9fff" for ch in corpus)


def test_node_lists_styles_and_styles_prompt():
    spec = Wan22PromptStyler.INPUT_TYPES()["required"]
    names = spec["style"][0]
    assert names[0] == "none" and "Cinematic Lighting" in names and "Anime" in names
    assert spec["prompt"][1]["multiline"] and spec["negative_prompt"][1]["multiline"]
    positive, negative = Wan22PromptStyler().style("a red fox in snow [Style: Drone Aerial]", "Cinematic Lighting", "")
    assert positive.startswith("aerial drone footage of cinematic shot of a red fox in snow,")
    assert "[Style" not in positive and "flat lighting" in negative and "propeller in frame" in negative
