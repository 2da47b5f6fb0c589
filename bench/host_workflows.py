"""The graphs the host benchmark queues, with one set of settings applied to all of them.

- Native: ComfyUI's Wan2.2 T2V A14B template (`video_wan2_2_14B_t2v.json` of the `comfyui-workflow-templates`
  package, 0.1.95 with ComfyUI v0.3.64), its plain fp8_scaled group (the one without the Lightning LoRAs), rebuilt
  node for node in API format by `native_t2v_graph` under the template's node ids, or converted from the template
  file itself by `template_api_graph` when the package is installed. The template's SaveImage nodes are bypassed
  in the template and left out.
- Native Lightning: the template's 4-step LoRA group (`LoraLoaderModelOnly` per expert, 4 steps split 2 + 2, CFG 1,
  shift 5), rebuilt the same way (`native_t2v_graph(lightning=True)`) or converted.
- Ours: `api/wan22_t2v_a14b.json`, `api/wan22_t2v_a14b_dual_gpu.json`, `api/wan22_t2v_a14b_lightning.json`, and
  the batch graph `api/wan22_batch_dual_gpu.json` in three placements (everything on GPU 0; the shipped T5 on GPU 0
  + DiT and VAE on GPU 1; one full replica per GPU).

`apply_settings` writes `BenchSettings` into any of them; `graph_settings` reads them back, `misaligned` compares.
The native template switches experts at a fixed step (half of the steps); ours switches at the official timestep
boundary (Lightning: at half of the steps too): both run `steps` DiT steps with CFG, so the work per video is the
same.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from host_models import (
    HIGH_NOISE_FILE,
    LIGHTNING_HIGH_FILE,
    LIGHTNING_LOW_FILE,
    LOW_NOISE_FILE,
    T5_FILE,
    VAE_FILE,
)

REPO = Path(__file__).resolve().parents[1]
TEMPLATE_NAME = "video_wan2_2_14B_t2v.json"

DEFAULT_PROMPT = ("A red fox trots through fresh snow in a birch forest at sunrise, its breath visible in the cold "
                  "air; the camera tracks alongside at ground level.")
# The template's negative prompt (Wan2.2's official one plus two words).
DEFAULT_NEGATIVE = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰"
    "，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部"
    "，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱"
    "的背景，三条腿，背景人很多，倒着走，裸露，NSFW"
)
BATCH_PROMPTS = (
    "A red fox trots through fresh snow in a birch forest at sunrise.",
    "A white cat wearing sunglasses sits on a surfboard at the beach.",
    "A vintage red car drives down a coastal highway at sunset.",
    "A chef tosses noodles in a flaming wok in a crowded kitchen.",
    "A hummingbird hovers near a bright pink flower in slow motion.",
    "Waves crash against a lighthouse during a thunderstorm.",
    "一只熊猫在雨中吃竹子，水珠从它黑白相间的毛上滴落。",
    "Hot air balloons rise over ancient temples at sunrise.",
)


@dataclass(frozen=True)
class BenchSettings:
    """What every graph of one comparison shares (the native template's values, at our workflows' size)."""

    width: int = 832
    height: int = 480
    frames: int = 81
    steps: int = 20
    cfg: float = 3.5
    shift: float = 8.0
    seed: int = 42
    sampler: str = "euler"
    fps: int = 16
    # Our Model Loader's weight_dtype. The native side's fastest for these files is automatic (fp8 matmuls: the
    # empty `scaled_fp8` marker); ours is chosen: fp8 matmuls too by default.
    our_dit_weights: str = "fp8_e4m3fn_fast"
    lora_strength: float | None = None  # every LoRA loader's strength (both experts); None: as the graph has it
    prompt: str = DEFAULT_PROMPT
    negative: str = DEFAULT_NEGATIVE
    batch_prompts: tuple[str, ...] = field(default=BATCH_PROMPTS)

    def lightning(self) -> BenchSettings:
        """The same video with the template's Lightning settings: 4 steps (2 + 2), CFG 1, shift 5."""
        return replace(self, steps=4, cfg=1.0, shift=5.0)


# ------------------------------------------------------------------------------------------------ native


def _link(node: str, slot: int = 0) -> list:
    return [node, slot]


@dataclass(frozen=True)
class TemplateGroup:
    """The node ids of one group of the template (each group is a whole workflow)."""

    unet_high: str
    unet_low: str
    clip: str
    vae: str
    shift_high: str
    shift_low: str
    positive: str
    negative: str
    latent: str
    sampler_high: str
    sampler_low: str
    decode: str
    video: str
    save: str
    lora_high: str | None = None
    lora_low: str | None = None


PLAIN_GROUP = TemplateGroup("101", "102", "90", "92", "93", "94", "99", "91", "104", "96", "95", "97", "100", "98")
LIGHTNING_GROUP = TemplateGroup("75", "76", "71", "73", "82", "86", "89", "72", "74", "81", "78", "87", "88", "80",
                                lora_high="83", lora_low="85")


def native_t2v_graph(settings: BenchSettings = BenchSettings(), *, lightning: bool = False) -> dict:
    """The template's fp8_scaled group, or with `lightning` its 4-step LoRA group, in API format (node ids as in the
    template); settings applied."""
    ids = LIGHTNING_GROUP if lightning else PLAIN_GROUP
    half = settings.steps // 2
    graph = {
        **{node: {"class_type": "UNETLoader", "inputs": {"unet_name": name, "weight_dtype": "default"}}
           for node, name in ((ids.unet_high, HIGH_NOISE_FILE), (ids.unet_low, LOW_NOISE_FILE))},
        ids.clip: {"class_type": "CLIPLoader", "inputs": {"clip_name": T5_FILE, "type": "wan", "device": "default"}},
        ids.vae: {"class_type": "VAELoader", "inputs": {"vae_name": VAE_FILE}},
    }
    high, low = ids.unet_high, ids.unet_low
    if lightning:
        for node, model, lora in ((ids.lora_high, high, LIGHTNING_HIGH_FILE), (ids.lora_low, low, LIGHTNING_LOW_FILE)):
            graph[node] = {"class_type": "LoraLoaderModelOnly", "inputs": {
                "lora_name": lora, "strength_model": 1.0, "model": _link(model)}}
        high, low = ids.lora_high, ids.lora_low
    graph.update({
        ids.shift_high: {"class_type": "ModelSamplingSD3", "inputs": {"model": _link(high), "shift": settings.shift}},
        ids.shift_low: {"class_type": "ModelSamplingSD3", "inputs": {"model": _link(low), "shift": settings.shift}},
        ids.positive: {"class_type": "CLIPTextEncode", "inputs": {"clip": _link(ids.clip), "text": settings.prompt}},
        ids.negative: {"class_type": "CLIPTextEncode", "inputs": {"clip": _link(ids.clip), "text": settings.negative}},
        ids.latent: {"class_type": "EmptyHunyuanLatentVideo", "inputs": {
            "width": settings.width, "height": settings.height, "length": settings.frames, "batch_size": 1}},
        ids.sampler_high: {"class_type": "KSamplerAdvanced", "inputs": {
            "model": _link(ids.shift_high), "positive": _link(ids.positive), "negative": _link(ids.negative),
            "latent_image": _link(ids.latent), "add_noise": "enable", "noise_seed": settings.seed,
            "steps": settings.steps, "cfg": settings.cfg, "sampler_name": settings.sampler, "scheduler": "simple",
            "start_at_step": 0, "end_at_step": half, "return_with_leftover_noise": "enable"}},
        ids.sampler_low: {"class_type": "KSamplerAdvanced", "inputs": {
            "model": _link(ids.shift_low), "positive": _link(ids.positive), "negative": _link(ids.negative),
            "latent_image": _link(ids.sampler_high), "add_noise": "disable", "noise_seed": 0,
            "steps": settings.steps, "cfg": settings.cfg, "sampler_name": settings.sampler, "scheduler": "simple",
            "start_at_step": half, "end_at_step": settings.steps if lightning else 10000,
            "return_with_leftover_noise": "disable"}},
        ids.decode: {"class_type": "VAEDecode", "inputs": {"samples": _link(ids.sampler_low), "vae": _link(ids.vae)}},
        ids.video: {"class_type": "CreateVideo", "inputs": {"images": _link(ids.decode), "fps": settings.fps}},
        ids.save: {"class_type": "SaveVideo", "inputs": {"video": _link(ids.video), "filename_prefix": "video/ComfyUI",
                                                         "format": "auto", "codec": "auto"}},
    })
    return graph


# Widget names in `widgets_values` order for the node types of the template (a seed widget is followed by its
# control_after_generate value, which the API format does not carry).
TEMPLATE_WIDGETS = {
    "UNETLoader": ["unet_name", "weight_dtype"],
    "CLIPLoader": ["clip_name", "type", "device"],
    "VAELoader": ["vae_name"],
    "ModelSamplingSD3": ["shift"],
    "CLIPTextEncode": ["text"],
    "EmptyHunyuanLatentVideo": ["width", "height", "length", "batch_size"],
    "KSamplerAdvanced": ["add_noise", "noise_seed", None, "steps", "cfg", "sampler_name", "scheduler",
                         "start_at_step", "end_at_step", "return_with_leftover_noise"],
    "LoraLoaderModelOnly": ["lora_name", "strength_model"],
    "VAEDecode": [],
    "CreateVideo": ["fps"],
    "SaveVideo": ["filename_prefix", "format", "codec"],
}
_UI_ONLY = {"MarkdownNote", "Note", "SaveImage"}


def template_api_graph(ui_workflow: dict, *, lightning: bool = False) -> dict:
    """One group of the UI-format template as an API graph: the plain fp8_scaled group (bypassed, mode 4, as the
    template ships) or the Lightning LoRA group (active, mode 0)."""
    mode = 0 if lightning else 4
    nodes = {n["id"]: n for n in ui_workflow["nodes"] if n.get("mode", 0) == mode and n["type"] not in _UI_ONLY}
    links = {link[0]: link for link in ui_workflow["links"]}
    graph: dict = {}
    for node_id, node in nodes.items():
        if node["type"] not in TEMPLATE_WIDGETS:
            raise ValueError(f"template node {node_id} has the unknown type {node['type']!r}")
        names = TEMPLATE_WIDGETS[node["type"]]
        inputs = {name: value for name, value in zip(names, node.get("widgets_values", []), strict=False) if name}
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, source, source_slot, *_ = links[slot["link"]]
                if source in nodes:
                    inputs[slot["name"]] = [str(source), source_slot]
        graph[str(node_id)] = {"class_type": node["type"], "inputs": inputs}
    return graph


def installed_template() -> dict | None:
    """The template from the installed `comfyui-workflow-templates` package; None without it."""
    try:
        import importlib.resources

        import comfyui_workflow_templates
    except ImportError:
        return None
    path = importlib.resources.files(comfyui_workflow_templates) / "templates" / TEMPLATE_NAME
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


# ------------------------------------------------------------------------------------------------ ours


def load_api(name: str) -> dict:
    return json.loads((REPO / "api" / f"{name}.json").read_text(encoding="utf-8"))


def _nodes(graph: dict, class_type: str) -> list[dict]:
    return [node for node in graph.values() if node["class_type"] == class_type]


def batch_graph(placement: str) -> dict:
    """The batch graph with 8 prompts: `one_gpu` (every model on GPU 0), `split` (as shipped: T5 on GPU 0, DiT and
    VAE on GPU 1, pipelined) or `replica` (every GPU holds all models and runs whole jobs)."""
    graph = load_api("wan22_batch_dual_gpu")
    manager = _nodes(graph, "Wan22BatchQueueManager")[0]["inputs"]
    if placement in ("one_gpu", "replica"):
        for node in _nodes(graph, "Wan22SetDevice"):
            node["inputs"]["device"] = "gpu:0"
        manager["gpu_mode"] = "replica per GPU" if placement == "replica" else "as wired"
    elif placement != "split":
        raise ValueError(f"placement must be one_gpu, split or replica, not {placement!r}")
    manager["csv_file"] = "none"
    return graph


def bench_graphs(settings: BenchSettings, native: dict | None = None, native_lightning: dict | None = None,
                 settings_of: Callable[[str], BenchSettings] | None = None) -> dict[str, dict]:
    """Every graph of the benchmark by run name, with `settings_of(name)` applied (default: `settings` to all).
    `native`, `native_lightning`: the native graphs to use (converted from the installed template); default the
    rebuilt ones, built with `settings`."""
    graphs = {
        "native": copy.deepcopy(native) if native is not None else native_t2v_graph(settings),
        "ours": load_api("wan22_t2v_a14b"),
        "ours_dual": load_api("wan22_t2v_a14b_dual_gpu"),
        "native_lightning": copy.deepcopy(native_lightning) if native_lightning is not None
        else native_t2v_graph(settings, lightning=True),
        "ours_lightning": load_api("wan22_t2v_a14b_lightning"),
        "batch_1gpu": batch_graph("one_gpu"),
        "batch_2gpu_split": batch_graph("split"),
        "batch_2gpu_replica": batch_graph("replica"),
    }
    return {name: apply_settings(graph, settings_of(name) if settings_of else settings)
            for name, graph in graphs.items()}


# ------------------------------------------------------------------------------------------------ settings


def _sampler_inputs(settings: BenchSettings) -> dict:
    return {"width": settings.width, "height": settings.height, "frames": settings.frames, "steps": settings.steps,
            "solver": settings.sampler, "shift": settings.shift, "cfg_high_noise": settings.cfg,
            "cfg_low_noise": settings.cfg, "seed": settings.seed}


def _native_texts(graph: dict) -> tuple[dict, dict]:
    """The positive and negative CLIPTextEncode inputs, found through the first sampler's links."""
    first = next(n for n in _nodes(graph, "KSamplerAdvanced") if n["inputs"].get("add_noise") == "enable")
    return graph[first["inputs"]["positive"][0]]["inputs"], graph[first["inputs"]["negative"][0]]["inputs"]


def apply_settings(graph: dict, settings: BenchSettings) -> dict:
    """A copy of `graph` (native or ours) with `settings` written into every node that takes them."""
    graph = copy.deepcopy(graph)
    half = settings.steps // 2
    for node in graph.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "EmptyHunyuanLatentVideo":
            inputs.update(width=settings.width, height=settings.height, length=settings.frames, batch_size=1)
        elif kind == "ModelSamplingSD3":
            inputs["shift"] = settings.shift
        elif kind == "KSamplerAdvanced":
            first = inputs["add_noise"] == "enable"
            inputs.update(steps=settings.steps, cfg=settings.cfg, sampler_name=settings.sampler, scheduler="simple")
            if first:
                inputs.update(noise_seed=settings.seed, start_at_step=0, end_at_step=half)
            else:
                inputs.update(start_at_step=half, end_at_step=10000)
        elif kind == "CreateVideo":
            inputs["fps"] = settings.fps
        elif kind == "Wan22ModelLoader":
            inputs["weight_dtype"] = settings.our_dit_weights
        elif kind == "Wan22DiTSampler":
            inputs.update(_sampler_inputs(settings))
            if inputs.get("boundary_step", -1) >= 0:  # experts switched by step count (Lightning): half and half
                inputs["boundary_step"] = half
        elif kind == "Wan22BatchQueueManager":
            inputs.update(_sampler_inputs(settings), prompts="\n".join(settings.batch_prompts), style="none",
                          negative_prompt=settings.negative)
        elif kind == "Wan22PromptStyler":
            inputs.update(prompt=settings.prompt, style="none", negative_prompt=settings.negative)
        elif kind == "Wan22SaveVideo":
            inputs["fps"] = settings.fps
        elif kind == "LoraLoaderModelOnly" and settings.lora_strength is not None:
            inputs["strength_model"] = settings.lora_strength
        elif kind == "Wan22LoraLoader" and settings.lora_strength is not None:
            inputs.update(strength_high=settings.lora_strength, strength_low=settings.lora_strength)
    if _nodes(graph, "KSamplerAdvanced"):
        positive, negative = _native_texts(graph)
        positive["text"], negative["text"] = settings.prompt, settings.negative
    return graph


def graph_settings(graph: dict) -> dict:
    """The comparison settings a graph holds, read back in one vocabulary (for `misaligned`)."""
    out: dict = {}
    for node in graph.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "EmptyHunyuanLatentVideo":
            out.update(width=inputs["width"], height=inputs["height"], frames=inputs["length"])
        elif kind == "ModelSamplingSD3":
            out.setdefault("shift", set()).add(inputs["shift"])
        elif kind == "KSamplerAdvanced":
            out.setdefault("steps", set()).add(inputs["steps"])
            out.setdefault("cfg", set()).add(inputs["cfg"])
            out.setdefault("sampler", set()).add(inputs["sampler_name"])
            if inputs["add_noise"] == "enable":
                out["seed"] = inputs["noise_seed"]
        elif kind in ("CreateVideo", "Wan22SaveVideo"):
            out["fps"] = inputs["fps"]
        elif kind in ("Wan22DiTSampler", "Wan22BatchQueueManager"):
            out.update(width=inputs["width"], height=inputs["height"], frames=inputs["frames"], seed=inputs["seed"],
                       steps={inputs["steps"]}, cfg={inputs["cfg_high_noise"], inputs["cfg_low_noise"]},
                       sampler={inputs["solver"]}, shift={inputs["shift"]})
            if kind == "Wan22BatchQueueManager":
                out.update(prompt=None, negative=inputs["negative_prompt"], fps=None)
        elif kind == "Wan22PromptStyler":
            out.update(prompt=inputs["prompt"], negative=inputs["negative_prompt"])
    if _nodes(graph, "KSamplerAdvanced"):
        positive, negative = _native_texts(graph)
        out.update(prompt=positive["text"], negative=negative["text"])
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in out.items()}


def expected_settings(settings: BenchSettings) -> dict:
    s = asdict(settings)
    return {"width": s["width"], "height": s["height"], "frames": s["frames"], "steps": [s["steps"]],
            "cfg": [s["cfg"]], "sampler": [s["sampler"]], "shift": [s["shift"]], "seed": s["seed"], "fps": s["fps"],
            "prompt": s["prompt"], "negative": s["negative"]}


def misaligned(graphs: dict[str, dict], settings: BenchSettings) -> dict[str, dict]:
    """Run name -> {setting: (in the graph, expected)} for every setting a graph holds differently ({} if none).
    The batch graph has no single prompt and no fps widget (its prompts are `settings.batch_prompts`)."""
    expected = expected_settings(settings)
    problems: dict[str, dict] = {}
    for name, graph in graphs.items():
        found = graph_settings(graph)
        wrong = {k: (found.get(k, "<absent>"), v) for k, v in expected.items()
                 if k not in found or (found[k] is not None and found[k] != v)}
        if wrong:
            problems[name] = wrong
    return problems
