"""Turning what the host benchmark collected into its JSON: ComfyUI history entries, nvidia-smi samples, the
probe's memory and model placements, and the comparisons the issue asks for. No GPU, no server needed."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from pathlib import Path

MIB = 2**20


def execution_seconds(entry: dict) -> float | None:
    """Seconds from ComfyUI's `execution_start` to `execution_success` message of a /history entry."""
    stamps = {event: data.get("timestamp") for event, data in entry.get("status", {}).get("messages", [])}
    start, end = stamps.get("execution_start"), stamps.get("execution_success")
    return None if start is None or end is None else (end - start) / 1000.0


def history_error(entry: dict) -> str | None:
    """The failure a /history entry reports (node, type and message), None when it succeeded."""
    status = entry.get("status", {})
    if status.get("status_str") != "error":
        return None
    for event, data in status.get("messages", []):
        if event == "execution_error":
            return f"node {data.get('node_id')} ({data.get('node_type')}): {data.get('exception_type')}: " \
                   f"{data.get('exception_message')}"
    return "the prompt failed (no execution_error message)"


def saved_files(entry: dict) -> list[str]:
    """Output-relative paths of the files a /history entry lists (`images`, `gifs`, `videos` of any node)."""
    out = []
    for output in entry.get("outputs", {}).values():
        for key in ("images", "gifs", "videos"):
            for item in output.get(key, []):
                if isinstance(item, dict) and "filename" in item:
                    out.append("/".join(p for p in (item.get("subfolder", ""), item["filename"]) if p))
    return out


def ledger_jobs(paths: Iterable[Path]) -> list[dict]:
    """Each job's last state in the batch ledgers at `paths`, read as the batch queue reads them
    (`wan_core.batch.ledger`, which skips a line torn by a kill): index, state, seconds, worker and error, in job
    order; `started` jobs (still running when the run ended) carry their start time."""
    from wan_core.batch.ledger import JobLedger, JobState

    latest = {}
    for path in paths:
        latest.update(JobLedger(path).last_states())
    jobs = []
    for index, entry in sorted(latest.items()):
        job = {"job": index, "state": entry.state.value, "seconds": entry.seconds, "worker": entry.worker,
               "error": entry.error, "time": entry.time if entry.state is JobState.STARTED else None}
        jobs.append({k: v for k, v in job.items() if v is not None})
    return jobs


def node_seconds(events: list, graph: dict, prompt_id: str) -> list[list]:
    """`[node id, class_type, seconds]` for each node of `prompt_id` that ran, in order, from the probe's events
    (`[t, event, prompt_id, node]`): a node runs from its `executing` event to the prompt's next event. Nodes served
    from ComfyUI's cache send no event and are absent."""
    mine = sorted((e for e in events if e[2] == prompt_id), key=lambda e: e[0])
    out = []
    for (t, event, _, node), (t_next, *_rest) in zip(mine, mine[1:], strict=False):
        if event == "executing" and node is not None:
            out.append([node, graph.get(node, {}).get("class_type"), round(t_next - t, 3)])
    return out


def parse_smi_line(line: str, t: float) -> dict | None:
    """One `nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader,nounits` line."""
    parts = [p.strip() for p in line.split(",")]
    if len(parts) != 3 or not all(p.replace(".", "", 1).isdigit() for p in parts):
        return None
    return {"t": t, "gpu": int(parts[0]), "util": float(parts[1]), "mem_mib": float(parts[2])}


def summarize_smi(samples: Iterable[dict], t0: float, t1: float) -> dict[str, dict]:
    """Per GPU over [t0, t1]: peak and mean memory used (MiB, whole GPU as nvidia-smi sees it), mean and busy
    (> 0 %) share of utilisation, and the sample count."""
    by_gpu: dict[int, list[dict]] = {}
    for sample in samples:
        if t0 <= sample["t"] <= t1:
            by_gpu.setdefault(sample["gpu"], []).append(sample)
    return {
        str(gpu): {
            "peak_mem_mib": max(s["mem_mib"] for s in rows),
            "mean_mem_mib": round(statistics.fmean(s["mem_mib"] for s in rows), 1),
            "mean_util_pct": round(statistics.fmean(s["util"] for s in rows), 1),
            "busy_share": round(sum(s["util"] > 0 for s in rows) / len(rows), 3),
            "samples": len(rows),
        }
        for gpu, rows in sorted(by_gpu.items())
    }


def timeline(samples: Iterable[dict], t0: float, t1: float, every_s: float = 2.0) -> dict[str, list]:
    """Per GPU, `[seconds since t0, util %, MiB]` thinned to one sample per `every_s` (memory and utilisation
    over time, small enough for the JSON)."""
    out: dict[str, list] = {}
    last: dict[int, float] = {}
    for s in sorted(samples, key=lambda s: s["t"]):
        if t0 <= s["t"] <= t1 and s["t"] - last.get(s["gpu"], -1e9) >= every_s:
            out.setdefault(str(s["gpu"]), []).append([round(s["t"] - t0, 2), s["util"], s["mem_mib"]])
            last[s["gpu"]] = s["t"]
    return out


def probe_memory(memory: list, t0: float, t1: float) -> dict[str, float]:
    """Peak `torch.cuda.memory_allocated` per device (MiB) over [t0, t1] from the probe's samples."""
    peaks: dict[str, float] = {}
    for t, per_device in memory:
        if t0 <= t <= t1:
            for device, allocated in per_device.items():
                peaks[device] = max(peaks.get(device, 0.0), allocated / MIB)
    return {device: round(value, 1) for device, value in sorted(peaks.items())}


def probe_placements(placements: list, t0: float, t1: float) -> list[dict]:
    """Every model seen over [t0, t1]: role, class, the devices it ever had bytes on (in order of first
    appearance), peak MiB per device, and `moved_between_gpus` (bytes on two different CUDA devices)."""
    models: dict[int, dict] = {}
    for t, rows in placements:
        if not t0 <= t <= t1:
            continue
        for row in rows:
            model = models.setdefault(row["id"], {"role": row["role"], "class": row["class"], "devices": [],
                                                  "peak_mib": {}})
            for device, size in row["bytes"].items():
                if size <= 0 or device == "meta":  # built on meta, then loaded: no memory
                    continue
                if device not in model["devices"]:
                    model["devices"].append(device)
                model["peak_mib"][device] = round(max(model["peak_mib"].get(device, 0.0), size / MIB), 1)
    for model in models.values():
        model["moved_between_gpus"] = len({d for d in model["devices"] if d.startswith("cuda")}) > 1
    return sorted(models.values(), key=lambda m: (m["role"], m["class"]))


def _gpu_devices(models: list[dict], role: str) -> set[str]:
    return {d for m in models if m["role"] == role for d in m["devices"] if d.startswith("cuda")}


def dual_gpu_check(models: list[dict]) -> dict:
    """The issue's dual-GPU placement: T5 only on cuda:0, experts and VAE only on cuda:1, no model moved between
    GPUs. `ok` is False when any part fails or a role was never seen on a GPU."""
    t5, dit, vae = (_gpu_devices(models, role) for role in ("t5", "dit", "vae"))
    check = {
        "t5_devices": sorted(t5), "dit_devices": sorted(dit), "vae_devices": sorted(vae),
        "t5_only_gpu0": t5 == {"cuda:0"}, "experts_only_gpu1": dit == {"cuda:1"}, "vae_only_gpu1": vae == {"cuda:1"},
        "no_model_moved": not any(m["moved_between_gpus"] for m in models),
    }
    check["ok"] = all(v for k, v in check.items() if isinstance(v, bool))
    return check


def jobs_per_hour(jobs: int, seconds: float) -> float:
    return round(jobs * 3600.0 / seconds, 2) if seconds > 0 else 0.0


def comparisons(runs: dict[str, dict]) -> dict:
    """The issue's ratios from the runs that are present: our single-GPU workflow's speed-up over the native
    template (target >= 1.25), the dual-GPU one's, the Lightning pair's, and the 2-GPU batch throughput over 1 GPU
    (target >= 1.9)."""
    def wall(name: str) -> float | None:
        run = runs.get(name, {})
        return run.get("wall_s") if run.get("ok") else None

    out: dict = {}
    native = wall("native")
    for ours in ("ours", "ours_dual"):
        if native and wall(ours):
            out[f"{ours}_speedup_vs_native"] = round(native / wall(ours), 3)
    if wall("native_lightning") and wall("ours_lightning"):
        out["ours_lightning_speedup_vs_native_lightning"] = round(wall("native_lightning") / wall("ours_lightning"), 3)
    one = runs.get("batch_1gpu", {}).get("jobs_per_hour") if runs.get("batch_1gpu", {}).get("ok") else None
    for two in ("batch_2gpu_replica", "batch_2gpu_split"):
        if one and runs.get(two, {}).get("ok"):
            out[f"{two}_vs_1gpu"] = round(runs[two]["jobs_per_hour"] / one, 3)
    if "ours_speedup_vs_native" in out:
        out["target_single_gpu_1.25x"] = out["ours_speedup_vs_native"] >= 1.25
    if "batch_2gpu_replica_vs_1gpu" in out:
        out["target_batch_1.9x"] = out["batch_2gpu_replica_vs_1gpu"] >= 1.9
    return out
