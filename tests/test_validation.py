"""Task configs and request validation: every error names the nearest valid value."""

from __future__ import annotations

import hashlib

import pytest

from wan_core.errors import InputError
from wan_core.pipeline.tasks import DEFAULT_NEGATIVE_PROMPT, TASKS, get_task, parse_size
from wan_core.pipeline.validation import nearest_frame_num, nearest_multiple, validate_request
from wan_core.sampling import SOLVERS


def ok(task="t2v-A14B", **kw):
    args = {"width": 1280, "height": 720, "frame_num": 81, "sample_steps": 40, "sample_solver": "unipc"}
    args.update(kw)
    validate_request(task, **args)


def fails(match, task="t2v-A14B", **kw):
    with pytest.raises(InputError, match=match):
        ok(task, **kw)


def test_official_task_values():
    t2v, i2v, ti2v = TASKS["t2v-A14B"], TASKS["i2v-A14B"], TASKS["ti2v-5B"]
    assert (t2v.boundary, t2v.sample_shift, t2v.sample_steps, t2v.guide_scale) == (0.875, 12.0, 40, (3.0, 4.0))
    assert (i2v.boundary, i2v.sample_shift, i2v.sample_steps, i2v.guide_scale) == (0.9, 5.0, 40, (3.5, 3.5))
    assert (ti2v.boundary, ti2v.sample_shift, ti2v.sample_steps, ti2v.guide_scale) == (None, 5.0, 50, (5.0, 5.0))
    assert (t2v.fps, t2v.frame_num, ti2v.fps, ti2v.frame_num) == (16, 81, 24, 121)
    assert t2v.sizes == ("1280*720", "720*1280", "832*480", "480*832") == i2v.sizes
    assert ti2v.sizes == ("1280*704", "704*1280")
    assert (t2v.vae, t2v.z_dim, t2v.vae_stride, t2v.size_multiple) == ("wan2.1", 16, (4, 8, 8), 16)
    assert (ti2v.vae, ti2v.z_dim, ti2v.vae_stride, ti2v.size_multiple) == ("wan2.2", 48, (4, 16, 16), 32)
    assert {t.model_type for t in TASKS.values()} == {"t2v", "i2v", "ti2v"}
    assert t2v.latent_shape(1280, 720, 81) == (16, 21, 90, 160)
    assert ti2v.latent_shape(1280, 704, 121) == (48, 31, 44, 80)
    assert t2v.boundary_timestep == 875.0 and ti2v.boundary_timestep is None


def test_default_negative_prompt_is_the_official_bytes():
    for task in TASKS.values():
        assert task.negative_prompt == DEFAULT_NEGATIVE_PROMPT
    data = DEFAULT_NEGATIVE_PROMPT.encode("utf-8")
    assert len(data) == 403
    assert hashlib.sha256(data).hexdigest() == "ce96e0324e4b54ce4b6e867f669ca520952e1a34cc116543516b1897f0d3c47e"
    assert DEFAULT_NEGATIVE_PROMPT.startswith("色调艳丽，过曝") and DEFAULT_NEGATIVE_PROMPT.endswith("倒着走")


def test_get_task():
    assert get_task("ti2v-5B") is TASKS["ti2v-5B"]
    assert get_task(TASKS["i2v-A14B"]) is TASKS["i2v-A14B"]
    with pytest.raises(InputError, match="unknown task 't2v-14B': valid tasks are t2v-A14B, i2v-A14B, ti2v-5B"):
        get_task("t2v-14B")
    with pytest.raises(InputError, match="unknown task"):
        validate_request("s2v-14B", width=1280, height=720, frame_num=81, sample_steps=40, sample_solver="unipc")


def test_parse_size():
    assert parse_size("1280*720") == (1280, 720)
    assert parse_size("832x480") == (832, 480)
    with pytest.raises(InputError, match="is not 'W\\*H'"):
        parse_size("720p")


def test_valid_requests():
    for task in TASKS.values():
        for size in task.sizes:
            w, h = parse_size(size)
            for solver in SOLVERS:
                validate_request(
                    task, width=w, height=h, frame_num=task.frame_num, sample_steps=task.sample_steps,
                    sample_solver=solver, sample_shift=task.sample_shift,
                )  # fmt: skip
    ok(width=16, height=16, frame_num=1, sample_steps=1)
    ok("ti2v-5B", width=32, height=64, frame_num=5)


def test_size_errors():
    fails(r"^height 721 is not a multiple of 16: use 720$", height=721)
    fails(r"^width 1290 is not a multiple of 16: use 1296$", width=1290)
    fails(r"^width 1000 is not a multiple of 32 for ti2v-5B: use 992$", "ti2v-5B", width=1000, height=704)
    fails(r"^height 720 is not a multiple of 32 for ti2v-5B: use 736$", "ti2v-5B", width=1280, height=720)
    fails(r"^width 8 is too small: use at least 16$", width=8)
    fails(r"^height 0 is too small: use at least 16$", height=0)
    fails(r"^height 16 is too small: use at least 32$", "ti2v-5B", width=64, height=16)
    fails(r"^width 720.5 is not a whole number: use 720$", width=720.5)
    fails(r"^height must be a whole number, got '720'$", height="720")


def test_frame_num_errors():
    fails(r"^frame_num 80 is not 4k\+1: use 81$", frame_num=80)
    fails(r"^frame_num 82 is not 4k\+1: use 81$", frame_num=82)
    fails(r"^frame_num 0 is not 4k\+1: use 1$", frame_num=0)
    fails(r"^frame_num -7 is not 4k\+1: use 1$", frame_num=-7)
    fails(r"^frame_num 120 is not 4k\+1: use 121$", "ti2v-5B", width=1280, height=704, frame_num=120)
    fails(r"^frame_num 81.0 is not a whole number: use 81$", frame_num=81.0)
    assert [nearest_frame_num(v) for v in (1, 2, 3, 4, 5, 79, 80, 83)] == [1, 1, 5, 5, 5, 81, 81, 85]
    assert [nearest_multiple(v, 16) for v in (1, 8, 23, 24, 721)] == [16, 16, 16, 32, 720]


def test_steps_errors():
    fails(r"^sample_steps 0 must be at least 1: use 1 \(the t2v-A14B default is 40\)$", sample_steps=0)
    fails(r"^sample_steps -3 must be at least 1: use 1", sample_steps=-3)
    fails(r"^sample_steps 2.5 is not a whole number: use 2$", sample_steps=2.5)
    fails(r"^sample_steps must be a whole number, got None$", sample_steps=None)
    fails(r"^sample_steps must be a whole number, got True$", sample_steps=True)


def test_solver_errors():
    fails(r"^unknown sample_solver 'dpm': use 'dpm\+\+' \(valid: unipc, dpm\+\+, euler\)$", sample_solver="dpm")
    fails(r"^unknown sample_solver 'uni_pc': use 'unipc'", sample_solver="uni_pc")
    fails(r"^unknown sample_solver 'Euler': use 'euler'", sample_solver="Euler")
    fails(r"^unknown sample_solver 'zzz': use one of unipc, dpm\+\+, euler", sample_solver="zzz")
    assert SOLVERS == ("unipc", "dpm++", "euler")


def test_shift_errors():
    fails(r"^sample_shift 0 must be a finite number above 0: use 12.0 \(the t2v-A14B default\)$", sample_shift=0)
    fails(r"^sample_shift -1.0 must be a finite number above 0: use 5.0 \(the i2v-A14B default\)$", "i2v-A14B",
          sample_shift=-1.0)  # fmt: skip
    fails(r"^sample_shift 'x' must be a finite number above 0", sample_shift="x")
    ok(sample_shift=0.5)


def test_image_errors():
    fails(r"^task i2v-A14B needs an input image", "i2v-A14B", has_image=False)
    fails(r"^task t2v-A14B takes no input image: use i2v-A14B or ti2v-5B", has_image=True)
    ok("i2v-A14B", has_image=True)
    ok("ti2v-5B", width=1280, height=704, frame_num=121, has_image=True)
    ok("ti2v-5B", width=1280, height=704, frame_num=121, has_image=False)
    ok(has_image=False)


def test_input_error_is_a_value_error():
    with pytest.raises(ValueError):
        ok(height=721)
