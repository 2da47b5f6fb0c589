"""A two-job batch through the real decode stage (tiny random VAE, verified MP4 write), run as its own process by
test_disk_full.py, which sets RLIMIT_FSIZE on the first run. Text encoding and denoising return fixed latents.

Usage: python tests/disk_full_batch_script.py OUTPUT_DIR. Prints the summary as JSON."""

import json
import sys
from pathlib import Path

import torch

from wan_core.batch import BatchScheduler, JobLedger, Worker, batch_id, parse_prompt_lines
from wan_core.batch.jobs import JobDefaults
from wan_core.batch.stages import LazyModel, PipelineStages, SamplingSettings
from wan_core.pipeline.tasks import get_task
from wan_core.vae.model import build_vae


class FixedLatentStages(PipelineStages):
    def encode(self, job):
        return None

    def denoise(self, job, cond, cancel, progress):
        task = self.settings.task
        shape = task.latent_shape(job.width, job.height, job.frames)
        return torch.randn(shape, generator=torch.Generator().manual_seed(job.seed))


def run(output_dir: Path) -> dict:
    jobs = parse_prompt_lines("first\nsecond", JobDefaults(width=64, height=64, frames=5))
    batch = batch_id(jobs, {"test": "disk full"})
    torch.manual_seed(0)
    vae = build_vae("tiny-wan2.1")
    stages = FixedLatentStages(
        settings=SamplingSettings(get_task("t2v-A14B"), "unipc", 12.0, (3.0, 4.0)),
        text_encoder=LazyModel(lambda: None), experts=LazyModel(lambda: None), vae=LazyModel(lambda: vae),
        encode_device="cpu", denoise_device="cpu", decode_device="cpu", output_dir=output_dir, batch=batch,
        build_prompts=lambda job: (job.prompt, ""),
    )
    with JobLedger.for_batch(output_dir, batch) as ledger:
        summary = BatchScheduler([Worker.pipelined(stages)], ledger=ledger).run(jobs)
    return {"batch": batch, "results": [[r.index, r.state, r.output, r.error] for r in summary.results]}


def main() -> None:
    print(json.dumps(run(Path(sys.argv[1]))))


if __name__ == "__main__":
    main()
