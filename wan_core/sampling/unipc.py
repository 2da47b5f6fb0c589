"""UniPC multistep (bh2, data prediction) for flow matching, as the official ``FlowUniPCMultistepScheduler``.

The official default solver: order 2, ``predict_x0=True``, ``solver_type="bh2"``, ``lower_order_final=True``,
no disabled corrector steps. Each step first corrects the previous predictor's result with the new model output
(UniC), then predicts the next sample (UniP). As in the official code, the x0 estimate of a step is computed from the
sample *before* the correction, and the predictor starts from the corrected sample.
"""

from __future__ import annotations

import torch

from .base import FlowSolver


class UniPCSolver(FlowSolver):
    name = "unipc"
    grid = "unipc"

    def __init__(self, steps: int, shift: float, order: int = 2, **kwargs):
        super().__init__(steps, shift, **kwargs)
        if order < 1:
            raise ValueError(f"UniPC order must be at least 1, got {order}")
        self.order = order
        self._x0s: list[torch.Tensor] = []  # x0 estimates of the last `order` steps, newest last
        self._last_sample: torch.Tensor | None = None
        self._last_order = 0

    def _update(self, flow: torch.Tensor, sample: torch.Tensor, i: int) -> torch.Tensor:
        x0 = self.predict_x0(flow, sample, i)
        if self._last_sample is not None:
            sample = self._bh_update(self._last_sample, i - 1, self._x0s, self._last_order, model_t=x0)
        self._x0s = (self._x0s + [x0])[-self.order :]
        # lower_order_final, and the multistep warm-up (one more order per step taken, also from a later first step).
        self._last_order = min(self.order, self.steps - i, len(self._x0s))
        self._last_sample = sample
        return self._bh_update(sample, i, self._x0s, self._last_order)

    def _bh_update(
        self,
        x: torch.Tensor,
        s: int,
        history: list[torch.Tensor],
        order: int,
        model_t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """UniP (``model_t`` None) or UniC (``model_t`` = x0 at sigma[s + 1]) from sigma[s] to sigma[s + 1].

        ``history[-1]`` is the x0 estimate at sigma[s], ``history[-1 - k]`` the one at sigma[s - k].
        """
        sigma_t, sigma_s0 = self.sigmas[s + 1], self.sigmas[s]
        alpha_t = 1 - sigma_t
        lambda_s0 = self.lam(s)
        h = self.lam(s + 1) - lambda_s0
        m0 = history[-1]

        rks, d1s = [], []
        for k in range(1, order):
            rk = (self.lam(s - k) - lambda_s0) / h
            rks.append(rk)
            d1s.append((history[-(k + 1)] - m0) / rk)
        rks = torch.stack([*rks, torch.tensor(1.0)])

        hh = -h
        h_phi_1 = torch.expm1(hh)  # h * phi_1(h) = e^h - 1
        h_phi_k = h_phi_1 / hh - 1
        b_h = torch.expm1(hh)  # bh2
        factorial_i = 1
        rows, b = [], []
        for k in range(1, order + 1):
            rows.append(torch.pow(rks, k - 1))
            b.append(h_phi_k * factorial_i / b_h)
            factorial_i *= k + 1
            h_phi_k = h_phi_k / hh - 1 / factorial_i
        r_mat, b = torch.stack(rows), torch.stack(b)

        x_t_ = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
        if model_t is None:  # predictor
            if not d1s:  # first order: no history term
                return x_t_.to(x.dtype)
            rhos = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(r_mat[:-1, :-1], b[:-1])
            res = _weighted_sum(rhos, d1s)
        else:  # corrector
            rhos = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(r_mat, b)
            res = rhos[-1] * (model_t - m0)
            if d1s:
                res = _weighted_sum(rhos[:-1], d1s) + res
        return (x_t_ - alpha_t * b_h * res).to(x.dtype)


def _weighted_sum(weights: torch.Tensor, terms: list[torch.Tensor]) -> torch.Tensor:
    """``sum_k weights[k] * terms[k]`` (the official ``einsum("k,bkc...->bc...")``)."""
    out = weights[0] * terms[0]
    for w, term in zip(weights[1:], terms[1:], strict=True):
        out = out + w * term
    return out
