"""The shipped workflows: UI files match the node declarations, `api/` and `example_workflows/` are in sync, and
every API workflow runs through the node classes with tiny synthesized models and writes an MP4."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from graph_executor import run_graph

from nodes import NODE_CLASS_MAPPINGS, handles, host

ROOT = Path(__file__).resolve().parent.parent
API_FILES = sorted((ROOT / "api").glob("*.json"))
UI_FILES = sorted((ROOT / "example_workflows").glob("*.json"))
SHIPPED = {"wan22_t2v_a14b", "wan22_t2v_a14b_dual_gpu", "wan22_ti2v_5b_24gb", "wan22_i2v_a14b", "wan22_batch_dual_gpu",
           "wan22_t2v_a14b_interpolated_8s", "wan22_ti2v_5b_long_video", "wan22_t2v_a14b_lightning",
           "wan22_i2v_a14b_lightning", "wan22_flf2v_a14b_lightning"}
# Workflows with inputs beyond models (a CSV in the input folder) run in their own test file.
RUN_ELSEWHERE = {"wan22_batch_dual_gpu": "tests/test_batch_node.py"}
FRONTEND_ONLY = {"Note"}
CORE_NODE_WIDGETS = {"LoadImage": 2}  # image name + upload button


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_workflows", ROOT / "tools" / "make_workflows.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _widget_count(class_type: str) -> int:
    declared = NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES()
    count = 0
    for spec in (declared.get("required", {}) | declared.get("optional", {})).values():
        options = spec[1] if len(spec) > 1 else {}
        if (isinstance(spec[0], list) or spec[0] in {"INT", "FLOAT", "STRING", "BOOLEAN"}) and not options.get(
            "forceInput"
        ):
            count += 2 if options.get("control_after_generate") else 1
    return count


def _link_inputs(class_type: str) -> list[tuple[str, str]]:
    declared = NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES()
    return [
        (name, spec[0])
        for name, spec in (declared.get("required", {}) | declared.get("optional", {})).items()
        if not isinstance(spec[0], list)
        and (spec[0] not in {"INT", "FLOAT", "STRING", "BOOLEAN"} or (len(spec) > 1 and spec[1].get("forceInput")))
    ]


def _types_overlap(a: str, b: str) -> bool:
    return bool({t.strip() for t in a.split(",")} & {t.strip() for t in b.split(",")})


def test_the_shipped_set_is_complete_and_api_folder_is_not_a_template_folder():
    assert {p.stem for p in API_FILES} == SHIPPED == {p.stem for p in UI_FILES}
    # ComfyUI serves every folder of a pack whose name contains "example" or "workflow" as templates; API-format
    # files there would show up as broken templates.
    template_folders = [p for p in ROOT.iterdir() if p.is_dir() and ("example" in p.name or "workflow" in p.name)]
    templates = [path for folder in template_folders for path in folder.glob("*.json")]
    assert templates and all("nodes" in json.loads(path.read_text(encoding="utf-8")) for path in templates)
    assert API_FILES and not {p.parent for p in API_FILES} & set(template_folders)


def test_files_are_what_the_generator_writes():
    generator = _load_generator()
    for graph in generator.all_graphs():
        for relative, text in generator.render(graph).items():
            assert (ROOT / relative).read_text(encoding="utf-8") == text, f"{relative} is stale: run the generator"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_workflow_matches_the_node_declarations(path):
    workflow = json.loads(path.read_text(encoding="utf-8"))
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}
    assert workflow["last_link_id"] == max(links) and workflow["last_node_id"] == max(nodes)
    for node in nodes.values():
        kind = node["type"]
        if kind in FRONTEND_ONLY:
            continue
        if kind in CORE_NODE_WIDGETS:
            assert len(node["widgets_values"]) == CORE_NODE_WIDGETS[kind]
            continue
        assert len(node["widgets_values"]) == _widget_count(kind), f"{kind} widget count"
        assert [(i["name"], i["type"]) for i in node["inputs"]] == _link_inputs(kind), f"{kind} inputs"
        cls = NODE_CLASS_MAPPINGS[kind]
        assert [o["type"] for o in node["outputs"]] == list(cls.RETURN_TYPES)
        for slot, declared_input in enumerate(node["inputs"]):
            if declared_input["link"] is None:
                continue
            link_id, source, source_slot, target, target_slot, link_type = links[declared_input["link"]]
            assert (target, target_slot) == (node["id"], slot)
            assert link_id in nodes[source]["outputs"][source_slot]["links"]
            assert _types_overlap(link_type, declared_input["type"])
    for link_id, _source, _source_slot, target, target_slot, _type in links.values():
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
    seeded = ("Wan22DiTSampler", "Wan22BatchQueueManager", "Wan22LongVideo")
    sampler = next(n for n in nodes.values() if n["type"] in seeded)
    widget_names = [name for name in NODE_CLASS_MAPPINGS[sampler["type"]].INPUT_TYPES()["required"]
                    if name not in dict(_link_inputs(sampler["type"]))]
    seed_index = widget_names.index("seed")
    assert isinstance(sampler["widgets_values"][seed_index], int)
    assert sampler["widgets_values"][seed_index + 1] in ("fixed", "randomize", "increment", "decrement")
    assert any(n["type"] == "Note" for n in nodes.values()) and workflow["groups"]


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_templates_name_their_published_models_and_have_a_thumbnail(path):
    from PIL import Image

    workflow = json.loads(path.read_text(encoding="utf-8"))
    loaders = [node for node in workflow["nodes"] if node["type"].endswith("Loader")]
    named = set()
    for node in loaders:
        models = node["properties"].get("models", [])
        assert models, f"{node['type']} names no published model"
        for model in models:
            assert model["name"] in node["widgets_values"]  # the frontend matches entries to widget values
            assert model["url"].startswith("https://huggingface.co/Comfy-Org/Wan_2.")
            assert model["url"].endswith("/split_files/" + model["directory"] + "/" + model["name"])
            named.add(model["name"])
    loras = 2 if "lightning" in path.stem else 0  # the Lightning pair: one LoRA per expert
    assert len(named) == (3 if "5b" in path.stem else 4) + loras  # two experts (A14B) or one (5B), T5, VAE
    with Image.open(path.with_suffix(".jpg")) as thumbnail:
        assert thumbnail.format == "JPEG" and thumbnail.size == (400, 300)
        assert len(torch.unique(torch.from_numpy(np.asarray(thumbnail.convert("L"))))) > 5  # a drawing, not a blank


def test_dual_gpu_workflow_puts_t5_on_gpu0_and_dit_vae_on_gpu1():
    graph = json.loads((ROOT / "api" / "wan22_t2v_a14b_dual_gpu.json").read_text(encoding="utf-8"))

    def device_of(class_type: str, socket: str) -> str:
        consumer = next(n for n in graph.values() if n["class_type"] == class_type)
        return graph[consumer["inputs"][socket][0]]["inputs"]["device"]

    assert device_of("Wan22T5Encode", "t5") == "gpu:0"
    assert device_of("Wan22DiTSampler", "model") == "gpu:1"
    assert device_of("Wan22VAEDecode", "vae") == "gpu:1"


# ------------------------------------------------------------------------------------- running the workflows
TINY_SIZE = {"width": 32, "height": 32, "frames": 5, "steps": 2}


def _write_tiny_models(models: Path) -> None:
    """Tiny random models under the ComfyUI file names the workflows use (ComfyUI single-file layouts)."""
    from safetensors.torch import save_file

    from wan_core.configs import DIT_CONFIGS
    from wan_core.dit.model import WanDiT
    from wan_core.text.demo import build_tiny_umt5
    from wan_core.text.tokenizer import build_demo_spiece_model, tokenizer_from_spiece
    from wan_core.vae import build_vae, official_state_dict

    def save(state: dict, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))

    torch.manual_seed(0)
    dits = {"t2v": "tiny-t2v", "i2v": "tiny-i2v"}
    for task, config in dits.items():
        for expert in ("high", "low"):
            state = WanDiT(DIT_CONFIGS[config]).state_dict()
            save({f"model.diffusion_model.{k}": v for k, v in state.items()},
                 models / "diffusion_models" / f"wan2.2_{task}_{expert}_noise_14B_fp8_scaled.safetensors")
    save(WanDiT(DIT_CONFIGS["tiny-ti2v"]).state_dict(), models / "diffusion_models" / "wan2.2_ti2v_5B_fp16.safetensors")
    save(official_state_dict(build_vae("tiny-wan2.1")), models / "vae" / "wan_2.1_vae.safetensors")
    save(official_state_dict(build_vae("tiny-wan2.2")), models / "vae" / "wan2.2_vae.safetensors")
    spiece = build_demo_spiece_model()
    umt5 = build_tiny_umt5(tokenizer_from_spiece(spiece).vocab_size).state_dict()
    del umt5["encoder.embed_tokens.weight"]  # tied to shared.weight; ComfyUI's files store it once
    umt5["spiece_model"] = torch.frombuffer(bytearray(spiece), dtype=torch.uint8)
    save(umt5, models / "text_encoders" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors")
    from test_lora_node import write_tiny_lora

    for task, version in (("t2v", "v1.1"), ("i2v", "v1")):
        for expert in ("high", "low"):
            name = f"wan2.2_{task}_lightx2v_4steps_lora_{version}_{expert}_noise.safetensors"
            write_tiny_lora(models / "loras" / name)


def _tiny_node_models(task: str) -> tuple:
    """The (DiT, T5, VAE) handles of the loader nodes for `_write_tiny_models`' A14B files of `task` (t2v-A14B,
    i2v-A14B): fp32 DiT, T5 as stored, fp32 VAE (the models folder set through `host.MODELS_DIR_ENV`)."""
    from nodes.loaders import Wan22ModelLoader, Wan22T5Loader, Wan22VAELoader

    kind = task.split("-")[0]
    (dit,) = Wan22ModelLoader().load(task, f"wan2.2_{kind}_high_noise_14B_fp8_scaled.safetensors",
                                     f"wan2.2_{kind}_low_noise_14B_fp8_scaled.safetensors", "fp32", "auto", False)
    (t5,) = Wan22T5Loader().load("umt5_xxl_fp8_e4m3fn_scaled.safetensors", "default")
    (vae,) = Wan22VAELoader().load("wan_2.1_vae.safetensors", "fp32")
    return dit, t5, vae


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    _write_tiny_models(models)
    return models


class FakeLoadImage:
    """ComfyUI's LoadImage outside ComfyUI: a fixed random picture."""

    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"image": (["example.png"],)}}

    def load(self, image: str) -> tuple:
        picture = torch.rand(1, 40, 48, 3, generator=torch.Generator().manual_seed(1))
        return picture, torch.zeros(1, 40, 48)


@pytest.mark.parametrize("path", [p for p in API_FILES if p.stem not in RUN_ELSEWHERE], ids=lambda p: p.stem)
def test_api_workflow_runs_and_writes_an_mp4(path, tiny_models, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(host.MODELS_DIR_ENV, str(tiny_models))
    monkeypatch.setenv(host.OUTPUT_DIR_ENV, str(tmp_path / "output"))
    handles.MODEL_CACHE.clear()
    graph = json.loads(path.read_text(encoding="utf-8"))
    for node in graph.values():
        if node["class_type"] in ("Wan22DiTSampler", "Wan22LongVideo"):
            node["inputs"].update(TINY_SIZE)
        node.get("_meta", {}).clear()
    workflow = json.loads((ROOT / "example_workflows" / path.name).read_text(encoding="utf-8"))
    with caplog.at_level(logging.WARNING, logger="comfyui-wan22"):
        _outputs, ui = run_graph(graph, {**NODE_CLASS_MAPPINGS, "LoadImage": FakeLoadImage}, workflow=workflow)
    (saved,) = next(shown["images"] for shown in ui.values() if "images" in shown)
    video = tmp_path / "output" / saved["subfolder"] / saved["filename"]
    assert video.suffix == ".mp4" and video.stat().st_size > 1000
    frames = TINY_SIZE["frames"]
    expected = {"wan22_t2v_a14b_interpolated_8s": 2 * frames - 1, "wan22_ti2v_5b_long_video": 3 * frames - 2}
    if path.stem in expected:  # RIFE 2x without weights: ffmpeg; 3 chunks: two joins drop one frame each
        assert imageio_ffmpeg.count_frames_and_secs(str(video))[0] == expected[path.stem]
    if "dual_gpu" in path.stem and torch.cuda.device_count() < 2:
        assert "gpu:1 does not exist" in caplog.text  # fell back, and still finished
    handles.MODEL_CACHE.clear()


def test_sampler_shows_step_progress_and_stops_at_the_interrupt(tiny_models, tmp_path, monkeypatch):
    from test_nodes import _fake_comfyui

    calls: list = []
    state, interrupted_error = _fake_comfyui(monkeypatch, calls)
    state["interrupt_on_update"] = True  # the user presses Cancel while step 1 is shown
    monkeypatch.setenv(host.MODELS_DIR_ENV, str(tiny_models))
    monkeypatch.setenv(host.OUTPUT_DIR_ENV, str(tmp_path / "output"))
    graph = json.loads((ROOT / "api" / "wan22_t2v_a14b.json").read_text(encoding="utf-8"))
    graph["6"]["inputs"].update(TINY_SIZE, steps=4)
    with pytest.raises(interrupted_error):
        run_graph(graph, NODE_CLASS_MAPPINGS)
    updates = [call for call in calls if call[0] == "update"]
    assert len(updates) == 1 and updates[0][1:3] == (1, 4)
    kind, picture, _size = updates[0][3]
    assert kind == "JPEG" and picture.size == (TINY_SIZE["width"] // 8, TINY_SIZE["height"] // 8)
    progress = [call[2] for call in calls if call[0] == "send" and call[1] == "wan22.progress"]
    assert progress == [{"node": "6", "device": "CPU", "step": 1, "total": 4, "expert": "high_noise"}]
    assert not list((tmp_path / "output").rglob("*.mp4"))


@pytest.mark.parametrize("name", ["wan22_t2v_a14b_lightning", "wan22_i2v_a14b_lightning", "wan22_flf2v_a14b_lightning"])
def test_lightning_workflows_run_4_steps_cfg_1_split_2_2_with_a_lora_per_expert(name):
    api = json.loads((ROOT / "api" / f"{name}.json").read_text(encoding="utf-8"))
    (sampler,) = [n["inputs"] for n in api.values() if n["class_type"] == "Wan22DiTSampler"]
    assert (sampler["steps"], sampler["boundary_step"], sampler["cfg_high_noise"], sampler["cfg_low_noise"],
            sampler["solver"], sampler["shift"]) == (4, 2, 1.0, 1.0, "euler", 5.0)
    loras = [n["inputs"] for n in api.values() if n["class_type"] == "Wan22LoraLoader"]
    assert [(x["strength_high"], x["strength_low"]) for x in loras] == [(1.0, 0.0), (0.0, 1.0)]
    assert "high_noise" in loras[0]["lora_name"] and "low_noise" in loras[1]["lora_name"]
    ui = json.loads((ROOT / "example_workflows" / f"{name}.json").read_text(encoding="utf-8"))
    for node in (n for n in ui["nodes"] if n["type"] == "Wan22LoraLoader"):
        (model,) = node["properties"]["models"]
        assert model["name"] == node["widgets_values"][0] and model["directory"] == "loras"
        assert model["url"].startswith("https://huggingface.co/") and model["url"].endswith("/" + model["name"])
