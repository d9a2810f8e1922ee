"""Events, shared by every loop and therefore by every method.

The event function is evaluated at the end of each accepted step; a sign change between a step's
ends is located by the Illinois variant of regula falsi on that step's own dense output, to full
floating-point resolution of time. The solve stops at the first event; hybrid solves
(`neurode.gradients.hybrid`) go on from there.

Two kinds of event function:

* a plain callable (torchdiffeq's ``odeint_event``): several values (a tensor) are combined as
  torchdiffeq does — each made positive at ``t0``, the minimum tracked — so any crossing stops;
* an `EventSpec`: each of its ``E`` functions counts only crossings in its own direction
  (+1 rising, −1 falling, 0 both) and the watcher reports which one fired first
  (`EventSpec.which`). A function exactly zero at the start (a state just reset onto its
  surface) is not watched until a step end gives it a sign.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from neurode.errors import InvalidInputError, NonFiniteStateError
from neurode.solvers.problem import Problem

__all__ = ["EventSpec", "EventWatcher", "illinois"]

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


class EventSpec:
    """``E`` event functions with directions, for `EventWatcher`.

    ``fn(t, y)`` returns ``E`` values (any shape with ``E`` elements); ``direction`` is a tuple of
    ``E`` entries in {−1, 0, +1}; ``active`` (optional) a tuple of ``E`` bools, the functions
    watched; ``unsigned`` the functions whose value at the start does not count (the one that
    just fired, at a hybrid solve's restart: its value there is zero up to rounding, of either
    sign), watched from the first step's end. After a solve that stopped at an event, ``which``
    is the index of the function that crossed first.
    """

    def __init__(self, fn, direction: tuple[int, ...], active: tuple[bool, ...] | None = None,
                 unsigned: tuple[int, ...] = ()):
        self.fn = fn
        self.direction = tuple(direction)
        self.active = tuple(active) if active is not None else (True,) * len(self.direction)
        self.unsigned = tuple(unsigned)
        self.which: int | None = None

    def __call__(self, t, y):
        return self.fn(t, y)


class EventWatcher:
    """Tracks the sign of the event function(s) over the accepted steps of a joint solve."""

    def __init__(self, pb: Problem, event_fn):
        if not callable(event_fn):
            raise InvalidInputError("event_fn must be callable as event_fn(t, y) -> tensor")
        self.pb = pb
        self.event_fn = event_fn
        self.spec = event_fn if isinstance(event_fn, EventSpec) else None
        with torch.no_grad():
            v0 = self._raw(pb.t_out[0], pb.y0)
        if self.spec is not None:
            E = len(self.spec.direction)
            if v0.numel() != E:
                raise InvalidInputError(f"event_fn returned {v0.numel()} values; direction and "
                                        f"terminal were given for {E}")
            self.spec.which = None
            # h_e = orientation · g_e: an event of function e is h_e going from > 0 to <= 0
            g0 = [0.0 if e in self.spec.unsigned else g for e, g in enumerate(v0.tolist())]
            self.orient = [self._orient(d, g) for d, g in zip(self.spec.direction, g0,
                                                                strict=True)]
            self.h_prev = [o * g if o else None for o, g in zip(self.orient, g0, strict=True)]
            for g in v0.tolist():
                self._check(g, pb.t_out[0])
            return
        self.signs = torch.where(v0 >= 0, 1.0, -1.0).to(v0.dtype)
        self.g_prev = float((v0 * self.signs).min())
        self._check(self.g_prev, pb.t_out[0])

    @staticmethod
    def _orient(direction: int, g: float) -> float:
        """+1 / −1: the factor making a watched crossing a fall of ``h`` through 0; 0 while a
        two-sided function has no sign yet."""
        if direction < 0:
            return 1.0
        if direction > 0:
            return -1.0
        return 0.0 if g == 0 else (1.0 if g > 0 else -1.0)

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
        """The combined event function at ``(s, y)`` as a 0-d tensor (no host read); with an
        `EventSpec`, all ``E`` values ``(E,)``."""
        if self.spec is not None:
            return self._raw(s, y)
        return (self._raw(s, y) * self.signs).min()

    def values(self, points: list[tuple[float, Tensor]]) -> list:
        """The event function at several ``(s, y)``: one host read for all."""
        with torch.no_grad():
            return torch.stack([self.combined(s, y) for s, y in points]).tolist()

    def _locate_spec(self, s0: float, ds: float, g1: list[float], interp) -> float | None:
        """The earliest watched crossing in the step, over the spec's functions."""
        s1 = s0 + ds
        best, which = None, None
        for e, (o, hp, g) in enumerate(zip(self.orient, self.h_prev, g1, strict=True)):
            self._check(g, s1)
            if not o:  # a two-sided function gets its sign at its first non-zero value
                o = self._orient(0, g)
                self.orient[e] = o
                self.h_prev[e] = o * g if o else None
                continue
            h1 = o * g
            if hp is not None and hp > 0 >= h1 and self.spec.active[e]:
                def h(s, e=e, o=o):
                    with torch.no_grad():
                        return o * float(self._raw(s, interp(s))[e])

                root = self._root(h, s0, s1, hp, h1, interp)
                if best is None or root < best:
                    best, which = root, e
            self.h_prev[e] = h1
        if best is not None:
            self.spec.which = which
        return best

    def locate(self, s0: float, ds: float, g1, interp) -> float | None:
        """The first event time inside the accepted step ``[s0, s0 + ds]`` whose end value is
        ``g1``, or None (the sign is unchanged: the watch moves on). ``interp(s) -> y``."""
        if self.spec is not None:
            return self._locate_spec(s0, ds, g1, interp)
        s1 = s0 + ds
        self._check(g1, s1)
        if g1 > 0:
            self.g_prev = g1
            return None

        def g(s):
            with torch.no_grad():
                return float(self.combined(s, interp(s)))

        return self._root(g, s0, s1, self.g_prev, g1, interp)

    def _root(self, g, s0: float, s1: float, ga: float, g1: float, interp) -> float:
        """The first ``s`` in ``[s0, s1]`` with ``g(s) <= 0``, given ``g(s0) = ga > 0 >= g1``."""
        a = s0
        ds = s1 - s0
        if g1 == 0:
            # zero at the step's end (a script may force g = 0 beyond some horizon) does not
            # mean no crossing before it: the first sample where g <= 0 brackets the first one
            thetas = [k / _SAMPLES for k in range(1, _SAMPLES)]
            vals = [g(s0 + th * ds) for th in thetas]
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
