"""Fixed-grid loops: explicit Runge–Kutta methods and Adams–Bashforth(–Moulton) multistep methods.

The grid is built once (from ``step_size``, a ``grid_constructor`` or the output times); values at
output times between grid points come from linear or cubic Hermite interpolation.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from functools import lru_cache

import torch
from torch import Tensor

from neurode.errors import InvalidInputError
from neurode.solvers.adaptive import DenseRecord, LoopResult
from neurode.solvers.quadrature import Quadrature
from neurode.solvers.rk import RHS, RKStepper, combine, get_stepper
from neurode.solvers.tableaux import TABLEAUX

__all__ = ["adams_weights", "integrate_adams", "integrate_fixed", "make_grid"]


def make_grid(t_out: list[float], step_size: float | None,
              grid: list[float] | None) -> list[float]:
    """The integration grid: from ``step_size``, from an explicit grid, or the output times.

    With ``step_size`` the grid is ``t0, t0+s, …`` and its last point is moved onto ``t_end``, so
    the last step may be shorter (torchdiffeq's rule).
    """
    t0, t1 = t_out[0], t_out[-1]
    if grid is not None:
        if len(grid) < 2 and t1 != t0:
            raise InvalidInputError("grid_constructor returned fewer than 2 points")
        if abs(grid[0] - t0) > 1e-12 * max(1.0, abs(t0)) or \
                abs(grid[-1] - t1) > 1e-12 * max(1.0, abs(t1)):
            raise InvalidInputError(
                f"grid_constructor must return a grid from t[0]={t0} to t[-1]={t1}; "
                f"got [{grid[0]}, …, {grid[-1]}]")
        if any(b <= a for a, b in itertools.pairwise(grid)):
            raise InvalidInputError("grid_constructor must return a strictly increasing grid")
        return [t0, *grid[1:-1], t1]
    if step_size is None:
        return list(t_out)
    if not step_size > 0:
        raise InvalidInputError(f"options['step_size'] must be > 0, got {step_size}")
    n = math.ceil((t1 - t0) / step_size + 1 - 1e-12)
    g = [t0 + i * step_size for i in range(n)]
    if len(g) < 2:
        g = [t0, t1]
    g[-1] = t1
    if len(g) > 2 and g[-1] <= g[-2]:
        g.pop(-2)
    return g


def _hermite(y0: Tensor, f0: Tensor, y1: Tensor, f1: Tensor, h: float, th: float) -> Tensor:
    # Cubic Hermite basis on [0, 1].
    th2, th3 = th * th, th * th * th
    h00 = 2 * th3 - 3 * th2 + 1
    h10 = th3 - 2 * th2 + th
    h01 = -2 * th3 + 3 * th2
    h11 = th3 - th2
    out = torch.add(y0 * h00, y1, alpha=h01)
    out.add_(f0, alpha=h * h10)
    out.add_(f1, alpha=h * h11)
    return out


def _emit(ys: list[Tensor], t_out: list[float], i_out: int, g0: float, g1: float, y0: Tensor,
          y1: Tensor, interp: str, f0: Tensor | None, f1: Tensor | None) -> int:
    n_out = len(t_out)
    h = g1 - g0
    while i_out < n_out and t_out[i_out] <= g1:
        to = t_out[i_out]
        if to == g1:
            ys.append(y1)
        elif to == g0:
            ys.append(y0)
        else:
            th = (to - g0) / h
            if interp == "cubic":
                ys.append(_hermite(y0, f0, y1, f1, h, th))
            else:
                ys.append(torch.lerp(y0, y1, th) if y0.is_floating_point() else y0 + th * (y1 - y0))
        i_out += 1
    return i_out


def _finish(res: LoopResult, grid: list[float], nfe: int) -> LoopResult:
    res.n_steps = res.n_accepted = len(grid) - 1
    res.nfe = nfe
    res.t_final = grid[-1]
    return res


def integrate_fixed(f: RHS, y0: Tensor, t_out: list[float], grid: list[float],
                    stepper: RKStepper, *, interp: str = "linear", perturb: bool = False,
                    callbacks=None, record_dense: bool = False,
                    record_steps: bool = False, quad: Quadrature | None = None) -> LoopResult:
    """March an explicit RK method over ``grid``; ``y`` at ``t_out`` (both increasing floats).

    ``quad`` (optional) integrates quadratures beside the state over the whole grid
    (:mod:`neurode.solvers.quadrature`); they are not interpolated to output times.
    """
    res = LoopResult(ys=[y0], t_final=t_out[0])
    if record_dense or record_steps:
        res.dense = DenseRecord()
    n_out = len(t_out)
    if n_out == 1:
        return res
    cb_step = cb_accept = None
    if callbacks is not None:
        cb_step, cb_accept, _ = callbacks
    cubic = interp == "cubic" or record_dense
    y = y0
    i_out = 1
    nfe = 0
    k0 = None
    ys = res.ys
    for g0, g1 in itertools.pairwise(grid):
        h = g1 - g0
        if cb_step is not None:
            cb_step(g0, y, h)
        if k0 is None or perturb:
            k0 = f(g0, y, 1 if perturb else 0)
            nfe += 1
        ks, y1 = stepper.step(f, g0, y, h, k0, perturb=perturb)
        nfe += stepper.stages - 1
        if quad is not None:
            quad.accept(ks, h)
        f1 = None
        if cubic:
            f1 = f(g1, y1, 0)
            nfe += 1
        i_out = _emit(ys, t_out, i_out, g0, g1, y, y1, interp, k0, f1)
        if record_dense or record_steps:
            res.dense.append(g0, h, y, [k0, y1, f1] if record_dense else None)
        if cb_accept is not None:
            cb_accept(g0, y, h)
        y, k0 = y1, f1
    return _finish(res, grid, nfe)


# Below this many past values the Adams loop takes rk4 steps; above, the order grows with the
# history up to max_order (so the global order is at least 4 from the first step).
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


def _key(x: float) -> float:
    return round(x, 12)


def integrate_adams(f: RHS, y0: Tensor, t_out: list[float], grid: list[float], *,
                    max_order: int = 12, implicit: bool = False, max_iters: int = 4,
                    rtol=1e-7, atol=1e-9, norm: Callable[[Tensor], Tensor],
                    interp: str = "linear", callbacks=None,
                    record_dense: bool = False) -> LoopResult:
    """Adams–Bashforth (``implicit=False``) or Adams–Bashforth–Moulton PE(CE)^m on a fixed grid.

    The first steps are taken with rk4 until 4 past derivatives are known; from then on the
    order grows with the history up to ``max_order``. The corrector iterates at most
    ``max_iters`` times, stopping early once the
    change is below the tolerance (``norm(Δy / (atol + rtol|y|)) < 1``).
    """
    if max_order < 1:
        raise InvalidInputError(f"options['max_order'] must be ≥ 1, got {max_order}")
    if max_iters < 1:
        raise InvalidInputError(f"options['max_iters'] must be ≥ 1, got {max_iters}")
    res = LoopResult(ys=[y0], t_final=t_out[0])
    if record_dense:
        res.dense = DenseRecord()
    n_out = len(t_out)
    if n_out == 1:
        return res
    cb_step = cb_accept = None
    if callbacks is not None:
        cb_step, cb_accept, _ = callbacks
    boot = get_stepper(TABLEAUX["rk4"])
    y = y0
    fy = f(grid[0], y0, 0)
    nfe = 1
    hist_t = [grid[0]]
    hist_f = [fy]
    i_out = 1
    ys = res.ys
    for g0, g1 in itertools.pairwise(grid):
        h = g1 - g0
        if cb_step is not None:
            cb_step(g0, y, h)
        if len(hist_f) < min(max_order, _MIN_ADAMS_ORDER):
            _, y1 = boot.step(f, g0, y, h, fy)
            nfe += boot.stages - 1
        else:
            nodes = tuple(_key((tj - g0) / h) for tj in hist_t)
            wb = adams_weights(nodes)
            y1 = combine(y, hist_f, list(enumerate(wb)), h)
            if implicit:
                # Corrector: Adams–Moulton of the same order (new node at 1, drop the oldest).
                nodes_c = (*nodes[1:], 1.0)
                wm = adams_weights(nodes_c)
                base = combine(y, hist_f[1:], list(enumerate(wm[:-1])), h)
                for _ in range(max_iters):
                    f1 = f(g1, y1, 0)
                    nfe += 1
                    y_new = torch.add(base, f1, alpha=h * wm[-1])
                    with torch.no_grad():
                        scale = atol + rtol * torch.maximum(y_new.abs(), y1.abs())
                        converged = float(norm((y_new - y1) / scale)) < 1.0
                    y1 = y_new
                    if converged:
                        break
        f1 = f(g1, y1, 0)
        nfe += 1
        i_out = _emit(ys, t_out, i_out, g0, g1, y, y1, interp, fy, f1)
        if record_dense:
            res.dense.append(g0, h, y, [fy, y1, f1])
        if cb_accept is not None:
            cb_accept(g0, y, h)
        hist_t.append(g1)
        hist_f.append(f1)
        if len(hist_f) > max_order:
            del hist_t[0], hist_f[0]
        y, fy = y1, f1
    return _finish(res, grid, nfe)
