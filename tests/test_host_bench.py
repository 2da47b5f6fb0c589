"""The host benchmark's pieces that need no GPU and no ComfyUI: model files in ComfyUI's layouts, the alignment of
the native template and our graphs, the server's base folder and the parsing of what it reports."""

from __future__ import annotations

import json
import struct
import sys
import time
import types
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import host_models  # noqa: E402
import host_results as hr  # noqa: E402
import host_workflows as hw  # noqa: E402
from host_server import PACK_LINK, TINY_SHIM_PACKAGE, prepare_base  # noqa: E402

FP8 = torch.float8_e4m3fn


def _header(path: Path) -> dict:
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(size))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    patch, full = pytest.MonkeyPatch(), host_models.vae_specs
    patch.setattr(host_models, "vae_specs", lambda: full()[:4])  # the VAE's real size costs seconds here
    try:
        host_models.ensure_model_files(root, "tiny", device="cpu", log=lambda line: None)
    finally:
        patch.undo()
    return root


# ------------------------------------------------------------------------------------------------ model files


def test_dit_file_has_the_keys_and_scales_native_comfyui_detects(tiny_models: Path) -> None:
    path = tiny_models / "diffusion_models" / host_models.HIGH_NOISE_FILE
    header = _header(path)
    shapes = host_models.dit_shapes("tiny")
    linear = {k for k, s in shapes.items() if k.endswith(".weight") and len(s) == 2}
    expected = set(shapes) | {k[: -len(".weight")] + ".scale_weight" for k in linear} | {"scaled_fp8"}
    assert set(header) - {"__metadata__"} == expected
    assert all(header[k]["dtype"] == "F8_E4M3" for k in linear)
    assert header["blocks.0.ffn.0.scale_weight"] == {**header["blocks.0.ffn.0.scale_weight"], "dtype": "F32",
                                                     "shape": []}
    assert header["scaled_fp8"]["dtype"] == "F8_E4M3" and header["scaled_fp8"]["shape"] == [0]
    # what comfy/model_detection.py reads: dim from head.modulation, heads = dim // 128, ffn width, block count
    dim = header["head.modulation"]["shape"][-1]
    assert (dim, dim // 128) == (host_models.TINY_DIT["dim"], host_models.TINY_DIT["num_heads"])
    assert header["blocks.0.ffn.0.weight"]["shape"][0] == host_models.TINY_DIT["ffn_dim"]
    assert header["text_embedding.0.weight"]["shape"] == [dim, 4096]


def test_lightning_loras_are_lightx2v_files_for_every_block_linear(tiny_models: Path) -> None:
    from wan_core.lora.files import read_lora

    shapes = host_models.dit_shapes("tiny")
    linears = {name[: -len(".weight")]: shape for name, shape in shapes.items()
               if name.startswith("blocks.") and name.endswith(".weight") and len(shape) == 2}
    for name in (host_models.LIGHTNING_HIGH_FILE, host_models.LIGHTNING_LOW_FILE):
        path = tiny_models / "loras" / name
        header = _header(path)
        assert header["diffusion_model.blocks.0.ffn.0.lora_A.weight"]["shape"] == [64, linears["blocks.0.ffn.0"][1]]
        lora = read_lora(path)
        assert lora.layout == "comfyui" and set(lora.layers) == set(linears)
        layer = lora.layers["blocks.1.self_attn.q"]
        pair = layer.adapter
        assert (pair.rank, layer.alpha, tuple(pair.up.shape)) == (64, 64.0, (linears["blocks.1.self_attn.q"][0], 64))
        assert 0 < layer.scale(1.0) * (pair.up.float() @ pair.down.float()).std() < 0.01


def test_our_dit_loader_reads_the_file_with_its_scales(tiny_models: Path) -> None:
    from safetensors import safe_open

    from wan_core.dit.loader import load_dit

    path = tiny_models / "diffusion_models" / host_models.LOW_NOISE_FILE
    model = load_dit(path, dtype=torch.float32)
    assert (model.config.dim, model.config.num_layers, model.config.ffn_dim) == (256, 2, 512)
    with safe_open(str(path), "pt") as f:
        stored, scale = f.get_tensor("blocks.1.self_attn.q.weight"), f.get_tensor("blocks.1.self_attn.q.scale_weight")
    assert scale.item() == pytest.approx(256 ** -0.5)
    torch.testing.assert_close(model.blocks[1].self_attn.q.weight, stored.float() * scale, rtol=0, atol=0)
    assert stored.float().std().item() == pytest.approx(1.0, rel=0.1)  # N(0, 1) before the scale


def test_umt5_file_carries_its_tokenizer_and_native_detection_keys(tiny_models: Path) -> None:
    from safetensors import safe_open

    from wan_core.text.encoder import load_text_encoder
    from wan_core.text.tokenizer import build_demo_spiece_model

    path = tiny_models / "text_encoders" / host_models.T5_FILE
    header = _header(path)
    # comfy/sd.py detects a T5-XXL (and its dtype and scaled_fp8) through block 23 and the final norm
    assert header["encoder.block.23.layer.1.DenseReluDense.wi_1.weight"]["dtype"] == "F8_E4M3"
    assert header["encoder.final_layer_norm.weight"]["dtype"] == "BF16"
    assert header["shared.weight"] == {**header["shared.weight"], "dtype": "BF16", "shape": [1024, 4096]}
    assert "encoder.embed_tokens.weight" not in header and "scaled_fp8" in header
    with safe_open(str(path), "pt") as f:
        assert bytes(f.get_tensor("spiece_model").tolist()) == build_demo_spiece_model()
    encoder = load_text_encoder(path, dtype=torch.float32)
    (embedding,) = encoder.encode(["a red fox in the snow"])
    assert embedding.shape[1] == 4096 and torch.isfinite(embedding).all()


def test_vae_specs_are_the_official_wan21_keys_at_real_size() -> None:
    from wan_core.vae import build_vae
    from wan_core.vae.model import official_state_dict

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in official_state_dict(build_vae("wan2.1")).items()}
    specs = host_models.vae_specs()
    assert {s.name: s.shape for s in specs} == expected
    assert "decoder.middle.0.residual.0.gamma" in expected  # how comfy/sd.py recognises a Wan VAE


def test_streamed_file_round_trips_through_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    specs = [host_models._plain("a.weight", (8, 4)), *host_models._fp8_scaled("b.weight", (16, 4)),
             host_models._plain("a.bias", (8,))]
    path = host_models.write_streamed(tmp_path / "x.safetensors", specs, seed=3, device=torch.device("cpu"))
    loaded = load_file(str(path))
    generator = torch.Generator().manual_seed(3 * 100_003 + 0)
    torch.testing.assert_close(loaded["a.weight"], (torch.randn((8, 4), generator=generator) * 0.5).bfloat16())
    assert loaded["b.weight"].dtype == FP8 and loaded["b.scale_weight"].item() == 0.5
    assert loaded["a.bias"].abs().sum() == 0


def test_files_are_written_once(tiny_models: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in tiny_models.rglob("*.safetensors")}
    host_models.ensure_model_files(tiny_models, "tiny", device="cpu", log=lambda line: None)
    assert {p: p.stat().st_mtime_ns for p in tiny_models.rglob("*.safetensors")} == before
    with pytest.raises(ValueError, match="scale"):
        host_models.ensure_model_files(tiny_models, "huge")


def test_tiny_umt5_shim_passes_the_tiny_config_to_comfyui(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    class WanT5Model:
        def __init__(self, device="cpu", dtype=None, model_options={}):  # noqa: B006 - ComfyUI's signature
            seen.update(model_options)

    package = types.ModuleType("comfy")
    package.text_encoders = types.ModuleType("comfy.text_encoders")
    package.text_encoders.wan = types.SimpleNamespace(WanT5Model=WanT5Model)
    monkeypatch.setitem(sys.modules, "comfy", package)
    monkeypatch.setitem(sys.modules, "comfy.text_encoders", package.text_encoders)
    monkeypatch.setitem(sys.modules, "comfy.text_encoders.wan", package.text_encoders.wan)
    exec(compile(host_models.tiny_umt5_shim(), "shim", "exec"), {})
    WanT5Model(model_options={"other": 1})
    assert seen == {"other": 1, "umt5xxl_model_config": host_models.UMT5_SHAPES["tiny"]}


# ------------------------------------------------------------------------------------------------ workflows


def test_every_graph_gets_the_same_settings() -> None:
    settings = hw.BenchSettings(width=320, height=192, frames=17, steps=6, cfg=4.0, shift=5.0, seed=9)
    graphs = hw.bench_graphs(settings)
    assert hw.misaligned(graphs, settings) == {}
    native = graphs["native"]
    assert [native[i]["inputs"]["end_at_step"] for i in ("96", "95")] == [3, 10000]
    assert native["95"]["inputs"]["start_at_step"] == 3 and native["104"]["inputs"]["length"] == 17
    assert graphs["ours"]["6"]["inputs"]["solver"] == "euler"
    assert graphs["batch_1gpu"]["30"]["inputs"]["prompts"].count("\n") == 7
    native_lightning, ours_lightning = graphs["native_lightning"], graphs["ours_lightning"]
    assert [native_lightning[i]["inputs"]["end_at_step"] for i in ("81", "78")] == [3, 10000]
    assert native_lightning["85"]["inputs"]["lora_name"] == host_models.LIGHTNING_LOW_FILE
    assert ours_lightning["6"]["inputs"]["boundary_step"] == 3 and graphs["ours"]["6"]["inputs"]["boundary_step"] == -1
    lightning = settings.lightning()
    assert (lightning.steps, lightning.cfg, lightning.shift, lightning.width) == (4, 1.0, 5.0, 320)


@pytest.mark.parametrize(("name", "node", "field", "value", "setting"), [
    ("native", "95", "cfg", 5.0, "cfg"),
    ("native", "104", "width", 640, "width"),
    ("ours", "6", "cfg_low_noise", 1.0, "cfg"),
    ("ours_dual", "6", "steps", 40, "steps"),
    ("ours", "4", "negative_prompt", "", "negative"),
    ("batch_2gpu_split", "30", "solver", "unipc", "sampler"),
])
def test_a_setting_that_differs_is_named(name: str, node: str, field: str, value: object, setting: str) -> None:
    settings = hw.BenchSettings()
    graphs = hw.bench_graphs(settings)
    graphs[name][node]["inputs"][field] = value
    assert list(hw.misaligned(graphs, settings)) == [name]
    assert setting in hw.misaligned(graphs, settings)[name]


def test_batch_placements() -> None:
    devices = {p: {n["inputs"]["device"] for n in hw.batch_graph(p).values() if n["class_type"] == "Wan22SetDevice"}
               for p in ("one_gpu", "replica", "split")}
    assert devices == {"one_gpu": {"gpu:0"}, "replica": {"gpu:0"}, "split": {"gpu:0", "gpu:1"}}
    assert hw.batch_graph("replica")["30"]["inputs"]["gpu_mode"] == "replica per GPU"
    assert hw.batch_graph("one_gpu")["30"]["inputs"]["gpu_mode"] == "as wired"
    with pytest.raises(ValueError, match="placement"):
        hw.batch_graph("four_gpus")


def test_template_conversion_maps_widgets_links_and_groups() -> None:
    ui = {"nodes": [
        {"id": 1, "type": "UNETLoader", "mode": 4, "widgets_values": ["a.safetensors", "default"], "outputs": []},
        {"id": 2, "type": "ModelSamplingSD3", "mode": 4, "widgets_values": [8], "inputs": [{"name": "model",
                                                                                          "link": 10}]},
        {"id": 3, "type": "KSamplerAdvanced", "mode": 4, "widgets_values": [
            "enable", 123, "randomize", 20, 3.5, "euler", "simple", 0, 10, "enable"],
         "inputs": [{"name": "model", "link": 11}, {"name": "latent_image", "link": None}]},
        {"id": 4, "type": "UNETLoader", "mode": 0, "widgets_values": ["b.safetensors", "default"]},
        {"id": 5, "type": "MarkdownNote", "mode": 4, "widgets_values": ["text"]},
    ], "links": [[10, 1, 0, 2, 0, "MODEL"], [11, 2, 0, 3, 0, "MODEL"]]}
    graph = hw.template_api_graph(ui)
    assert set(graph) == {"1", "2", "3"}
    assert graph["2"]["inputs"] == {"shift": 8, "model": ["1", 0]}
    assert graph["3"]["inputs"]["noise_seed"] == 123 and graph["3"]["inputs"]["steps"] == 20
    assert "randomize" not in graph["3"]["inputs"].values() and "latent_image" not in graph["3"]["inputs"]
    assert hw.template_api_graph(ui, lightning=True) == {"4": {"class_type": "UNETLoader", "inputs": {
        "unet_name": "b.safetensors", "weight_dtype": "default"}}}


@pytest.mark.parametrize("lightning", [False, True], ids=["fp8_scaled", "lightning"])
def test_rebuilt_native_graph_is_the_installed_template(lightning: bool) -> None:
    template = hw.installed_template()
    if template is None:
        pytest.skip("comfyui-workflow-templates is not installed")
    converted = hw.template_api_graph(template, lightning=lightning)
    group = hw.LIGHTNING_GROUP if lightning else hw.PLAIN_GROUP
    texts = converted[group.positive]["inputs"]["text"], converted[group.negative]["inputs"]["text"]
    settings = hw.BenchSettings(width=640, height=640, frames=81, steps=20, cfg=3.5,
                                seed=converted[group.sampler_high]["inputs"]["noise_seed"], prompt=texts[0],
                                negative=texts[1])
    rebuilt = hw.native_t2v_graph(settings.lightning() if lightning else settings, lightning=lightning)
    assert json.loads(json.dumps(converted), parse_float=lambda x: round(float(x), 6)) == rebuilt


# ------------------------------------------------------------------------------------------------ server side


def test_base_folder_links_pack_models_probe_and_shim(tiny_models: Path, tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    base = prepare_base(tmp_path / "base", repo, tiny_models, tiny=True)
    assert (base / "custom_nodes" / PACK_LINK).resolve() == repo.resolve()
    assert (base / "models" / "vae" / host_models.VAE_FILE).resolve() == (tiny_models / "vae" /
                                                                           host_models.VAE_FILE).resolve()
    compile((base / "custom_nodes" / "wan22_host_probe" / "__init__.py").read_text(), "probe", "exec")
    assert (base / "custom_nodes" / TINY_SHIM_PACKAGE / "__init__.py").is_file()
    real = prepare_base(tmp_path / "base", repo, tiny_models, tiny=False)
    assert not (real / "custom_nodes" / TINY_SHIM_PACKAGE).exists()


# ------------------------------------------------------------------------------------------------ results


def _entry(status: str = "success") -> dict:
    messages = [["execution_start", {"timestamp": 1_000_000}], ["execution_cached", {"timestamp": 1_000_010}]]
    if status == "success":
        messages.append(["execution_success", {"timestamp": 1_012_500}])
    else:
        messages.append(["execution_error", {"node_id": "6", "node_type": "Wan22DiTSampler",
                                             "exception_type": "OutOfMemoryError", "exception_message": "CUDA"}])
    return {"status": {"status_str": status, "completed": status == "success", "messages": messages},
            "outputs": {"8": {"images": [{"filename": "a_00001.mp4", "subfolder": "wan22", "type": "output"}],
                              "animated": [True]}, "9": {"text": ["x"]}}}


def test_history_entries() -> None:
    assert hr.execution_seconds(_entry()) == 12.5
    assert hr.execution_seconds(_entry("error")) is None
    assert hr.history_error(_entry()) is None
    assert hr.history_error(_entry("error")) == "node 6 (Wan22DiTSampler): OutOfMemoryError: CUDA"
    assert hr.saved_files(_entry()) == ["wan22/a_00001.mp4"]


def test_node_seconds_from_the_probes_events() -> None:
    graph = {"3": {"class_type": "KSampler"}, "8": {"class_type": "VAEDecode"}, "9": {"class_type": "SaveVideo"}}
    events = [[10.0, "executing", "p1", "3"], [14.5, "executing", "p1", "8"], [11.0, "executing", "other", "8"],
              [16.0, "executing", "p1", "9"], [16.25, "execution_success", "p1", None],
              [20.0, "executing", "p2", "9"], [21.0, "execution_error", "p2", None]]
    assert hr.node_seconds(events, graph, "p1") == [["3", "KSampler", 4.5], ["8", "VAEDecode", 1.5],
                                                    ["9", "SaveVideo", 0.25]]
    assert hr.node_seconds(events, graph, "p2") == [["9", "SaveVideo", 1.0]]
    assert hr.node_seconds(events, graph, "p3") == []


def test_smi_samples() -> None:
    assert hr.parse_smi_line("1, 97, 40321\n", 5.0) == {"t": 5.0, "gpu": 1, "util": 97.0, "mem_mib": 40321.0}
    assert hr.parse_smi_line("[N/A], 3, 4", 5.0) is None
    samples = [{"t": t, "gpu": g, "util": u, "mem_mib": m}
               for t, g, u, m in [(0, 0, 100, 10), (1, 0, 0, 30), (2, 0, 50, 20), (9, 0, 100, 99), (1, 1, 0, 5)]]
    summary = hr.summarize_smi(samples, 0, 2)
    assert summary["0"] == {"peak_mem_mib": 30, "mean_mem_mib": 20.0, "mean_util_pct": 50.0, "busy_share": 0.667,
                            "samples": 3}
    assert summary["1"]["busy_share"] == 0.0
    assert hr.timeline(samples, 0, 2, every_s=2) == {"0": [[0, 100, 10], [2, 50, 20]], "1": [[1, 0, 5]]}


def _placements(dit_devices: list[str]) -> list:
    gib = 2**30
    return [[float(t), [
        {"id": 1, "class": "T5", "role": "t5", "bytes": {"cuda:0": gib}},
        {"id": 2, "class": "WanDiT", "role": "dit", "bytes": {"cpu": 0, "meta": gib, device: gib}},
        {"id": 3, "class": "WanVAE", "role": "vae", "bytes": {"cuda:1": gib // 4}},
    ]] for t, device in enumerate(dit_devices)]


def test_model_placements_and_the_dual_gpu_check() -> None:
    models = hr.probe_placements(_placements(["cpu", "cuda:1", "cuda:1"]), 0, 10)
    dit = next(m for m in models if m["role"] == "dit")
    assert dit["devices"] == ["cpu", "cuda:1"] and dit["peak_mib"] == {"cpu": 1024.0, "cuda:1": 1024.0}
    assert hr.dual_gpu_check(models)["ok"] is True
    moved = hr.probe_placements(_placements(["cuda:1", "cuda:0"]), 0, 10)
    check = hr.dual_gpu_check(moved)
    assert check["ok"] is False and check["no_model_moved"] is False and check["dit_devices"] == ["cuda:0", "cuda:1"]
    assert hr.probe_placements(_placements(["cuda:1", "cuda:0"]), 0, 0.5)[1]["moved_between_gpus"] is False
    t5_on_both = _placements(["cuda:1"]) + [[5.0, [{"id": 4, "class": "T5", "role": "t5", "bytes": {"cuda:1": 1}}]]]
    check = hr.dual_gpu_check(hr.probe_placements(t5_on_both, 0, 10))
    assert (check["t5_only_gpu0"], check["no_model_moved"], check["ok"]) == (False, True, False)
    assert hr.probe_memory([[0.0, {"cuda:0": 2**30}], [1.0, {"cuda:0": 2**29}], [5.0, {"cuda:0": 2**31}]], 0, 2) == {
        "cuda:0": 1024.0}


def test_comparisons() -> None:
    runs = {"native": {"ok": True, "wall_s": 150.0}, "ours": {"ok": True, "wall_s": 100.0},
            "ours_dual": {"ok": False, "wall_s": 1.0},
            "native_lightning": {"ok": True, "wall_s": 30.0}, "ours_lightning": {"ok": True, "wall_s": 24.0},
            "batch_1gpu": {"ok": True, "jobs_per_hour": 10.0},
            "batch_2gpu_replica": {"ok": True, "jobs_per_hour": 19.5}}
    assert hr.comparisons(runs) == {"ours_speedup_vs_native": 1.5, "ours_lightning_speedup_vs_native_lightning": 1.25,
                                    "batch_2gpu_replica_vs_1gpu": 1.95, "target_single_gpu_1.25x": True,
                                    "target_batch_1.9x": True}
    assert hr.jobs_per_hour(8, 1800.0) == 16.0


def test_command_line() -> None:
    import host_e2e

    args = host_e2e.parse_args(["--comfyui", "/c", "--runs", "native,ours", "--cpu", "--server-args", "--fast a",
                                "--scale", "tiny", "--steps", "6"])
    assert args.runs == ["native", "ours"] and args.server_args == ["--fast", "a", "--cpu"]
    assert args.models == Path("/tmp/wan22_host_models_tiny") and args.steps == 6
    with pytest.raises(SystemExit):
        host_e2e.parse_args(["--comfyui", "/c", "--runs", "native,theirs"])
    graph = hw.apply_settings(hw.native_t2v_graph(), host_e2e.repeat_settings(hw.BenchSettings(seed=5), 2, []))
    assert graph["96"]["inputs"]["noise_seed"] == 7


def test_lora_strengths_in_turn_reach_every_lora_loader_of_both_sides() -> None:
    import host_e2e

    args = host_e2e.parse_args(["--comfyui", "/c", "--lora-strengths", "1,1,0.8"])
    assert args.lora_strengths == [1.0, 1.0, 0.8]
    native = hw.native_t2v_graph(lightning=True)
    ours = hw.load_api("wan22_t2v_a14b_lightning")
    for index, strength in enumerate([1.0, 1.0, 0.8, 1.0]):
        settings = host_e2e.repeat_settings(hw.BenchSettings(seed=5), index, args.lora_strengths)
        assert settings.seed == 5 + index
        loras = [n["inputs"] for n in hw.apply_settings(native, settings).values()
                 if n["class_type"] == "LoraLoaderModelOnly"]
        assert len(loras) == 2 and {lora["strength_model"] for lora in loras} == {strength}
        ours_loras = [n["inputs"] for n in hw.apply_settings(ours, settings).values()
                      if n["class_type"] == "Wan22LoraLoader"]
        assert ours_loras and all(lora["strength_high"] == lora["strength_low"] == strength for lora in ours_loras)
    assert host_e2e.repeat_settings(hw.BenchSettings(), 1, []).lora_strength is None


def test_ledger_jobs_give_each_jobs_last_state(tmp_path) -> None:
    lines = [
        '{"job": 1, "state": "queued", "time": "t0", "prompt": "a"}',
        '{"job": 2, "state": "queued", "time": "t0", "prompt": "b"}',
        '{"job": 1, "state": "started", "time": "t1", "worker": "cuda:0"}',
        '{"job": 1, "state": "done", "time": "t2", "worker": "cuda:0", "seconds": 7.5, "output": "/o/1.mp4"}',
        '{"job": 2, "state": "started", "time": "t3", "worker": "cuda:0"}',
        '{"job": 3, "sta',  # torn by the kill
    ]
    ledger = tmp_path / "batch-x.ledger.jsonl"
    ledger.write_text("\n".join(lines), encoding="utf-8")
    assert hr.ledger_jobs([ledger]) == [{"job": 1, "state": "done", "seconds": 7.5, "worker": "cuda:0"},
                                     {"job": 2, "state": "started", "worker": "cuda:0", "time": "t3"}]


class _SlowServer:
    """A ComfyServer stand-in whose prompts take `seconds` each (on the `now` clock) and save one video."""

    def __init__(self, output: Path, seconds: float) -> None:
        self.output, self.seconds, self.queued, self.waits, self.now = output, seconds, 0, [], 1000.0

    def queue(self, graph: dict) -> str:
        self.queued += 1
        return str(self.queued)

    def wait(self, prompt_id: str, timeout: float) -> dict:
        self.waits.append(timeout)
        self.now += min(timeout, self.seconds)
        if timeout < self.seconds:
            raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")
        (self.output / f"v{prompt_id}.mp4").write_bytes(b"")
        (self.output / f"b{prompt_id}.ledger.jsonl").write_text(
            f'{{"job": 1, "state": "done", "seconds": {self.seconds}}}\n')
        return {"status": {"status_str": "success", "completed": True, "messages": []}}


def test_a_run_past_its_budget_stops_and_keeps_what_it_measured(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import host_e2e

    server, published = _SlowServer(tmp_path, seconds=10.0), []
    monkeypatch.setattr(host_e2e, "time", types.SimpleNamespace(time=lambda: server.now))
    repeats = host_e2e.run_repeats(server, [{}] * 4, tmp_path, timeout=25.0, run_timeout=15.0,
                                   publish=lambda done: published.append(len(done)))
    # the first repeat gets the whole budget (capped by --timeout), the second only what is left of it
    assert server.waits == [15.0, 5.0] and server.queued == 2
    assert [r["ok"] for r in repeats] == [True, False] and repeats[1]["timed_out"] is True
    assert [r["wall_s"] for r in repeats] == [10.0, 5.0]
    assert "did not finish" in repeats[1]["error"] and "timed_out" not in repeats[0]
    assert repeats[0]["batch_jobs"] == [{"job": 1, "state": "done", "seconds": 10.0}]
    assert published == [1, 2]  # the JSON is written after every repeat, the timed-out one too


def test_without_a_budget_every_repeat_runs(tmp_path: Path) -> None:
    import host_e2e

    server = _SlowServer(tmp_path, seconds=0.0)
    repeats = host_e2e.run_repeats(server, [{}] * 3, tmp_path, timeout=5.0, run_timeout=None, publish=lambda d: None)
    assert server.waits == [5.0] * 3 and all(r["ok"] for r in repeats)
    assert [r["videos"] for r in repeats] == [["v1.mp4"], ["v2.mp4"], ["v3.mp4"]]


def test_the_stack_dump_handler_writes_every_threads_stack(tmp_path: Path) -> None:
    import signal
    import subprocess

    from host_probe import STACK_DUMP_SOURCE
    from host_server import ComfyServer

    if not hasattr(signal, "SIGUSR1"):
        pytest.skip("no SIGUSR1 on this platform")
    log = tmp_path / "server.log"
    script = STACK_DUMP_SOURCE + (
        "import threading, time\n"
        "def waiting_lane():\n    threading.Event().wait()\n"
        "threading.Thread(target=waiting_lane, daemon=True).start()\n"
        "print('ready', flush=True)\ntime.sleep(60)\n")
    server = ComfyServer(Path("."), tmp_path, 1, sys.executable, [], log)
    with open(log, "w") as out:
        server.process = subprocess.Popen([sys.executable, "-c", script], stdout=out, stderr=subprocess.STDOUT)
        try:
            for _ in range(100):
                if "ready" in log.read_text():
                    break
                time.sleep(0.05)
            assert server.dump_stacks(settle_s=0.5)
        finally:
            server.process.kill()
            server.process.wait()
    text = log.read_text()
    assert "waiting_lane" in text and text.count("most recent call first") >= 2
    assert not server.dump_stacks()  # the process is gone
