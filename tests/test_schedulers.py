"""Scheduler parity: our UniPC / DPM++ / Euler against the official schedules and diffusers' updates.

Grids. The official code builds two grids (wan/utils/fm_solvers_unipc.py, wan/utils/fm_solvers.py):
  UniPC: linspace(sigma_max, 0, n + 1)[:-1] with sigma_max = float32(0.999), shifted;
  DPM++: linspace(1, 0, n + 1)[:n], shifted (first timestep 1000).
diffusers' flow-sigma defaults differ from both (UniPC: linspace(1, 1/1000, n + 1)[:-1]; DPM: the UniPC grid built in
float64), so the grids are checked against a faithful re-computation of the official formulas below
(`official_*`), and diffusers is only used for the update arithmetic, fed the official grid: UniPC through
`set_timesteps(sigmas=<unshifted official grid>)` (it shifts them with `flow_shift` exactly like the official code),
DPM++ by assigning the official sigmas/timesteps after `set_timesteps` (its `set_timesteps` takes no sigmas), Euler
through `set_timesteps(sigmas=<shifted grid>)` with `shift=1`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wan_core.sampling import SOLVER_CLASSES, make_schedule, make_solver
from wan_core.sampling.schedule import shift_sigmas, unshifted_sigmas

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 notes from inside diffusers

STEPS = [1, 2, 3, 4, 7, 10, 20, 40, 50]
SHIFTS = [1.0, 3.0, 5.0, 8.0, 12.0]
TOLERANCE = 1e-5


# -- faithful re-computation of the official formulas (not our code) ----------------------------------------------


def official_unipc_grid(steps: int, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1).set_timesteps(steps, shift=shift)."""
    alphas = np.linspace(1, 1 / 1000, 1000)[::-1].copy()
    train = torch.from_numpy(1.0 - alphas).to(dtype=torch.float32)
    train = 1 * train / (1 + (1 - 1) * train)
    sigma_max, sigma_min = train[0].item(), train[-1].item()
    sigmas = np.linspace(sigma_max, sigma_min, steps + 1).copy()[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    timesteps = sigmas * 1000
    sigmas = np.concatenate([sigmas, [0]]).astype(np.float32)
    return torch.from_numpy(sigmas), torch.from_numpy(timesteps).to(dtype=torch.int64)


def official_dpm_grid(steps: int, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """get_sampling_sigmas(steps, shift) through retrieve_timesteps(FlowDPMSolverMultistepScheduler(shift=1), ...)."""
    sigma = np.linspace(1, 0, steps + 1)[:steps]
    sigma = shift * sigma / (1 + (shift - 1) * sigma)
    sigma = 1 * sigma / (1 + (1 - 1) * sigma)  # set_timesteps(sigmas=...) applies the config shift (1)
    timesteps = sigma * 1000
    sigmas = np.concatenate([sigma, [0]]).astype(np.float32)
    return torch.from_numpy(sigmas), torch.from_numpy(timesteps).to(dtype=torch.int64)


# -- helpers ------------------------------------------------------------------------------------------------------


def model_outputs(steps: int, seed: int = 0):
    """A fixed sequence of 'model outputs' (flows) that also depends on the current sample, like a real model."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 3, 5, 6, generator=gen)
    noise = [torch.randn(x.shape, generator=gen) for _ in range(steps)]
    return x, (lambda i, sample: noise[i] + 0.25 * sample - 0.1 * sample.pow(2).tanh())


def run_pair(ours, ref, steps: int) -> float:
    """Step ours and the diffusers scheduler side by side; return the largest difference over all steps."""
    x0, flow_fn = model_outputs(steps)
    x, xr = x0.clone(), x0.clone()
    worst = 0.0
    for i in range(steps):
        flow = flow_fn(i, x)
        flow_ref = flow_fn(i, xr)
        x = ours.step(flow, x)
        xr = ref.step(flow_ref, ref.timesteps[i], xr, return_dict=False)[0]
        assert torch.isfinite(x).all()
        worst = max(worst, (x - xr).abs().max().item())
    return worst


# What the diffusers UniPC and DPM++ schedulers need to act as the official flow-matching, order-2 solvers.
_FLOW_MULTISTEP = dict(
    num_train_timesteps=1000,
    solver_order=2,
    prediction_type="flow_prediction",
    use_flow_sigmas=True,
    lower_order_final=True,
    final_sigmas_type="zero",
)


def diffusers_unipc(steps: int, shift: float):
    sched = diffusers.UniPCMultistepScheduler(**_FLOW_MULTISTEP, flow_shift=shift, predict_x0=True, solver_type="bh2")
    sched.set_timesteps(sigmas=unshifted_sigmas("unipc", steps))
    return sched


def diffusers_dpm(steps: int, shift: float):
    sched = diffusers.DPMSolverMultistepScheduler(
        **_FLOW_MULTISTEP, flow_shift=shift, algorithm_type="dpmsolver++", solver_type="midpoint"
    )
    sched.set_timesteps(steps)
    sigmas, timesteps = official_dpm_grid(steps, shift)
    sched.sigmas, sched.timesteps = sigmas, timesteps  # the official grid (see the module docstring)
    return sched


def diffusers_euler(steps: int, shift: float):
    sched = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    sched.set_timesteps(sigmas=official_unipc_grid(steps, shift)[0][:-1].numpy())
    return sched


# -- grids --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("shift", SHIFTS)
def test_grids_equal_the_official_formulas(steps, shift):
    for solver, official in (
        ("unipc", official_unipc_grid),
        ("euler", official_unipc_grid),
        ("dpm++", official_dpm_grid),
    ):
        ours = make_solver(solver, steps, shift)
        sigmas, timesteps = official(steps, shift)
        assert ours.sigmas.dtype == torch.float32 and ours.timesteps.dtype == torch.int64
        assert torch.equal(ours.timesteps, timesteps), solver
        assert torch.equal(ours.sigmas, sigmas), solver
        assert ours.steps == steps and ours.sigmas[-1] == 0


def test_known_official_timesteps():
    # t2v-A14B defaults: 40 UniPC steps, shift 12.
    t2v = make_schedule("unipc", 40, 12.0).timesteps
    assert t2v[0].item() == 999 and t2v[-1].item() < 300
    assert t2v[:4].tolist() == official_unipc_grid(40, 12.0)[1][:4].tolist()
    # DPM++ starts at sigma 1 exactly (timestep 1000); UniPC at 0.999 before the shift.
    assert make_schedule("dpm", 50, 5.0).timesteps[0].item() == 1000
    assert make_schedule("dpm", 50, 5.0).sigmas[0].item() == 1.0
    assert make_schedule("unipc", 50, 1.0).timesteps[0].item() == 999
    assert make_schedule("unipc", 1, 5.0).timesteps.tolist() == [999]


def test_shift_formula():
    s = np.array([1.0, 0.5, 0.25, 0.0])
    assert np.allclose(shift_sigmas(s, 3.0), 3 * s / (1 + 2 * s))
    assert np.array_equal(shift_sigmas(s, 1.0), s)


def test_diffusers_default_grids_differ_from_the_official_ones():
    """Why the parity tests feed diffusers the official grid instead of using its own."""
    uni = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    uni.set_timesteps(10)
    assert not torch.equal(uni.sigmas, official_unipc_grid(10, 5.0)[0])
    dpm = diffusers.DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    dpm.set_timesteps(10)
    assert dpm.timesteps[0].item() != 1000 and official_dpm_grid(10, 5.0)[1][0].item() == 1000


@pytest.mark.parametrize("steps", [1, 2, 10, 40])
@pytest.mark.parametrize("shift", [1.0, 5.0, 12.0])
def test_diffusers_unipc_builds_the_official_unipc_grid(steps, shift):
    ref = diffusers_unipc(steps, shift)
    sigmas, timesteps = official_unipc_grid(steps, shift)
    assert torch.equal(ref.timesteps, timesteps)
    assert torch.equal(ref.sigmas, sigmas)


# -- per-step updates ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("shift", SHIFTS)
def test_unipc_matches_diffusers(steps, shift):
    assert run_pair(make_solver("unipc", steps, shift), diffusers_unipc(steps, shift), steps) < TOLERANCE


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("shift", SHIFTS)
def test_dpm_matches_diffusers(steps, shift):
    assert run_pair(make_solver("dpm++", steps, shift), diffusers_dpm(steps, shift), steps) < TOLERANCE


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("shift", SHIFTS)
def test_euler_matches_diffusers(steps, shift):
    assert run_pair(make_solver("euler", steps, shift), diffusers_euler(steps, shift), steps) < TOLERANCE


def test_euler_grid_matches_diffusers_shift():
    """diffusers' FlowMatchEuler shifting the unshifted official grid itself (in float32) agrees to float32 rounding."""
    for steps, shift in [(10, 5.0), (40, 12.0)]:
        ref = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
        ref.set_timesteps(sigmas=unshifted_sigmas("unipc", steps))
        assert (ref.sigmas - make_solver("euler", steps, shift).sigmas).abs().max() < 1e-6


def test_final_step_returns_the_x0_estimate():
    """All three end at sigma 0: the last update returns x - sigma * flow of the last step."""
    for name in SOLVER_CLASSES:
        solver = make_solver(name, 5, 5.0)
        x = torch.randn(3, 4)
        for _ in range(4):
            x = solver.step(torch.randn(3, 4), x)
        flow = torch.randn(3, 4)
        expected = solver.predict_x0(flow, x)
        assert torch.allclose(solver.step(flow, x), expected, atol=1e-6), name


def test_solver_errors():
    with pytest.raises(ValueError, match="unknown sample_solver 'ddim'"):
        make_solver("ddim", 10, 5.0)
    with pytest.raises(ValueError, match="at least 1"):
        make_solver("unipc", 0, 5.0)
    solver = make_solver("euler", 1, 5.0)
    solver.step(torch.zeros(2), torch.zeros(2))
    with pytest.raises(RuntimeError, match="already run all 1 steps"):
        solver.step(torch.zeros(2), torch.zeros(2))
