"""Batch throughput: the same batch of N text-to-video jobs on 1 GPU, then on every visible GPU (one replica per GPU),
through the real batch engine (`BatchScheduler`, `PipelineStages`, one `Worker.pipelined` per GPU, as the node's
`replica per GPU` mode builds them). Prints one JSON object.

The DiT experts and the VAE have real shapes and random bf16 weights (A14B: two 14B experts per GPU and the Wan2.1 VAE;
5B: one model and the Wan2.2 VAE; bf16 is how ComfyUI's VAE files store them). The text encoder is a stand-in returning
random [L, 4096] embeddings: UMT5 takes well under 1% of a job. Few steps and few frames keep a run inside one 10-minute
call; GPU utilisation of every GPU is sampled in a background thread during each timed batch, and each stage of each job
is timed (`timeline`: per device, the models' busy time, and the head and tail of the batch that no computation on that
device covered).

    python bench/batch_throughput.py                           # every visible GPU, A14B and 5B shapes
    python bench/batch_throughput.py --cuda-graphs off,on      # eager and CUDA-graph forwards, order alternated
    python bench/batch_throughput.py --tiny                    # CPU smoke check with the tiny configs
"""

from __future__ import annotations

import argparse
import datetime
import gc
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dit_step import build_ours  # noqa: E402
from report import emit  # noqa: E402

from wan_core.batch import BatchJob, BatchScheduler, JobLedger, Worker  # noqa: E402
from wan_core.batch.stages import LazyModel, PipelineStages, SamplingSettings  # noqa: E402
from wan_core.configs import DIT_CONFIGS  # noqa: E402
from wan_core.dit.cuda_graphs import captured_signatures, release_cuda_graphs  # noqa: E402
from wan_core.pipeline.tasks import get_task  # noqa: E402
from wan_core.runtime import Runtime  # noqa: E402
from wan_core.vae import build_vae  # noqa: E402

MODELS = {  # task -> (DiT config, VAE config), real and tiny
    "t2v-A14B": {"real": ("t2v-A14B", "wan2.1"), "tiny": ("tiny-t2v", "tiny-wan2.1")},
    "ti2v-5B": {"real": ("ti2v-5B", "wan2.2"), "tiny": ("tiny-ti2v", "tiny-wan2.2")},
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="t2v-A14B,ti2v-5B", help="comma-separated: t2v-A14B, ti2v-5B")
    p.add_argument("--jobs", type=int, default=8, help="jobs per timed batch")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--size", default="832x480", help="WIDTHxHEIGHT")
    p.add_argument("--tiny", action="store_true", help="tiny configs on the CPU (smoke check)")
    p.add_argument("--cuda-graphs", default="off",
                   help="comma-separated off,on: each setting timed on 1 GPU and on all (order alternated)")
    p.add_argument("--attention", default="sdpa", help="attention backend of the DiT (sdpa, auto, sage, ...)")
    p.add_argument("--json", default="", help="also write the JSON here")
    return p.parse_args()


class RandomTextEncoder:
    """Stands in for UMT5-XXL: random embeddings of a fixed length on its device."""

    def __init__(self, device: str, dim: int, length: int = 64):
        self.device = torch.device(device)
        self.dim = dim
        self.length = length
        self.generator = torch.Generator().manual_seed(0)  # its own: a CUDA graph capture takes the device's default

    def encode(self, prompts: list[str]) -> list[torch.Tensor]:
        return [torch.randn(self.length, self.dim, generator=self.generator).to(self.device) for _ in prompts]

    def to(self, device: str | torch.device) -> RandomTextEncoder:
        self.device = torch.device(device)
        return self


class StageTimeline:
    """When each stage of each job ran, per device (recorded by `TimedStages`), and what it adds up to per device:
    the models' busy time on the compute lane, the writes, and the head and tail of the batch that no job's
    computation covered on that device."""

    def __init__(self):
        self.spans: list[tuple[str, str, int, float, float]] = []  # (device, stage, job, start, end)
        self._lock = threading.Lock()

    def record(self, device: str, stage: str, job: int, start: float, end: float) -> None:
        with self._lock:
            self.spans.append((device, stage, job, start, end))

    def summary(self, batch_start: float, batch_end: float) -> dict:
        out = {}
        for device in sorted({span[0] for span in self.spans}):
            mine = [s for s in self.spans if s[0] == device]
            compute = [s for s in mine if s[1] != "write"]
            writes = [s for s in mine if s[1] == "write"]
            per_stage = {stage: round(sum(s[4] - s[3] for s in mine if s[1] == stage), 2)
                         for stage in ("encode", "denoise", "decode", "write")}
            last_write = max(writes, key=lambda s: s[4])
            out[device] = {
                "jobs": len(writes), "stage_seconds": per_stage,
                "compute_busy_seconds": round(sum(s[4] - s[3] for s in compute), 2),
                "head_seconds": round(min(s[3] for s in compute) - batch_start, 2),
                "tail_seconds": round(batch_end - max(s[4] for s in compute), 2),
                "last_write_seconds": round(last_write[4] - last_write[3], 2),
            }
        return out


class TimedStages(PipelineStages):
    """`PipelineStages` that report each stage's start and end to a `StageTimeline`."""

    timeline: StageTimeline | None = None

    def _timed(self, stage: str, device: str, job: BatchJob, call):
        start = time.perf_counter()
        try:
            return call()
        finally:
            if self.timeline is not None:
                self.timeline.record(device, stage, job.index, start, time.perf_counter())

    def encode(self, job):
        return self._timed("encode", self.encode_device, job, lambda: super(TimedStages, self).encode(job))

    def denoise(self, job, cond, cancel, progress):
        return self._timed("denoise", self.denoise_device, job,
                           lambda: super(TimedStages, self).denoise(job, cond, cancel, progress))

    def decode(self, job, latents):
        return self._timed("decode", self.decode_device, job, lambda: super(TimedStages, self).decode(job, latents))

    def write(self, job, decoded):
        return self._timed("write", self.decode_device, job, lambda: super(TimedStages, self).write(job, decoded))


class UtilisationSampler:
    """Samples the utilisation (%) of every GPU every `period` seconds in a background thread."""

    def __init__(self, count: int, period: float = 0.2):
        self.count = count
        self.period = period
        self.samples: list[list[float]] = [[] for _ in range(count)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> UtilisationSampler:
        if self.count:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self.count:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            for index, value in enumerate(gpu_utilisation(self.count)):
                self.samples[index].append(value)

    def summary(self) -> list[dict]:
        return [{"gpu": i, "mean_percent": round(statistics.fmean(s), 1) if s else None,
                 "max_percent": max(s) if s else None, "samples": len(s)} for i, s in enumerate(self.samples)]


def gpu_utilisation(count: int) -> list[float]:
    try:
        return [float(torch.cuda.utilization(index)) for index in range(count)]
    except Exception:  # torch.cuda.utilization needs pynvml; nvidia-smi reads the same counter
        text = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, check=True).stdout
        return [float(line) for line in text.split()[:count]]


def build_worker(device: str, task: str, args: argparse.Namespace, output_dir: Path, batch: str) -> Worker:
    dit_name, vae_name = MODELS[task]["tiny" if args.tiny else "real"]
    config = DIT_CONFIGS[dit_name]
    dtype = torch.float32 if args.tiny else torch.bfloat16
    task_config = get_task(task)
    high = build_ours(config, torch.device(device), dtype)
    low = build_ours(config, torch.device(device), dtype) if task_config.is_moe else None
    vae = build_vae(vae_name).to(device=device, dtype=dtype).eval()  # bf16, as ComfyUI's VAE files store it
    settings = SamplingSettings(task_config, "unipc", task_config.sample_shift, task_config.guide_scale,
                                Runtime.create(device, attention=args.attention))
    stages = TimedStages(
        settings=settings,
        text_encoder=LazyModel(lambda: RandomTextEncoder(device, config.text_dim)),
        experts=LazyModel(lambda: (high, low)),
        vae=LazyModel(lambda: vae),
        encode_device=device, denoise_device=device, decode_device=device,
        output_dir=output_dir, batch=batch, build_prompts=lambda job: (job.prompt, ""),
    )  # fmt: skip
    return Worker.pipelined(stages)


def run_batch(workers: list[Worker], jobs: list[BatchJob], ledger_file: Path, gpus: int) -> tuple[float, dict]:
    timeline = StageTimeline()
    for worker in workers:
        worker.stages.timeline = timeline
    with JobLedger(ledger_file) as ledger, UtilisationSampler(gpus) as sampler:
        scheduler = BatchScheduler(workers, 0, None, ledger, auto_clear_cache=False)
        start = time.perf_counter()
        summary = scheduler.run(jobs)
        end = time.perf_counter()
    failed = [r for r in summary.results if r.state != "done"]
    if failed:
        raise RuntimeError(f"{len(failed)} job(s) did not finish:\n{summary.table()}")
    return end - start, {"utilisation": sampler.summary(), "timeline": timeline.summary(start, end)}


def measure(task: str, devices: list[str], args: argparse.Namespace, scratch: Path) -> dict:
    width, height = (int(v) for v in args.size.lower().split("x"))
    if args.tiny:
        width, height = 32, 32

    def jobs(count: int, offset: int) -> list[BatchJob]:
        return [BatchJob(index=i + 1, prompt=f"job {offset + i}", negative_prompt="", style="none", seed=offset + i,
                         width=width, height=height, frames=args.frames, steps=args.steps) for i in range(count)]

    result: dict = {"task": task, "shapes": "tiny" if args.tiny else "real", "jobs": args.jobs, "steps": args.steps,
                    "frames": args.frames, "size": f"{width}x{height}", "attention": args.attention}
    modes = args.cuda_graphs.split(",")
    output_dir = scratch / task
    workers = [build_worker(device, task, args, output_dir, "bench") for device in devices]
    runs: dict = {mode: {} for mode in modes}
    for round_index, used in enumerate(dict.fromkeys((1, len(devices)))):
        for mode in modes if round_index % 2 == 0 else modes[::-1]:
            for worker in workers:
                stages = worker.stages
                stages.settings = replace(stages.settings, runtime=stages.settings.runtime.replace(
                    cuda_graphs=mode == "on"))
                for model in stages.experts.get():
                    release_cuda_graphs(model)  # None (a one-model task's low expert) has none
            run_batch(workers[:used], jobs(used, 10_000), output_dir / f"warmup-{used}-{mode}.jsonl",
                      torch.cuda.device_count())
            seconds, extra = run_batch(workers[:used], jobs(args.jobs, 0), output_dir / f"timed-{used}-{mode}.jsonl",
                                       torch.cuda.device_count())
            graphs = [captured_signatures(model) for worker in workers[:used] for model in worker.stages.experts.get()
                      if model is not None]
            runs[mode][str(used)] = {"devices": devices[:used], "seconds": round(seconds, 2),
                                     "jobs_per_hour": round(args.jobs * 3600 / seconds, 1),
                                     "graphs_per_model": graphs, **extra}
    del workers
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    result["cuda_graphs"] = {
        mode: {"runs": mode_runs, "speedup": round(mode_runs[str(len(devices))]["jobs_per_hour"]
                                                   / mode_runs["1"]["jobs_per_hour"], 3)}
        for mode, mode_runs in runs.items()
    }
    return result


def main() -> None:
    args = parse_args()
    gpus = 0 if args.tiny else torch.cuda.device_count()
    devices = [f"cuda:{i}" for i in range(gpus)] or ["cpu"]
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0) if gpus else "cpu",
        "gpus": gpus, "torch": torch.__version__, "text_encoder": "stand-in (random embeddings)",
        "results": [],
    }
    with tempfile.TemporaryDirectory() as scratch:
        for task in args.tasks.split(","):
            report["results"].append(measure(task.strip(), devices, args, Path(scratch)))
    emit(report, args.json)


if __name__ == "__main__":
    main()
