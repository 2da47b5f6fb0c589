"""Driving a real ComfyUI for the host benchmark: a base folder of its own (custom_nodes with this pack and the
probe, models linked from the generated files, input/output/user), the server process, /prompt and /history, and
an nvidia-smi sampler. Standard library only (the server runs in its own Python)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from host_models import MODEL_FILES, tiny_umt5_shim
from host_probe import PROBE_PACKAGE, PROBE_SOURCE
from host_results import history_error, parse_smi_line

PACK_LINK = "comfyui-wan22-host-bench"
TINY_SHIM_PACKAGE = "wan22_host_tiny_umt5"


def prepare_base(base: Path, repo: Path, models_root: Path, *, tiny: bool) -> Path:
    """`base` as a ComfyUI `--base-directory`: custom_nodes/{pack link, probe, tiny shim when `tiny`}, the model
    files linked under models/, empty input/output/user. An existing `base` is replaced."""
    if base.exists():
        shutil.rmtree(base)
    nodes = base / "custom_nodes"
    nodes.mkdir(parents=True)
    (nodes / PACK_LINK).symlink_to(repo.resolve(), target_is_directory=True)
    (nodes / PROBE_PACKAGE).mkdir()
    (nodes / PROBE_PACKAGE / "__init__.py").write_text(PROBE_SOURCE)
    if tiny:
        (nodes / TINY_SHIM_PACKAGE).mkdir()
        (nodes / TINY_SHIM_PACKAGE / "__init__.py").write_text(tiny_umt5_shim())
    for folder, name in MODEL_FILES:
        (base / "models" / folder).mkdir(parents=True, exist_ok=True)
        (base / "models" / folder / name).symlink_to((models_root / folder / name).resolve())
    for folder in ("input", "output", "user", "temp"):
        (base / folder).mkdir(exist_ok=True)
    return base


def _get(url: str, timeout: float = 10.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


class ComfyServer:
    """A ComfyUI server process on 127.0.0.1:`port` with `base` as its base directory; a context manager."""

    def __init__(self, comfyui: Path, base: Path, port: int, python: str, extra_args: list[str],
                 log_path: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.command = [python, str(comfyui / "main.py"), "--base-directory", str(base), "--listen", "127.0.0.1",
                        "--port", str(port), "--disable-auto-launch", "--user-directory", str(base / "user"),
                        "--database-url", "sqlite:///:memory:", *extra_args]
        self.comfyui, self.log_path = comfyui, log_path
        self.process: subprocess.Popen | None = None
        self.client_id = uuid.uuid4().hex

    def __enter__(self) -> ComfyServer:
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in __exit__
        self.process = subprocess.Popen(self.command, cwd=self.comfyui, stdout=self.log, stderr=subprocess.STDOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout: float = 600.0) -> float:
        """Seconds until /object_info answers; raises with the log's tail when the process dies or times out."""
        start = time.time()
        while time.time() - start < timeout:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                _get(f"{self.url}/object_info", timeout=30)
                return time.time() - start
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1.0)
        raise TimeoutError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def dump_stacks(self, settle_s: float = 2.0) -> bool:
        """Have the server write every thread's stack into its log (the probe's SIGUSR1 handler); False when the
        process is gone or the platform has no SIGUSR1."""
        if self.process is None or self.process.poll() is not None or not hasattr(signal, "SIGUSR1"):
            return False
        self.process.send_signal(signal.SIGUSR1)
        time.sleep(settle_s)
        return True

    def node_types(self) -> set[str]:
        return set(_get(f"{self.url}/object_info", timeout=60))

    def queue(self, graph: dict) -> str:
        body = json.dumps({"prompt": graph, "client_id": self.client_id}).encode()
        request = urllib.request.Request(f"{self.url}/prompt", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.load(response)["prompt_id"]
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"ComfyUI refused the graph ({error.code}): "
                               f"{error.read().decode(errors='replace')}") from error

    def wait(self, prompt_id: str, timeout: float, poll_s: float = 0.25) -> dict:
        """The /history entry once the prompt has finished (completed or failed)."""
        start = time.time()
        while time.time() - start < timeout:
            entry = _get(f"{self.url}/history/{prompt_id}").get(prompt_id)
            if entry is not None and (entry.get("status", {}).get("completed") or history_error(entry)):
                return entry
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI died during the run:\n{self.log_tail()}")
            time.sleep(poll_s)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")

    def probe(self) -> dict:
        return _get(f"{self.url}/wan22_probe", timeout=60)

    def free(self) -> None:
        """Ask ComfyUI to unload its models and free memory between runs (POST /free)."""
        body = json.dumps({"unload_models": True, "free_memory": True}).encode()
        request = urllib.request.Request(f"{self.url}/free", data=body, headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=60).close()


class SmiSampler:
    """`nvidia-smi` utilisation and memory of every GPU every `interval_ms`, in a background process; `samples`
    holds dicts of `host_results.parse_smi_line`. Without nvidia-smi it records nothing."""

    def __init__(self, interval_ms: int = 250) -> None:
        self.samples: list[dict] = []
        self.interval_ms = interval_ms
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> SmiSampler:
        if shutil.which("nvidia-smi"):
            self.process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                 f"--loop-ms={self.interval_ms}"], stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            sample = parse_smi_line(line, time.time())
            if sample is not None:
                self.samples.append(sample)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait()


def compute_apps() -> list[dict]:
    """`nvidia-smi --query-compute-apps`: which process holds how much memory on which GPU (index)."""
    if not shutil.which("nvidia-smi"):
        return []

    def query(what: str, fields: str) -> list[list[str]]:
        out = subprocess.run(["nvidia-smi", f"--query-{what}={fields}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, check=False).stdout
        return [[p.strip() for p in line.split(",")] for line in out.splitlines() if line.strip()]

    index = {uuid_: int(i) for i, uuid_ in query("gpu", "index,uuid")}
    return [{"pid": int(pid), "gpu": index.get(gpu_uuid), "used_mib": float(used)}
            for pid, gpu_uuid, used in query("compute-apps", "pid,gpu_uuid,used_memory") if used.isdigit()]


def new_videos(output: Path, before: set[Path]) -> list[Path]:
    """MP4 files under `output` that were not in `before`, oldest first."""
    return sorted((p for p in output.rglob("*.mp4") if p not in before), key=lambda p: p.stat().st_mtime)


def environment(comfyui: Path, python: str) -> dict:
    """The server's ComfyUI commit and version, and its Python's torch and attention packages."""
    script = ("import json, importlib.util as u, torch; print(json.dumps({'torch': torch.__version__, "
              "'cuda': torch.version.cuda, 'gpus': [torch.cuda.get_device_name(i) for i in "
              "range(torch.cuda.device_count())], 'sageattention': u.find_spec('sageattention') is not None, "
              "'flash_attn': u.find_spec('flash_attn') is not None}))")
    info = json.loads(subprocess.run([python, "-c", script], capture_output=True, text=True, check=True).stdout)
    commit_file = comfyui / ".comfyui_commit"  # written by host_e2e_wheels.sh
    commit = commit_file.read_text().strip() if commit_file.is_file() else subprocess.run(
        ["git", "-C", str(comfyui), "rev-parse", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
    version_file = comfyui / "comfyui_version.py"
    version = version_file.read_text().split('"')[1] if version_file.is_file() else None
    return {**info, "comfyui_commit": commit or None, "comfyui_version": version}
