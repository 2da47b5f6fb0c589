"""The CLI's LoRA flags: a LoRA on an unmerged checkpoint makes the video the merged checkpoint makes; bad specs fail
before any model loads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_cli import run_cli

from wan_core.demo import ensure_demo_checkpoint
from wan_core.io.state_dict import read_safetensors
from wan_core.io.writers import write_sharded
from wan_core.lora import LoraPatch
from wan_core.lora.selection import parse_lora_spec
from wan_core.video_io import load_tensor

LINEARS = ("self_attn.q", "cross_attn.v", "ffn.0")


def expert_state(folder: Path) -> dict[str, torch.Tensor]:
    return read_safetensors(sorted(folder.glob("diffusion_pytorch_model-*.safetensors")))


def write_lora(state: dict[str, torch.Tensor], path: Path, seed: int, rank: int = 2, alpha: float = 4.0) -> dict:
    """A lightx2v-layout LoRA on a few Linears of every block; returns official module -> (down, up, alpha/rank)."""
    gen = torch.Generator().manual_seed(seed)
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
    pairs, tensors = {}, {}
    for block in sorted(blocks):
        for name in LINEARS:
            module = f"blocks.{block}.{name}"
            out, inp = state[module + ".weight"].shape
            down, up = torch.randn(rank, inp, generator=gen) * 0.2, torch.randn(out, rank, generator=gen) * 0.2
            tensors[f"diffusion_model.{module}.lora_A.weight"] = down
            tensors[f"diffusion_model.{module}.lora_B.weight"] = up
            tensors[f"diffusion_model.{module}.alpha"] = torch.tensor(alpha)
            pairs[module] = (down, up, alpha / rank)
    save_file(tensors, str(path))
    return pairs


def merged(state: dict, pairs: dict, strength: float) -> dict:
    out = dict(state)
    for module, (down, up, scale) in pairs.items():
        weight = out[module + ".weight"]
        out[module + ".weight"] = (weight.float() + strength * scale * up @ down).to(weight.dtype)
    return out


def test_cli_lora_on_the_unmerged_checkpoint_equals_the_merged_checkpoint(capsys, tmp_path, monkeypatch):
    demo = ensure_demo_checkpoint("t2v-A14B", tmp_path / "demo")
    merged_dir = tmp_path / "merged"
    shutil.copytree(demo, merged_dir)
    specs = []
    for expert, seed, strength in (("high_noise_model", 1, 0.8), ("low_noise_model", 2, 1.0)):
        state = expert_state(demo / expert)
        pairs = write_lora(state, tmp_path / f"{expert}.safetensors", seed)
        for old in (merged_dir / expert).glob("diffusion_pytorch_model*"):
            old.unlink()
        write_sharded(merged(state, pairs, strength), merged_dir / expert)
        specs.append(f"{tmp_path / f'{expert}.safetensors'}:{strength}")
    # Lightning settings: 4 euler steps at shift 5, 2 per expert, CFG 1
    common = ["--device", "cpu", "--size", "64*48", "--frame_num", "5", "--sample_steps", "4", "--base_seed", "3",
              "--sample_solver", "euler", "--sample_shift", "5.0", "--sample_guide_scale", "1.0",
              "--boundary_step", "2", "--prompt", "a fox"]
    videos = {}
    for name, extra in (("lora", ["--ckpt_dir", str(demo), "--lora_high", specs[0], "--lora_low", specs[1]]),
                        ("merged", ["--ckpt_dir", str(merged_dir)]),
                        ("base", ["--ckpt_dir", str(demo)])):
        out = tmp_path / name
        code, _, err = run_cli(capsys, *common, *extra, "--save_file", str(out / "v.mp4"),
                               "--save_tensor", str(out / "v.safetensors"))
        assert code == 0, err
        videos[name] = load_tensor(out / "v.safetensors")
    torch.testing.assert_close(videos["lora"], videos["merged"], atol=2e-5, rtol=0)
    assert (videos["lora"] - videos["base"]).abs().max() > 1e-2


def test_lora_specs():
    assert parse_lora_spec("a.safetensors") == LoraPatch("a.safetensors", 1.0)
    assert parse_lora_spec("loras/a.safetensors:0.5") == LoraPatch("loras/a.safetensors", 0.5)
    assert parse_lora_spec(r"C:\loras\a.safetensors") == LoraPatch(r"C:\loras\a.safetensors", 1.0)
    assert parse_lora_spec(r"C:\loras\a.safetensors:-1") == LoraPatch(r"C:\loras\a.safetensors", -1.0)


@pytest.mark.parametrize(("argv", "expected"), [
    (["--lora_high", "no/such.safetensors"], "no/such.safetensors does not exist"),
    (["--task", "ti2v-5B", "--size", "1280*704", "--lora_low", "x.safetensors"], "ti2v-5B has one model"),
    (["--task", "ti2v-5B", "--size", "1280*704", "--boundary_step", "2"], "two-expert tasks"),
])  # fmt: skip
def test_bad_lora_flags_exit_2_before_anything_loads(capsys, tmp_path, monkeypatch, argv, expected):
    monkeypatch.setenv("WAN22_DEMO_DIR", str(tmp_path / "demo"))
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "--demo", *argv)
    assert code == 2 and expected in err, err
    assert not (tmp_path / "demo").exists()
