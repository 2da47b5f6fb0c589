"""Write the shipped workflows: API format into `api/`, ComfyUI's UI format into `workflows/`.

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
            values.append(node.inputs[name])
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
            "inputs": inputs, "outputs": [], "properties": {"Node name for S&R": node.class_type},
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
        "model": handles["dit"], "t5": handles["t5"], "vae": handles["vae"], "prompts": "",
        "csv_file": SAMPLE_CSV, "style": "none", "negative_prompt": "", **T2V, "gpu_mode": "as wired",
        "max_concurrent_jobs": 0, "queue_timeout": 1800.0, "auto_clear_cache": True, "defrag_every": 0,
        "wait_for_vae_load": True,
    }
    nodes.append(Node(30, "Wan22BatchQueueManager", batch_inputs, BATCH))
    graph = Graph("wan22_batch_dual_gpu", "Wan2.2 T2V A14B batch, two GPUs", nodes,
                  {MODELS: GROUP_TEXT[MODELS], DEVICES: GROUP_TEXT[DEVICES], BATCH: BATCH_TEXT})
    graph.notes.append(f"Copy api/{SAMPLE_CSV} from this pack into ComfyUI/input/ (or write your own CSV there: a "
                        "header row with prompt and optional negative_prompt, style, seed, width, height, frames, "
                        "steps), press R to refresh the file list, then queue. On one GPU gpu:1 falls back to the "
                        "main GPU and the jobs run one after the other.")
    return graph


def build_graph(
    name: str, title: str, *, task: str, model: str, low: str, vae: str, weight_dtype: str = "default",
    offload: bool = False, sampler: dict, save_prefix: str, fps: float, tiled: bool = False,
    devices: dict[str, str] | None = None, start_image: str | None = None, prompt: str = PROMPT_TEXT,
) -> Graph:
    """A Wan2.2 graph; `devices` (`{"t5": "gpu:0", "dit": "gpu:1", "vae": "gpu:1"}`) adds Wan22SetDevice nodes."""
    nodes, handles = model_nodes(task=task, model=model, low=low, vae=vae, weight_dtype=weight_dtype, offload=offload,
                                 devices=devices)
    nodes.insert(3, Node(4, "Wan22PromptStyler", {"prompt": prompt, "style": "Cinematic Lighting",
                                                  "negative_prompt": DEFAULT_NEGATIVE_PROMPT}, PROMPT))
    nodes.append(Node(5, "Wan22T5Encode", {"t5": handles["t5"], "positive": ["4", 0], "negative": ["4", 1]}, PROMPT))
    sampler_inputs = {"model": handles["dit"], "conditioning": ["5", 0], **sampler, "cache": "off",
                      "cache_threshold": 0.05}
    if start_image is not None:
        nodes.append(Node(10, "LoadImage", {"image": start_image}, SAMPLE))
        sampler_inputs.update(vae=handles["vae"], start_image=["10", 0])
    nodes.append(Node(6, "Wan22DiTSampler", sampler_inputs, SAMPLE))
    nodes.append(Node(7, "Wan22VAEDecode", {"vae": handles["vae"], "latent": ["6", 0], "tiled": tiled,
                                            "tile_size": 256, "tile_overlap": 64}, OUTPUT))
    nodes.append(Node(8, "Wan22SaveVideo", {"images": ["7", 0], "filename_prefix": save_prefix, "fps": fps,
                                            "save_frames": False}, OUTPUT))
    return Graph(name, title, nodes, dict(GROUP_TEXT))


def sampler_settings(*, width: int, height: int, frames: int, steps: int, shift: float, cfg: tuple[float, float],
                     seed: int = 42) -> dict:
    return {"width": width, "height": height, "frames": frames, "steps": steps, "solver": "unipc", "shift": shift,
            "cfg_high_noise": cfg[0], "cfg_low_noise": cfg[1], "seed": seed}


T2V = sampler_settings(width=832, height=480, frames=81, steps=40, shift=12.0, cfg=(4.0, 3.0))
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
    return [single, dual, five_b, i2v, build_batch_graph()]


def render(graph: Graph) -> dict[str, str]:
    """{relative path: file text} of one graph's API and UI files."""
    return {
        f"api/{graph.name}.json": as_text(api_graph(graph)),
        f"workflows/{graph.name}.json": as_text(ui_graph(graph)),
    }


def as_text(data: dict) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    for graph in all_graphs():
        for relative, text in render(graph).items():
            (ROOT / relative).write_text(text, encoding="utf-8")
            print("wrote", relative)


if __name__ == "__main__":
    main()
