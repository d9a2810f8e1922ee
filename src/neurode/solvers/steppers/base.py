"""What every stepper shares: the step result, stage times and nudges, Hermite dense output.

A stepper knows one method and owns no loop. From ``(s, ds, y, carry)`` (internal forward time
``s``, step ``ds``, both ``(B,)`` float64, and the ``(B, N)`` state) its ``step`` returns a
`StepOut`: the proposed state, its error estimate, what its dense output needs and the
carry it proposes for the next step (FSAL stage, ALF's ``v``); ``commit`` merges the carry on
acceptance and ``interpolate`` evaluates its own dense output. The loop evaluates the error norm
and runs the controller.

Steps are combined with the *signed* step ``sign·ds`` so the user's field is evaluated as it is
(the problem's time reversal costs no negation per evaluation).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["HermiteDense", "StageTimes", "StepOut", "hermite", "hermite_many", "hermite_rows",
           "nudge"]


class StepOut(NamedTuple):
    """One attempted step.

    ``y1`` ``(B, N)``; ``err``/``err_low`` the error estimate(s) ``(B, N)`` (None for fixed-step
    use); ``ratio`` ``(B,)`` when the stepper computed the error ratio itself; ``dense`` what its
    ``interpolate`` needs; ``carry`` the proposed carry; ``raw`` the tensors the field returned,
    in stage order (quadratures read them); ``safety``/``hold`` hints for the controller;
    ``failed`` ``(B,)`` rows whose stage solve failed (Newton): rejected, the step halved.
    """

    y1: Tensor
    err: Tensor | None
    err_low: Tensor | None
    dense: object
    carry: object
    raw: list | None = None
    ratio: Tensor | None = None
    safety: float | None = None
    hold: Tensor | None = None
    failed: Tensor | None = None


class StageTimes:
    """User times of a step's stages, ``sign·(s + c·ds)`` in the field's time dtype.

    ``c`` holds the nodes; a joint solve (``B = 1``) gets 0-d times, a per-sample solve ``(B,)``.
    """

    def __init__(self, c, sign: float, time_dtype: torch.dtype, device, per_sample: bool):
        self.nodes = tuple(float(x) for x in c)
        self.per_sample = per_sample
        self._c = None
        self.sign = sign
        self.dtype = time_dtype
        self.device = device
        self.cast = time_dtype != torch.float64

    @property
    def c(self) -> Tensor:
        """The nodes as a float64 tensor (``(S, 1)`` per sample), made when first needed."""
        if self._c is None:
            ct = torch.tensor(self.nodes, dtype=torch.float64, device=self.device)
            self._c = ct.view(-1, 1) if self.per_sample else ct
        return self._c

    def __call__(self, s, ds) -> list[Tensor]:
        """Stage times from tensors ``s``, ``ds`` (``(B,)``) or from host floats."""
        if not isinstance(s, Tensor):
            sg, dt, dev = self.sign, self.dtype, self.device
            return [torch.scalar_tensor(sg * (s + c * ds), dtype=dt, device=dev)
                    for c in self.nodes]
        if self.sign < 0:
            s, ds = -s, -ds
        tu = torch.addcmul(s, self.c, ds)
        if self.cast:
            tu = tu.to(self.dtype)
        return list(tu.unbind(0))

    def at(self, s) -> Tensor:
        """The user time at ``s`` alone (the step's start)."""
        if not isinstance(s, Tensor):
            return torch.tensor(self.sign * s, dtype=self.dtype, device=self.device)
        tu = (s if self.sign > 0 else -s).to(self.dtype)
        return tu if self.per_sample else tu.reshape(())


def nudge(t: Tensor, sign: float, side: int, mask: Tensor | None = None) -> Tensor:
    """``t`` moved one ulp just after (``side = +1``) or just before (``−1``) itself, in the
    direction of integration; only where ``mask`` (if given)."""
    toward = t + (sign * side) * math.inf
    moved = torch.nextafter(t, toward)
    return moved if mask is None else torch.where(mask, moved, t)


def hermite(y0: Tensor, f0: Tensor, y1: Tensor, f1: Tensor, h, th: float) -> Tensor:
    """Cubic Hermite interpolant through ``(y0, f0)`` and ``(y1, f1)`` at ``θ`` (``h`` signed,
    a number or a tensor broadcasting against the state)."""
    th2, th3 = th * th, th * th * th
    out = torch.add(y0 * (2 * th3 - 3 * th2 + 1), y1, alpha=-2 * th3 + 3 * th2)
    if isinstance(h, Tensor):
        return out.addcmul_(f0, h * (th3 - 2 * th2 + th)).addcmul_(f1, h * (th3 - th2))
    out.add_(f0, alpha=h * (th3 - 2 * th2 + th))
    out.add_(f1, alpha=h * (th3 - th2))
    return out


def hermite_many(y0: Tensor, f0: Tensor, y1: Tensor, f1: Tensor, h: float,
                 thetas: list[float]) -> Tensor:
    """The Hermite interpolant at several ``θ`` for one row: ``(m, N)`` from ``(N,)`` inputs."""
    if len(thetas) == 1:
        return hermite(y0, f0, y1, f1, h, thetas[0]).unsqueeze(0)
    rows = []
    for th in thetas:
        th2, th3 = th * th, th * th * th
        rows.append((2 * th3 - 3 * th2 + 1, -2 * th3 + 3 * th2, h * (th3 - 2 * th2 + th),
                     h * (th3 - th2)))
    rd = y0.real.dtype if y0.is_complex() else y0.dtype
    W = torch.tensor(rows, dtype=rd, device=y0.device).to(y0.dtype)
    return W @ torch.stack([y0, y1, f0, f1])


def hermite_rows(y0: Tensor, f0: Tensor, y1: Tensor, f1: Tensor, hs: Tensor,
                 theta: Tensor) -> Tensor:
    """Per row ``b`` of ``(B, N)`` inputs, the Hermite interpolant at a window of ``θ``
    ``(B, W)``: ``(B, W, N)`` (``hs`` the ``(B,)`` signed steps)."""
    rd = y0.real.dtype if y0.is_complex() else y0.dtype
    th = theta.to(rd)
    th2, th3 = th * th, th * th * th
    h = hs.to(rd).view(-1, 1)
    W = torch.stack([2 * th3 - 3 * th2 + 1, -2 * th3 + 3 * th2, h * (th3 - 2 * th2 + th),
                     h * (th3 - th2)], -1).to(y0.dtype)
    return W @ torch.stack([y0, y1, f0, f1], 1)


class HermiteDense:
    """Dense output for steppers without their own continuous extension: a step's dense info
    is its end slopes ``(f0, f1)`` and the interpolant is the cubic Hermite one."""

    def complete(self, field, s, ds, y, dense) -> None:
        return None

    def slopes(self, out: StepOut):
        """The end slopes ``(f0, f1)`` of the step's cubic Hermite interpolant."""
        return out.dense

    def interpolate(self, y: Tensor, y1: Tensor, dense, hs: float, thetas: list[float],
                    row: int = 0) -> Tensor:
        f0, f1 = dense
        return hermite_many(y[row], f0[row], y1[row], f1[row], hs, thetas)
