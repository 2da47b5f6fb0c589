"""Wan22BatchQueueManager: the shipped batch workflow runs a CSV batch with tiny models, a re-run skips the finished
jobs without loading a model, bad input is refused before any model loads, workers follow the handles' devices."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from graph_executor import run_graph
from test_nodes import _fake_comfyui
from test_workflows import TINY_SIZE, tiny_models  # noqa: F401  (a fixture)

from nodes import NODE_CLASS_MAPPINGS, batch_queue, devices, handles, host
from nodes.batch_queue import Wan22BatchQueueManager, plan_workers
from wan_core.batch import JobLedger
from wan_core.batch.scheduler import BatchScheduler
from wan_core.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
BATCH_NODE = "30"
CSV_ROWS = (
    "prompt,style,seed\n"
    "a fox in snow,,5\n"
    '"waves on a beach, at dusk",Cinematic Lighting,\n'
    "a paper boat [Style: Anime],,\n"
)


@pytest.fixture
def folders(tmp_path, monkeypatch):
    monkeypatch.setenv(host.INPUT_DIR_ENV, str(tmp_path / "input"))
    monkeypatch.setenv(host.OUTPUT_DIR_ENV, str(tmp_path / "output"))
    (tmp_path / "input").mkdir()
    handles.MODEL_CACHE.clear()
    yield tmp_path
    handles.MODEL_CACHE.clear()


def _batch_graph(csv_name: str) -> dict:
    graph = json.loads((ROOT / "api" / "wan22_batch_dual_gpu.json").read_text(encoding="utf-8"))
    graph[BATCH_NODE]["inputs"].update(TINY_SIZE, csv_file=csv_name, prompts="")
    return graph


def _ledger_lines(output: Path) -> list[dict]:
    (ledger,) = (output / batch_queue.BATCH_FOLDER).glob("*.ledger.jsonl")
    return [json.loads(line) for line in ledger.read_text(encoding="utf-8").splitlines()]


def test_batch_workflow_makes_three_videos_and_a_rerun_skips_them(tiny_models, folders, monkeypatch):  # noqa: F811
    monkeypatch.setenv(host.MODELS_DIR_ENV, str(tiny_models))
    calls: list = []
    _fake_comfyui(monkeypatch, calls)
    (folders / "input" / "jobs.csv").write_text(CSV_ROWS, encoding="utf-8")
    workflow = json.loads((ROOT / "example_workflows" / "wan22_batch_dual_gpu.json").read_text(encoding="utf-8"))
    from wan_core.pipeline import forwards

    graphed = []  # the batch's forwards go through the CUDA graphs (which run eagerly on the CPU)
    monkeypatch.setattr(forwards, "graphed", lambda model: graphed.append(model) or model)

    outputs, ui = run_graph(_batch_graph("jobs.csv"), NODE_CLASS_MAPPINGS, workflow=workflow)
    assert len(graphed) >= 3 * TINY_SIZE["steps"]

    paths, table = outputs[BATCH_NODE]
    videos = [Path(p) for p in paths.splitlines()]
    batch = videos[0].name.split("_")[0]
    assert [v.name for v in videos] == [f"{batch}_{i:04d}.mp4" for i in (1, 2, 3)]
    assert all(v.parent == folders / "output" / "wan22_batches" and v.stat().st_size > 1000 for v in videos)
    assert not list((folders / "output").rglob("*.partial.mp4"))
    lines = _ledger_lines(folders / "output")
    last = {line["job"]: line for line in lines}
    assert {job: (entry["state"], entry["output"]) for job, entry in last.items()} == {
        i + 1: ("done", str(v)) for i, v in enumerate(videos)
    }
    assert "3 done" in table
    (preview,) = ui[BATCH_NODE]["images"]
    assert preview["subfolder"] == "wan22_batches" and preview["filename"] in {v.name for v in videos}
    assert ui[BATCH_NODE]["animated"] == (True,)

    queue = [c[2] for c in calls if c[0] == "send" and c[1] == batch_queue.QUEUE_EVENT]
    assert queue[0] == {"node": BATCH_NODE, "queued": 3, "running": 0, "done": 0, "failed": 0}
    assert queue[-1] == {"node": BATCH_NODE, "queued": 0, "running": 0, "done": 3, "failed": 0}
    assert max(q["running"] for q in queue) == 2  # one device: a job is written while the next one denoises
    progress = [c[2] for c in calls if c[0] == "send" and c[1] == "wan22.progress"]
    assert len(progress) == 3 * TINY_SIZE["steps"]
    assert {(p["node"], p["device"], p["total"]) for p in progress} == {(BATCH_NODE, "CPU", TINY_SIZE["steps"])}
    assert {p["expert"] for p in progress} <= {"high_noise", "low_noise"}
    total_steps = 3 * TINY_SIZE["steps"]
    assert ("bar", total_steps, BATCH_NODE) in calls
    assert [c for c in calls if c[0] == "update"][-1][1:3] == (total_steps, total_steps)

    handles.MODEL_CACHE.clear()
    outputs_again, _ = run_graph(_batch_graph("jobs.csv"), NODE_CLASS_MAPPINGS)
    assert outputs_again[BATCH_NODE][0] == paths
    assert "3 skipped" in outputs_again[BATCH_NODE][1]
    assert len(handles.MODEL_CACHE) == 0  # no model was loaded for a batch with nothing left to do
    assert _ledger_lines(folders / "output") == lines  # no job was queued or started again


def test_a_batch_with_offloaded_experts_runs_its_forwards_eagerly(tiny_models, folders, monkeypatch):  # noqa: F811
    from wan_core.pipeline import forwards

    monkeypatch.setenv(host.MODELS_DIR_ENV, str(tiny_models))
    _fake_comfyui(monkeypatch, [])
    graphed = []
    monkeypatch.setattr(forwards, "graphed", lambda model: graphed.append(model) or model)
    graph = _batch_graph("none")
    graph["1"]["inputs"]["offload"] = True
    graph[BATCH_NODE]["inputs"]["prompts"] = "a fox in snow"
    outputs, _ = run_graph(graph, NODE_CLASS_MAPPINGS)
    assert "1 done" in outputs[BATCH_NODE][1]
    assert graphed == []


def test_interrupt_cancels_the_running_job_and_leaves_the_rest_pending(tiny_models, folders, monkeypatch):  # noqa: F811
    monkeypatch.setenv(host.MODELS_DIR_ENV, str(tiny_models))
    calls: list = []
    state, interrupted_error = _fake_comfyui(monkeypatch, calls)
    server = sys.modules["server"].PromptServer.instance

    def send(event, data, client):  # the user presses Cancel while the first step is shown
        calls.append(("send", event, data, client))
        if event == "wan22.progress":
            state["interrupted"] = state["interrupt_on_update"] = True  # the fake bar keeps it set from now on

    monkeypatch.setattr(server, "send_sync", send)
    (folders / "input" / "jobs.csv").write_text(CSV_ROWS, encoding="utf-8")
    graph = _batch_graph("jobs.csv")
    graph[BATCH_NODE]["inputs"]["steps"] = 3

    with pytest.raises(interrupted_error):
        run_graph(graph, NODE_CLASS_MAPPINGS)

    last = {line["job"]: line["state"] for line in _ledger_lines(folders / "output")}
    assert last == {1: "cancelled", 2: "cancelled", 3: "queued"}  # job 2 was in flight beside job 1 (2 job slots)
    assert not list((folders / "output").rglob("*.mp4"))
    assert [c[2]["step"] for c in calls if c[0] == "send" and c[1] == "wan22.progress"] == [1]


def _fake_handles(device: str = "cpu") -> dict:
    """Handles to files that do not exist: any attempt to load a model fails loudly."""
    return {
        "model": handles.DiTHandle(task="t2v-A14B", high_noise_path="/absent/high.safetensors",
                                   low_noise_path="/absent/low.safetensors", device=device),
        "t5": handles.T5Handle(path="/absent/t5.safetensors", device=device),
        "vae": handles.VAEHandle(path="/absent/vae.safetensors", device=device),
    }


def _node_inputs(**changes) -> dict:
    inputs = {
        **_fake_handles(), "prompts": "", "csv_file": "none", "style": "none", "negative_prompt": "", **TINY_SIZE,
        "solver": "unipc", "shift": 12.0, "cfg_high_noise": 4.0, "cfg_low_noise": 3.0, "seed": 0,
        "gpu_mode": "as wired", "max_concurrent_jobs": 0, "queue_timeout": 300.0, "auto_clear_cache": True,
        "defrag_every": 0, "wait_for_vae_load": True, "unique_id": "9",
    }
    return inputs | changes


def test_bad_csv_rows_are_refused_before_any_model_loads(folders):
    (folders / "input" / "bad.csv").write_text(
        "prompt,width,frames,style\n"
        "fine,32,5,\n"
        "wide,abc,5,\n"
        "long,32,6,\n"
        "styled,32,5,No Such Style\n",
        encoding="utf-8",
    )
    assert Wan22BatchQueueManager.VALIDATE_INPUTS(csv_file="bad.csv") is True
    assert "outside" in Wan22BatchQueueManager.VALIDATE_INPUTS(csv_file="../escape.csv")
    with pytest.raises(InputError) as error:
        Wan22BatchQueueManager().run_batch(**_node_inputs(csv_file="bad.csv"))
    message = str(error.value)
    assert "row 3, column 'width': 'abc' is not a whole number" in message
    assert "row 4: frame_num 6 is not 4k+1: use 5" in message
    assert "row 5: Unknown prompt style 'No Such Style'" in message
    assert "row 2" not in message
    assert len(handles.MODEL_CACHE) == 0 and not (folders / "output").exists()


def test_more_concurrent_jobs_than_job_slots_is_refused_before_loading(folders):
    with pytest.raises(InputError, match=r"max_concurrent_jobs=3 but the workers have 2 job slot"):
        Wan22BatchQueueManager().run_batch(**_node_inputs(prompts="one\ntwo", max_concurrent_jobs=3))
    assert len(handles.MODEL_CACHE) == 0 and not list(folders.rglob("*.jsonl"))


class _StagesStandIn:
    def __init__(self, dit, t5, vae, caches):
        self.encode_device, self.denoise_device, self.decode_device = (
            str(h.target_device()) for h in (t5, dit, vae))
        self.caches = caches


@pytest.fixture
def two_gpus(monkeypatch):
    for module in (devices, batch_queue):
        monkeypatch.setattr(module, "gpu_count", lambda: 2)


def test_split_handles_give_a_pipelined_worker_with_three_slots(two_gpus, tmp_path):
    bound = _fake_handles()
    dit, t5, vae = bound["model"].bind("gpu:1"), bound["t5"].bind("gpu:0"), bound["vae"].bind("gpu:1")
    (worker,) = plan_workers(dit, t5, vae, batch_queue.AS_WIRED, _StagesStandIn)
    assert worker.stages is not None and (worker.text_device, worker.main_device) == ("cuda:0", "cuda:1")
    # encoding on gpu:0; denoising and decoding in their own lanes on gpu:1
    assert BatchScheduler([worker], ledger=JobLedger(tmp_path / "l.jsonl")).capacity == 3
    (one_gpu,) = plan_workers(dit, t5.bind("gpu:1"), vae, batch_queue.AS_WIRED, _StagesStandIn)
    assert one_gpu.stages is not None and one_gpu.name == "cuda:1"
    # encoding, denoising and decoding in gpu:1's compute lane, writing in its I/O lane
    assert BatchScheduler([one_gpu], ledger=JobLedger(tmp_path / "one.jsonl")).capacity == 2


def test_replica_per_gpu_gives_one_worker_per_gpu_with_its_own_model_copies(two_gpus, tmp_path):
    bound = {name: handle.bind("gpu:0") for name, handle in _fake_handles().items()}
    workers = plan_workers(bound["model"], bound["t5"], bound["vae"], batch_queue.REPLICA_PER_GPU, _StagesStandIn)
    assert [w.name for w in workers] == ["cuda:0", "cuda:1"]
    first, second = (w.stages.caches for w in workers)
    assert set(first.values()) == {handles.MODEL_CACHE}  # where the handles already live: the shared cache
    assert set(second.values()) == {batch_queue._replica_cache("cuda:1")}
    assert BatchScheduler(workers, ledger=JobLedger(tmp_path / "l.jsonl")).capacity == 4
    with pytest.raises(InputError, match="gpu_mode"):
        plan_workers(bound["model"], bound["t5"], bound["vae"], "everywhere", _StagesStandIn)


def test_the_shipped_batch_runs_as_loaded_and_offers_the_pack_csv(folders):
    from wan_core.batch import load_batch_jobs

    graph = json.loads((ROOT / "api" / "wan22_batch_dual_gpu.json").read_text(encoding="utf-8"))
    inputs = graph[BATCH_NODE]["inputs"]
    assert inputs["csv_file"] == batch_queue.NO_CSV
    assert len(load_batch_jobs(inputs["prompts"], "", folders / "input")) == 3  # the prompts in its text box
    example = batch_queue.EXAMPLE_LABEL + "sample_batch.csv"
    assert example in batch_queue.list_csv_files()  # offered in a fresh install, nothing copied into input/
    assert batch_queue.Wan22BatchQueueManager.VALIDATE_INPUTS(example) is True
    name, folder = batch_queue.csv_location(example)
    jobs = load_batch_jobs("", name, folder)
    assert len(jobs) == 3 and {job.style for job in jobs} <= set(batch_queue.load_styles(batch_queue.STYLES_DIR))
    assert batch_queue.csv_location("mine.csv") == ("mine.csv", str(folders / "input"))
    assert "outside" in batch_queue.Wan22BatchQueueManager.VALIDATE_INPUTS(batch_queue.EXAMPLE_LABEL + "../README.md")
