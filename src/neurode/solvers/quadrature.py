"""Quadratures carried beside the state: ``Q(t) = Q(t0) + ∫ q(s) ds`` with Runge–Kutta weights.

Some ODE systems contain components that are pure integrals: their derivative depends on the
state but nothing depends on them. The adjoint's parameter gradient ``da_θ/dt = −a·∂f/∂θ`` is the
important case. Putting them into the state vector costs, per evaluation, a copy of all of them
into one flat tensor and ``O(stages)`` vector operations over that tensor per stage. Integrated
here instead, they cost one multiply–add per stage and step, on the tensors the vector field
already returned, with no concatenation: ``Q ← Q + h Σ_i b_i q_i``.

Protocol: the vector field returns its state derivative ``k`` with the quadrature derivatives of
the same evaluation attached (:func:`attach`); the integration loop hands the stage values ``ks``
of each step to :meth:`Quadrature.ratio` (error control) and :meth:`Quadrature.accept`. Attaching
to the returned tensor makes the pairing immune to FSAL reuse, rejected steps and the extra
evaluations of the initial-step heuristic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from neurode.solvers.rk import RKStepper

__all__ = ["Quadrature", "attach"]

_ATTR = "_neurode_quadrature"


def attach(k: Tensor, q: list[Tensor]) -> Tensor:
    """Return ``k`` carrying ``q`` (the quadrature derivatives of the same evaluation)."""
    setattr(k, _ATTR, q)
    return k


def _stage_q(k: Tensor) -> list[Tensor]:
    try:
        return getattr(k, _ATTR)
    except AttributeError:
        raise RuntimeError("internal error: a stage value carries no quadrature derivatives; the "
                           "vector field must return attach(k, q) for every evaluation") from None


class Quadrature:
    """Running integrals ``values`` (a list of tensors) advanced with the stepper's weights.

    Args:
        values: the integrals at the start (not modified; :attr:`values` is rebound per step).
        stepper: the Runge–Kutta stepper of the loop (its ``b`` and ``b_error`` weights).
        scale: factor on every increment (``-1`` when the loop runs in reversed internal time).
        rtol, atol: tolerances of the error control, when ``controlled``.
        controlled: include the quadratures in the step-size control (a mixed RMS norm: the
            largest RMS over the tensors, as for a tuple state); False leaves them out, which is
            the adjoint's seminorm.
    """

    def __init__(self, values: Sequence[Tensor], stepper: RKStepper, *, scale: float = 1.0,
                 rtol: float = 0.0, atol: float = 0.0, controlled: bool = False):
        self.values = list(values)
        self._b = stepper.b
        self._b_error = stepper.b_error
        self.scale = scale
        self.rtol, self.atol = rtol, atol
        self.controlled = controlled and stepper.b_error is not None and bool(self.values)
        self._proposed: list[Tensor] | None = None

    def _combine(self, qs: list[list[Tensor]], weights, h: float) -> list[Tensor] | None:
        out = None
        for j, w in weights:
            if out is None:
                out = torch._foreach_mul(qs[j], h * w)
            else:
                torch._foreach_add_(out, qs[j], alpha=h * w)
        return out

    def ratio(self, ks: Sequence[Tensor], h: float, ratio: Tensor) -> Tensor:
        """Fold the quadratures' error into the loop's error ratio (unchanged if uncontrolled)."""
        if not self.controlled:
            return ratio
        qs = [_stage_q(k) for k in ks]
        hs = h * self.scale
        inc = self._combine(qs, self._b, hs)
        new = self.values if inc is None else torch._foreach_add(self.values, inc)
        self._proposed = new
        err = self._combine(qs, self._b_error, hs)
        if err is None:
            return ratio
        with torch.no_grad():
            tol = torch._foreach_maximum(torch._foreach_abs(self.values), torch._foreach_abs(new))
            torch._foreach_mul_(tol, self.rtol)
            torch._foreach_add_(tol, self.atol)
            scaled = torch._foreach_div(torch._foreach_abs(err), tol)
            norms = torch._foreach_norm(scaled)
            rms = torch.stack([n / math.sqrt(max(x.numel(), 1))
                               for n, x in zip(norms, scaled, strict=True)])
            return torch.maximum(ratio, rms.max().to(ratio.dtype))

    def accept(self, ks: Sequence[Tensor], h: float) -> None:
        """Advance the integrals over the accepted step whose stage values are ``ks``."""
        if self._proposed is not None:
            self.values, self._proposed = self._proposed, None
            return
        if not self.values:
            return
        inc = self._combine([_stage_q(k) for k in ks], self._b, h * self.scale)
        if inc is not None:
            self.values = torch._foreach_add(self.values, inc)
