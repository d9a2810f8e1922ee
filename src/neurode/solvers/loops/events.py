"""Terminal events, shared by every loop and therefore by every method.

The event function is evaluated at the end of each accepted step; a sign change of the
(combined) event function between a step's ends is located by the Illinois variant of regula
falsi on that step's own dense output, to full floating-point resolution of time. Several event
functions (a tensor-valued ``event_fn``) are combined as torchdiffeq does: each is made positive
at ``t0`` and the minimum is tracked.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from neurode.errors import InvalidInputError, NonFiniteStateError
from neurode.solvers.problem import Problem

__all__ = ["EventWatcher", "illinois"]

_EPS = 2.220446049250313e-16


def illinois(g, a: float, b: float, ga: float, gb: float) -> float:
    """A root of ``g`` in ``[a, b]`` given ``ga·gb < 0`` (Illinois regula falsi, then bisection).

    Returns the end of the final bracket on the crossing's side, so ``g`` has changed sign there.
    """
    side = 0
    for _ in range(200):
        if abs(b - a) <= 4 * _EPS * max(1.0, abs(a), abs(b)):
            break
        c = b - gb * (b - a) / (gb - ga) if gb != ga else 0.5 * (a + b)
        if not (min(a, b) < c < max(a, b)):
            c = 0.5 * (a + b)
        gc = g(c)
        if gc == 0.0:
            return c
        if (gc > 0) == (gb > 0):
            b, gb = c, gc
            if side == -1:
                ga *= 0.5
            side = -1
        else:
            a, ga = c, gc
            if side == 1:
                gb *= 0.5
            side = 1
    return b


class EventWatcher:
    """Tracks the sign of the combined event function over the accepted steps of a joint solve."""

    def __init__(self, pb: Problem, event_fn):
        if not callable(event_fn):
            raise InvalidInputError("event_fn must be callable as event_fn(t, y) -> tensor")
        self.pb = pb
        self.event_fn = event_fn
        with torch.no_grad():
            v0 = self._raw(pb.t_out[0], pb.y0)
        self.signs = torch.where(v0 >= 0, 1.0, -1.0).to(v0.dtype)
        self.g_prev = float((v0 * self.signs).min())
        self._check(self.g_prev, pb.t_out[0])

    def _check(self, g: float, s: float) -> None:
        if math.isnan(g):
            t = self.pb.sign * s
            raise NonFiniteStateError(f"event_fn returned NaN at t={t:.6g}; an event function "
                                      "must be finite where the solution is", t=t)

    def _raw(self, s: float, y: Tensor) -> Tensor:
        out = self.event_fn(self.pb.user_time(s), self.pb.layout.to_user(y))
        if not isinstance(out, Tensor):
            out = torch.as_tensor(out)
        if out.is_complex():
            raise InvalidInputError("event_fn must return a real tensor")
        return out.detach().reshape(-1)

    def combined(self, s: float, y: Tensor) -> Tensor:
        """The combined event function at ``(s, y)`` as a 0-d tensor (no host read)."""
        return (self._raw(s, y) * self.signs).min()

    def values(self, points: list[tuple[float, Tensor]]) -> list[float]:
        """The combined function at several ``(s, y)``: one host read for all."""
        with torch.no_grad():
            return torch.stack([self.combined(s, y) for s, y in points]).tolist()

    def locate(self, s0: float, ds: float, g1: float, interp) -> float | None:
        """The first event time inside the accepted step ``[s0, s0 + ds]`` whose end value is
        ``g1``, or None (the sign is unchanged: the watch moves on). ``interp(s) -> y``."""
        s1 = s0 + ds
        self._check(g1, s1)
        if g1 > 0:
            self.g_prev = g1
            return None

        def g(s):
            with torch.no_grad():
                return float(self.combined(s, interp(s)))

        a, ga = s0, self.g_prev
        if g1 == 0:
            # zero at the step's end (a script may force g = 0 beyond some horizon) does not
            # mean no crossing before it: the first sample where g <= 0 brackets the first one
            thetas = [k / _SAMPLES for k in range(1, _SAMPLES)]
            vals = self.values([(s0 + th * ds, interp(s0 + th * ds)) for th in thetas])
            for th, v in zip(thetas, vals, strict=True):
                sk = s0 + th * ds
                self._check(v, sk)
                if v < 0:
                    return illinois(g, a, sk, ga, v)
                if v == 0:
                    return _first_nonpositive(g, a, sk)
                a, ga = sk, v
            return _first_nonpositive(g, a, s1)
        return illinois(g, a, s1, ga, g1)


_SAMPLES = 16


def _first_nonpositive(g, a: float, b: float) -> float:
    """The boundary of ``{g <= 0}`` in ``[a, b]`` with ``g(a) > 0 >= g(b)``, by bisection; a
    sign change found on the way is refined by Illinois instead."""
    for _ in range(200):
        if abs(b - a) <= 4 * _EPS * max(1.0, abs(a), abs(b)):
            break
        c = 0.5 * (a + b)
        gc = g(c)
        if gc > 0:
            a = c
        elif gc < 0:
            return illinois(g, a, c, g(a), gc)
        else:
            b = c
    return b
