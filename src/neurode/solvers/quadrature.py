"""Quadratures carried beside the state: ``Q(t) = Q(t0) + ∫ q(s) ds`` with Runge–Kutta weights.

Some ODE systems contain components that are pure integrals: their derivative depends on the
state but nothing depends on them. The adjoint's parameter gradient ``da_θ/dt = −a·∂f/∂θ`` is the
important case. Putting them into the state vector costs, per evaluation, a copy of all of them
into one flat tensor and the stage arithmetic over that tensor. Integrated here instead, they cost
one multiply–add per stage and step, on the tensors the vector field already returned:
``Q ← Q + h Σ_i b_i q_i``.

Protocol: the vector field returns its state derivative ``k`` with the quadrature derivatives of
the same evaluation attached (`attach`); the loop hands each step's `StepOut` to
`Quadrature.ratio` (error control, adaptive loop), then `Quadrature.commit` with the
accept decision (a tensor: no host read), or `Quadrature.advance` on a fixed grid.
Attaching to the returned tensor makes the pairing immune to rejected steps and to the extra
evaluation of the initial-step heuristic. Joint solves only (``B = 1``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from neurode.solvers.tableau import ButcherTableau

__all__ = ["AttachingField", "Quadrature", "attach", "stage_q"]

_ATTR = "_neurode_quadrature"


def attach(k: Tensor, q: list[Tensor]) -> Tensor:
    """Return ``k`` carrying ``q`` (the quadrature derivatives of the same evaluation)."""
    setattr(k, _ATTR, q)
    return k


class AttachingField:
    """A problem's field whose every value carries ``q[0]``: the quadrature derivatives that the
    wrapped function computed in the same evaluation (it stores them in ``q[0]``)."""

    def __init__(self, field, q: list[list[Tensor]]):
        self.field = field
        self.q = q

    @property
    def nfe(self) -> int:
        return self.field.nfe

    @property
    def user_shape(self):
        return self.field.user_shape

    def __call__(self, tu: Tensor, y: Tensor) -> Tensor:
        return attach(self.field(tu, y), self.q[0])

    def user(self, tu: Tensor, y: Tensor) -> Tensor:
        return attach(self.field.user(tu, y), self.q[0])


def stage_q(k: Tensor) -> list[Tensor]:
    try:
        return getattr(k, _ATTR)
    except AttributeError:
        raise RuntimeError("internal error: a stage value carries no quadrature derivatives; the "
                           "vector field must return attach(k, q) for every evaluation") from None


def _step(hs, scale: float):
    """The signed step times ``scale``: a number, or a 0-d tensor for ``_foreach`` ops."""
    if isinstance(hs, Tensor):
        return (hs * scale).reshape(())
    return hs * scale


def _nonzero(row) -> tuple[tuple[int, float], ...]:
    return tuple((j, float(x)) for j, x in enumerate(row) if x != 0.0)


class Quadrature:
    """Running integrals ``values`` (a list of tensors) advanced with a tableau's weights.

    Args:
        values: the integrals at the start (not modified; `values` is rebound per step).
        tableau: the explicit Runge–Kutta tableau of the loop (its ``b`` and ``b_error``).
        scale: factor on every increment (the loops pass the signed step ``h``, so the
            integrals run in the user's time; ``scale`` rescales them further).
        rtol, atol: tolerances of the error control, when ``controlled``.
        controlled: include the quadratures in the step-size control (a mixed RMS norm: the
            largest RMS over the tensors, as for a tuple state); False leaves them out, which is
            the adjoint's seminorm.
    """

    def __init__(self, values: Sequence[Tensor], tableau: ButcherTableau, *, scale: float = 1.0,
                 rtol: float = 0.0, atol: float = 0.0, controlled: bool = False):
        self.values = list(values)
        self._b = _nonzero(tableau.b)
        self._e = None if tableau.b_error is None else _nonzero(tableau.b_error)
        self.scale = scale
        self.rtol, self.atol = rtol, atol
        self.controlled = controlled and self._e is not None and bool(self.values)
        self._q0: list[Tensor] | None = None
        self._proposed: list[Tensor] | None = None

    def start(self, k0: Tensor) -> None:
        """Remember the quadrature derivatives of the first stage (``k0``)."""
        self._q0 = stage_q(k0)

    def _qs(self, raw: list[Tensor], first_from_carry: bool) -> list[list[Tensor]]:
        qs = [stage_q(k) for k in raw[1:]]
        return [self._q0 if first_from_carry else stage_q(raw[0]), *qs]

    @staticmethod
    def _combine(qs: list[list[Tensor]], weights) -> list[Tensor] | None:
        out = None
        for j, w in weights:
            if out is None:
                out = torch._foreach_mul(qs[j], w)
            else:
                torch._foreach_add_(out, qs[j], alpha=w)
        return out

    def _increment(self, qs, hs: Tensor) -> list[Tensor]:
        inc = self._combine(qs, self._b)
        if inc is None:
            return list(self.values)
        torch._foreach_mul_(inc, _step(hs, self.scale))
        return torch._foreach_add(self.values, inc)

    def ratio(self, out, hs: Tensor, ratio: Tensor) -> Tensor:
        """Propose the integrals over the attempted step and fold their error into ``ratio``."""
        if not self.values:
            return ratio
        qs = self._qs(out.raw, True)
        self._last_q = stage_q(out.raw[-1])
        new = self._increment(qs, hs)
        self._proposed = new
        if not self.controlled:
            return ratio
        err = self._combine(qs, self._e)
        if err is None:
            return ratio
        with torch.no_grad():
            torch._foreach_mul_(err, _step(hs, self.scale))
            tol = torch._foreach_maximum(torch._foreach_abs(self.values), torch._foreach_abs(new))
            torch._foreach_mul_(tol, self.rtol)
            torch._foreach_add_(tol, self.atol)
            scaled = torch._foreach_div(torch._foreach_abs(err), tol)
            norms = torch._foreach_norm(scaled)
            rms = torch.stack([n / math.sqrt(max(x.numel(), 1))
                               for n, x in zip(norms, scaled, strict=True)])
            return torch.maximum(ratio, rms.max().to(ratio.dtype))

    def commit(self, accept) -> None:
        """Keep the proposed integrals where the step was accepted (``accept`` ``(1,)``, or a
        host bool)."""
        if not self.values:
            return
        if isinstance(accept, bool):
            if accept:
                self.values, self._q0 = self._proposed, self._last_q
            self._proposed = None
            return
        a = accept.reshape(())
        self.values = [torch.where(a, p, v) for p, v in zip(self._proposed, self.values,
                                                            strict=True)]
        self._q0 = [torch.where(a, p, v) for p, v in zip(self._last_q, self._q0, strict=True)]
        self._proposed = None

    def advance(self, out, hs: Tensor) -> None:
        """Advance the integrals over an always-accepted (fixed-grid) step."""
        if self.values:
            self.values = self._increment(self._qs(out.raw, False), hs)
