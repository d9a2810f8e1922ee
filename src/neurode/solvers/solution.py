"""What a solve returns: the trajectory, statistics, a status, and dense output."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import torch
from torch import Tensor

from neurode.errors import InvalidInputError
from neurode.solvers.adaptive import DenseRecord
from neurode.solvers.fixed import _hermite
from neurode.solvers.rk import RKStepper

__all__ = ["DenseOutput", "Solution", "Stats"]

#: Status codes of :class:`Solution` (negative: failure).
STATUS_MESSAGES = {0: "success", 1: "terminated by event", -1: "max_num_steps reached",
                   -2: "step size underflow", -3: "non-finite state"}


@dataclass
class Stats:
    """Solver statistics: function evaluations, steps taken, accepted and rejected, and (implicit
    methods) Jacobian evaluations and LU factorisations. In per-sample mode the first four are
    ``(B,)`` int64 tensors, one count per sample (``nfe`` counts the evaluations of that
    sample's row: the batch is evaluated together while the sample is still running)."""

    nfe: int | Tensor = 0
    n_steps: int | Tensor = 0
    n_accepted: int | Tensor = 0
    n_rejected: int | Tensor = 0
    n_jac: int = 0
    n_lu: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"nfe": self.nfe, "n_steps": self.n_steps, "n_accepted": self.n_accepted,
                "n_rejected": self.n_rejected, "n_jac": self.n_jac, "n_lu": self.n_lu}


class DenseOutput:
    """The continuous solution ``y(t)`` between the steps a solve took.

    Adaptive Runge–Kutta methods use their own continuous extension (4th order for dopri5 and
    tsit5, 7th for dopri8, cubic Hermite otherwise); fixed-grid methods use cubic Hermite
    interpolation through ``(y_n, f_n, y_{n+1}, f_{n+1})``. Call it with a scalar or 1-D tensor of
    times inside the solved interval; returns ``(*y0.shape)`` or ``(len(t), *y0.shape)``.
    """

    def __init__(self, record: DenseRecord, stepper: RKStepper | None, t_start: float,
                 t_end: float, sign: float, unflatten, y_final: Tensor):
        self._rec = record
        self._stepper = stepper
        self._t0 = t_start
        self._t1 = t_end
        self._sign = sign
        self._unflatten = unflatten
        self._y_final = y_final

    @property
    def t_span(self) -> tuple[float, float]:
        """The interval covered, in the user's time."""
        return self._sign * self._t0, self._sign * self._t1

    def _one(self, s: float) -> Tensor:
        rec = self._rec
        lo, hi = self._t0, self._t1
        tol = 1e-12 * max(1.0, abs(lo), abs(hi))
        if not (lo - tol <= s <= hi + tol):
            a, b = sorted(self.t_span)
            raise InvalidInputError(
                f"dense output asked at t={self._sign * s:.6g}, outside the solved interval "
                f"[{a:.6g}, {b:.6g}]")
        if not rec.t:
            return self._y_final
        i = max(0, min(bisect.bisect_right(rec.t, s) - 1, len(rec.t) - 1))
        t0, h, y0, ks = rec.t[i], rec.h[i], rec.y[i], rec.ks[i]
        th = min(1.0, max(0.0, (s - t0) / h))
        if self._stepper is not None:
            return self._stepper.interpolate(y0, ks, h, th)
        f0, y1, f1 = ks
        return _hermite(y0, f0, y1, f1, h, th)

    def __call__(self, t) -> Tensor | tuple[Tensor, ...]:
        tt = torch.as_tensor(t, dtype=torch.float64)
        vals = [self._sign * v for v in tt.reshape(-1).tolist()]
        out = torch.stack([self._one(s) for s in vals])
        if tt.ndim == 0:
            out = out[0]
            return self._unflatten(out[None])[0] if self._is_tuple() else out
        return self._unflatten(out)

    def _is_tuple(self) -> bool:
        return not isinstance(self._unflatten(self._y_final[None]), Tensor)


@dataclass
class Solution:
    """Result of :func:`neurode.solve_ivp`.

    Attributes:
        ts: the requested times ``(T,)``.
        ys: the solution at ``ts``, ``(T, *y0.shape)`` (a tuple of such for tuple ``y0``). Rows
            after a failure (``status < 0``) are NaN.
        stats: :class:`Stats`.
        status: 0 on success, 1 if an event ended the solve, negative on failure (see
            :data:`STATUS_MESSAGES`).
        message: what happened, in words (where and why for failures).
        dense: a :class:`DenseOutput` when the solve was asked for one (``dense=True``).
        sample_status: per-sample mode only: ``(B,)`` int64 status of each sample (``status``
            is then the first failure's code, or 0).
    """

    ts: Tensor
    ys: Tensor | tuple[Tensor, ...]
    stats: Stats = field(default_factory=Stats)
    status: int = 0
    message: str = "success"
    dense: DenseOutput | None = None
    event_t: Tensor | None = None
    sample_status: Tensor | None = None

    @property
    def success(self) -> bool:
        return self.status >= 0

    def evaluate(self, t) -> Tensor | tuple[Tensor, ...]:
        """Dense output ``y(t)`` at any time(s) within the solved span (needs ``dense=True``)."""
        if self.dense is None:
            raise InvalidInputError(
                "this Solution has no dense output; call solve_ivp(..., dense=True)")
        return self.dense(t)
