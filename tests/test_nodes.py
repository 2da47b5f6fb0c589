"""The ComfyUI node layer without model weights: host adapter, devices, handles, loaders, save, pack import."""

from __future__ import annotations

import enum
import importlib.util
import json
import logging
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, devices, handles, host
from nodes.loaders import Wan22ModelLoader, diffusion_model_choices
from nodes.sampler import image_to_video_frame, latent_preview
from nodes.save_video import Wan22SaveVideo, resolve_prefix
from nodes.set_device import Wan22SetDevice
from nodes.vae_nodes import images_to_video, video_to_images
from wan_core.errors import InputError, MissingFileError

ROOT = Path(__file__).resolve().parent.parent
NODE_IDS = {
    "Wan22ModelLoader", "Wan22T5Loader", "Wan22VAELoader", "Wan22PromptStyler", "Wan22T5Encode", "Wan22SetDevice",
    "Wan22DiTSampler", "Wan22VAEDecode", "Wan22VAEEncode", "Wan22SaveVideo", "Wan22GPUCheck",
}


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(host.MODELS_DIR_ENV, str(tmp_path / "models"))
    monkeypatch.setenv(host.OUTPUT_DIR_ENV, str(tmp_path / "output"))
    for kind in ("diffusion_models", "text_encoders", "vae"):
        (tmp_path / "models" / kind).mkdir(parents=True)
    return tmp_path / "models"


@pytest.fixture(autouse=True)
def empty_cache():
    handles.MODEL_CACHE.clear()
    yield
    handles.MODEL_CACHE.clear()


def test_mappings_hold_every_node_with_the_pack_conventions():
    assert NODE_IDS <= set(NODE_CLASS_MAPPINGS)
    assert set(NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_CLASS_MAPPINGS)
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        assert node_id.startswith("Wan22")
        assert cls.CATEGORY == "Wan2.2"
        assert callable(getattr(cls, cls.FUNCTION))
        assert isinstance(cls.INPUT_TYPES(), dict)


def test_pack_root_imports_as_a_package_outside_comfyui():
    spec = importlib.util.spec_from_file_location(
        "comfyui_wan22_pack", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        assert set(module.NODE_CLASS_MAPPINGS) == set(NODE_CLASS_MAPPINGS)
        assert (ROOT / module.WEB_DIRECTORY).is_dir()
    finally:
        for name in [n for n in sys.modules if n.startswith(spec.name)]:
            del sys.modules[name]


# ------------------------------------------------------------------------------------------------------ host
def test_model_folders_from_env_and_official_folders_listed_as_folders(models_dir):
    (models_dir / "diffusion_models" / "a.safetensors").write_bytes(b"x")
    (models_dir / "diffusion_models" / "notes.txt").write_text("not a model")
    expert = models_dir / "diffusion_models" / "Wan2.2-T2V-A14B" / "high_noise_model"
    expert.mkdir(parents=True)
    for k in (1, 2):
        (expert / f"diffusion_pytorch_model-0000{k}-of-00002.safetensors").write_bytes(b"x")
    assert host.list_models("diffusion_models") == [
        "Wan2.2-T2V-A14B/high_noise_model/diffusion_pytorch_model-00001-of-00002.safetensors",
        "Wan2.2-T2V-A14B/high_noise_model/diffusion_pytorch_model-00002-of-00002.safetensors",
        "a.safetensors",
    ]
    assert diffusion_model_choices() == ["Wan2.2-T2V-A14B/high_noise_model/", "a.safetensors"]
    assert host.model_path("diffusion_models", "Wan2.2-T2V-A14B/high_noise_model/") == str(expert)
    with pytest.raises(MissingFileError, match="diffusion_models"):
        host.model_path("diffusion_models", "absent.safetensors")
    with pytest.raises(MissingFileError, match="relative"):
        host.model_path("vae", "../diffusion_models/a.safetensors")


def _fake_comfyui(monkeypatch, calls: list):
    """ComfyUI's host services as a CPU-only ComfyUI has them, whatever GPUs this machine has."""
    monkeypatch.setattr(devices, "gpu_count", lambda: 0)

    class Interrupted(Exception):
        pass

    class ProgressBar:
        def __init__(self, total, node_id=None):
            calls.append(("bar", total, node_id))

        def update_absolute(self, value, total=None, preview=None):
            calls.append(("update", value, total, preview))
            state["interrupted"] = state["interrupt_on_update"]

    state = {"interrupted": False, "interrupt_on_update": False}

    def throw():
        if state["interrupted"]:
            raise Interrupted()

    management = types.SimpleNamespace(
        processing_interrupted=lambda: state["interrupted"], throw_exception_if_processing_interrupted=throw,
        get_torch_device=lambda: torch.device("cpu"),
    )
    instance = types.SimpleNamespace(client_id="client-7", send_sync=lambda *args: calls.append(("send", *args)))
    monkeypatch.setitem(sys.modules, "comfy.utils", types.SimpleNamespace(ProgressBar=ProgressBar))
    monkeypatch.setitem(sys.modules, "comfy.model_management", management)
    monkeypatch.setitem(sys.modules, "server", types.SimpleNamespace(PromptServer=types.SimpleNamespace(
        instance=instance)))
    return state, Interrupted


def test_host_services_inside_comfyui_use_the_host(monkeypatch):
    calls: list = []
    state, interrupted_error = _fake_comfyui(monkeypatch, calls)
    bar = host.Progress(10, node_id="6")
    picture = latent_preview(torch.randn(16, 3, 4, 4))
    bar.update(3, lambda: picture)
    assert calls[0] == ("bar", 10, "6")
    assert calls[1][:3] == ("update", 3, 10) and calls[1][3] == ("JPEG", picture, host.PREVIEW_MAX_SIZE)
    devices.announce_device("6", torch.device("cpu"))
    assert calls[2] == ("send", devices.DEVICE_EVENT, {"node": "6", "device": "CPU"}, "client-7")
    host.raise_if_interrupted()
    state["interrupted"] = True
    assert host.interrupted()
    with pytest.raises(interrupted_error):
        host.raise_if_interrupted()


def test_previews_follow_comfyuis_preview_method_and_size(monkeypatch):
    """As native samplers: no preview is made with `--preview-method none` (ComfyUI's default, and the frontend's
    per-prompt choice lands there too); otherwise at most `--preview-size` pixels."""
    calls: list = []
    _fake_comfyui(monkeypatch, calls)
    method = enum.Enum("LatentPreviewMethod", {"NoPreviews": "none", "Auto": "auto"})
    args = types.SimpleNamespace(preview_method=method.NoPreviews, preview_size=256)
    monkeypatch.setitem(sys.modules, "comfy.cli_args", types.SimpleNamespace(args=args))
    made = []
    bar = host.Progress(4, node_id="6")
    bar.update(1, lambda: made.append(1) or "picture")
    args.preview_method = method.Auto
    bar.update(2, lambda: made.append(2) or "picture")
    assert made == [2]
    assert calls[1:] == [("update", 1, 4, None), ("update", 2, 4, ("JPEG", "picture", 256))]


def test_host_services_outside_comfyui_are_plain():
    assert not host.in_comfyui()
    host.Progress(5, node_id="1").update(2)  # no host: nothing happens, nothing raises
    host.send_event("x", {})
    host.raise_if_interrupted()
    assert host.interrupted() is False


# --------------------------------------------------------------------------------------------------- devices
def test_devices_listed_at_run_time_and_missing_gpu_falls_back(caplog, monkeypatch):
    monkeypatch.setattr(devices, "gpu_count", lambda: 0)
    assert devices.list_devices() == ["auto", "cpu"]
    monkeypatch.setattr(devices, "gpu_count", lambda: 2)
    assert devices.list_devices() == ["auto", "cpu", "gpu:0", "gpu:1", devices.ALL_GPUS]
    monkeypatch.setattr(devices, "gpu_count", lambda: 0)
    with caplog.at_level(logging.WARNING, logger="comfyui-wan22"):
        assert devices.resolve_device("gpu:1") == torch.device("cpu")
    assert "gpu:1 does not exist" in caplog.text
    assert devices.resolve_device("cpu") == torch.device("cpu")
    assert devices.device_label(torch.device("cuda", 1)) == "GPU 1"
    with pytest.raises(InputError, match="gpu:N"):
        devices.resolve_device("tpu:0")


def test_set_device_binds_a_copy_and_accepts_absent_gpus_at_validation():
    handle = handles.VAEHandle(path="/x/vae.safetensors")
    assert Wan22SetDevice.VALIDATE_INPUTS(device="gpu:7") is True
    assert "Unknown device" in Wan22SetDevice.VALIDATE_INPUTS(device="gpu-one")
    (bound,) = Wan22SetDevice().set_device(handle, "gpu:1")
    assert bound.device == "gpu:1" and handle.device == "auto"
    assert bound.path == handle.path
    with pytest.raises(InputError, match="handle"):
        Wan22SetDevice().set_device("not a handle", "cpu")


# --------------------------------------------------------------------------------------------------- handles
def test_model_cache_loads_a_file_once_and_drops_the_least_recently_used():
    cache = handles.ModelCache({"vae": 1, "dit": 2})
    loads = []

    def loader(name):
        return lambda: loads.append(name) or torch.nn.Linear(1, 1)

    first = cache.get(("dit", "a"), loader("a"))
    assert cache.get(("dit", "a"), loader("a")) is first
    cache.get(("dit", "b"), loader("b"))
    cache.get(("dit", "a"), loader("a"))  # a is now the most recent
    cache.get(("dit", "c"), loader("c"))  # drops b
    cache.get(("dit", "a"), loader("a"))
    cache.get(("dit", "b"), loader("b"))
    assert loads == ["a", "b", "c", "b"]
    assert len(cache) == 2


def test_handles_load_lazily_and_share_the_cached_module(monkeypatch):
    reads = []

    def fake_load_vae(path, *, device, dtype):
        reads.append((path, device, dtype))
        return torch.nn.Linear(2, 2)

    monkeypatch.setitem(sys.modules, "wan_core.vae.loader", types.SimpleNamespace(load_vae=fake_load_vae))
    handle = handles.VAEHandle(path="/m/vae.safetensors", weight_dtype="bf16")
    assert reads == []
    module = handle.load()
    assert handle.bind("cpu").load() is module
    assert reads == [("/m/vae.safetensors", "cpu", torch.bfloat16)]


def test_model_loader_checks_the_expert_count(models_dir):
    (models_dir / "diffusion_models" / "high.safetensors").write_bytes(b"x")
    (models_dir / "diffusion_models" / "low.safetensors").write_bytes(b"x")
    loader = Wan22ModelLoader()
    (handle,) = loader.load("t2v-A14B", "high.safetensors", "low.safetensors", "fp8_e4m3fn", "auto", True)
    assert handle.low_noise_path.endswith("low.safetensors") and handle.offload
    with pytest.raises(InputError, match="low-noise"):
        loader.load("t2v-A14B", "high.safetensors", "none", "default", "auto", False)
    with pytest.raises(InputError, match="one model"):
        loader.load("ti2v-5B", "high.safetensors", "low.safetensors", "default", "auto", False)


@pytest.mark.parametrize("weight_dtype", list(handles.DIT_WEIGHT_FORMATS))
@pytest.mark.parametrize("stored", ["fp8_scaled", "fp32"])
def test_every_weight_dtype_choice_loads_and_runs(models_dir, weight_dtype, stored):
    from wan_core.configs import DIT_CONFIGS
    from wan_core.dit.model import WanDiT
    from wan_core.io.quant import quantize_fp8_scaled
    from wan_core.io.writers import write_safetensors

    torch.manual_seed(0)
    reference = WanDiT(DIT_CONFIGS["tiny-ti2v"]).eval()
    state = reference.state_dict()
    if stored == "fp8_scaled":
        state = quantize_fp8_scaled(state)
    write_safetensors(state, models_dir / "diffusion_models" / "model.safetensors")
    (handle,) = Wan22ModelLoader().load("ti2v-5B", "model.safetensors", "none", weight_dtype, "auto", False)
    model, _ = handle.load()
    fp8_expected = weight_dtype.startswith("fp8") or (weight_dtype == "default" and stored == "fp8_scaled")
    assert (model.blocks[0].ffn[0].weight.dtype == torch.float8_e4m3fn) == fp8_expected
    x = torch.randn(1, 48, 1, 4, 4)
    context = [torch.randn(7, 64)]
    on = {"device": next(model.parameters()).device, "dtype": model.dtype}  # the handle's device: a GPU if present
    with torch.no_grad():
        got = model(x.to(**on), torch.tensor([500.0], device=on["device"]), [c.to(**on) for c in context]).float().cpu()
        want = reference(x, torch.tensor([500.0]), context)
    assert ((got - want).norm() / want.norm()).item() < 0.1  # fp8 / bf16 rounding only


# ------------------------------------------------------------------------------------------- images, preview
def test_image_conversions_round_trip_and_preview_is_an_rgb_picture():
    video = torch.rand(3, 5, 8, 6) * 2 - 1
    images = video_to_images(video)
    assert images.shape == (5, 8, 6, 3) and images.min() >= 0 and images.max() <= 1
    torch.testing.assert_close(images_to_video(images), video)
    torch.testing.assert_close(image_to_video_frame(images[:1]), video[:, 0])
    torch.testing.assert_close(image_to_video_frame(images[:1, ..., :1]), video[:1, 0].expand(3, -1, -1))  # gray
    with pytest.raises(InputError, match="holds 5 pictures.*Image From Batch"):
        image_to_video_frame(images)
    with pytest.raises(InputError, match=r"\[1, H, W, 3\].*Load Image"):
        image_to_video_frame(images[:1, ..., :2])
    picture = latent_preview(torch.randn(48, 3, 4, 5))
    assert picture.size == (5, 4) and picture.mode == "RGB"


# ------------------------------------------------------------------------------------------------ save video
@pytest.mark.parametrize("prefix", ["../evil", "/tmp/evil", "a/../../evil", "C:\\evil", "wan22/", " "])
def test_save_prefix_cannot_leave_the_output_folder(tmp_path, prefix):
    with pytest.raises(InputError, match="filename_prefix"):
        resolve_prefix(str(tmp_path), prefix)


def test_save_prefix_refuses_a_symlinked_way_out(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InputError, match="outside"):
        resolve_prefix(str(tmp_path / "out"), "link/video")
    assert resolve_prefix(str(tmp_path / "out"), "wan22/clip") == ((tmp_path / "out" / "wan22").resolve(), "clip")


def _mp4_metadata(path: Path) -> dict[str, str]:
    import imageio_ffmpeg

    dumped = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"],
        check=True, capture_output=True, text=True,
    ).stdout
    # FFMETADATA: `key=value` lines after a header; a backslash makes the next character (even a newline) literal.
    tags, key, current, escaped = {}, None, "", False
    for char in dumped.split("\n", 1)[1]:
        if escaped or (char not in "\\\n" and not (char == "=" and key is None)):
            current, escaped = current + char, False
        elif char == "\\":
            escaped = True
        elif char == "=":
            key, current = current, ""
        else:
            tags[key], key, current = current, None, ""
    return tags


def test_save_video_writes_mp4_frames_and_embeds_the_workflow(models_dir, tmp_path):
    images = torch.rand(5, 16, 24, 3)
    workflow = {"nodes": [{"id": 1, "widgets_values": ["a=b; #c \\ 中文"]}], "links": []}
    prompt = {"1": {"class_type": "Wan22SaveVideo", "inputs": {}}}
    node = Wan22SaveVideo()
    result = node.save(images, "wan22/clip", 16.0, True, prompt=prompt, extra_pnginfo={"workflow": workflow})
    saved = result["ui"]["images"][0]
    assert saved == {"filename": "clip_00001.mp4", "subfolder": "wan22", "type": "output"}
    assert result["ui"]["animated"] == (True,)
    path = tmp_path / "output" / "wan22" / "clip_00001.mp4"
    assert path.stat().st_size > 0
    assert len(list((tmp_path / "output" / "wan22" / "clip_00001_frames").glob("*.png"))) == 5
    tags = _mp4_metadata(path)
    assert json.loads(tags["workflow"]) == workflow
    assert json.loads(tags["prompt"]) == prompt
    assert json.loads(tags["comment"]) == {"prompt": prompt, "workflow": workflow}
    second = node.save(images, "wan22/clip", 16.0, False)
    assert second["ui"]["images"][0]["filename"] == "clip_00002.mp4"
