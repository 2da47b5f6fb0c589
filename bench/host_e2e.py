"""End to end in a real ComfyUI: ComfyUI's native Wan2.2 T2V A14B template against our workflows, with the same
model files and settings, each queued through /prompt of its own freshly started server. Prints one JSON object.

For every run: wall time from POST /prompt to the finished /history entry and to the newest saved MP4 (first
repeat loads the models: `cold`; later repeats: `warm`, best of), ComfyUI's own execution time, per-GPU memory and
utilisation over time (nvidia-smi every 0.25 s), peak `torch.cuda.memory_allocated` per device and the device of
every model from a probe inside the server (`host_probe.py`), and `nvidia-smi --query-compute-apps` at the end.
Batch runs (8 prompts) add jobs/hour. Each repeat adds its index to the seed (ComfyUI would serve an identical
graph from its cache).

    bash bench/host_e2e_wheels.sh      # here, once: ComfyUI + its wheels for the GPU machine (see the script)
    PYTHONPATH=/tmp/hostsite python3 bench/host_e2e.py --comfyui /tmp/ComfyUI --runs native,ours --out r.json
    python3 bench/host_e2e.py --comfyui /tmp/comfyui --python /tmp/comfyui-venv/bin/python --scale tiny --cpu \
        --width 64 --height 64 --frames 5 --steps 4 --port 8231          # CPU smoke

Runs: native, ours, ours_dual (T5 on GPU 0, experts and VAE on GPU 1: checked from the probe), batch_1gpu,
batch_2gpu_replica, batch_2gpu_split. Model files go to `--models` once per machine (`host_models.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from host_results import (  # noqa: E402
    comparisons,
    dual_gpu_check,
    execution_seconds,
    history_error,
    jobs_per_hour,
    probe_memory,
    probe_placements,
    saved_files,
    summarize_smi,
    timeline,
)
from host_server import (  # noqa: E402
    ComfyServer,
    SmiSampler,
    compute_apps,
    environment,
    new_videos,
    prepare_base,
)
from host_workflows import (  # noqa: E402
    BenchSettings,
    apply_settings,
    bench_graphs,
    installed_template,
    misaligned,
    template_api_graph,
)

RUNS = ("native", "ours", "ours_dual", "batch_1gpu", "batch_2gpu_replica", "batch_2gpu_split")
DUAL_RUNS = ("ours_dual", "batch_2gpu_split")


def run_repeat(server: ComfyServer, graph: dict, output: Path, timeout: float) -> dict:
    before = set(output.rglob("*.mp4"))
    start = time.time()
    entry = server.wait(server.queue(graph), timeout)
    done = time.time()
    videos = new_videos(output, before)
    error = history_error(entry)
    record = {"t0": start, "t1": done, "wall_s": round(done - start, 3), "exec_s": execution_seconds(entry),
              "videos": [str(p.relative_to(output)) for p in videos], "history_files": saved_files(entry),
              "ok": error is None and bool(videos)}
    if videos:
        record["to_mp4_s"] = round(videos[-1].stat().st_mtime - start, 3)
    if error:
        record["error"] = error
    return record


def with_seed(graph: dict, settings: BenchSettings, offset: int) -> dict:
    return apply_settings(graph, dataclasses.replace(settings, seed=settings.seed + offset))


def measure(name: str, graph: dict, settings: BenchSettings, args: argparse.Namespace, base: Path) -> dict:
    """One run: a fresh server writing into output/<name>/ (the batch ledger of another run is not there),
    `args.repeats` queued graphs, the samples of their time windows."""
    output = base / "output" / name
    output.mkdir(parents=True, exist_ok=True)
    server_args = [*args.server_args, "--output-directory", str(output)]
    with SmiSampler() as smi, ComfyServer(args.comfyui, base, args.port, args.python, server_args,
                                          base / f"{name}.log") as server:
        ready_s = server.wait_ready(args.start_timeout)
        repeats = [run_repeat(server, with_seed(graph, settings, i), output, args.timeout)
                   for i in range(args.repeats)]
        probe, apps = server.probe(), compute_apps()
    t0, t1 = repeats[0]["t0"], repeats[-1]["t1"]
    warm = [r["wall_s"] for r in repeats[1:] if r["ok"]]
    run = {
        "ok": all(r["ok"] for r in repeats), "server_start_s": round(ready_s, 2),
        "cold_wall_s": repeats[0]["wall_s"], "wall_s": min(warm) if warm else repeats[0]["wall_s"],
        "repeats": [{k: v for k, v in r.items() if k not in ("t0", "t1")} for r in repeats],
        "gpus": summarize_smi(smi.samples, t0, t1), "gpu_timeline": timeline(smi.samples, t0, t1),
        "allocated_peak_mib": probe_memory(probe["memory"], t0, t1),
        "models": probe_placements(probe["placements"], t0, t1),
        "probe_sample_max_s": max(probe["sample_seconds"], default=None), "compute_apps": apps,
    }
    if name.startswith("batch"):
        jobs = len(repeats[-1]["videos"])
        run.update(jobs=jobs, jobs_per_hour=jobs_per_hour(jobs, run["wall_s"]))
        run["ok"] = run["ok"] and jobs == len(settings.batch_prompts)
    if name in DUAL_RUNS:
        run["dual_gpu_check"] = dual_gpu_check(run["models"])
    if not run["ok"]:
        run["log_tail"] = server.log_tail(30)
    return run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", type=Path, required=True, help="a ComfyUI checkout (its main.py)")
    parser.add_argument("--python", default=sys.executable, help="the Python that runs ComfyUI")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, from {','.join(RUNS)}")
    parser.add_argument("--scale", choices=("real", "tiny"), default="real", help="model shapes (tiny: CPU smoke)")
    parser.add_argument("--models", type=Path, help="model folder (default /tmp/wan22_host_models_<scale>)")
    parser.add_argument("--base", type=Path, help="the servers' base directory (default: a new temp folder)")
    parser.add_argument("--port", type=int, default=8231)
    parser.add_argument("--cpu", action="store_true", help="run ComfyUI with --cpu")
    parser.add_argument("--server-args", default="", help="more ComfyUI arguments, e.g. '--use-sage-attention'")
    parser.add_argument("--repeats", type=int, default=2, help="queued graphs per run (first: cold)")
    parser.add_argument("--batch-repeats", type=int, default=2, help="queued batches per batch run (first: cold)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per queued graph")
    parser.add_argument("--start-timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    defaults = BenchSettings()
    for field in ("width", "height", "frames", "steps", "seed"):
        parser.add_argument(f"--{field}", type=int, default=getattr(defaults, field))
    for field in ("cfg", "shift"):
        parser.add_argument(f"--{field}", type=float, default=getattr(defaults, field))
    parser.add_argument("--our-dit-weights", default=defaults.our_dit_weights, help="our Model Loader's weight_dtype")
    parser.add_argument("--batch-frames", type=int, help="frames of the batch runs (default --frames)")
    parser.add_argument("--batch-steps", type=int, help="steps of the batch runs (default --steps)")
    args = parser.parse_args(argv)
    args.runs = [r for r in args.runs.split(",") if r]
    unknown = sorted(set(args.runs) - set(RUNS))
    if unknown:
        parser.error(f"unknown runs {unknown}; choose from {', '.join(RUNS)}")
    args.server_args = args.server_args.split() + (["--cpu"] if args.cpu else [])
    args.models = args.models or Path(f"/tmp/wan22_host_models_{args.scale}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    settings = BenchSettings(width=args.width, height=args.height, frames=args.frames, steps=args.steps,
                             cfg=args.cfg, shift=args.shift, seed=args.seed, our_dit_weights=args.our_dit_weights)
    batch_settings = dataclasses.replace(settings, frames=args.batch_frames or settings.frames,
                                         steps=args.batch_steps or settings.steps)
    # In a child process: the files are made on the GPU, whose memory and context must not stay with this one.
    subprocess.run([sys.executable, str(Path(__file__).with_name("host_models.py")), str(args.models), args.scale],
                   check=True, stdout=sys.stderr)
    template = installed_template()
    native = template_api_graph(template) if template is not None else None
    graphs = {**bench_graphs(settings, native),
              **{k: v for k, v in bench_graphs(batch_settings).items() if k.startswith("batch")}}
    alignment = {**{k: v for k, v in misaligned(graphs, settings).items() if not k.startswith("batch")},
                 **{k: v for k, v in misaligned(graphs, batch_settings).items() if k.startswith("batch")}}
    if alignment:
        raise SystemExit(f"the graphs do not share the settings: {alignment}")
    base = args.base or Path(tempfile.mkdtemp(prefix="wan22_host_"))
    prepare_base(base, Path(__file__).resolve().parents[1], args.models, tiny=args.scale == "tiny")
    result = {
        "benchmark": "host_e2e", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(args.comfyui, args.python), "scale": args.scale,
        "server_args": args.server_args, "settings": dataclasses.asdict(settings),
        "batch_settings": {"frames": batch_settings.frames, "steps": batch_settings.steps},
        "native_source": "comfyui-workflow-templates" if native is not None else "rebuilt (host_workflows.py)",
        "base": str(base), "runs": {},
    }
    for name in args.runs:
        print(f"run {name} ...", file=sys.stderr)
        repeats = args.batch_repeats if name.startswith("batch") else args.repeats
        run_args = argparse.Namespace(**{**vars(args), "repeats": repeats})
        chosen = batch_settings if name.startswith("batch") else settings
        try:
            result["runs"][name] = measure(name, graphs[name], chosen, run_args, base)
        except (RuntimeError, TimeoutError, OSError) as error:  # a refused graph, a dead or stuck server
            result["runs"][name] = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        print(f"run {name}: ok={result['runs'][name]['ok']} wall={result['runs'][name].get('wall_s')} s",
              file=sys.stderr)
        result["comparisons"] = comparisons(result["runs"])
        if args.out:  # after every run: a call cut short keeps what was measured
            args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps(result, indent=1, ensure_ascii=False))
    return result


if __name__ == "__main__":
    main()
