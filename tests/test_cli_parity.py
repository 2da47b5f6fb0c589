"""The CLI against the official Wan2.2 `generate.py` (github Wan-Video/Wan2.2): its flags and defaults, the command
lines of its README, its default output name and its offload default. Official values are data here, with the line of
generate.py or the config file they come from."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
from PIL import Image

from wan_core.generate import build_parser, main, resolve_request
from wan_core.pipeline.tasks import TASKS

# generate.py `_parse_args` (lines 109-223): every flag of the t2v / i2v / ti2v tasks and its default. --size is left
# out: its official default is 1280*720 for every task (line 118), which `_validate_args` then refuses for ti2v-5B
# (line 100); ours is the task's first size (docs/cli.md).
OFFICIAL_DEFAULTS = {
    "task": "t2v-A14B", "frame_num": None, "ckpt_dir": None, "offload_model": None, "ulysses_size": 1,
    "t5_fsdp": False, "t5_cpu": False, "dit_fsdp": False, "save_file": None, "prompt": None,
    "use_prompt_extend": False, "prompt_extend_method": "local_qwen", "prompt_extend_model": None,
    "prompt_extend_target_lang": "zh", "base_seed": -1, "image": None, "sample_solver": "unipc",
    "sample_steps": None, "sample_shift": None, "sample_guide_scale": None, "convert_model_dtype": False,
}  # fmt: skip

# wan/configs/wan_t2v_A14B.py, wan_i2v_A14B.py, wan_ti2v_5B.py (inference section), shared_config.py (fps 16,
# frame_num 81) and wan/configs/__init__.py SUPPORTED_SIZES.
OFFICIAL_CONFIGS = {
    "t2v-A14B": dict(sample_shift=12.0, sample_steps=40, boundary=0.875, guide_scale=(3.0, 4.0), fps=16,
                     frame_num=81, sizes={"720*1280", "1280*720", "480*832", "832*480"}),
    "i2v-A14B": dict(sample_shift=5.0, sample_steps=40, boundary=0.900, guide_scale=(3.5, 3.5), fps=16,
                     frame_num=81, sizes={"720*1280", "1280*720", "480*832", "832*480"}),
    "ti2v-5B": dict(sample_shift=5.0, sample_steps=50, boundary=None, guide_scale=(5.0, 5.0), fps=24,
                    frame_num=121, sizes={"704*1280", "1280*704"}),
}  # fmt: skip

PROMPT = "Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely on a spotlighted stage."
BEACH = "Summer beach vacation style, a white cat wearing sunglasses sits on a surfboard."

# The one-GPU command lines of the official README (lines 146, 197, 228, 240), prompts shortened; IMAGE and CKPT are
# filled in by the test.
README_COMMANDS = {
    "t2v": f'--task t2v-A14B --size 1280*720 --ckpt_dir CKPT --offload_model True --convert_model_dtype '
           f'--prompt "{PROMPT}"',
    "i2v": f'--task i2v-A14B --size 1280*720 --ckpt_dir CKPT --offload_model True --convert_model_dtype '
           f'--image IMAGE --prompt "{BEACH}"',
    "ti2v": f'--task ti2v-5B --size 1280*704 --ckpt_dir CKPT --offload_model True --convert_model_dtype --t5_cpu '
            f'--prompt "{PROMPT}"',
    "ti2v-image": f'--task ti2v-5B --size 1280*704 --ckpt_dir CKPT --offload_model True --convert_model_dtype '
                  f'--t5_cpu --image IMAGE --prompt "{BEACH}"',
}  # fmt: skip
# Its torchrun and prompt-extension command lines (lines 160, 174, 186, 208, 214, 251), for parsing.
README_TORCHRUN_ARGS = [
    "--task t2v-A14B --size 1280*720 --ckpt_dir CKPT --dit_fsdp --t5_fsdp --ulysses_size 8 --prompt P",
    "--task t2v-A14B --size 1280*720 --ckpt_dir CKPT --dit_fsdp --t5_fsdp --ulysses_size 8 --prompt P "
    "--use_prompt_extend --prompt_extend_method 'dashscope' --prompt_extend_target_lang 'zh'",
    "--task t2v-A14B --size 1280*720 --ckpt_dir CKPT --dit_fsdp --t5_fsdp --ulysses_size 8 --prompt P "
    "--use_prompt_extend --prompt_extend_method 'local_qwen' --prompt_extend_target_lang 'zh'",
    "--task i2v-A14B --size 1280*720 --ckpt_dir CKPT --image IMAGE --dit_fsdp --t5_fsdp --ulysses_size 8 --prompt P",
    "--task i2v-A14B --size 1280*720 --ckpt_dir CKPT --prompt '' --image IMAGE --dit_fsdp --t5_fsdp --ulysses_size 8 "
    "--use_prompt_extend --prompt_extend_method 'dashscope'",
    "--task ti2v-5B --size 1280*704 --ckpt_dir CKPT --dit_fsdp --t5_fsdp --ulysses_size 8 --image IMAGE --prompt P",
]


def official_name(task: str, size: str, ulysses_size: int, prompt: str) -> str:
    """generate.py lines 544-548 (with `x` for `*`, as there on Windows), without the time stamp."""
    formatted_prompt = prompt.replace(" ", "_").replace("/", "_")[:50]
    return f"{task}_{size.replace('*', 'x')}_{ulysses_size}_{formatted_prompt}_"


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WAN22_DEMO_DIR", str(tmp_path / "demo"))
    Image.new("RGB", (1280, 720), (200, 120, 40)).save(tmp_path / "i2v_input.JPG")
    return tmp_path


def argv(command: str, folder: Path) -> list[str]:
    return shlex.split(command.replace("CKPT", str(folder / "ckpt")).replace("IMAGE", str(folder / "i2v_input.JPG")))


def test_every_official_flag_parses_with_the_official_default():
    args = vars(build_parser().parse_args([]))
    assert {name: args[name] for name in OFFICIAL_DEFAULTS} == OFFICIAL_DEFAULTS


@pytest.mark.parametrize("task", list(OFFICIAL_CONFIGS))
def test_task_defaults_are_the_official_configs(task):
    config, official = TASKS[task], OFFICIAL_CONFIGS[task]
    ours = {key: getattr(config, key) for key in official} | {"sizes": set(config.sizes)}
    assert ours == official


@pytest.mark.parametrize("name", list(README_COMMANDS))
def test_readme_command_lines_resolve_to_the_official_settings(in_tmp, name):
    args = build_parser().parse_args(argv(README_COMMANDS[name], in_tmp))
    request = resolve_request(args)
    sampling, official = request.sampling, OFFICIAL_CONFIGS[args.task]
    # The 1280x720 image: A14B keeps 1280*720; ti2v-5B 1280*704, or with the image what the official
    # `best_output_size(1280, 720, 32, 32, 1280 * 704)` (wan/utils/utils.py) gives, 1248x704.
    width, height = {"ti2v": (1280, 704), "ti2v-image": (1248, 704)}.get(name, (1280, 720))
    assert (sampling.width, sampling.height, sampling.frame_num) == (width, height, official["frame_num"])
    expected = (official["sample_steps"], official["sample_shift"], official["guide_scale"])
    assert (sampling.steps, sampling.shift, sampling.guide_scale) == expected
    assert sampling.solver == "unipc" and 0 <= sampling.seed <= 2**63 - 1  # base_seed -1: random.randint(0, maxsize)
    assert request.runtime.offload is True and args.convert_model_dtype is True
    assert (request.runtime.text_device == torch.device("cpu")) == args.t5_cpu
    assert (request.image is not None) == ("--image" in README_COMMANDS[name])
    assert request.prompt == args.prompt


@pytest.mark.parametrize("command", README_TORCHRUN_ARGS)
def test_readme_torchrun_command_lines_parse(in_tmp, command):
    build_parser().parse_args(argv(command, in_tmp))  # argparse exits on an unknown flag or value


def test_prompt_extension_is_refused_with_a_message_not_an_unknown_flag(capsys, in_tmp):
    code = main(["--demo", "--device", "cpu", "--use_prompt_extend", "--prompt_extend_method", "dashscope",
                 "--prompt_extend_target_lang", "en", "--prompt_extend_model", "qwen-plus"])
    err = capsys.readouterr().err
    assert code == 2 and "--use_prompt_extend" in err and "--prompt" in err and "unrecognized" not in err
    assert not (in_tmp / "demo").exists()


def test_default_save_file_is_the_official_name(in_tmp):
    prompt = "A cat, on a/b mat: it's 5 o'clock"
    args = build_parser().parse_args(["--demo", "--device", "cpu", "--size", "64*48", "--prompt", prompt])
    name = resolve_request(args).save_file.name
    assert name.startswith("demo_" + official_name("t2v-A14B", "64*48", 1, prompt).replace(":", "_")), name
    assert re.fullmatch(r".*_\d{8}_\d{6}\.mp4", name)

    args = build_parser().parse_args(argv(README_COMMANDS["t2v"], in_tmp))
    assert resolve_request(args).save_file.name.startswith(official_name("t2v-A14B", "1280*720", 1, PROMPT))


def test_default_save_file_names_the_size_asked_for_and_the_ulysses_size(in_tmp):
    # i2v: the official name carries --size (the area), not the size the image's aspect ratio gave.
    Image.new("RGB", (200, 120)).save(in_tmp / "wide.png")
    args = build_parser().parse_args(["--demo", "--device", "cpu", "--task", "i2v-A14B", "--size", "128*96",
                                      "--image", str(in_tmp / "wide.png"), "--prompt", "x", "--ulysses_size", "2"])
    request = resolve_request(args)
    assert (request.sampling.width, request.sampling.height) == (128, 80)
    assert request.save_file.name.startswith("demo_i2v-A14B_128x96_2_x_")


def test_a_prompt_line_break_or_windows_reserved_character_never_reaches_the_name(in_tmp):
    args = build_parser().parse_args(["--demo", "--device", "cpu", "--prompt", 'a\nb\t"c"<d>|e?f*g\\h'])
    assert resolve_request(args).save_file.name.startswith("demo_t2v-A14B_128x96_1_a_b__c__d__e_f_g_h_")


def test_offload_model_defaults_to_off_under_torchrun(in_tmp):
    """generate.py line 323: `offload_model = False if world_size > 1 else True` (one process: on a GPU, here any
    device but the CPU; the meta device stands in for a GPU)."""
    def offload(*flags: str, distributed: bool) -> bool:
        args = build_parser().parse_args(["--demo", "--device", "meta", *flags])
        return resolve_request(args, distributed=distributed).runtime.offload

    assert offload(distributed=False) is True
    assert offload(distributed=True) is False
    assert offload("--offload_model", "True", distributed=True) is True
    assert offload("--offload_model", "false", distributed=False) is False


@pytest.mark.parametrize("flag", ["--sample_guide_scale", "--cache_threshold"])
def test_a_low_high_pair_for_the_one_model_of_ti2v_is_refused(capsys, in_tmp, flag):
    extra = ["--cache", "easycache"] if flag == "--cache_threshold" else []
    code = main(["--demo", "--device", "cpu", "--task", "ti2v-5B", flag, "0.3,0.4", *extra])
    err = capsys.readouterr().err
    assert code == 2 and f"{flag} 0.3,0.4: ti2v-5B has one model" in err and f"{flag} 0.3 " in err, err
    args = build_parser().parse_args(["--demo", "--device", "cpu", "--task", "ti2v-5B", flag, "0.3", *extra])
    resolve_request(args)  # one number is fine
    args = build_parser().parse_args(["--demo", "--device", "cpu", flag, "0.3,0.4", *extra])
    resolve_request(args)  # and a pair for the two experts of t2v-A14B


@pytest.mark.parametrize(("save_file", "expected"), [
    ("clip", "clip has no file extension; ffmpeg picks the container from the extension: use clip.mp4"),
    ("out/clip.webm", "is a .webm file, which cannot hold H.264"),
    ("clip.GIF", "use clip.mp4"),
])  # fmt: skip
def test_a_save_file_ffmpeg_cannot_write_h264_into_is_refused_before_loading(capsys, in_tmp, save_file, expected):
    code = main(["--demo", "--device", "cpu", "--save_file", save_file])
    err = capsys.readouterr().err
    assert code == 2 and expected in err, err
    assert not (in_tmp / "demo").exists()  # nothing was built or sampled


@pytest.mark.parametrize("save_file", ["clip.mp4", "clip.MOV", "clip.mkv", "clip.avi"])
def test_other_h264_containers_are_accepted(in_tmp, save_file):
    resolve_request(build_parser().parse_args(["--demo", "--device", "cpu", "--save_file", save_file]))
