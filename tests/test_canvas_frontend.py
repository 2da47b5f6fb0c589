"""js/wan22.js in the real ComfyUI frontend (the comfyui-frontend-package a ComfyUI serves), classic LiteGraph canvas
and Vue node mode, in headless Chromium.

Opt-in: needs a running ComfyUI with this pack in custom_nodes, e.g. one started with the current frontend from PyPI
(`--front-end-root <site-packages>/comfyui_frontend_package/static`), named by WAN22_COMFYUI_URL
(`http://127.0.0.1:8188`). A local proxy in front of it adds tests/js/frontend_probe.js to the page's extensions; the
probe loads a shipped template, replays the server events of one run and reports what the page shows.
"""

from __future__ import annotations

import json
import os
import re
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from test_canvas_js import chromium, run_chromium  # noqa: F401  (fixture)

PROBE = Path(__file__).resolve().parent / "js" / "frontend_probe.js"
PROBE_URL = "/wan22-probe/probe.js"
COMFYUI = os.environ.get("WAN22_COMFYUI_URL", "").rstrip("/")

pytestmark = pytest.mark.skipif(not COMFYUI, reason="set WAN22_COMFYUI_URL to a running ComfyUI with this pack")


class ProbeProxy(BaseHTTPRequestHandler):
    """Forwards to ComfyUI; adds the probe to /api/extensions and serves it."""

    def do_GET(self) -> None:
        if self.path.split("?")[0] == PROBE_URL:
            return self._reply(200, PROBE.read_bytes(), "text/javascript")
        try:
            with urllib.request.urlopen(COMFYUI + self.path, timeout=30) as response:
                body, status, kind = response.read(), response.status, response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as error:
            body, status, kind = error.read(), error.code, error.headers.get("Content-Type", "")
        if self.path.split("?")[0] == "/api/extensions":
            body = json.dumps([*json.loads(body), PROBE_URL]).encode()
        self._reply(status, body, kind)

    def do_POST(self) -> None:
        data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        request = urllib.request.Request(COMFYUI + self.path, data=data, method="POST",
                                         headers={"Content-Type": self.headers.get("Content-Type", "")})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                self._reply(response.status, response.read(), response.headers.get("Content-Type", ""))
        except urllib.error.HTTPError as error:
            self._reply(error.code, error.read(), error.headers.get("Content-Type", ""))

    def _reply(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def page_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ProbeProxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def probe(chromium_binary: str, url: str, profile: Path) -> dict:  # noqa: F811
    dom = run_chromium(chromium_binary, profile, "--virtual-time-budget=60000", "--window-size=1400,900",
                       "--dump-dom", url)
    match = re.search(r'<pre id="wan22-probe">(.*?)</pre>', dom, re.S)
    assert match, "the probe did not report (page did not load?)"
    import html

    return json.loads(html.unescape(match.group(1)))


def test_classic_canvas_draws_badge_and_progress(chromium, page_url, tmp_path):  # noqa: F811
    result = probe(chromium, page_url, tmp_path / "profile")
    assert result["errors"] == [] and result["vueNodesMode"] is False
    assert result["progress"] == "[GPU 1] high-noise expert, step 12/40"
    assert {"GPU 1", "CPU", "[GPU 1] high-noise expert, step 12/40"} <= set(result["drawn"])


def test_vue_node_mode_shows_badge_and_progress_in_the_node(chromium, page_url, tmp_path):  # noqa: F811
    result = probe(chromium, page_url + "?vue=1", tmp_path / "profile")
    assert result["errors"] == [] and result["vueNodesMode"] is True
    assert "GPU 1" in result["samplerDomText"] and "[GPU 1] high-noise expert, step 12/40" in result["samplerDomText"]
    assert "CPU" in result["t5DomText"]
