"""The canvas extension (js/wan22.js) in headless Chromium against tests/js/harness.html and stub app/api modules."""

import functools
import html
import re
import shutil
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HARNESS_DIR = REPO / "tests" / "js"
# URL path -> file: the extension is served where ComfyUI serves WEB_DIRECTORY, so its "../../scripts/app.js"
# import resolves to /scripts/app.js, which is the stub here.
ROUTES = {
    "/harness.html": HARNESS_DIR / "harness.html",
    "/scripts/app.js": HARNESS_DIR / "stub_app.js",
    "/scripts/api.js": HARNESS_DIR / "stub_api.js",
}
EXTENSION_URL = "/extensions/comfyui-wan22/"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--virtual-time-budget=10000"]


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


class HarnessHandler(SimpleHTTPRequestHandler):
    def translate_path(self, path: str) -> str:
        path = path.split("?", 1)[0]
        if path.startswith(EXTENSION_URL):
            return str(REPO / "js" / Path(path[len(EXTENSION_URL):]).name)
        return str(ROUTES.get(path, HARNESS_DIR / "missing"))

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def harness_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(HarnessHandler, directory=str(HARNESS_DIR)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/harness.html"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def chromium():
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no chromium binary on PATH (apt-get install -y chromium) to run the canvas extension test")
    return binary


def run_chromium(binary: str, profile: Path, *args: str) -> str:
    result = subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                            capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def field(dom: str, element_id: str) -> str:
    match = re.search(rf'<b id="{element_id}"[^>]*>(.*?)</b>', dom, re.S)
    assert match, f"#{element_id} missing from the dumped DOM"
    return html.unescape(match.group(1))


def test_badge_progress_and_queue_text(chromium, harness_url, tmp_path):
    dom = run_chromium(chromium, tmp_path / "profile", "--dump-dom", harness_url)
    assert field(dom, "errors") == ""
    assert field(dom, "sampler-badge") == "GPU 1"
    assert field(dom, "sampler-progress") == "[GPU 1] high-noise expert, step 12/40"
    assert field(dom, "t5-badge") == "CPU"
    assert field(dom, "queue") == "queue: 3 queued, 1 running, 5 done, 0 failed"
    assert field(dom, "core-node") == "false"
    assert field(dom, "native-wan-node") == "false 0"  # ComfyUI's Wan22ImageToVideoLatent: no status, no widget
    assert field(dom, "report") == "GPU 0: test card"
    drawn = field(dom, "drawn").split(" | ")
    assert {"GPU 1", "CPU", "[GPU 1] high-noise expert, step 12/40", "queue: 3 queued, 1 running, 5 done, 0 failed"} \
        <= set(drawn)
    assert "GPU 0" not in drawn  # the event for the core KSampler draws nothing on it
    assert field(dom, "progress-after-start") == '""'
    assert field(dom, "sampler-widget") == "none / after execution_start: none"  # classic canvas: no DOM widget


def test_vue_node_mode_shows_badge_and_progress_in_a_dom_widget(chromium, harness_url, tmp_path):
    dom = run_chromium(chromium, tmp_path / "profile", "--dump-dom", harness_url + "?vue=1")
    assert field(dom, "errors") == ""
    assert field(dom, "sampler-widget") == (
        "GPU 1 | [GPU 1] high-noise expert, step 12/40 / after execution_start: GPU 1"
    )
    drawn = field(dom, "drawn").split(" | ")
    assert "[GPU 1] high-noise expert, step 12/40" not in drawn  # not drawn twice: the canvas overlay is off
    assert field(dom, "queue") == "queue: 3 queued, 1 running, 5 done, 0 failed"


def test_the_extension_knows_exactly_our_node_types():
    from nodes import NODE_CLASS_MAPPINGS

    listed = re.search(r"NODE_TYPES = new Set\(\[(.*?)\]\)", (REPO / "js" / "wan22.js").read_text(), re.S)
    assert sorted(re.findall(r'"(\w+)"', listed.group(1))) == sorted(NODE_CLASS_MAPPINGS)


def test_screenshot_renders(chromium, harness_url, tmp_path):
    screenshot = tmp_path / "canvas.png"
    run_chromium(chromium, tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=900,520", harness_url)
    data = screenshot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
