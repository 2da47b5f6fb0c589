"""The batch's decode stage hands the video to ffmpeg a latent frame at a time (`Mp4Stream`) and its write stage
finishes the file: the same MP4 as decoding whole and saving, the tiled fallback on CUDA out-of-memory, and nothing
left behind (no ffmpeg, no temporary file) when the decode fails half way."""

from __future__ import annotations

import pytest
import torch
from disk_full_batch_script import FixedLatentStages

from wan_core.batch.jobs import BatchJob
from wan_core.batch.stages import LazyModel, SamplingSettings
from wan_core.errors import WanError
from wan_core.pipeline.tasks import get_task
from wan_core.vae.model import WanVAE, build_vae
from wan_core.video_io import Mp4Stream, save_video

JOB = BatchJob(index=1, prompt="a", negative_prompt="", style="none", seed=3, width=64, height=64, frames=9, steps=2)


def _stages(tmp_path) -> FixedLatentStages:
    torch.manual_seed(0)
    vae = build_vae("tiny-wan2.1")
    return FixedLatentStages(
        settings=SamplingSettings(get_task("t2v-A14B"), "unipc", 12.0, (3.0, 4.0)),
        text_encoder=LazyModel(lambda: None), experts=LazyModel(lambda: None), vae=LazyModel(lambda: vae),
        encode_device="cpu", denoise_device="cpu", decode_device="cpu", output_dir=tmp_path, batch="b",
        build_prompts=lambda job: (job.prompt, ""),
    )  # fmt: skip


def _whole_video_file(stages, latents, path):
    return save_video(path, stages.vae.get().decode(latents[None])[0], stages.settings.task.fps)


def test_the_streamed_write_is_the_file_of_the_whole_video(tmp_path):
    stages = _stages(tmp_path)
    latents = stages.denoise(JOB, None, None, None)
    decoded = stages.decode(JOB, latents)
    assert isinstance(decoded.video, Mp4Stream) and decoded.video.frames == 9
    written = stages.write(JOB, decoded)
    assert written == tmp_path / "b_0001.mp4"
    assert written.read_bytes() == _whole_video_file(stages, latents, tmp_path / "whole.mp4").read_bytes()


def test_out_of_memory_while_streaming_decodes_again_in_tiles(tmp_path, monkeypatch):
    stages = _stages(tmp_path)
    latents = stages.denoise(JOB, None, None, None)
    reference = _whole_video_file(stages, latents, tmp_path / "whole.mp4").read_bytes()
    streamed = WanVAE.decode_chunks

    def out_of_memory_after_one(self, z):
        chunks = streamed(self, z)
        yield next(chunks)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(WanVAE, "decode_chunks", out_of_memory_after_one)
    tiles = []
    whole = WanVAE.decode
    monkeypatch.setattr(WanVAE, "decode",
                        lambda self, z, **kw: (tiles.append(kw.get("tile_size")), whole(self, z, **kw))[1])
    decoded = stages.decode(JOB, latents)
    assert tiles == [tuple(stages.vae.get().fallback_tile_size)]  # not untiled again: that needs more memory
    assert isinstance(decoded.video, torch.Tensor) and decoded.video.shape == (3, 9, 64, 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["whole.mp4"]  # the first stream's file is gone
    assert stages.write(JOB, decoded).read_bytes() == reference


def test_a_decode_failing_half_way_stops_its_stream_and_keeps_the_latents(tmp_path, monkeypatch):
    stages = _stages(tmp_path)
    latents = stages.denoise(JOB, None, None, None)
    streamed = WanVAE.decode_chunks
    streams = []
    add = Mp4Stream.add
    monkeypatch.setattr(Mp4Stream, "add", lambda self, video: (streams.append(self), add(self, video)))

    def broken_after_one(self, z):
        chunks = streamed(self, z)
        yield next(chunks)
        raise RuntimeError("the VAE broke")

    monkeypatch.setattr(WanVAE, "decode_chunks", broken_after_one)
    with pytest.raises(WanError, match=r"the VAE broke") as failure:
        stages.decode(JOB, latents)
    assert "The latents are kept in" in str(failure.value)
    assert streams and streams[0]._process.returncode is not None  # its ffmpeg was stopped
    assert [p.suffix for p in tmp_path.iterdir()] == [".safetensors"]  # the kept latents, no MP4 or temporary file


def test_a_job_interrupted_between_its_decode_and_its_write_leaves_no_file_and_no_ffmpeg(tmp_path, monkeypatch):
    from wan_core.batch import BatchScheduler, JobLedger, Worker

    stages = _stages(tmp_path)
    decoded = []
    decode = FixedLatentStages.decode
    monkeypatch.setattr(FixedLatentStages, "decode", lambda self, job, latents: decoded.append(
        decode(self, job, latents)) or decoded[-1])
    with JobLedger(tmp_path / "b.ledger.jsonl") as ledger:
        scheduler = BatchScheduler([Worker.pipelined(stages)], ledger=ledger, is_interrupted=lambda: bool(decoded))
        summary = scheduler.run([JOB])
    assert [r.state for r in summary.results] == ["cancelled"] and "cancelled in write" in summary.results[0].error
    process = decoded[0].video._process
    decoded.clear()  # the test's own reference: the scheduler dropped its copy when the job ended
    assert process.wait(timeout=10) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.ledger.jsonl"]
