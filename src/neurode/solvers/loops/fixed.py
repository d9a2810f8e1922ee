"""The fixed-grid loop: any stepper on a grid known on the host.

Nothing is decided on the device: each grid step is taken, the outputs between grid points come
from linear or cubic Hermite interpolation, and one reduction at the end checks for non-finite
values (on failure the solve is repeated without graph, checking every step, so that the error
names the step where they appeared). With an event function the grid is unbounded (``t0 + k·h``)
and the event is checked every ``sync_every`` steps.
"""

from __future__ import annotations

import bisect
import itertools
import math

import torch
from torch import Tensor

from neurode.errors import InvalidInputError, Status
from neurode.solvers.loops.common import LoopResult, StepRecord, call_callbacks
from neurode.solvers.loops.events import EventWatcher
from neurode.solvers.problem import Problem
from neurode.solvers.quadrature import Quadrature
from neurode.solvers.steppers.base import hermite_many
from neurode.solvers.steppers.newton import NewtonFailedError

__all__ = ["FixedLoop", "alf_grid", "make_grid"]

_I64 = torch.int64


def make_grid(t_out, step_size: float | None, grid: list[float] | None) -> list[float]:
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
    n = math.ceil((t1 - t0) / step_size + 1 - 1e-12)
    g = [t0 + i * step_size for i in range(n)]
    if len(g) < 2:
        g = [t0, t1]
    g[-1] = t1
    if len(g) > 2 and g[-1] <= g[-2]:
        g.pop(-2)
    return g


def alf_grid(t_out, step_size: float) -> list[float]:
    """ALF's fixed grid: each interval between output times in ``ceil(length / step)`` equal
    steps, so every output time is a grid point (the reversible gradient needs them as step
    ends)."""
    grid = [t_out[0]]
    for a, b in itertools.pairwise(t_out):
        n = max(1, math.ceil((b - a) / step_size - 1e-9))
        grid.extend(a + (k + 1) * (b - a) / n for k in range(n - 1))
        grid.append(b)
    return grid


class FixedLoop:
    """One fixed-grid solve of ``pb`` with ``stepper`` over ``grid`` (increasing host floats).

    ``grid`` None with ``step`` given: the unbounded grid of an event solve.
    """

    def __init__(self, pb: Problem, stepper, grid: list[float] | None, *,
                 interp: str = "linear", perturb: bool = False, record: str | None = None,
                 quad: Quadrature | None = None, event_fn=None, step: float | None = None):
        self.pb = pb
        self.stepper = stepper
        self.grid = grid
        self.interp = interp
        self.perturb = perturb
        self.record = record
        self.quad = quad
        self.watch = None if event_fn is None else EventWatcher(pb, event_fn)
        self.step = step
        # events are located on the cubic Hermite interpolant, so they need the end slopes too
        self.cubic = interp == "cubic" or record == "dense" or event_fn is not None
        ctl = pb.opts.control
        self.K = ctl.sync_every if ctl is not None else 8

    def _slopes(self, out) -> tuple[Tensor, Tensor]:
        return self.stepper.slopes(out)

    def _emit(self, ys: list[Tensor], t_out: list[float], i_out: int, g0: float, g1: float,
              y: Tensor, out) -> int:
        if not (i_out < len(t_out) and t_out[i_out] <= g1):
            return i_out
        j = bisect.bisect_right(t_out, g1, i_out)
        h = g1 - g0
        thetas = []
        for to in t_out[i_out:j]:
            if to == g1:
                if thetas:
                    ys.extend(self._interp(y, out, h, thetas))
                    thetas = []
                ys.append(out.y1[0])
            elif to == g0:
                ys.append(y[0])
            else:
                thetas.append((to - g0) / h)
        if thetas:
            ys.extend(self._interp(y, out, h, thetas))
        return j

    def _interp(self, y: Tensor, out, h: float, thetas: list[float]) -> list[Tensor]:
        if self.interp == "cubic":
            f0, f1 = self._slopes(out)
            return list(hermite_many(y[0], f0[0], out.y1[0], f1[0], self.pb.sign * h, thetas)
                        .unbind(0))
        y0, y1 = y[0], out.y1[0]
        if y0.is_floating_point():
            return [torch.lerp(y0, y1, th) for th in thetas]
        return [y0 + th * (y1 - y0) for th in thetas]

    def run(self, check_finite: bool = True) -> LoopResult:
        pb, stepper = self.pb, self.stepper
        t_out = list(pb.t_out)
        nfe0 = pb.field.nfe
        y = pb.y0
        ys = [y[0]]
        record = (StepRecord(contiguous=self.record == "steps") if self.record is not None
                  else None)
        status = Status.SUCCESS
        t_reached, fail_dt, n = t_out[0], 0.0, 0
        event = None
        if len(t_out) == 1 and self.watch is None:
            return self._result(ys, status, t_reached, fail_dt, 0, record, nfe0, event, y)
        if self.watch is not None:
            # an event search: on the unbounded grid t0 + k·step, or on the grid up to t_out[-1]
            grid = (iter(self.grid) if self.grid is not None
                    else (t_out[0] + k * self.step for k in itertools.count()))
            t_out = [t_out[0]]
        else:
            grid = iter(self.grid)
        host_first = stepper.kind in ("adams",)
        carry = stepper.start(pb.field, t_out[0], y, after=self.perturb,
                              **({"host": (t_out[0], 0.0)} if host_first else {}))
        cb = pb.callbacks
        i_out = 1
        pending: list = []
        g_prev = next(grid)
        g = pb.opts.grid
        cap = g.max_num_steps if g is not None else None
        for k, g1 in enumerate(grid):
            if cap is not None and k >= cap:
                status, t_reached = Status.MAX_STEPS, g_prev
                break
            g0, h = g_prev, g1 - g_prev
            s, ds = g0, h  # the grid is known on the host: steps take floats
            if cb is not None and cb.step is not None:
                tt, dd = self._t(g0, h)
                call_callbacks(cb, pb, "step", tt, y, dd)
            k0 = None if (self.perturb and stepper.kind == "erk") else carry
            try:
                out = stepper.step(pb.field, s, ds, y, k0, None, error=False,
                                   want_f1=self.cubic, before=self.perturb or None,
                                   after=self.perturb, **({"host": (g0, h)} if host_first
                                                          else {}))
            except NewtonFailedError as e:
                status, t_reached, fail_dt = Status.NEWTON_FAILED, g0, h
                self.newton = (e.iters, e.rate)
                break
            n += 1
            if self.quad is not None:
                self.quad.advance(out, pb.sign * h)
            if self.watch is not None:
                pending.append((g0, h, y, out))
                if len(pending) >= self.K:
                    event = self._events(pending)
                    pending = []
                    if event is not None:
                        break
            else:
                i_out = self._emit(ys, t_out, i_out, g0, g1, y, out)
            if record is not None:
                if self.record == "dense":
                    record.append(g0, h, y, out.y1, self._slopes(out))
                elif self.record == "steps":
                    record.append(g0, h, y)
                else:  # "times"
                    record.append(g0, h, None)
            if cb is not None and cb.accept is not None:
                tt, dd = self._t(g0, h)
                call_callbacks(cb, pb, "accept", tt, y, dd)
            y = out.y1
            carry = out.carry
            t_reached = g1
            g_prev = g1
        if pending and event is None and self.watch is not None:
            event = self._events(pending)
        if self.watch is not None and event is None and status == Status.SUCCESS \
                and self.grid is None:
            status = Status.MAX_STEPS
        res = self._result(ys, status, t_reached, fail_dt, n, record, nfe0, event, y)
        res.extra["carry"] = carry
        if check_finite and status == Status.SUCCESS and self.watch is None:
            self._check_finite(res)
        return res

    def _t(self, g0: float, h: float) -> tuple[Tensor, Tensor]:
        dev = self.pb.y0.device
        return (torch.tensor([g0], dtype=torch.float64, device=dev),
                torch.tensor([h], dtype=torch.float64, device=dev))

    def _events(self, pending) -> tuple | None:
        vals = self.watch.values([(g0 + h, out.y1) for g0, h, _, out in pending])
        for (g0, h, y, out), g1 in zip(pending, vals, strict=True):
            def at(s, g0=g0, h=h, y=y, out=out):
                th = min(1.0, max(0.0, (s - g0) / h))
                if th == 1.0:
                    return out.y1
                f0, f1 = self._slopes(out)
                return hermite_many(y[0], f0[0], out.y1[0], f1[0], self.pb.sign * h, [th])
            s_ev = self.watch.locate(g0, h, g1, at)
            if s_ev is not None:
                return s_ev, at(s_ev).reshape(1, -1), (g0, h, y, out)
        return None

    def _check_finite(self, res: LoopResult) -> None:
        """One reduction over the outputs; only on failure locate the first bad grid step."""
        with torch.no_grad():
            if bool(torch.isfinite(res.ys.sum())) and bool(torch.isfinite(
                    res.extra["y_final"].sum())):
                return
        pb = self.pb
        bad_t, bad_h = pb.t_out[0], 0.0
        with torch.no_grad():
            rows = ~torch.isfinite(res.ys.reshape(res.ys.shape[0], -1)).all(dim=1)
            if bool(rows.any()):
                i = int(rows.nonzero()[0, 0])
                bad_t = pb.t_out[max(i - 1, 0)]
                bad_h = pb.t_out[i] - bad_t
            again = FixedLoop(pb.with_y0(pb.y0.detach()), self.stepper, self.grid,
                              interp=self.interp, perturb=self.perturb, record="dense")
            rec = again.run(check_finite=False).record
            for t0, h, y0, y1, slopes in zip(rec.t, rec.h, rec.y, rec.y1, rec.dense,
                                             strict=True):
                vals = [y0, y1, *(x for x in slopes if x is not None)]
                if not all(bool(torch.isfinite(v).all()) for v in vals):
                    bad_t, bad_h = t0, h
                    break
        res.status = torch.full_like(res.status, Status.NON_FINITE)
        res.t_final = torch.full_like(res.t_final, bad_t)
        res.fail_dt = torch.full_like(res.t_final, bad_h)
        res.extra["non_finite_step"] = (bad_t, bad_h)

    def _result(self, ys, status, t_reached, fail_dt, n, record, nfe0, event, y) -> LoopResult:
        pb = self.pb
        dev = pb.y0.device
        T = len(pb.t_out)
        if self.watch is None and len(ys) < T:
            pad = torch.full_like(pb.y0[0], math.nan)
            ys = ys + [pad] * (T - len(ys))
        out = torch.stack(ys).unsqueeze(1)
        res = LoopResult(
            ys=out, status=torch.full((1,), int(status), dtype=_I64, device=dev),
            t_final=torch.full((1,), t_reached, dtype=torch.float64, device=dev),
            n_steps=torch.full((1,), n, dtype=_I64, device=dev),
            n_accepted=torch.full((1,), n, dtype=_I64, device=dev),
            nfe=pb.field.nfe - nfe0,
            fail_dt=torch.full((1,), fail_dt, dtype=torch.float64, device=dev),
            record=record, event=event)
        res.extra["y_final"] = y
        if hasattr(self.stepper, "n_jac"):
            res.n_jac, res.n_lu = self.stepper.n_jac, self.stepper.n_lu
        res.newton = getattr(self, "newton", None)
        return res
