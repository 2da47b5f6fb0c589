"""Write the shipped workflows: API format into `api/`, ComfyUI's UI format into `example_workflows/` (the folder
the template browser and the registry read), with a thumbnail each (`tools/thumbnails.py`).

Each graph is written once below in API terms plus its canvas groups and notes; the UI file is derived from the node
declarations, so widget values always follow the declared order, and laid out by `layout`: one column per group, the
group's explanation on top, its nodes stacked below in graph order. Run from the pack root:
`python tools/make_workflows.py`. tests/test_workflows.py checks that the files match this script's output.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nodes import NODE_CLASS_MAPPINGS  # noqa: E402
from nodes.batch_queue import EXAMPLE_LABEL, NO_CSV  # noqa: E402
from tools.thumbnails import write_thumbnail  # noqa: E402
from wan_core.pipeline.tasks import DEFAULT_NEGATIVE_PROMPT  # noqa: E402

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
NODE_WIDTH = 340
SEED_CONTROL = "fixed"
# Core nodes a graph may use, with their declared widget names (not importable outside ComfyUI).
CORE_NODES = {"LoadImage": {"inputs": [("image", "COMBO"), ("upload", "IMAGEUPLOAD")], "outputs": ["IMAGE", "MASK"]}}


@dataclass
class Node:
    id: int
    class_type: str
    inputs: dict
    group: str


@dataclass
class Graph:
    name: str
    title: str
    nodes: list[Node]
    groups: dict[str, str]  # group title -> explanation (a Note in the group)
    notes: list[str] = field(default_factory=list)


def is_widget(spec: tuple) -> bool:
    kind = spec[0]
    options = spec[1] if len(spec) > 1 else {}
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput", False)


def declared_inputs(class_type: str) -> list[tuple[str, tuple]]:
    """(name, spec) of the required then optional inputs, in declared order."""
    declared = NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES()
    return [*declared.get("required", {}).items(), *declared.get("optional", {}).items()]


def widget_values(node: Node) -> list:
    """widgets_values in declared order; a seed with control_after_generate is followed by its control value."""
    if node.class_type in CORE_NODES:
        return [node.inputs["image"], "image"]
    values = []
    for name, spec in declared_inputs(node.class_type):
        if is_widget(spec):
            values.append(node.inputs[name] if name in node.inputs else spec[1]["default"])  # optional: default
            if len(spec) > 1 and spec[1].get("control_after_generate"):
                values.append(SEED_CONTROL)
    return values


def api_graph(graph: Graph) -> dict:
    return {
        str(node.id): {"class_type": node.class_type, "inputs": node.inputs, "_meta": {"title": node.class_type}}
        for node in graph.nodes
    }


# A node's title bar (30 px) is drawn above its `pos`, so vertical gaps include it.
GAP_X, GAP_Y, GROUP_TITLE, NOTE_HEIGHT = 80, 60, 80, 150
# Heights ComfyUI's frontend gives these nodes at least (measured in the real frontend); others: slots x 26 px.
MIN_HEIGHTS = {"LoadImage": 340}
MULTILINE_EXTRA = 70


@dataclass
class Layout:
    positions: dict[int, tuple[int, int]]
    groups: list[tuple[str, tuple[int, int, int, int], tuple[int, int]]]  # title, bounding, note position
    notes: list[tuple[int, int]]  # positions of the free notes, in graph.notes order


def node_height(node: Node) -> int:
    if node.class_type in CORE_NODES:
        return MIN_HEIGHTS[node.class_type]
    declared = declared_inputs(node.class_type)
    multiline = sum(1 for _, spec in declared if len(spec) > 1 and spec[1].get("multiline"))
    slots = len(declared) + sum(1 for _, spec in declared if len(spec) > 1 and spec[1].get("control_after_generate"))
    return 60 + 26 * slots + MULTILINE_EXTRA * multiline


def layout(graph: Graph) -> Layout:
    """One column per group holding any node, left to right in `graph.groups` order; free notes in a row above."""
    top = 40 + (NOTE_HEIGHT + GAP_Y if graph.notes else 0)
    positions: dict[int, tuple[int, int]] = {}
    groups = []
    column_x = 40
    for title in graph.groups:
        members = [node for node in graph.nodes if node.group == title]
        if not members:
            continue
        note_pos = (column_x, top + GROUP_TITLE)
        y = note_pos[1] + NOTE_HEIGHT + GAP_Y
        for node in members:
            positions[node.id] = (column_x, y)
            y += node_height(node) + GAP_Y
        groups.append((title, (column_x - 20, top, NODE_WIDTH + 40, y - top - GAP_Y + 30), note_pos))
        column_x += NODE_WIDTH + GAP_X
    notes = [(40 + i * (2 * NODE_WIDTH + 2 * GAP_X), 40) for i in range(len(graph.notes))]
    return Layout(positions, groups, notes)


def ui_graph(graph: Graph) -> dict:
    by_id = {node.id: node for node in graph.nodes}
    placed = layout(graph)
    links: list[list] = []
    ui_nodes: list[dict] = []
    outgoing: dict[tuple[int, int], list[int]] = {}
    for node in graph.nodes:
        for value in node.inputs.values():
            if isinstance(value, list):
                outgoing.setdefault((int(value[0]), value[1]), [])
    for order, node in enumerate(graph.nodes):
        inputs = []
        if node.class_type not in CORE_NODES:
            for name, spec in declared_inputs(node.class_type):
                if is_widget(spec):
                    continue
                link_id = None
                source = node.inputs.get(name)
                if isinstance(source, list):
                    link_id = len(links) + 1
                    source_id, slot = int(source[0]), source[1]
                    links.append([link_id, source_id, slot, node.id, len(inputs), output_types(by_id[source_id])[slot]])
                    outgoing[(source_id, slot)].append(link_id)
                inputs.append({"name": name, "type": spec[0], "link": link_id})
        widgets = widget_values(node)
        ui_nodes.append({
            "id": node.id, "type": node.class_type, "pos": list(placed.positions[node.id]),
            "size": [NODE_WIDTH, node_height(node)], "flags": {}, "order": order, "mode": 0,
            "inputs": inputs, "outputs": [], "properties": node_properties(node, widgets),
            "widgets_values": widgets,
        })
    for ui_node, node in zip(ui_nodes, graph.nodes, strict=True):
        ui_node["outputs"] = [
            {"name": name, "type": kind, "links": outgoing.get((node.id, slot), []), "slot_index": slot}
            for slot, (name, kind) in enumerate(zip(output_names(node), output_types(node), strict=True))
        ]
    next_id = max(by_id) + 1
    groups = []
    for index, (title, bounding, note_pos) in enumerate(placed.groups):
        groups.append({"title": title, "bounding": list(bounding), "color": GROUP_COLORS[index % len(GROUP_COLORS)],
                       "font_size": 24, "flags": {}})
        ui_nodes.append(note(next_id, note_pos, graph.groups[title]))
        next_id += 1
    for text, pos in zip(graph.notes, placed.notes, strict=True):
        ui_nodes.append(note(next_id, pos, text, width=2 * NODE_WIDTH + GAP_X))
        next_id += 1
    return {
        "last_node_id": next_id - 1, "last_link_id": len(links), "nodes": ui_nodes, "links": links,
        "groups": groups, "config": {}, "extra": {"ds": {"scale": 0.65, "offset": [40, 220]}}, "version": 0.4,
    }


# The published files the loaders name (Comfy-Org's repackaged Wan files, the URLs ComfyUI's own templates use): the
# frontend offers missing ones for download from a node's `properties.models` ({name, url, directory}).
HF = "https://huggingface.co/Comfy-Org"
PUBLISHED_MODELS = {
    **{name: (f"{HF}/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files/diffusion_models/{name}", "diffusion_models")
       for name in (*(f"wan2.2_{task}_{expert}_noise_14B_fp8_scaled.safetensors"
                      for task in ("t2v", "i2v") for expert in ("high", "low")), "wan2.2_ti2v_5B_fp16.safetensors")},
    "umt5_xxl_fp8_e4m3fn_scaled.safetensors": (
        f"{HF}/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
        "text_encoders"),
    **{name: (f"{HF}/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files/vae/{name}", "vae")
       for name in ("wan_2.1_vae.safetensors", "wan2.2_vae.safetensors")},
    **{name: (f"{HF}/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files/loras/{name}", "loras")
       for task, version in (("t2v", "v1.1"), ("i2v", "v1"))
       for name in (f"wan2.2_{task}_lightx2v_4steps_lora_{version}_{expert}_noise.safetensors"
                    for expert in ("high", "low"))},
}


def node_properties(node: Node, widgets: list) -> dict:
    properties: dict = {"Node name for S&R": node.class_type}
    models = [{"name": value, "url": PUBLISHED_MODELS[value][0], "directory": PUBLISHED_MODELS[value][1]}
              for value in widgets if isinstance(value, str) and value in PUBLISHED_MODELS]
    if models:
        properties["models"] = models
    return properties


GROUP_COLORS = ["#3f789e", "#8a8", "#a1309b", "#b58b2a", "#444"]


def note(node_id: int, pos: tuple[int, int], text: str, width: int = NODE_WIDTH) -> dict:
    return {
        "id": node_id, "type": "Note", "pos": list(pos), "size": [width, NOTE_HEIGHT], "flags": {}, "order": node_id,
        "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": [text],
        "color": "#432", "bgcolor": "#653",
    }


def output_types(node: Node) -> list[str]:
    if node.class_type in CORE_NODES:
        return CORE_NODES[node.class_type]["outputs"]
    return list(NODE_CLASS_MAPPINGS[node.class_type].RETURN_TYPES)


def output_names(node: Node) -> list[str]:
    if node.class_type in CORE_NODES:
        return CORE_NODES[node.class_type]["outputs"]
    cls = NODE_CLASS_MAPPINGS[node.class_type]
    return list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES))


# ------------------------------------------------------------------------------------------------- the graphs
MODELS, DEVICES = "1. Models", "1b. Devices"
PROMPT, SAMPLE, OUTPUT = "2. Prompt", "3. Sampling", "4. Decode and save"
BATCH = "2. Batch queue"
SAMPLE_CSV = "sample_batch.csv"
BATCH_PROMPTS = "\n".join((
    "A red fox trots through fresh snow in a birch forest at sunrise, the camera tracking alongside at ground level.",
    "Waves roll onto a black sand beach under a stormy sky, seen from a slowly rising drone.",
    "一只橘猫趴在窗台上晒太阳，窗外细雨绵绵，镜头缓缓推近。",
))
DUAL_GPU = {"t5": "gpu:0", "dit": "gpu:1", "vae": "gpu:1"}
BATCH_TEXT = (
    "Each CSV row is one video (its columns override the node's size, frames, steps, seed, style). Videos and the "
    "job ledger go to ComfyUI/output/wan22_batches/; queueing the same batch again skips the videos already made. "
    "queue_timeout is per job (seconds)."
)
GROUP_TEXT = {
    MODELS: "Files from Comfy-Org/Wan_2.2_ComfyUI_Repackaged (split_files/): diffusion_models/, text_encoders/, vae/ "
    "into ComfyUI/models/ (official Wan2.2 folders work too). Weights load when the sampler first runs.",
    DEVICES: "Where each part runs (auto, cpu, gpu:0, gpu:1, ...). Weights move when the part first runs; a GPU this "
    "machine lacks falls back to the main device with a warning, so the workflow still runs.",
    PROMPT: "Prompt in Chinese or English. The styler wraps it in a style; [Style: NAME] tags inside the prompt add "
    "more. The negative prompt is Wan2.2's official default.",
    SAMPLE: "Official Wan2.2 settings: UniPC, shift, cfg per expert (the high-noise expert samples first, the "
    "low-noise one finishes). The progress bar shows a preview per step.",
    OUTPUT: "Decodes the latents to frames and saves an H.264 MP4 in ComfyUI/output/wan22/ with this workflow "
    "embedded (drop the MP4 on the canvas to reload it). Tiled decoding saves memory.",
}
PROMPT_TEXT = (
    "A red fox trots through fresh snow in a birch forest at sunrise, its breath visible in the cold air; "
    "the camera tracks alongside at ground level."
)
I2V_PROMPT_TEXT = "The scene comes alive: gentle wind moves through it while the camera slowly pushes in."


def model_nodes(
    *, task: str, model: str, low: str, vae: str, weight_dtype: str = "default", offload: bool = False,
    devices: dict[str, str] | None = None,
) -> tuple[list[Node], dict[str, list]]:
    """The three loaders (ids 1-3), a Wan22SetDevice (ids 20+) per entry of `devices`, and the handle outputs to
    wire: `{"dit": [node id, slot], "t5": ..., "vae": ...}`."""
    nodes = [
        Node(1, "Wan22ModelLoader", {"task": task, "model": model, "low_noise_model": low,
                                     "weight_dtype": weight_dtype, "attention": "auto", "offload": offload}, MODELS),
        Node(2, "Wan22T5Loader", {"t5_name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "weight_dtype": "default"},
             MODELS),
        Node(3, "Wan22VAELoader", {"vae_name": vae, "weight_dtype": "default"}, MODELS),
    ]
    handles = {"dit": ["1", 0], "t5": ["2", 0], "vae": ["3", 0]}
    for offset, (part, device) in enumerate((devices or {}).items()):
        node_id = 20 + offset
        nodes.append(Node(node_id, "Wan22SetDevice", {"model": handles[part], "device": device}, DEVICES))
        handles[part] = [str(node_id), 0]
    return nodes, handles


def build_batch_graph() -> Graph:
    """A CSV batch on two GPUs: T5 on gpu:0 encodes the next job while the DiT experts and the VAE on gpu:1
    denoise and decode the current one."""
    nodes, handles = model_nodes(**T2V_FILES, devices=DUAL_GPU)
    batch_inputs = {
        "model": handles["dit"], "t5": handles["t5"], "vae": handles["vae"], "prompts": BATCH_PROMPTS,
        "csv_file": NO_CSV, "style": "none", "negative_prompt": "", **T2V, "gpu_mode": "as wired",
        "max_concurrent_jobs": 0, "queue_timeout": 1800.0, "auto_clear_cache": True, "defrag_every": 0,
        "wait_for_vae_load": True,
    }
    nodes.append(Node(30, "Wan22BatchQueueManager", batch_inputs, BATCH))
    graph = Graph("wan22_batch_dual_gpu", "Wan2.2 T2V A14B batch, two GPUs", nodes,
                  {MODELS: GROUP_TEXT[MODELS], DEVICES: GROUP_TEXT[DEVICES], BATCH: BATCH_TEXT})
    graph.notes.append(f"One prompt per line in the prompts box, or a CSV: clear the box and pick "
                        f"'{EXAMPLE_LABEL}{SAMPLE_CSV}' (shipped with this pack) or a CSV of yours in ComfyUI/input/ "
                        "(a header row with prompt and optional negative_prompt, style, seed, width, height, frames, "
                        "steps; press R after adding one). On one GPU gpu:1 falls back to the main GPU and the jobs "
                        "run one after the other.")
    return graph


def lora_nodes(loras: list[tuple[str, float, float]], model: list) -> tuple[list[Node], list]:
    """Chained Wan22LoraLoader nodes (ids 11+) for (file, strength_high, strength_low), and the model output to wire;
    each names its published file for the frontend's download offer."""
    nodes = []
    for offset, (name, high, low) in enumerate(loras):
        node_id = 11 + offset
        nodes.append(Node(node_id, "Wan22LoraLoader", {"model": model, "lora_name": name, "strength_high": high,
                                                       "strength_low": low}, MODELS))
        model = [str(node_id), 0]
    return nodes, model


def build_graph(
    name: str, title: str, *, task: str, model: str, low: str, vae: str, weight_dtype: str = "default",
    offload: bool = False, sampler: dict, save_prefix: str, fps: float, tiled: bool = False,
    devices: dict[str, str] | None = None, start_image: str | None = None, end_image: str | None = None,
    prompt: str = PROMPT_TEXT, loras: list[tuple[str, float, float]] | None = None,
) -> Graph:
    """A Wan2.2 graph; `devices` (`{"t5": "gpu:0", "dit": "gpu:1", "vae": "gpu:1"}`) adds Wan22SetDevice nodes,
    `loras` (file, strength_high, strength_low) chained LoRA loaders."""
    nodes, handles = model_nodes(task=task, model=model, low=low, vae=vae, weight_dtype=weight_dtype, offload=offload,
                                 devices=devices)
    if loras:
        chain, handles["dit"] = lora_nodes(loras, handles["dit"])
        nodes += chain
    nodes.insert(3, Node(4, "Wan22PromptStyler", {"prompt": prompt, "style": "Cinematic Lighting",
                                                  "negative_prompt": DEFAULT_NEGATIVE_PROMPT}, PROMPT))
    nodes.append(Node(5, "Wan22T5Encode", {"t5": handles["t5"], "positive": ["4", 0], "negative": ["4", 1]}, PROMPT))
    sampler_inputs = {"model": handles["dit"], "conditioning": ["5", 0], **sampler, "denoise": 1.0,
                      "cache": "off", "cache_threshold": 0.05}
    sampler_inputs.setdefault("boundary_step", -1)  # the task's noise-level boundary
    if start_image is not None:
        nodes.append(Node(10, "LoadImage", {"image": start_image}, SAMPLE))
        sampler_inputs.update(vae=handles["vae"], start_image=["10", 0])
    if end_image is not None:
        nodes.append(Node(20, "LoadImage", {"image": end_image}, SAMPLE))
        sampler_inputs["end_image"] = ["20", 0]
    nodes.append(Node(6, "Wan22DiTSampler", sampler_inputs, SAMPLE))
    nodes.append(Node(7, "Wan22VAEDecode", {"vae": handles["vae"], "latent": ["6", 0], "tiled": tiled,
                                            "tile_size": 256, "tile_overlap": 64, "latents_file": ""}, OUTPUT))
    nodes.append(Node(8, "Wan22SaveVideo", {"images": ["7", 0], "filename_prefix": save_prefix, "fps": fps,
                                            "save_frames": False}, OUTPUT))
    return Graph(name, title, nodes, dict(GROUP_TEXT))


def build_interpolated_graph() -> Graph:
    """T2V A14B: a 4-second generation (65 frames at 16 fps), RIFE 2x to 129 frames, saved at 16 fps: 8 seconds."""
    graph = build_graph("wan22_t2v_a14b_interpolated_8s", "Wan2.2 T2V A14B, 4 s generated, 8 s saved (RIFE 2x)",
                        **T2V_FILES, sampler={**T2V, "frames": 65}, save_prefix="wan22/t2v_a14b_8s", fps=16)
    save = next(node for node in graph.nodes if node.class_type == "Wan22SaveVideo")
    graph.nodes.insert(graph.nodes.index(save), Node(9, "Wan22FrameInterpolate", {
        "images": ["7", 0], "multiplier": 2, "rife_model": "auto", "fps": 16.0, "batch_size": 8, "tile_size": 0,
    }, OUTPUT))
    save.inputs["images"] = ["9", 0]
    graph.notes.append("65 frames (4 s at 16 fps) are generated; Frame Interpolate puts a RIFE frame between each "
                       "pair (129 frames) and Save Video plays them at 16 fps: 8 s. Set its fps to 32 for the same "
                       "4 s, smoother. RIFE weights: rife49.pth or rife47.pth in ComfyUI/models/frame_interpolation/ "
                       "(ComfyUI-Frame-Interpolation's downloads are found too); without them ffmpeg's minterpolate "
                       "runs, and the node's info output says so.")
    return graph


LONG = "2. Long video (chunks)"
LONG_PROMPTS = (
    "A red fox trots through fresh snow in a birch forest at sunrise. | The fox stops at a frozen stream and "
    "sniffs the ice. | The fox leaps across the stream and disappears between the trees."
)


def build_long_video_graph() -> Graph:
    """TI2V 5B: a 3-chunk long video, each chunk continuing from the previous chunk's last frame."""
    nodes, handles = model_nodes(task="ti2v-5B", model="wan2.2_ti2v_5B_fp16.safetensors", low="none",
                                 vae="wan2.2_vae.safetensors", devices={"t5": "cpu"})
    nodes.append(Node(30, "Wan22LongVideo", {
        "model": handles["dit"], "t5": handles["t5"], "vae": handles["vae"], "prompts": LONG_PROMPTS,
        "negative_prompt": "", "chunks": 3, "width": 1280, "height": 704, "frames": 121, "steps": 50,
        "solver": "unipc", "shift": 5.0, "cfg_high_noise": 5.0, "cfg_low_noise": 5.0, "seed": 42,
        "colour_match": True, "run_name": "wan22_long/fox",
    }, LONG))
    nodes.append(Node(8, "Wan22SaveVideo", {"images": ["30", 0], "filename_prefix": "wan22/long_video", "fps": 24.0,
                                            "save_frames": False}, OUTPUT))
    long_text = ("Three 121-frame chunks (5 s each at 24 fps), one prompt per chunk separated by '|'. Each chunk "
                 "starts from the last frame of the one before; the repeated frame is dropped at each join (361 "
                 "frames, 15 s) and colours are matched. Finished chunks stay in ComfyUI/output/wan22_long/: "
                 "queueing again after a crash resumes at the next chunk.")
    groups = {MODELS: GROUP_TEXT[MODELS], DEVICES: GROUP_TEXT[DEVICES], LONG: long_text, OUTPUT: GROUP_TEXT[OUTPUT]}
    graph = Graph("wan22_ti2v_5b_long_video", "Wan2.2 TI2V 5B long video, 3 chunks", nodes, groups)
    graph.notes.append("Text to a long video: the first chunk starts from the prompt alone; connect a Load Image node "
                       "to the Long Video node's start_image to begin from a picture (required with I2V A14B).")
    return graph


def sampler_settings(*, width: int, height: int, frames: int, steps: int, shift: float, cfg: tuple[float, float],
                     seed: int = 42, solver: str = "unipc") -> dict:
    return {"width": width, "height": height, "frames": frames, "steps": steps, "solver": solver, "shift": shift,
            "cfg_high_noise": cfg[0], "cfg_low_noise": cfg[1], "seed": seed}


T2V = sampler_settings(width=832, height=480, frames=81, steps=40, shift=12.0, cfg=(4.0, 3.0))
# Wan2.2-Lightning (lightx2v) as ComfyUI's templates run it: 4 euler steps at shift 5, 2 per expert, no CFG.
LIGHTNING = {"steps": 4, "solver": "euler", "shift": 5.0, "cfg": (1.0, 1.0)}
LIGHTNING_TEXT = (
    "Wan2.2-Lightning: the lightx2v 4-step LoRAs, one per expert (high-noise file on the high-noise expert only, "
    "low-noise file on the low-noise expert only), 4 euler steps at shift 5, CFG 1 (one forward per step), the "
    "experts switch after step 2. The LoRA loaders name their files; the frontend offers the download."
)
T2V_FILES = {"task": "t2v-A14B", "model": "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
             "low": "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", "vae": "wan_2.1_vae.safetensors"}


def all_graphs() -> list[Graph]:
    dual = build_graph("wan22_t2v_a14b_dual_gpu", "Wan2.2 T2V A14B, two GPUs", **T2V_FILES, sampler=T2V,
                       save_prefix="wan22/t2v_a14b_dual", fps=16, devices=DUAL_GPU)
    dual.notes.append("Two GPUs: T5 and the styler run on gpu:0, the DiT experts and the VAE on gpu:1 (Wan2.2 Set "
                       "Device nodes). On a one-GPU machine gpu:1 falls back to the main GPU with a warning, so the "
                       "workflow still runs.")
    five_b = build_graph(
        "wan22_ti2v_5b_24gb", "Wan2.2 TI2V 5B on a 24 GB card", task="ti2v-5B",
        model="wan2.2_ti2v_5B_fp16.safetensors", low="none", vae="wan2.2_vae.safetensors", tiled=True,
        sampler=sampler_settings(width=1280, height=704, frames=121, steps=50, shift=5.0, cfg=(5.0, 5.0)),
        save_prefix="wan22/ti2v_5b", fps=24, devices={"t5": "cpu"},
    )
    five_b.notes.append("24 GB: the 5B model (10 GB in bf16) and the VAE stay on the GPU; T5 encodes on the CPU "
                         "(a few seconds) so its 6 GB stay free; decoding is tiled. For image-to-video connect a "
                         "Load Image node (and the VAE) to the sampler's start_image.")
    i2v = build_graph(
        "wan22_i2v_a14b", "Wan2.2 I2V A14B", task="i2v-A14B",
        model="wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
        low="wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors", vae="wan_2.1_vae.safetensors",
        sampler=sampler_settings(width=832, height=480, frames=81, steps=40, shift=5.0, cfg=(3.5, 3.5)),
        save_prefix="wan22/i2v_a14b", fps=16, start_image="example.png", prompt=I2V_PROMPT_TEXT,
    )
    i2v.notes.append("Image-to-video: the picture in Load Image becomes the first frame (resized to width x "
                      "height). The VAE goes to the sampler too: it encodes the picture.")
    single = build_graph("wan22_t2v_a14b", "Wan2.2 T2V A14B", **T2V_FILES, sampler=T2V, save_prefix="wan22/t2v_a14b",
                         fps=16)
    return [single, dual, five_b, i2v, build_batch_graph(), build_interpolated_graph(), build_long_video_graph(),
            *lightning_graphs()]


def lightning_loras(task: str, version: str) -> list[tuple[str, float, float]]:
    stem = f"wan2.2_{task}_lightx2v_4steps_lora_{version}"
    return [(f"{stem}_high_noise.safetensors", 1.0, 0.0), (f"{stem}_low_noise.safetensors", 0.0, 1.0)]


def lightning_graphs() -> list[Graph]:
    t2v = build_graph(
        "wan22_t2v_a14b_lightning", "Wan2.2 T2V A14B, Lightning 4 steps", **T2V_FILES,
        sampler={**sampler_settings(width=832, height=480, frames=81, **LIGHTNING), "boundary_step": 2},
        save_prefix="wan22/t2v_a14b_lightning",
        fps=16, loras=lightning_loras("t2v", "v1.1"),
    )
    i2v = build_graph(
        "wan22_i2v_a14b_lightning", "Wan2.2 I2V A14B, Lightning 4 steps", task="i2v-A14B",
        model="wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
        low="wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors", vae="wan_2.1_vae.safetensors",
        sampler={**sampler_settings(width=832, height=480, frames=81, **LIGHTNING), "boundary_step": 2},
        save_prefix="wan22/i2v_a14b_lightning",
        fps=16, start_image="example.png", prompt=I2V_PROMPT_TEXT, loras=lightning_loras("i2v", "v1"),
    )
    first_last = build_graph(
        "wan22_flf2v_a14b_lightning", "Wan2.2 I2V A14B, first and last frame, Lightning 4 steps", task="i2v-A14B",
        model="wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
        low="wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors", vae="wan_2.1_vae.safetensors",
        sampler={**sampler_settings(width=832, height=480, frames=81, **LIGHTNING), "boundary_step": 2},
        save_prefix="wan22/flf2v_a14b_lightning", fps=16, start_image="example.png", end_image="example.png",
        prompt=I2V_PROMPT_TEXT, loras=lightning_loras("i2v", "v1"),
    )
    first_last.notes.append("First and last frame: the upper Load Image is the first frame, the lower one the last "
                            "(each resized to width x height); the sampler makes the frames between them, as "
                            "ComfyUI's WanFirstLastFrameToVideo does. The same picture at both ends makes a loop.")
    for graph in (t2v, i2v, first_last):
        graph.notes.append(LIGHTNING_TEXT)
    return [t2v, i2v, first_last]


def render(graph: Graph) -> dict[str, str]:
    """{relative path: file text} of one graph's API and UI files."""
    return {
        f"api/{graph.name}.json": as_text(api_graph(graph)),
        f"example_workflows/{graph.name}.json": as_text(ui_graph(graph)),
    }


def as_text(data: dict) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    for graph in all_graphs():
        for relative, text in render(graph).items():
            (ROOT / relative).write_text(text, encoding="utf-8")
            print("wrote", relative)
        thumbnail = ROOT / "example_workflows" / f"{graph.name}.jpg"
        write_thumbnail(ui_graph(graph), thumbnail)
        print("wrote", thumbnail.relative_to(ROOT))


if __name__ == "__main__":
    main()
