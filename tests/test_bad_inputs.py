"""The bad-input table: each hostile or mistaken input across the CLI, the nodes, batch CSV files, style files and
weight files is refused with a message saying what is wrong, and nothing in the workspace is written or lost.

The workspace holds an existing video, a models folder, an input and an output folder; it is snapshotted (every
path and its bytes) after a case's files are set up and compared after the case ran. docs/reliability.md lists the
cases as a table (test_the_docs_table_lists_every_case keeps it in step)."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nodes import handles, host
from nodes.batch_queue import Wan22BatchQueueManager
from nodes.loaders import Wan22ModelLoader, Wan22T5Loader, Wan22VAELoader
from nodes.sampler import Wan22DiTSampler
from nodes.save_video import Wan22SaveVideo
from nodes.text_encode import WanConditioning
from nodes.vae_nodes import Wan22VAEDecode
from wan_core.batch.csv_input import DEFAULTS, load_batch_jobs, read_csv_jobs
from wan_core.batch.jobs import JobDefaults
from wan_core.configs import DIT_CONFIGS
from wan_core.dit.loader import load_dit
from wan_core.dit.model import WanDiT, init_random_
from wan_core.errors import WanError
from wan_core.generate import main
from wan_core.io.writers import write_safetensors
from wan_core.styles import MAX_STYLE_FILE_BYTES, Style, load_styles, style_prompt
from wan_core.vae.loader import load_vae
from wan_core.vae.model import build_vae, official_state_dict

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reliability.md"
EXISTING = b"an existing video that must survive"


@dataclass(frozen=True)
class Case:
    id: str
    area: str
    what: str  # the bad input, in words (the docs table's first column)
    run: Callable[[Path], object]  # given the workspace; raises, exits non-zero, or logs
    message: str  # regex the error (or the log) must contain


# --- the workspace ---------------------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    for sub in ("models/diffusion_models", "models/text_encoders", "models/vae", "input", "output", "out"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "out" / "existing.mp4").write_bytes(EXISTING)
    monkeypatch.setenv(host.MODELS_DIR_ENV, str(tmp_path / "models"))
    monkeypatch.setenv(host.OUTPUT_DIR_ENV, str(tmp_path / "output"))
    monkeypatch.setenv(host.INPUT_DIR_ENV, str(tmp_path / "input"))
    monkeypatch.setenv("WAN22_DEMO_DIR", str(tmp_path / "demo"))
    monkeypatch.chdir(tmp_path)
    handles.MODEL_CACHE.clear()
    return tmp_path


# --- CLI -------------------------------------------------------------------------------------------------------
class CLIFailed(Exception):
    pass


def cli(*argv: str) -> Callable[[Path], None]:
    def run(ws: Path) -> None:
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                code = main(["--demo", "--device", "cpu", *argv])
            except SystemExit as exit_:
                code = exit_.code
        assert code != 0, "the CLI accepted the input"
        raise CLIFailed(err.getvalue())

    return run


def cli_with(setup: Callable[[Path], None], *argv: str) -> Callable[[Path], None]:
    def run(ws: Path) -> None:
        setup(ws)
        cli(*argv)(ws)

    run.setup = setup  # type: ignore[attr-defined]
    return run


def _file(relative: str, data: bytes = b"x") -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        (ws / relative).parent.mkdir(parents=True, exist_ok=True)
        (ws / relative).write_bytes(data)
    return setup


def _safetensors(relative: str, tensors: dict[str, torch.Tensor]) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        save_file(tensors, str(ws / relative))
    return setup


# --- nodes -----------------------------------------------------------------------------------------------------
DIT = handles.DiTHandle(task="t2v-A14B", high_noise_path="models/high.safetensors",
                        low_noise_path="models/low.safetensors")
T5 = handles.T5Handle(path="models/t5.safetensors")
VAE = handles.VAEHandle(path="models/vae.safetensors")
COND = WanConditioning(positive=(torch.zeros(4, 4096),), negative=(torch.zeros(4, 4096),))
SAMPLER = {"width": 832, "height": 480, "frames": 81, "steps": 40, "solver": "unipc", "shift": 12.0,
           "cfg_high_noise": 4.0, "cfg_low_noise": 3.0, "seed": 0}
BATCH = {"prompts": "a cat\na dog\na bird", "csv_file": "none", "style": "none", "negative_prompt": "", **SAMPLER,
         "gpu_mode": "as wired", "max_concurrent_jobs": 0, "queue_timeout": 300.0, "auto_clear_cache": True,
         "defrag_every": 0, "wait_for_vae_load": True}
FRAMES = torch.rand(5, 32, 32, 3)


def sampler(**changes: object) -> Callable[[Path], object]:
    return lambda ws: Wan22DiTSampler().sample(DIT, conditioning=COND, **{**SAMPLER, **changes})


def batch(**changes: object) -> Callable[[Path], object]:
    return lambda ws: Wan22BatchQueueManager().run_batch(DIT, T5, VAE, **{**BATCH, **changes})


def vae_decode(latent: object = None, latents_file: str = "") -> Callable[[Path], object]:
    return lambda ws: Wan22VAEDecode().decode(VAE, latent=latent, latents_file=latents_file)


def save_node(**changes: object) -> Callable[[Path], object]:
    values = {"images": FRAMES, "filename_prefix": "wan22/video", "fps": 16.0, "save_frames": False, **changes}
    return lambda ws: Wan22SaveVideo().save(**values)


# --- CSV -------------------------------------------------------------------------------------------------------
def csv_jobs(text: str | bytes, defaults: JobDefaults = DEFAULTS) -> Callable[[Path], object]:
    def run(ws: Path) -> object:
        path = ws / "input" / "jobs.csv"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        return read_csv_jobs("jobs.csv", ws / "input", defaults)
    return run


# --- styles ----------------------------------------------------------------------------------------------------
STYLES = {f"s{i}": Style(f"s{i}", f"{{prompt}}, look {i}") for i in range(20)}


def style_file(content: str | bytes) -> Callable[[Path], object]:
    """Load a styles folder holding `bad.json` and a good file: the bad file is skipped with a logged reason."""
    def run(ws: Path) -> object:
        folder = ws / "styles"
        folder.mkdir(exist_ok=True)
        (folder / "bad.json").write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        (folder / "good.json").write_text(json.dumps([{"name": "Good", "prompt": "{prompt}, good"}]))
        return load_styles(folder)
    return run


# --- weight files ----------------------------------------------------------------------------------------------
TINY_DIT = DIT_CONFIGS["tiny-t2v"]


def dit_state() -> dict[str, torch.Tensor]:
    model = init_random_(WanDiT(TINY_DIT), torch.Generator().manual_seed(0))
    return {k: v.clone() for k, v in model.state_dict().items()}


def dit_file(change: Callable[[dict[str, torch.Tensor]], None], suffix: str = ".safetensors") -> Callable:
    def run(ws: Path) -> object:
        state = dit_state()
        change(state)
        path = ws / "models" / "diffusion_models" / f"dit{suffix}"
        write_safetensors(state, path)
        return load_dit(path)
    return run


def vae_file(change: Callable[[dict[str, torch.Tensor]], None]) -> Callable:
    def run(ws: Path) -> object:
        state = official_state_dict(build_vae("tiny-wan2.1"))
        change(state)
        path = ws / "models" / "vae" / "vae.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        return load_vae(path)
    return run


def _poison(key: str, value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(state: dict[str, torch.Tensor]) -> None:
        state[key] = state[key].clone()
        state[key].view(-1)[0] = value
    return change


def _as_int(key: str) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(state: dict[str, torch.Tensor]) -> None:
        state[key] = state[key].round().to(torch.int32)
    return change


def _truncate(ws_relative: str) -> Callable[[Path], object]:
    def run(ws: Path) -> object:
        path = ws / ws_relative
        write_safetensors(dit_state(), path)
        path.write_bytes(path.read_bytes()[:-100])
        return load_dit(path)
    return run


CASES = [
    # CLI: refused before any model is loaded or any file written
    Case("cli-guide-nan", "CLI", "`--sample_guide_scale nan`", cli("--sample_guide_scale", "nan"),
         r"guide_scale is nan; it must be a finite number"),
    Case("cli-guide-inf-pair", "CLI", "`--sample_guide_scale 3,inf`", cli("--sample_guide_scale", "3,inf"),
         r"guide_scale is inf"),
    Case("cli-shift-inf", "CLI", "`--sample_shift inf`", cli("--sample_shift", "inf"),
         r"sample_shift inf must be a finite number above 0"),
    Case("cli-shift-nan", "CLI", "`--sample_shift nan`", cli("--sample_shift", "nan"),
         r"sample_shift nan must be a finite number above 0"),
    Case("cli-existing-save-file", "CLI", "`--save_file` names an existing file, no `--overwrite`",
         cli("--save_file", "out/existing.mp4"), r"out/existing.mp4 already exists; pass --overwrite"),
    Case("cli-existing-save-tensor", "CLI", "`--save_tensor` names an existing file",
         cli("--save_file", "out/new.mp4", "--save_tensor", "out/existing.mp4"),
         r"--save_tensor out/existing.mp4 already exists"),
    Case("cli-save-file-folder", "CLI", "`--save_file` is a folder", cli("--save_file", "out"),
         r"--save_file out is a folder"),
    Case("cli-save-file-under-file", "CLI", "`--save_file` inside a path that is a file",
         cli("--save_file", "out/existing.mp4/v.mp4"), r"out/existing.mp4 is a file, not a folder"),
    Case("cli-save-frames-file", "CLI", "`--save_frames` is a file",
         cli("--save_file", "out/new.mp4", "--save_frames", "out/existing.mp4"), r"is a file; give a folder"),
    Case("cli-save-file-webm", "CLI", "`--save_file` with a container ffmpeg cannot put H.264 in (`.webm`)",
         cli("--save_file", "out/v.webm"), r"--save_file out/v.webm is a .webm file, which cannot hold H.264; .* use "
                                           r"out/v.mp4"),
    Case("cli-save-file-no-suffix", "CLI", "`--save_file` without an extension", cli("--save_file", "out/video"),
         r"--save_file out/video has no file extension"),
    Case("cli-cache-threshold-no-cache", "CLI", "`--cache_threshold 0.1` without `--cache`",
         cli("--cache_threshold", "0.1"), r"no step cache is on: add --cache easycache or --cache magcache"),
    Case("cli-seed-too-large", "CLI", "`--base_seed 2^64`", cli("--base_seed", str(2**64)),
         r"seed 18446744073709551616 is too large: seeds go up to 18446744073709551615"),
    Case("cli-frames", "CLI", "`--frame_num 10`", cli("--frame_num", "10"), r"frame_num 10 is not 4k\+1: use 9"),
    Case("cli-decode-missing", "CLI", "`--decode_latents` names no file", cli("--decode_latents", "nope.safetensors"),
         r"latents file nope.safetensors does not exist"),
    Case("cli-decode-foreign", "CLI", "`--decode_latents` file without a `latents` tensor",
         cli_with(_safetensors("other.safetensors", {"x": torch.zeros(2)}), "--decode_latents", "other.safetensors"),
         r"holds no 'latents' tensor"),
    Case("cli-decode-garbage", "CLI", "`--decode_latents` file that is not safetensors",
         cli_with(_file("junk.safetensors", b"not a safetensors file"), "--decode_latents", "junk.safetensors"),
         r"cannot be read as a latents file"),
    # nodes
    Case("node-cfg-nan", "nodes", "sampler `cfg_high_noise` NaN (passes ComfyUI's min/max)",
         sampler(cfg_high_noise=float("nan")), r"guide_scale is nan"),
    Case("node-cfg-low-inf", "nodes", "sampler `cfg_low_noise` inf", sampler(cfg_low_noise=float("inf")),
         r"guide_scale is inf"),
    Case("node-shift-nan", "nodes", "sampler `shift` NaN", sampler(shift=float("nan")),
         r"sample_shift nan must be a finite number"),
    Case("node-denoise-nan", "nodes", "sampler `denoise` NaN", sampler(denoise=float("nan")),
         r"denoise must be in \(0, 1\]; got nan"),
    Case("node-batch-cfg-nan", "nodes", "batch manager `cfg_high_noise` NaN", batch(cfg_high_noise=float("nan")),
         r"row 1: guide_scale is nan"),
    Case("node-batch-timeout-nan", "nodes", "batch manager `queue_timeout` NaN", batch(queue_timeout=float("nan")),
         r"queue_timeout is nan"),
    Case("node-batch-seed-overflow", "nodes", "batch manager seed 2^64-1 with three prompts",
         batch(seed=2**64 - 1), r"row 2, column 'seed': the job's seed 18446744073709551616"),
    Case("node-save-fps-nan", "nodes", "Save Video `fps` NaN", save_node(fps=float("nan")), r"fps is nan"),
    Case("node-save-prefix-escape", "nodes", "Save Video prefix `../escape`", save_node(filename_prefix="../escape"),
         r"must be a relative name"),
    Case("node-latent-no-samples", "nodes", "VAE Decode latent without `samples`", vae_decode(latent={"x": 1}),
         r"'latent' must be a ComfyUI LATENT \(a dict with 'samples'\); got dict"),
    Case("node-latent-not-dict", "nodes", "VAE Decode latent that is a tensor", vae_decode(latent=torch.zeros(3)),
         r"got Tensor"),
    Case("node-latent-none", "nodes", "VAE Decode without latent or latents_file", vae_decode(),
         r"needs a latent"),
    Case("node-latents-file-escape", "nodes", "VAE Decode `latents_file` outside the output folder",
         vae_decode(latents_file="../out/existing.mp4"), r"outside ComfyUI's output folder"),
    Case("node-latents-file-missing", "nodes", "VAE Decode `latents_file` that does not exist",
         vae_decode(latents_file="gone.latents.safetensors"), r"does not exist"),
    Case("node-latent-and-file", "nodes", "VAE Decode with both a latent and a file",
         vae_decode(latent={"samples": torch.zeros(1, 16, 1, 2, 2)}, latents_file="x.safetensors"), r"not both"),
    Case("node-dit-dtype", "nodes", "Model Loader `weight_dtype` 'fp4'",
         lambda ws: Wan22ModelLoader().load("ti2v-5B", "m.safetensors", "none", "fp4", "auto", False),
         r"Unknown weight_dtype 'fp4'; choose one of default"),
    Case("node-dit-task", "nodes", "Model Loader task 't2v-1B'",
         lambda ws: Wan22ModelLoader().load("t2v-1B", "m.safetensors", "none", "default", "auto", False),
         r"Unknown task 't2v-1B'"),
    Case("node-t5-dtype", "nodes", "T5 Loader `weight_dtype` 'int4'",
         lambda ws: Wan22T5Loader().load("t5.safetensors", "int4"), r"Unknown weight_dtype 'int4'"),
    Case("node-vae-dtype", "nodes", "VAE Loader `weight_dtype` 'fp8'",
         lambda ws: Wan22VAELoader().load("vae.safetensors", "fp8"), r"Unknown weight_dtype 'fp8'"),
    # CSV
    Case("csv-unclosed-quote", "CSV", "unclosed quote in row 3 of 4", csv_jobs('prompt\na\n"b\nc\nd\n'),
         r"row 3: a quoted cell starts in this row but its closing quote is missing"),
    Case("csv-huge-cell", "CSV", "a 1 MB cell", csv_jobs("prompt\n" + "x" * 1_000_000 + "\n"),
         r"row 2: a cell is longer than 131072 characters"),
    Case("csv-width-huge", "CSV", "width 10^9", csv_jobs("prompt,width\na,1000000000\n"),
         r"row 2, column 'width': 1000000000 is out of range; it must be between 1 and 4096"),
    Case("csv-frames-huge", "CSV", "frames 5001", csv_jobs("prompt,frames\na,5001\n"), r"between 1 and 1001"),
    Case("csv-steps-huge", "CSV", "steps 1000", csv_jobs("prompt,steps\na,1000\n"), r"between 1 and 200"),
    Case("csv-seed-huge", "CSV", "seed 2^64", csv_jobs(f"prompt,seed\na,{2**64}\n"),
         r"between 0 and 18446744073709551615"),
    Case("csv-node-seed-overflow", "CSV", "no seed column, node seed 2^64-1, two rows",
         csv_jobs("prompt\na\nb\n", JobDefaults(seed=2**64 - 1)), r"row 3, column 'seed': the job's seed"),
    Case("csv-underscore-number", "CSV", "width `1_024`", csv_jobs("prompt,width\na,1_024\n"),
         r"'1_024' is not a whole number"),
    Case("csv-not-utf8", "CSV", "Latin-1 bytes", csv_jobs(b"prompt\ncaf\xe9\n"), r"save it as UTF-8 CSV"),
    Case("csv-unknown-column", "CSV", "column `sede`", csv_jobs("prompt,sede\na,1\n"),
         r"row 1, column 'sede': unknown column"),
    Case("csv-outside", "CSV", "CSV name `../out/existing.mp4`",
         lambda ws: load_batch_jobs("", "../out/existing.mp4", ws / "input"), r"outside ComfyUI's input folder"),
    # styles
    Case("style-deep-json", "styles", "styles JSON nested 100000 deep", style_file("[" * 100_000 + "]" * 100_000),
         r"bad.json is nested too deeply"),
    Case("style-huge-file", "styles", "styles JSON over 4 MB", style_file(b" " * (MAX_STYLE_FILE_BYTES + 1) + b"[]"),
         r"style files are read up to 4194304 bytes"),
    Case("style-not-json", "styles", "styles file that is not JSON", style_file("{name: oops"),
         r"bad.json is not a readable UTF-8 JSON file"),
    Case("style-too-many-tags", "styles", "17 different `[Style: ...]` tags",
         lambda ws: style_prompt(STYLES, "cat " + " ".join(f"[Style: s{i}]" for i in range(17))),
         r"asks for 17 different styles; at most 16"),
    Case("style-unknown-tag", "styles", "`[Style: Cinemtic]` (typo)",
         lambda ws: style_prompt({"Cinematic": Style("Cinematic", "{prompt}")}, "a [Style: Cinemtic]"),
         r"Unknown prompt style 'Cinemtic'. Did you mean: Cinematic"),
    # weight files
    Case("weights-dit-nan", "weights", "DiT file with a NaN weight",
         dit_file(_poison("blocks.0.ffn.0.weight", float("nan"))),
         r"holds NaN/Inf values in 1 tensor\(s\): 'blocks.0.ffn.0.weight'"),
    Case("weights-dit-inf", "weights", "DiT file with an Inf weight", dit_file(_poison("head.head.bias", float("inf"))),
         r"NaN/Inf values in 1 tensor\(s\): 'head.head.bias'"),
    Case("weights-dit-int32", "weights", "DiT file with int32 weights", dit_file(_as_int("blocks.0.ffn.2.weight")),
         r"stores floating-point weights as integers: blocks.0.ffn.2.weight \(torch.int32\)"),
    Case("weights-dit-truncated", "weights", "truncated DiT file", _truncate("models/diffusion_models/cut.safetensors"),
         r"cut.safetensors cannot be read .* truncated"),
    Case("weights-vae-nan", "weights", "VAE file with a NaN weight", vae_file(_poison("conv2.weight", float("nan"))),
         r"vae.safetensors holds NaN/Inf values in 1 tensor\(s\): 'conv2.weight'"),
    Case("weights-vae-int32", "weights", "VAE file with int32 weights", vae_file(_as_int("conv2.weight")),
         r"stores floating-point weights as integers: conv2.weight"),
]


def test_the_table_has_forty_cases_in_every_area():
    assert len(CASES) >= 40
    assert len({case.id for case in CASES}) == len(CASES)
    assert {case.area for case in CASES} == {"CLI", "nodes", "CSV", "styles", "weights"}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_refused_with_a_message_and_nothing_written_or_lost(case, workspace, caplog):
    setup = getattr(case.run, "setup", None)
    if setup is not None:
        setup(workspace)
    before = snapshot(workspace)
    caplog.set_level(logging.WARNING, logger="comfyui-wan22")
    message = ""
    try:
        result = case.run(workspace)
    except (WanError, CLIFailed) as error:
        message = str(error)
    else:
        message = caplog.text  # style files: the bad file is skipped with a logged reason, the good one kept
        assert isinstance(result, dict) and list(result) == ["Good"], f"accepted: {result!r}"
    assert re.search(case.message, message, re.DOTALL), message
    assert "Traceback" not in message
    after = snapshot(workspace)
    written = {k: v for k, v in after.items() if before.get(k) != v and not k.startswith(("styles", "models",
                                                                                              "input"))}
    assert not written, f"written: {written}"
    assert all(after.get(k) == v for k, v in before.items()), "a file was lost or changed"
    assert (workspace / "out" / "existing.mp4").read_bytes() == EXISTING
    assert not (workspace / "demo").exists()  # refused before the demo checkpoint was built


def test_the_docs_table_lists_every_case():
    text = DOC.read_text(encoding="utf-8")
    missing = [case.id for case in CASES if f"`{case.id}`" not in text]
    assert not missing, f"docs/reliability.md lacks {missing}"
