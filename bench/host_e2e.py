"""End to end in a real ComfyUI: ComfyUI's native Wan2.2 T2V A14B template against our workflows, with the same
model files and settings, each queued through /prompt of its own freshly started server. Prints one JSON object.

For every run: wall time from POST /prompt to the finished /history entry and to the newest saved MP4 (first
repeat loads the models: `cold`; later repeats: `warm`, best of), ComfyUI's own execution time, per-GPU memory and
utilisation over time (nvidia-smi every 0.25 s), how long each node ran (`node_seconds`), peak
`torch.cuda.memory_allocated` per device and the device of every model from a probe inside the server
(`host_probe.py`), and `nvidia-smi --query-compute-apps` at the end.
Batch runs (8 prompts) add jobs/hour and each job's state and seconds from the batch ledger. Each repeat adds its
index to the seed (ComfyUI would serve an identical graph from its cache). The JSON (`--out`) is rewritten after every
repeat; a run past `--run-timeout` is recorded as timed out, with the stacks of the server's threads in its log tail
(slow or hung?), and the next run starts. The batch runs take `--frames`/`--steps` unless `--batch-frames`/
`--batch-steps` say otherwise: 8 videos of the single runs' size take 8 times as long.

    bash bench/host_e2e_wheels.sh      # here, once: ComfyUI + its wheels for the GPU machine (see the script)
    PYTHONPATH=/tmp/hostsite python3 bench/host_e2e.py --comfyui /tmp/ComfyUI --runs native,ours --out r.json
    PYTHONPATH=/tmp/hostsite python3 bench/host_e2e.py --comfyui /tmp/ComfyUI --runs batch_1gpu,batch_2gpu_replica \
        --frames 81 --steps 10 --batch-frames 33 --batch-steps 4 --run-timeout 240 --out b.json
    python3 bench/host_e2e.py --comfyui /tmp/comfyui --python /tmp/comfyui-venv/bin/python --scale tiny --cpu \
        --width 64 --height 64 --frames 5 --steps 4 --port 8231          # CPU smoke

Runs: native, ours, ours_dual (T5 on GPU 0, experts and VAE on GPU 1: checked from the probe), native_lightning and
ours_lightning (the 4-step LoRA pair of each side: `--frames`, size and seed as the others, 4 steps split 2 + 2, CFG
1, shift 5), batch_1gpu, batch_2gpu_replica, batch_2gpu_split. Model files (with random LoRAs under the published
Lightning names) go to `--models` once per machine (`host_models.py`). `--lora-strengths 1,1,0.8` gives the Lightning
runs' repeats these LoRA strengths in turn: the third repeat is then a strength switch, the models patched again.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from host_results import (  # noqa: E402
    comparisons,
    dual_gpu_check,
    execution_seconds,
    history_error,
    jobs_per_hour,
    ledger_jobs,
    node_seconds,
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

LEDGERS = "*.ledger.jsonl"  # the batch queue's job ledgers (wan_core.batch.ledger)
TIMED_OUT_LOG_LINES = 400  # room for the stacks of every server thread
RUNS = ("native", "ours", "ours_dual", "native_lightning", "ours_lightning", "batch_1gpu", "batch_2gpu_replica",
        "batch_2gpu_split")
DUAL_RUNS = ("ours_dual", "batch_2gpu_split")


def run_repeat(server: ComfyServer, graph: dict, output: Path, timeout: float) -> dict:
    """Queue `graph` and wait for its /history entry at most `timeout` s; a repeat past it is recorded `timed_out`
    with what it saved so far. A batch graph adds each job's last ledger state (`batch_jobs`)."""
    before, ledgers = set(output.rglob("*.mp4")), set(output.rglob(LEDGERS))
    start = time.time()
    prompt_id = server.queue(graph)
    try:
        entry, timed_out = server.wait(prompt_id, timeout), None
    except TimeoutError as error:  # the server still runs it: the caller stops the run
        entry, timed_out = {}, str(error)
    done = time.time()
    videos = new_videos(output, before)
    error = history_error(entry) or timed_out
    record = {"t0": start, "t1": done, "prompt_id": prompt_id, "wall_s": round(done - start, 3),
              "exec_s": execution_seconds(entry),
              "videos": [str(p.relative_to(output)) for p in videos], "history_files": saved_files(entry),
              "ok": error is None and bool(videos)}
    if videos:
        record["to_mp4_s"] = round(videos[-1].stat().st_mtime - start, 3)
    if error:
        record["error"] = error
    if timed_out:
        record["timed_out"] = True
    new_ledgers = sorted(set(output.rglob(LEDGERS)) - ledgers)
    if new_ledgers:
        record["batch_jobs"] = ledger_jobs(new_ledgers)
    return record


def run_repeats(server: ComfyServer, graphs: list[dict], output: Path, timeout: float, run_timeout: float | None,
                publish: Callable[[list[dict]], None]) -> list[dict]:
    """Queue `graphs` one after another, each waited for at most `timeout` s and all together at most `run_timeout`
    s (None: no budget). Stops after a repeat that timed out (the server is still busy with it). `publish` gets
    the repeats so far after each one."""
    deadline = None if run_timeout is None else time.time() + run_timeout
    repeats: list[dict] = []
    for graph in graphs:
        limit = timeout if deadline is None else min(timeout, deadline - time.time())
        if repeats and limit <= 0:  # the first one always runs (and times out at once on no budget)
            break
        repeats.append(run_repeat(server, graph, output, limit))
        publish(repeats)
        if repeats[-1].get("timed_out"):
            break
    return repeats


def repeat_settings(settings: BenchSettings, index: int, lora_strengths: list[float]) -> BenchSettings:
    """Repeat `index`'s settings: the seed plus `index`; with `lora_strengths`, the strength in turn (a change from
    one repeat to the next makes the server patch its models again: the LoRA switch a user makes)."""
    strength = lora_strengths[index % len(lora_strengths)] if lora_strengths else None
    return dataclasses.replace(settings, seed=settings.seed + index, lora_strength=strength)


def probe_or_nothing(server: ComfyServer) -> dict:
    """The probe's report; empty where the server does not answer (hung, or dead)."""
    try:
        return server.probe()
    except (OSError, ValueError) as error:
        print(f"the probe did not answer: {error}", file=sys.stderr)
        return {"memory": [], "placements": [], "sample_seconds": [], "events": []}


def measure(name: str, graph: dict, settings: BenchSettings, args: argparse.Namespace, base: Path,
            publish: Callable[[dict], None] = lambda run: None) -> dict:
    """One run: a fresh server writing into output/<name>/ (the batch ledger of another run is not there),
    `args.repeats` queued graphs within `args.run_timeout` s, the samples of their time windows. `publish` gets the
    run so far (`in_progress`) after each repeat. A run that timed out gets every server thread's stack in its
    `log_tail`."""
    output = base / "output" / name
    output.mkdir(parents=True, exist_ok=True)
    server_args = [*args.server_args, "--output-directory", str(output)]
    with SmiSampler() as smi, ComfyServer(args.comfyui, base, args.port, args.python, server_args,
                                          base / f"{name}.log") as server:
        ready_s = round(server.wait_ready(args.start_timeout), 2)
        strengths = args.lora_strengths if "lightning" in name else []
        chosen = [repeat_settings(settings, i, strengths) for i in range(args.repeats)]
        graphs = [apply_settings(graph, each) for each in chosen]
        repeats = run_repeats(server, graphs, output, args.timeout, args.run_timeout, lambda done: publish(
            {"ok": False, "in_progress": True, "server_start_s": ready_s, "repeats": _public(done)}))
        probe, apps = probe_or_nothing(server), compute_apps()
        for repeat, queued, each in zip(repeats, graphs, chosen, strict=False):  # a timed-out run queued fewer
            repeat["node_seconds"] = node_seconds(probe["events"], queued, repeat["prompt_id"])
            if each.lora_strength is not None:
                repeat["lora_strength"] = each.lora_strength
        timed_out = len(repeats) < args.repeats or bool(repeats[-1].get("timed_out"))
        if timed_out:
            server.dump_stacks()
    t0, t1 = repeats[0]["t0"], repeats[-1]["t1"]
    warm = [r["wall_s"] for r in repeats[1:] if r["ok"]]
    run = {
        "ok": not timed_out and all(r["ok"] for r in repeats), "server_start_s": ready_s,
        "cold_wall_s": repeats[0]["wall_s"], "wall_s": min(warm) if warm else repeats[0]["wall_s"],
        "repeats": _public(repeats),
        "gpus": summarize_smi(smi.samples, t0, t1), "gpu_timeline": timeline(smi.samples, t0, t1),
        "allocated_peak_mib": probe_memory(probe["memory"], t0, t1),
        "models": probe_placements(probe["placements"], t0, t1),
        "probe_sample_max_s": max(probe["sample_seconds"], default=None), "compute_apps": apps,
    }
    if timed_out:
        run["timed_out"] = True
    if name.startswith("batch"):
        jobs = len(repeats[-1]["videos"])
        run.update(jobs=jobs, jobs_per_hour=jobs_per_hour(jobs, run["wall_s"]))
        run["ok"] = run["ok"] and jobs == len(settings.batch_prompts)
    if name in DUAL_RUNS:
        run["dual_gpu_check"] = dual_gpu_check(run["models"])
    if not run["ok"]:
        run["log_tail"] = server.log_tail(TIMED_OUT_LOG_LINES if timed_out else 30)
    return run


def _public(repeats: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("t0", "t1", "prompt_id")} for r in repeats]


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
    parser.add_argument("--run-timeout", type=float, help="seconds of queued work per run (after its server is up): "
                        "past it the run is recorded as timed out, with the server's thread stacks, and the next "
                        "run starts")
    parser.add_argument("--start-timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    defaults = BenchSettings()
    for field in ("width", "height", "frames", "steps", "seed"):
        parser.add_argument(f"--{field}", type=int, default=getattr(defaults, field))
    for field in ("cfg", "shift"):
        parser.add_argument(f"--{field}", type=float, default=getattr(defaults, field))
    parser.add_argument("--our-dit-weights", default=defaults.our_dit_weights, help="our Model Loader's weight_dtype")
    parser.add_argument("--lora-strengths", type=lambda text: [float(x) for x in text.split(",")], default=[],
                        help="the Lightning runs' LoRA strength per repeat, in turn (e.g. 1,1,0.8: the third repeat "
                             "switches it); default: the graphs' own")
    parser.add_argument("--batch-frames", type=int, help="frames of the batch runs (default --frames)")
    parser.add_argument("--batch-steps", type=int, help="steps of the batch runs (default --steps)")
    args = parser.parse_args(argv)
    args.runs = [r for r in args.runs.split(",") if r]
    unknown = sorted(set(args.runs) - set(RUNS))
    if unknown:
        parser.error(f"unknown runs {unknown}; choose from {', '.join(RUNS)}")
    if args.run_timeout is not None and args.run_timeout <= 0:
        parser.error(f"--run-timeout must be positive seconds, not {args.run_timeout}")
    args.server_args = args.server_args.split() + (["--cpu"] if args.cpu else [])
    args.models = args.models or Path(f"/tmp/wan22_host_models_{args.scale}")
    return args


def check_pack_requirements(python: str) -> None:
    """Exit at once, naming what is missing, unless the server's Python has the pack's requirements that the GPU
    image lacks (ftfy, and ffmpeg through imageio-ffmpeg): otherwise our runs fail in their prompt encoding or at
    their last node, after all their GPU work."""
    probe = "import ftfy; from wan_core.io.ffmpeg_binary import ffmpeg_executable; ffmpeg_executable()"
    done = subprocess.run([python, "-c", probe], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True)
    if done.returncode != 0:
        sys.exit(f"the pack's requirements are missing for {python} (install requirements.txt, or on the GPU "
                 f"machine carry .whl): {done.stderr.strip().splitlines()[-1]}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    check_pack_requirements(args.python)
    settings = BenchSettings(width=args.width, height=args.height, frames=args.frames, steps=args.steps,
                             cfg=args.cfg, shift=args.shift, seed=args.seed, our_dit_weights=args.our_dit_weights)
    batch_settings = dataclasses.replace(settings, frames=args.batch_frames or settings.frames,
                                         steps=args.batch_steps or settings.steps)
    # In a child process: the files are made on the GPU, whose memory and context must not stay with this one.
    subprocess.run([sys.executable, str(Path(__file__).with_name("host_models.py")), str(args.models), args.scale],
                   check=True, stdout=sys.stderr)
    template = installed_template()
    native, native_lightning = ((template_api_graph(template), template_api_graph(template, lightning=True))
                                if template is not None else (None, None))
    lightning_settings = settings.lightning()

    def settings_of(name: str) -> BenchSettings:
        return batch_settings if name.startswith("batch") else lightning_settings if "lightning" in name else settings

    graphs = bench_graphs(settings, native, native_lightning, settings_of)
    alignment = {}
    for chosen in (settings, lightning_settings, batch_settings):
        alignment.update(misaligned({k: v for k, v in graphs.items() if settings_of(k) is chosen}, chosen))
    if alignment:
        raise SystemExit(f"the graphs do not share the settings: {alignment}")
    base = args.base or Path(tempfile.mkdtemp(prefix="wan22_host_"))
    prepare_base(base, Path(__file__).resolve().parents[1], args.models, tiny=args.scale == "tiny")
    result = {
        "benchmark": "host_e2e", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(args.comfyui, args.python), "scale": args.scale,
        "server_args": args.server_args, "settings": dataclasses.asdict(settings),
        "batch_settings": {"frames": batch_settings.frames, "steps": batch_settings.steps},
        "lightning_settings": {"steps": lightning_settings.steps, "cfg": lightning_settings.cfg,
                               "shift": lightning_settings.shift},
        "native_source": "comfyui-workflow-templates" if native is not None else "rebuilt (host_workflows.py)",
        "base": str(base), "runs": {},
    }

    def publish(name: str, run: dict) -> None:
        result["runs"][name] = run
        result["comparisons"] = comparisons(result["runs"])
        if args.out:  # after every repeat: a call cut short keeps what was measured
            args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")

    for name in args.runs:
        repeats = args.batch_repeats if name.startswith("batch") else args.repeats
        run_args = argparse.Namespace(**{**vars(args), "repeats": repeats})
        chosen = settings_of(name)
        jobs = len(chosen.batch_prompts) if name.startswith("batch") else 1
        print(f"run {name}: {repeats} x {jobs} video(s) of {chosen.frames} frames, {chosen.steps} steps ...",
              file=sys.stderr)
        try:
            run = measure(name, graphs[name], chosen, run_args, base, functools.partial(publish, name))
        except (RuntimeError, TimeoutError, OSError) as error:  # a refused graph, a dead or stuck server
            run = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        publish(name, run)
        print(f"run {name}: ok={run['ok']} wall={run.get('wall_s')} s{' (timed out)' * bool(run.get('timed_out'))}",
              file=sys.stderr)
    print(json.dumps(result, indent=1, ensure_ascii=False))
    return result


if __name__ == "__main__":
    main()
