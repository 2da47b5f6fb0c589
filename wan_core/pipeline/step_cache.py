"""Step caching: skip whole DiT forwards whose output is predictable from the last computed one.

Both methods reuse the end-to-end residual of the last computed step, ``model(x) - x`` per CFG stream (cond,
uncond), on a skipped step: ``flow ~= x_t + residual``. They differ only in how they decide to skip:

- ``easycache`` (EasyCache, arXiv:2507.02860, H-EmbodVis/EasyCache ``EasyCache4Wan2.2/easycache_generate.py``): no
  calibration. After two computed steps it knows the transformation rate ``k = |out_a - out_b| / |x_a - x_b|`` (mean
  absolute values); on each later step it adds the predicted relative output change
  ``k * |x_t - x_{t-1}| / |out_last|`` to an accumulated error and skips while that stays under the threshold.
- ``magcache`` (MagCache, arXiv:2506.09045): the published per-step magnitude ratios of consecutive residuals of
  Wan2.2 T2V-A14B (below); the accumulated error of consecutive skips ``sum |1 - prod ratios|`` must stay under the
  threshold, and at most ``MAG_MAX_SKIPS`` steps in a row are skipped.

The decision is made once per step for both CFG streams (so cond and uncond always come from the same step; each
stream keeps its own residual). The first steps of the run (``WARMUP``), the first two steps of each expert (its
residuals are not the other expert's: a reset at the switch) and the last step are always computed. A threshold of
0 never skips, and a computed step returns the model's output untouched, so threshold 0 is bit-identical to no
cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import InputError

OFF, EASYCACHE, MAGCACHE = "off", "easycache", "magcache"
METHODS = (OFF, EASYCACHE, MAGCACHE)
# Thresholds of the papers' Wan2.2 commands: EasyCache `--thresh 0.05`; MagCache T2V-A14B `--magcache_thresh 0.06`.
DEFAULT_THRESHOLD = {EASYCACHE: 0.05, MAGCACHE: 0.06}
WARMUP = 0.2  # share of the run's first steps always computed (MagCache's retention ratio, EasyCache's ret_steps)
MAG_MAX_SKIPS = 2  # MagCache's K

# Wan2.2 T2V-A14B magnitude ratios for 40 steps, [cond, uncond] per step (the first step has none: 1.0). Copied from
# Zehong-Ma/ComfyUI-MagCache, nodes.py, SUPPORTED_MODELS_MAG_RATIOS["wan2.2_t2v_14B"] (the MagCache authors' ComfyUI
# port; github.com/Zehong-Ma/MagCache MagCache4Wan2.2 links the same calibration). The 0.655 at step 25 is the
# switch to the low-noise expert, where this cache resets anyway.
WAN22_T2V_A14B_MAG_RATIOS = (1.0, 1.0) + (
    1.00124, 1.00155, 0.99822, 0.99851, 0.99696, 0.99687, 0.99703, 0.99732, 0.9966, 0.99679, 0.99602, 0.99658,
    0.99578, 0.99664, 0.99484, 0.9949, 0.99633, 0.996, 0.99659, 0.99683, 0.99534, 0.99549, 0.99584, 0.99577,
    0.99681, 0.99694, 0.99563, 0.99554, 0.9944, 0.99473, 0.99594, 0.9964, 0.99466, 0.99461, 0.99453, 0.99481,
    0.99389, 0.99365, 0.99391, 0.99406, 0.99354, 0.99361, 0.99283, 0.99278, 0.99268, 0.99263, 0.99057, 0.99091,
    0.99125, 0.99126, 0.65523, 0.65252, 0.98808, 0.98852, 0.98765, 0.98736, 0.9851, 0.98535, 0.98311, 0.98339,
    0.9805, 0.9806, 0.97776, 0.97771, 0.97278, 0.97286, 0.96731, 0.96728, 0.95857, 0.95855, 0.94385, 0.94385,
    0.92118, 0.921, 0.88108, 0.88076, 0.80263, 0.80181,
)  # fmt: skip


def check_cache(method: str, threshold: tuple[float, float] | None) -> tuple[float, float] | None:
    """The per-expert ``(low_noise, high_noise)`` thresholds for ``method`` (its default where None), or an error."""
    if method not in METHODS:
        raise InputError(f"cache {method!r} is not a step cache; choose one of {', '.join(METHODS)}.")
    if method == OFF:
        return None
    if threshold is None:
        return DEFAULT_THRESHOLD[method], DEFAULT_THRESHOLD[method]
    if any(not 0 <= value < 10 for value in threshold):
        raise InputError(
            f"cache_threshold {threshold} must be from 0 (never skip) to below 10; {method} uses "
            f"{DEFAULT_THRESHOLD[method]} by default (higher skips more forwards)."
        )
    return threshold


def nearest_ratios(steps: int, stream: int) -> list[float]:
    """The MagCache ratio of each of ``steps`` steps for ``stream`` (0 cond, 1 uncond), resampled (nearest) from
    the 40-step calibration as MagCache's ``nearest_interp`` does."""
    table = WAN22_T2V_A14B_MAG_RATIOS[stream::2]
    if steps == 1:
        return [table[-1]]
    scale = (len(table) - 1) / (steps - 1)
    return [table[round(i * scale)] for i in range(steps)]


def mean_abs(t: torch.Tensor) -> float:
    return t.abs().mean().item()


@dataclass
class StepCache:
    """The skip decisions and residuals of one sampling run. ``thresholds`` maps an expert name to its threshold."""

    method: str
    thresholds: dict[str, float]
    steps: int
    skipped_forwards: int = 0
    skipped_steps: list[int] = field(default_factory=list)
    _expert: str | None = None
    _computed_in_expert: int = 0
    _residuals: list[torch.Tensor] = field(default_factory=list)
    # EasyCache state (the cond stream's input/output at the last computed step and the previous step)
    _x_prev: torch.Tensor | None = None
    _x_computed: torch.Tensor | None = None
    _out_computed: torch.Tensor | None = None
    _rate: float | None = None
    _error: float = 0.0
    # MagCache state per stream
    _ratio: list[float] = field(default_factory=lambda: [1.0, 1.0])
    _mag_error: list[float] = field(default_factory=lambda: [0.0, 0.0])
    _run: int = 0

    def should_compute(self, step: int, expert: str, x: torch.Tensor, streams: int) -> bool:
        """Whether step ``step`` (0-based) must run the model (else ``reuse`` gives its outputs)."""
        if expert != self._expert:
            self._reset(expert)
        compute = self._decide(step, x, streams)
        if self.method == EASYCACHE:
            self._x_prev = x
        if not compute:
            self.skipped_forwards += streams
            self.skipped_steps.append(step)
        return compute

    def _reset(self, expert: str) -> None:
        self._expert, self._computed_in_expert, self._residuals = expert, 0, []
        self._x_prev = self._x_computed = self._out_computed = self._rate = None
        self._error, self._ratio, self._mag_error, self._run = 0.0, [1.0, 1.0], [0.0, 0.0], 0

    def _decide(self, step: int, x: torch.Tensor, streams: int) -> bool:
        threshold = self.thresholds[self._expert]
        forced = step < max(1, round(WARMUP * self.steps)) or step == self.steps - 1
        if forced or threshold <= 0 or self._computed_in_expert < 2 or len(self._residuals) != streams:
            return True
        if self.method == EASYCACHE:
            if self._rate is None or self._x_prev is None:
                return True
            self._error += self._rate * mean_abs(x - self._x_prev) / max(mean_abs(self._out_computed), 1e-12)
            return self._error >= threshold
        skip = self._run < MAG_MAX_SKIPS
        for stream in range(streams):
            self._ratio[stream] *= nearest_ratios(self.steps, stream)[step]
            self._mag_error[stream] += abs(1 - self._ratio[stream])
            skip = skip and self._mag_error[stream] < threshold
        return not skip

    def update(self, x: torch.Tensor, outputs: list[torch.Tensor]) -> None:
        """Record a computed step: input latents ``x`` and the model output of each stream."""
        if self.method == EASYCACHE:
            cond = outputs[0]
            if self._out_computed is not None and self._x_computed is not None:
                change = mean_abs(x - self._x_computed)
                self._rate = mean_abs(cond - self._out_computed) / change if change > 0 else None
            self._x_computed, self._out_computed = x, cond
        self._residuals = [out - x for out in outputs]
        self._computed_in_expert += 1
        self._error, self._ratio, self._mag_error, self._run = 0.0, [1.0, 1.0], [0.0, 0.0], 0

    def reuse(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of a skipped step: ``x`` plus each stream's cached residual."""
        self._run += 1
        return [x + residual for residual in self._residuals]


def make_step_cache(
    method: str, thresholds: tuple[float, float] | None, steps: int, experts: tuple[str, str, str]
) -> StepCache | None:
    """The cache for one run (None when off). ``thresholds`` is ``(low_noise, high_noise)``; ``experts`` names
    (high_noise, low_noise, single); the single-model task uses the first threshold."""
    thresholds = check_cache(method, thresholds)
    if thresholds is None:
        return None
    high, low, single = experts
    return StepCache(method, {low: thresholds[0], high: thresholds[1], single: thresholds[0]}, steps)
