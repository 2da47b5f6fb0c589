"""Image-to-video batches: the CSV's `image` and `last_image` columns, the pictures checked before any model loads,
each job's pictures encoded by the VAE on its own device and denoised exactly as the pipeline does with them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_batch_node import _node_inputs, folders  # noqa: F401  (a fixture)
from test_workflows import TINY_SIZE, _tiny_node_models, tiny_models  # noqa: F401  (a fixture)

from nodes import handles, host
from nodes.batch_queue import Wan22BatchQueueManager
from wan_core.batch.jobs import BatchJob, batch_id
from wan_core.batch.stages import LazyModel, PipelineStages, SamplingSettings
from wan_core.batch.start_images import PictureCheck, job_pictures
from wan_core.errors import InputError
from wan_core.pipeline.conditioning import pil_to_tensor
from wan_core.pipeline.pipeline import WanPipeline
from wan_core.pipeline.tasks import get_task
from wan_core.runtime import Runtime


def _write_picture(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _job(image: str, **changes) -> BatchJob:
    values = {"index": 1, "prompt": "a fox", "negative_prompt": "", "style": "none", "seed": 3, **TINY_SIZE,
              "image": image}
    return BatchJob(**(values | changes))


def _tiny_models_of(task: str) -> tuple:
    """(DiT handle, VAE handle) of the tiny files of `task` (i2v-A14B or ti2v-5B)."""
    from nodes.loaders import Wan22ModelLoader, Wan22VAELoader

    if task == "i2v-A14B":
        dit, _, vae = _tiny_node_models(task)
        return dit, vae
    (dit,) = Wan22ModelLoader().load(task, "wan2.2_ti2v_5B_fp16.safetensors", "none", "fp32", "auto", False)
    (vae,) = Wan22VAELoader().load("wan2.2_vae.safetensors", "fp32")
    return dit, vae


@pytest.mark.parametrize("task_name,last", [("i2v-A14B", ""), ("i2v-A14B", "end.png"), ("ti2v-5B", "")])
def test_a_jobs_pictures_give_the_latents_the_pipeline_gives_for_them(
    tiny_models, tmp_path, monkeypatch, task_name, last  # noqa: F811
):
    monkeypatch.setenv(host.MODELS_DIR_ENV, str(tiny_models))
    handles.MODEL_CACHE.clear()
    dit, vae_handle = _tiny_models_of(task_name)
    high, low = dit.load()
    vae = vae_handle.load()
    _write_picture(tmp_path / "fox.png", seed=1)
    _write_picture(tmp_path / "end.png", seed=2, size=(32, 32))
    task = get_task(task_name)
    settings = SamplingSettings(task, "unipc", 5.0, (3.0, 4.0), Runtime())
    stages = PipelineStages(
        settings=settings, text_encoder=LazyModel(lambda: None), experts=LazyModel(lambda: (high, low)),
        vae=LazyModel(lambda: vae), encode_device="cpu", denoise_device="cpu", decode_device="cpu",
        output_dir=tmp_path, batch="b", build_prompts=lambda job: (job.prompt, ""),
        read_pictures=lambda job: job_pictures(job, tmp_path),
    )  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    cond = tuple(torch.randn(1, 4, high.config.text_dim, generator=generator) for _ in range(2))
    job = _job("fox.png", last_image=last)
    latents = stages.denoise(job, cond, cancel=lambda: False, progress=lambda step, total: None)

    with Image.open(tmp_path / "fox.png") as picture, Image.open(tmp_path / "end.png") as end:
        image, last_image = pil_to_tensor(picture), pil_to_tensor(end) if last else None
    pipeline = WanPipeline(task, text_encoder=None, vae=vae, high_noise_model=high, low_noise_model=low,
                           runtime=Runtime())
    expected = pipeline.sample(*cond, settings.request(job), image=image, last_image=last_image)
    assert torch.equal(latents, expected)
    other = pipeline.sample(*cond, settings.request(job), image=-image, last_image=last_image)
    assert not torch.allclose(latents, other, atol=1e-3)  # the image matters at this size
    if last:
        without_last = pipeline.sample(*cond, settings.request(job), image=image)
        assert not torch.allclose(latents, without_last, atol=1e-3)

    handed = []  # one job on every GPU: the worker pool gets the same conditioning
    stages.denoiser = lambda *args: handed.append(args) or "latents"
    assert stages.denoise(job, cond, cancel=lambda: False, progress=lambda step, total: None) == "latents"
    expected_condition = pipeline.image_condition(image, settings.request(job), last_image)
    for handed_part, expected_part in zip(handed[0][-2:], expected_condition, strict=True):
        assert (handed_part is None and expected_part is None) or torch.equal(handed_part, expected_part)
    assert any(part is not None for part in handed[0][-2:])
    handles.MODEL_CACHE.clear()


def _i2v_inputs(csv_name: str) -> dict:
    model = handles.DiTHandle(task="i2v-A14B", high_noise_path="/absent/high", low_noise_path="/absent/low")
    return _node_inputs(csv_file=csv_name, model=model)


def _refusal(csv_name: str) -> str:
    """The message an i2v-A14B batch of `csv_name` is refused with."""
    with pytest.raises(InputError) as error:
        Wan22BatchQueueManager().run_batch(**_i2v_inputs(csv_name))
    return str(error.value)


def test_image_to_video_jobs_are_checked_before_any_model_loads(folders):  # noqa: F811
    inputs = folders / "input"
    _write_picture(inputs / "fine.png", seed=1)
    (inputs / "notes.png").write_text("not a picture", encoding="utf-8")
    (inputs / "jobs.csv").write_text(
        "prompt,image\n"
        "fine,fine.png\n"
        "no picture,\n"
        "missing,absent.png\n"
        "outside,../secret.png\n"
        "broken,notes.png\n",
        encoding="utf-8",
    )
    (inputs / "ends.csv").write_text(
        "prompt,image,last_image,frames\n"
        "fine,fine.png,fine.png,5\n"
        "too short,fine.png,fine.png,1\n"
        "no start,,fine.png,5\n"
        "missing end,fine.png,absent.png,5\n",
        encoding="utf-8",
    )
    message = _refusal("jobs.csv")
    assert "row 3: i2v-A14B makes each video from a start image: fill in the row's 'image' cell" in message
    assert "row 4: The start image 'absent.png' was not found" in message
    assert "row 5: The start image '../secret.png' is outside the CSV file's folder" in message
    assert "row 6: The start image" in message and "cannot be read as an image" in message
    assert "row 2" not in message
    message = _refusal("ends.csv")
    assert "row 3: A video from a first and a last frame needs at least 5 frames" in message
    assert "row 4: i2v-A14B makes each video from a start image" in message
    assert "row 5: The last image 'absent.png' was not found" in message
    assert "row 2" not in message
    (inputs / "ti2v.csv").write_text("prompt,image,last_image\nfine,fine.png,fine.png\n", encoding="utf-8")
    ti2v = handles.DiTHandle(task="ti2v-5B", high_noise_path="/absent/5b")
    with pytest.raises(InputError, match="row 2: task ti2v-5B takes no last frame"):
        Wan22BatchQueueManager().run_batch(**_node_inputs(csv_file="ti2v.csv", model=ti2v))

    with pytest.raises(InputError, match="give the jobs as a CSV file with an 'image' column"):
        Wan22BatchQueueManager().run_batch(**_node_inputs(prompts="a fox", model=_i2v_inputs("")["model"]))
    (inputs / "t2v.csv").write_text("prompt,image\nfine,fine.png\n", encoding="utf-8")
    with pytest.raises(InputError, match="row 2: task t2v-A14B takes no input image"):
        Wan22BatchQueueManager().run_batch(**_node_inputs(csv_file="t2v.csv"))
    assert len(handles.MODEL_CACHE) == 0 and not (folders / "output").exists()


def test_an_image_to_video_batch_writes_a_video_per_row_and_a_new_picture_is_a_new_batch(
    tiny_models, folders, monkeypatch  # noqa: F811
):
    from test_nodes import _fake_comfyui

    monkeypatch.setenv(host.MODELS_DIR_ENV, str(tiny_models))
    _fake_comfyui(monkeypatch, [])
    inputs = folders / "input"
    for seed in (1, 2):
        _write_picture(inputs / f"p{seed}.png", seed=seed)
    (inputs / "jobs.csv").write_text("prompt,image\na fox,p1.png\na boat,p2.png\n", encoding="utf-8")
    dit, t5, vae = _tiny_node_models("i2v-A14B")
    node_inputs = _node_inputs(csv_file="jobs.csv", model=dit, t5=t5, vae=vae, solver="euler")
    paths, table = Wan22BatchQueueManager().run_batch(**node_inputs)["result"]
    videos = [Path(p) for p in paths.splitlines()]
    assert len(videos) == 2 and all(v.stat().st_size > 1000 for v in videos) and "2 done" in table
    first_batch = videos[0].name.split("_")[0]

    _write_picture(inputs / "p2.png", seed=3)  # same name, another picture: not the finished batch
    paths_again, table_again = Wan22BatchQueueManager().run_batch(**node_inputs)["result"]
    assert "2 done" in table_again and Path(paths_again.splitlines()[0]).name.split("_")[0] != first_batch
    assert len(list((folders / "output" / "wan22_batches").glob("*.ledger.jsonl"))) == 2  # one per batch id
    handles.MODEL_CACHE.clear()


def test_each_picture_is_read_once_to_check_it_and_name_the_batch(tmp_path, monkeypatch):
    for name, seed in (("a.png", 1), ("b.png", 2)):
        _write_picture(tmp_path / name, seed=seed)
    (tmp_path / "text.png").write_text("not a picture", encoding="utf-8")
    reads: list[str] = []
    read_bytes = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda path: reads.append(path.name) or read_bytes(path))
    check = PictureCheck(tmp_path)
    for job in (_job("a.png"), _job("b.png", last_image="a.png"), _job("a.png", index=3)):
        check(job)
    assert sorted(reads) == ["a.png", "b.png"]
    digest = {name: hashlib.sha256(read_bytes(tmp_path / name)).hexdigest() for name in ("a.png", "b.png")}
    assert check.digests == digest
    with pytest.raises(InputError, match="The last image .*text.png.* cannot be read as an image"):
        check(_job("b.png", last_image="text.png"))
    assert "text.png" not in check.digests


def test_text_to_video_batch_ids_do_not_change_with_the_image_column():
    """A batch queued before the column existed resumes from its ledger: its id is the one the code gave then."""
    job = _job("")
    assert batch_id([job], {"task": "t2v-A14B"}) == "batch-2bbb7cb98997"  # computed by the code before the column
    assert batch_id([_job("a.png")], {"task": "t2v-A14B"}) != "batch-2bbb7cb98997"
