"""Adams–Bashforth(–Moulton) on a fixed grid: a multistep stepper whose carry is the history of
derivatives.

The first steps are explicit rk4 steps until four past derivatives are known; from then on the
order grows with the history up to ``max_order``. Weights come from integrating the Lagrange
basis on the actual (possibly non-uniform) grid, so any grid works. The implicit method corrects
with Adams–Moulton of the same order, PE(CE)^m, stopping once the correction is below the
tolerance (``norm(Δy / (atol + rtol|y|)) < 1``, a host check per iteration).

``perturb``: every evaluation at a grid point is one-sided, from inside the step it serves: the
history keeps ``f(g+)``, the corrector evaluates ``f(g1−)``.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from neurode.solvers.steppers.base import HermiteDense, StageTimes, StepOut, nudge
from neurode.solvers.steppers.erk import ExplicitRK

__all__ = ["Adams", "adams_weights"]

# Below this many past values the loop takes rk4 steps; above, the order grows with the history
# up to max_order (so the global order is at least 4 from the first step).
_MIN_ADAMS_ORDER = 4


@lru_cache(maxsize=4096)
def adams_weights(nodes: tuple[float, ...]) -> tuple[float, ...]:
    """Weights ``w_j`` with ``∫_0^1 p(x) dx = Σ_j w_j p(x_j)`` for ``deg p < len(nodes)``.

    Nodes are times scaled to the step, ``x = (τ − t_n)/h``; integrating the Lagrange basis gives
    the Adams–Bashforth (nodes ≤ 0) and Adams–Moulton (one node at 1) coefficients on any grid.
    """
    w = []
    for j, xj in enumerate(nodes):
        poly = [1.0]
        for m, xm in enumerate(nodes):
            if m == j:
                continue
            d = xj - xm
            new = [0.0] * (len(poly) + 1)
            for p, cp in enumerate(poly):
                new[p + 1] += cp / d
                new[p] -= cp * xm / d
            poly = new
        w.append(sum(cp / (p + 1) for p, cp in enumerate(poly)))
    return tuple(w)


def _lincomb(base: Tensor, fs: list[Tensor], ws, h: float) -> Tensor:
    out = base
    for f, w in zip(fs, ws, strict=True):
        out = torch.add(out, f, alpha=h * w)
    return out


class Adams(HermiteDense):
    """Adams steps on a joint ``(1, N)`` state; the carry is ``(times, derivatives)``."""

    kind = "adams"
    error_order = None
    lands_on_outputs = False
    n_extra = 0

    def __init__(self, *, implicit: bool, max_order: int, max_iters: int, rtol, atol, norm,
                 boot: ExplicitRK, batch: int, n: int, dtype, device, sign: float,
                 time_dtype, per_sample: bool):
        self.implicit = implicit
        self.syncs = implicit
        self.order = max_order
        self.max_order = max_order
        self.max_iters = max_iters
        self.rtol, self.atol, self.norm = rtol, atol, norm
        self.boot = boot
        self._boot_buf = None
        self.sign = sign
        self.times = StageTimes((0.0, 1.0), sign, time_dtype, device, per_sample)
        self.evals_per_step = 1

    def new_buffer(self):
        return None

    def start(self, field, s: Tensor, y: Tensor, after: bool = False, host=None):
        t0 = self.times.at(s)
        f0 = field(nudge(t0, self.sign, +1) if after else t0, y)
        return ([host[0] if host is not None else float(s)], [f0])

    def step(self, field, s: Tensor, ds: Tensor, y: Tensor, carry, buf=None, *,
             error: bool = False, want_f1: bool = True, before=None, after: bool = False,
             host=None) -> StepOut:
        g0, h = host
        hs = self.sign * h
        hist_t, hist_f = carry
        fy = hist_f[-1]
        t1u = self.times(s, ds)[1]
        nfe = 0
        if len(hist_f) < min(self.max_order, _MIN_ADAMS_ORDER):
            if self._boot_buf is None or torch.is_grad_enabled():
                self._boot_buf = self.boot.new_buffer()
            y1 = self.boot.step(field, s, ds, y, fy, self._boot_buf, error=False, want_f1=False,
                                before=before).y1
            nfe += self.boot.S - 1
        else:
            nodes = tuple(round((tj - g0) / h, 12) for tj in hist_t)
            y1 = _lincomb(y, hist_f, adams_weights(nodes), hs)
            if self.implicit:
                # Corrector: Adams–Moulton of the same order (new node at 1, drop the oldest).
                wm = adams_weights((*nodes[1:], 1.0))
                base = _lincomb(y, hist_f[1:], wm[:-1], hs)
                t_end = nudge(t1u, self.sign, -1) if before else t1u
                for _ in range(self.max_iters):
                    f1 = field(t_end, y1)
                    nfe += 1
                    y_new = torch.add(base, f1, alpha=hs * wm[-1])
                    with torch.no_grad():
                        scale = self.atol + self.rtol * torch.maximum(y_new.abs(), y1.abs())
                        converged = bool((self.norm((y_new - y1) / scale) < 1.0).all())
                    y1 = y_new
                    if converged:
                        break
        f1 = field(nudge(t1u, self.sign, +1) if after else t1u, y1)
        nfe += 1
        times = [*hist_t, g0 + h]
        derivs = [*hist_f, f1]
        if len(derivs) > self.max_order:
            times, derivs = times[1:], derivs[1:]
        self.last_nfe = nfe
        return StepOut(y1, None, None, (fy, f1), (times, derivs))

