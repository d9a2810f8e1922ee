"""Implicit Runge–Kutta steppers: any implicit tableau on a fixed grid, and adaptive Radau IIA(5).

A method is an `ImplicitTableau` (data only); one Newton stage
solver (`neurode.solvers.steppers.newton`) serves them all. Gradients do not unroll the
Newton iterations: the converged stages are differentiated by the implicit function theorem
(`attach_ift`), exact for the discrete scheme at the cost of
``s`` Jacobians per step, and only when a gradient is wanted.

`Radau` is Radau IIA of order 5 with the error estimate of Hairer & Wanner (*Solving ODEs
II*, IV.8), refined once through ``f(y₀ + err)`` after a rejection (which keeps it bounded for
stiff components); its estimate behaves like ``O(h⁴)`` (``error_order = 4``). Its Jacobian is kept
across steps while Newton contracts fast, and Newton starts from the previous step's collocation
polynomial. Both steppers work on joint solves (``B = 1``) and read host values inside the step
(Newton's convergence test), so the loops check every step for them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from neurode.solvers.options import NewtonOptions
from neurode.solvers.steppers.base import HermiteDense, StageTimes, StepOut, nudge
from neurode.solvers.steppers.newton import NewtonFailedError, StageSolver, attach_ift
from neurode.solvers.tableau import ImplicitTableau
from neurode.solvers.tableaux.implicit import RADAU_E, RADAU_MU

__all__ = ["ImplicitRK", "Radau"]

_EPS = 2.220446049250313e-16


def _needs_grad(f, tu: Tensor, y: Tensor) -> bool:
    """Whether a gradient is wanted through the solve: ``y`` or what ``f`` closes over."""
    if not torch.is_grad_enabled():
        return False
    if y.requires_grad:
        return True
    with torch.enable_grad():
        return f(tu, y.detach()).requires_grad


def _scale(y: Tensor, y1: Tensor | None, rtol, atol) -> Tensor:
    """``atol + rtol·max(|y|, |y1|)``, flat and real."""
    mag = y.abs() if y1 is None else torch.maximum(y.abs(), y1.abs())
    return (atol + rtol * mag).reshape(-1)


class _Implicit(HermiteDense):
    """What the fixed and the adaptive implicit steppers share: the flat field, stage times."""

    kind = "irk"
    syncs = True
    lands_on_outputs = False
    evals_per_step = 0
    n_extra = 0

    def __init__(self, tableau: ImplicitTableau, newton: NewtonOptions, max_iters: int, tol,
                 rtol, atol, *, batch: int, n: int, dtype, device, sign: float,
                 time_dtype, per_sample: bool):
        self.tab = tableau
        self.order = tableau.order
        self.newton = newton
        self.max_iters = max_iters
        self.tol = tol
        self.rtol, self.atol = rtol, atol
        self.N = n
        self.dtype, self.device = dtype, device
        self.sign = sign
        # user times of: the step start, the s stages, the step end
        self.times = StageTimes((0.0, *tableau.c, 1.0), sign, time_dtype, device, False)
        self.b64 = torch.tensor(tableau.b, dtype=torch.float64)
        self.solver: StageSolver | None = None
        self.want_grad = False

    def new_buffer(self):
        return None

    def _bind(self, field, tu0: Tensor, y: Tensor) -> None:
        N = self.N

        def f(tu, v):
            return field(tu, v.view(1, N)).view(N)

        self.solver = StageSolver(f, self.tab.a, self.max_iters, self.tol, self.newton.jacobian)
        self.want_grad = _needs_grad(f, tu0, y.view(N))

    @property
    def nfe(self) -> int:
        s = self.solver
        return 0 if s is None else s.nfe + s.jac.nfe

    @property
    def n_jac(self) -> int:
        return 0 if self.solver is None else self.solver.jac.n_jac

    @property
    def n_lu(self) -> int:
        return 0 if self.solver is None else self.solver.n_lu

    def _stage_times(self, s: Tensor, ds: Tensor, before, after: bool) -> list[Tensor]:
        tus = self.times(s, ds)
        c = (0.0, *self.tab.c, 1.0)
        if after:
            tus = [nudge(t, self.sign, +1) if ci == 0.0 else t for t, ci in zip(tus, c,
                                                                                strict=True)]
        if before is not None and before is not False and bool(before if before is True
                                                              else before.any()):
            tus = [nudge(t, self.sign, -1) if ci == 1.0 else t for t, ci in zip(tus, c,
                                                                                strict=True)]
        return tus

    def _propagate(self, tus, y: Tensor, hs: float, K: Tensor) -> Tensor:
        if self.want_grad:
            K = attach_ift(self.solver, tus[1:-1], y.view(-1), hs, K)
        return y + hs * (self.b64.to(dtype=K.dtype, device=K.device) @ K).view_as(y)

    def commit(self, carry, out: StepOut, accept: Tensor):
        return out.carry



class ImplicitRK(_Implicit):
    """Fixed-grid steps of an implicit tableau (simplified Newton; full Newton as fallback)."""

    error_order = None

    def __init__(self, tableau: ImplicitTableau, newton: NewtonOptions, rtol, atol, **kw):
        # Nothing but Newton bounds a fixed grid's error: converge to well below the tolerance.
        super().__init__(tableau, newton, newton.max_iters or 10, 1e-3, rtol, atol, **kw)

    def start(self, field, s: Tensor, y: Tensor, after: bool = False):
        tu0 = self.times.at(s)
        self._bind(field, tu0, y)
        return None

    def step(self, field, s: Tensor, ds: Tensor, y: Tensor, carry, buf=None, *,
             error: bool = False, want_f1: bool = False, before=None, after: bool = False
             ) -> StepOut:
        hs = self.sign * float(ds)
        tus = self._stage_times(s, ds, before, after)
        f = self.solver.f
        yd = y.detach().view(-1)
        with torch.no_grad():
            f0 = f(tus[0], yd)
            self.solver.nfe += 1
            J = None if self.solver.krylov else self.solver.jac.dense(tus[0], yd, f0)
            scale = _scale(yd, None, self.rtol, self.atol)
            try:
                K, _, _ = self.solver.solve(tus[1:-1], tus[0], yd, hs, f0, J, scale)
            except NewtonFailedError:
                # the frozen Jacobian was a poor model over this step: full Newton
                K, _, _ = self.solver.solve(tus[1:-1], tus[0], yd, hs, f0, J, scale, exact=True)
        y1 = self._propagate(tus, y, hs, K)
        dense = None
        if want_f1:
            f_start = field(tus[0], y) if self.want_grad else f0.view(1, -1)
            dense = (f_start, field(tus[-1], y1))
            self.solver.nfe += 2 if self.want_grad else 1
        return StepOut(y1, None, None, dense, None)


class Radau(_Implicit):
    """Adaptive Radau IIA(5) steps (module docstring). The carry is ``f(t, y)``.

    ``ratio_fn(err, y, y1) -> (1,)`` is the loop's error ratio; ``min_step`` lets the stepper
    predict an acceptance (to attach gradients only to steps that will be kept); ``safety`` is
    the controller's, lowered here when Newton needed many iterations.
    """

    error_order = 4

    def __init__(self, tableau: ImplicitTableau, newton: NewtonOptions, rtol, atol, *,
                 ratio_fn, min_step: float, safety: float, **kw):
        max_iters = newton.max_iters or 7
        r = float(rtol) if not isinstance(rtol, Tensor) else float(rtol.min())
        tol = max(10 * _EPS / max(r, 1e-300), min(0.03, math.sqrt(r)))
        super().__init__(tableau, newton, max_iters, tol, rtol, atol, **kw)
        self.ratio_fn = ratio_fn
        self.min_step = min_step
        self.safety = safety
        self.e64 = torch.tensor(RADAU_E, dtype=torch.float64)
        self.a_inv = torch.linalg.inv(torch.tensor(tableau.a, dtype=torch.float64))
        self.c_nodes = (0.0, *tableau.c)

    def start(self, field, s: Tensor, y: Tensor, after: bool = False) -> Tensor:
        tu0 = self.times.at(s)
        self._bind(field, tu0, y)
        self.J = None
        self.J_current = False
        self.err_lu = None
        self.prev_Z: Tensor | None = None
        self.prev_h = 0.0
        self.rejected = False
        self.n_acc = 0
        self._pending = None
        self.last_failure = (0, 0.0)
        return field(nudge(tu0, self.sign, +1) if after else tu0, y)

    def _err_solve(self, tu0, hs: float, yd: Tensor, f0d: Tensor):
        solver = self.solver
        if solver.krylov:
            from neurode.solvers.steppers.newton import gmres

            def solve(r):
                def mv(v):
                    return RADAU_MU / hs * v - solver.jac.matvec(tu0, yd, f0d, v)

                return gmres(mv, r, 1e-6, solver.krylov_dim)

            return solve
        J = self.J
        if self.err_lu is None or self.err_lu[0] != hs or self.err_lu[1] is not J:
            n = J.shape[0]
            self.err_lu = (hs, J, torch.linalg.lu_factor(
                RADAU_MU / hs * torch.eye(n, dtype=J.dtype, device=J.device) - J))
            solver.n_lu += 1
        lu = self.err_lu[2]
        return lambda r: torch.linalg.lu_solve(*lu, r.unsqueeze(1)).squeeze(1)

    def _extrapolate(self, hs: float) -> Tensor | None:
        """Newton start: the previous collocation polynomial extrapolated to the new stages.

        ``prev_Z`` holds the previous step's ``Y_i − y_n``; the polynomial through ``(0, 0)``
        and ``(c_i, Z_i)`` (time in units of the old step) is evaluated at ``1 + c_i h/h_old``,
        shifted by ``Z_s = y_{n+1} − y_n`` and mapped to stage derivatives ``K = A⁻¹ Z / h``.
        """
        Z = self.prev_Z
        if Z is None:
            return None
        nodes = self.c_nodes
        pts = [1.0 + ci * hs / self.prev_h for ci in nodes[1:]]
        L = torch.tensor([[math.prod((p - nodes[m]) / (nodes[j] - nodes[m])
                                     for m in range(len(nodes)) if m != j)
                           for j in range(1, len(nodes))] for p in pts], dtype=torch.float64)
        L = L.to(dtype=Z.dtype, device=Z.device)
        Z_new = L @ Z - Z[-1].unsqueeze(0)
        return (self.a_inv.to(dtype=Z.dtype, device=Z.device) @ Z_new) / hs

    def step(self, field, s: Tensor, ds: Tensor, y: Tensor, f0: Tensor, buf=None, *,
             error: bool = True, want_f1: bool = True, before=None, after: bool = False
             ) -> StepOut:
        solver = self.solver
        hf = float(ds)
        hs = self.sign * hf
        tus = self._stage_times(s, ds, before, after)
        yd, f0d = y.detach().view(-1), f0.detach().view(-1)
        K = None
        iters, rate = 0, 0.0
        with torch.no_grad():
            scale0 = _scale(yd, None, self.rtol, self.atol)
            K0 = self._extrapolate(hs)
            for _attempt in range(2):
                if self.J is None and not solver.krylov:
                    self.J = solver.jac.dense(tus[0], yd, f0d)
                    self.J_current = True
                try:
                    K, iters, rate = solver.solve(tus[1:-1], tus[0], yd, hs, f0d, self.J,
                                                  scale0, K0=K0)
                    break
                except NewtonFailedError as e:
                    iters, rate = e.iters, e.rate
                    if self.J_current or solver.krylov:
                        break
                    self.J = None  # retry the same step with a fresh Jacobian
        if K is None:
            inf = torch.full((1,), math.inf, dtype=scale0.dtype, device=yd.device)
            self._pending = None
            self.last_failure = (iters, rate)
            return StepOut(y, None, None, None, f0, ratio=inf, failed=True)
        with torch.no_grad():
            Z = hs * (solver.amat(K) @ K)  # (3, n)
            y1d = yd + Z[-1]
            ZE = (self.e64.to(dtype=K.dtype, device=K.device) @ Z) / hs
            err_solve = self._err_solve(tus[0], hs, yd, f0d)
            err = err_solve(f0d + ZE)
            ratio = self.ratio_fn(err.view(1, -1), yd.view(1, -1), y1d.view(1, -1))
            if float(ratio) > 1 and (self.rejected or self.n_acc == 0):
                fe = solver.f(tus[0], yd + err)
                solver.nfe += 1
                err = err_solve(fe + ZE)
                ratio = self.ratio_fn(err.view(1, -1), yd.view(1, -1), y1d.view(1, -1))
        r = float(ratio)
        will_accept = math.isfinite(r) and (r <= 1.0 or hf <= self.min_step)
        if will_accept and self.want_grad:
            y1 = self._propagate(tus, y, hs, K)
            f1 = field(tus[-1], y1)
            solver.nfe += 1
        else:
            y1 = y1d.view(1, -1)
            f1 = K[-1].view(1, -1)  # c₃ = 1: the last stage derivative is f(t + h, y₁)
        refresh = rate > 1e-3 and iters > 2
        self._pending = (Z, hs, refresh)
        safety = self.safety * (2 * self.max_iters + 1) / (2 * self.max_iters + iters)
        return StepOut(y1, None, None, (f0, f1), f1, ratio=ratio.view(1), safety=safety,
                       hold=not refresh, failed=False)

    def commit(self, f0: Tensor, out: StepOut, accept: Tensor) -> Tensor:
        if self._pending is None:  # Newton failed: the step was rejected
            self.rejected = True
            return f0
        Z, hs, refresh = self._pending
        self._pending = None
        if bool(accept):
            self.n_acc += 1
            self.prev_Z, self.prev_h = Z, hs
            self.rejected = False
            # Keep the Jacobian while Newton contracts fast; refresh it otherwise.
            self.J_current = False
            if refresh:
                self.J = None
            return out.carry
        self.rejected = True
        return f0
