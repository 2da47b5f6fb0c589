"""Flow-matching samplers for Wan2.2: UniPC (the official default), DPM++ 2M and Euler, on the official schedules."""

from __future__ import annotations

from .base import FlowSolver
from .dpm import DPMSolver
from .euler import EulerSolver
from .schedule import NUM_TRAIN_TIMESTEPS, Schedule, make_schedule, shift_sigmas
from .unipc import UniPCSolver

SOLVER_CLASSES: dict[str, type[FlowSolver]] = {"unipc": UniPCSolver, "dpm++": DPMSolver, "euler": EulerSolver}
SOLVERS = tuple(SOLVER_CLASSES)  # the names users pick from (CLI, nodes, CSV)


def make_solver(name: str, steps: int, shift: float) -> FlowSolver:
    """A fresh solver for one sampling run (``name`` one of ``unipc``, ``dpm++``, ``euler``)."""
    try:
        cls = SOLVER_CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown sample_solver {name!r}: use one of {', '.join(SOLVER_CLASSES)}") from None
    return cls(steps, shift)


__all__ = [
    "NUM_TRAIN_TIMESTEPS",
    "SOLVERS",
    "SOLVER_CLASSES",
    "DPMSolver",
    "EulerSolver",
    "FlowSolver",
    "Schedule",
    "UniPCSolver",
    "make_schedule",
    "make_solver",
    "shift_sigmas",
]
