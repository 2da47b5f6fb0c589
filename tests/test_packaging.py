"""Registry-ready packaging: pyproject metadata, license, icon, and the commands the docs and errors name."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".js", ".json", ".html"}


def _tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / name for name in names if Path(name).suffix in TEXT_SUFFIXES and (ROOT / name).is_file()]


def test_torch_is_left_to_the_host():
    requirements = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    for listed in (PYPROJECT["project"]["dependencies"], requirements.splitlines()):
        assert not [line for line in listed if re.match(r"\s*torch\b", line)]


def test_tool_comfy_is_complete_and_its_icon_is_shipped():
    comfy = PYPROJECT["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    repository = PYPROJECT["project"]["urls"]["Repository"].removeprefix("https://github.com/")
    prefix = f"https://raw.githubusercontent.com/{repository}/main/"
    assert comfy["Icon"].startswith(prefix)
    with Image.open(ROOT / comfy["Icon"].removeprefix(prefix)) as icon:  # the file the URL points at is in the repo
        assert icon.width <= 800 and icon.height <= 400  # the registry's limit
    assert PYPROJECT["project"]["license"] == {"file": "LICENSE"}
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text  # the full text, not a stub


def test_registry_models_are_the_files_the_templates_name():
    spec = importlib.util.spec_from_file_location("make_workflows", ROOT / "tools" / "make_workflows.py")
    generator = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = generator
    spec.loader.exec_module(generator)
    listed = {(m["location"], m["model_url"]) for m in PYPROJECT["tool"]["comfy"]["Models"]}
    published = {(f"/{directory}/{name}", url) for name, (url, directory) in generator.PUBLISHED_MODELS.items()}
    assert listed == published


def test_docs_and_errors_name_only_commands_that_exist():
    assert "scripts" not in PYPROJECT["project"]  # README's set-up installs no console script, so none is named
    for path in _tracked_text_files():
        if path.name == "test_packaging.py":
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        assert "huggingface-cli" not in text, f"{path.relative_to(ROOT)}: huggingface-cli is gone, use hf download"
        assert "wan22-generate" not in text, f"{path.relative_to(ROOT)}: no wan22-generate is installed"


def test_readme_first_commands_make_a_venv_and_run_the_demo_and_ci():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first, second = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)[:2]
    assert first.startswith("python3 -m venv ") and "wan_core.generate --demo" in first
    assert second.strip() == "bash .ci/run"
