"""What a solve returns: the trajectory, statistics, a status, and dense output."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from neurode.errors import InvalidInputError, Status

__all__ = ["STATUS_MESSAGES", "DenseOutput", "Segment", "Solution", "Stats"]

#: Status codes of [`Solution`][neurode.Solution] and their meaning (see
#: [`neurode.errors.Status`][neurode.Status]).
STATUS_MESSAGES = {int(s): s.message for s in Status}


class Segment(NamedTuple):
    """One method's part of a solve: ``method`` ran from ``t0`` to ``t1`` (the user's time) with
    ``nfe`` evaluations in ``n_steps`` steps. ``method="auto"`` solves have one per switch."""

    method: str
    t0: float
    t1: float
    nfe: int
    n_steps: int


@dataclass
class Stats:
    """Solver statistics: function evaluations, steps taken, accepted and rejected, and (implicit
    methods) Jacobian evaluations and LU factorisations. In per-sample mode the first four are
    ``(B,)`` int64 tensors, one count per sample (``nfe`` counts the evaluations of that
    sample's row: the batch is evaluated together while the sample is still running).
    ``segments``: which method ran over which interval (`Segment`; joint solves).

    Attributes:
        nfe: number of evaluations of the vector field (an ``int``; per sample a ``(B,)``
            int64 tensor).
        n_steps: steps attempted, accepted and rejected (an ``int``, or ``(B,)`` per sample).
        n_accepted: accepted steps (an ``int``, or ``(B,)`` per sample).
        n_rejected: steps rejected by the error control and retried with a smaller size (an
            ``int``, or ``(B,)`` per sample; always 0 on fixed grids).
        n_jac: Jacobian evaluations of the implicit methods' Newton iterations (0 for explicit
            methods and in per-sample mode).
        n_lu: LU factorisations of the Newton matrix (implicit methods; 0 otherwise and in
            per-sample mode).
        segments: one ``Segment(method, t0, t1, nfe, n_steps)`` per method that ran, in the
            user's time: a single one for an ordinary solve, one per switch for
            ``method="auto"``; empty in per-sample mode.
    """

    nfe: int | Tensor = 0
    n_steps: int | Tensor = 0
    n_accepted: int | Tensor = 0
    n_rejected: int | Tensor = 0
    n_jac: int = 0
    n_lu: int = 0
    segments: list[Segment] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        """The six counters as a plain dict (for logging or JSON), ``segments`` left out.

        Returns:
            ``{"nfe", "n_steps", "n_accepted", "n_rejected", "n_jac", "n_lu"}`` mapped to the
                attributes of the same names: ``int`` values, except in per-sample mode, where the
                first four are the ``(B,)`` int64 tensors themselves (call ``.tolist()`` on them
                before serialising).
        """
        return {"nfe": self.nfe, "n_steps": self.n_steps, "n_accepted": self.n_accepted,
                "n_rejected": self.n_rejected, "n_jac": self.n_jac, "n_lu": self.n_lu}


class DenseOutput:
    """The continuous solution ``y(t)`` between the steps a solve took.

    Each accepted step answers from its method's own continuous extension (4th order for dopri5
    and tsit5, 7th for dopri8, 6th for vern6 and vern7, 8th for vern8, 9th for vern9), and from
    a cubic Hermite interpolant for the others and on fixed grids. Call it with a scalar or 1-D
    tensor of times inside the solved interval; returns ``(*y0.shape)`` or
    ``(len(t), *y0.shape)`` (tuples for tuple states). A time outside ``t_span`` raises
    [`InvalidInputError`][neurode.InvalidInputError].

    Built by [`neurode.solve_ivp`][] (``dense=True``) and [`neurode.odeint_dense`][]; the
    constructor arguments below are internal (flattened state, forward time).

    Args:
        starts: each accepted step's start (internal forward time), increasing.
        sizes: each accepted step's size (internal forward time), as long as ``starts``.
        interp: ``interp(i, θs) -> [(N,), ...]``: the state at each ``θ ∈ [0, 1]`` of step ``i``.
        t_span: the solved interval ``(t0, t1)`` in internal forward time.
        sign: the user's time direction: ``+1.0`` (increasing) or ``-1.0`` (user time is
            ``sign`` times internal time).
        unflatten: maps ``(T, N)`` flat states to the user's structure, ``(T, *y0.shape)`` (a
            tuple of such for tuple states).
        y_end: the state at the end of the interval, ``(N,)``; returned when no step was taken.
        is_tuple: whether the user's state is a tuple of tensors (a scalar time then returns a
            tuple of ``(*y0[k].shape)`` tensors).
    """

    def __init__(self, starts: list[float], sizes: list[float],
                 interp: Callable[[int, list[float]], list[Tensor]],
                 t_span: tuple[float, float],
                 sign: float, unflatten: Callable[[Tensor], object], y_end: Tensor,
                 is_tuple: bool):
        self._t = starts
        self._h = sizes
        self._interp = interp
        self._t0, self._t1 = t_span
        self._sign = sign
        self._unflatten = unflatten
        self._y_end = y_end
        self._is_tuple = is_tuple

    @property
    def t_span(self) -> tuple[float, float]:
        """The interval covered, in the user's time."""
        return self._sign * self._t0, self._sign * self._t1

    def _many(self, vals: list[float]) -> list[Tensor]:
        """The state at the internal times ``vals``; the times that fall in one step are
        interpolated together (as the solve's own outputs are, so both agree bit for bit)."""
        lo, hi = self._t0, self._t1
        tol = 1e-12 * max(1.0, abs(lo), abs(hi))
        for s in vals:
            if not (lo - tol <= s <= hi + tol):
                a, b = sorted(self.t_span)
                raise InvalidInputError(
                    f"dense output asked at t={self._sign * s:.6g}, outside the solved interval "
                    f"[{a:.6g}, {b:.6g}]")
        if not self._t:
            return [self._y_end for _ in vals]
        groups: dict[int, list[tuple[int, float]]] = {}
        for k, s in enumerate(vals):
            i = max(0, min(bisect.bisect_right(self._t, s) - 1, len(self._t) - 1))
            groups.setdefault(i, []).append((k, min(1.0, max(0.0, (s - self._t[i]) / self._h[i]))))
        out: list[Tensor | None] = [None] * len(vals)
        for i, items in groups.items():
            rows = self._interp(i, [th for _, th in items])
            for (k, _), r in zip(items, rows, strict=True):
                out[k] = r
        return out

    def __call__(self, t) -> Tensor | tuple[Tensor, ...]:
        tt = torch.as_tensor(t, dtype=torch.float64)
        vals = [self._sign * v for v in tt.reshape(-1).tolist()]
        out = self._unflatten(torch.stack(self._many(vals)))
        if tt.ndim == 0:
            return tuple(o[0] for o in out) if self._is_tuple else out[0]
        return out


@dataclass
class Solution:
    """Result of [`neurode.solve_ivp`][].

    Attributes:
        ts: the requested times ``(T,)`` (``(B, T)`` per sample, as given).
        ys: the solution at ``ts``, ``(T, *y0.shape)`` (a tuple of such for tuple ``y0``). Rows
            after a failure (``status < 0``) are NaN.
        stats: [`Stats`][neurode.Stats].
        status: 0 on success, negative on failure (see
            [`neurode.errors.Status`][neurode.Status]; code 1, "terminated by event", is not
            produced by [`neurode.solve_ivp`][], which has no events).
        message: what happened, in words (where and why for failures).
        dense: a [`DenseOutput`][neurode.DenseOutput] when the solve was asked for one
            (``dense=True``).
        event_t: the time of an event that ended the solve; [`neurode.solve_ivp`][] takes no
            event function, so it is always None there (use [`neurode.odeint_event`][] or
            [`neurode.odeint_hybrid`][] for events).
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

    def evaluate(self, t: float | Tensor) -> Tensor | tuple[Tensor, ...]:
        """Dense output ``y(t)`` at any time(s) within the solved span (needs ``dense=True``).

        The same as calling the [`DenseOutput`][neurode.DenseOutput] held in ``dense``.

        Args:
            t: the time(s), in the user's time: a Python float or 0-d tensor for one time, or a
                1-D tensor ``(K,)`` of times in any order; each must lie inside
                ``dense.t_span``: from ``t_eval[0]`` to ``t_eval[-1]`` (whichever way time
                ran), or to where a solve that failed under ``throw=False`` stopped. Converted
                to float64 for the lookup, so no gradient flows to ``t``.

        Returns:
            ``y(t)``: ``(*y0.shape)`` for a scalar ``t``, ``(K, *y0.shape)`` for a 1-D ``t``, in
                ``y0``'s dtype and device (a tuple of such for a tuple ``y0``).

        Raises:
            InvalidInputError: the solve was made without ``dense=True`` (so ``dense`` is
                None), or a time lies outside the solved interval.
        """
        if self.dense is None:
            raise InvalidInputError(
                "this Solution has no dense output; call solve_ivp(..., dense=True)")
        return self.dense(t)
