"""Terminal events: integrate until ``event_fn(t, y)`` crosses zero.

The crossing is detected on accepted steps (a sign change of the event function between the
step's ends) and located by the Illinois variant of regula falsi on the step's dense output, to
full floating-point resolution of time. Several event functions (a tensor-valued ``event_fn``) are
combined as torchdiffeq does: each is made positive at ``t0`` and the minimum is tracked.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from neurode.errors import InvalidInputError
from neurode.solvers.adaptive import AdaptiveConfig, integrate_adaptive
from neurode.solvers.fixed import _hermite
from neurode.solvers.problem import Problem, make_problem
from neurode.solvers.rk import get_stepper

__all__ = ["integrate_event"]

_EPS = 2.220446049250313e-16


def _illinois(g, a: float, b: float, ga: float, gb: float) -> float:
    """A root of ``g`` in ``[a, b]`` given ``ga·gb < 0`` (Illinois regula falsi, then bisection)."""
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
    # The last point whose sign matches the start is before the crossing; return the crossing end.
    return b


class _EventWatcher:
    """Tracks the sign of the (combined) event function across accepted steps."""

    def __init__(self, pb: Problem, event_fn, interp):
        self.pb = pb
        self.event_fn = event_fn
        self.interp = interp  # (t0, y0, t1, y1, data, h, s) -> y(s)
        with torch.no_grad():
            v0 = self._raw(pb.t_out[0], pb.y0)
        self.signs = torch.where(v0 >= 0, 1.0, -1.0).to(v0.dtype)
        self.g0 = float((v0.detach() * self.signs).min())
        self.found: tuple[float, Tensor] | None = None

    def _raw(self, s: float, y: Tensor) -> Tensor:
        out = self.event_fn(self.pb.time_tensor(s), self.pb.user_state(y))
        if not isinstance(out, Tensor):
            out = torch.as_tensor(out)
        if out.is_complex():
            raise InvalidInputError("event_fn must return a real tensor")
        return out.reshape(-1)

    def value(self, s: float, y: Tensor) -> float:
        with torch.no_grad():
            return float((self._raw(s, y).detach() * self.signs).min())

    def __call__(self, t0, y0, t1, y1, data, h):
        g1 = self.value(t1, y1)
        if g1 > 0:
            self.g0 = g1
            return None

        def g(s):
            with torch.no_grad():
                return self.value(s, self.interp(t0, y0, t1, y1, data, h, s))

        s = t1 if g1 == 0 else _illinois(g, t0, t1, self.g0, g1)
        return s


def integrate_event(func, y0, t, event_fn, *, rtol=1e-7, atol=1e-9, method=None, options=None,
                    callback_suffix: str = ""):
    """Integrate from ``t[0]`` until ``event_fn(t, y)`` is zero; return ``(event_t, solution)``.

    Only ``t[0]`` is used, and ``t[1]`` (if present) for the direction of time, as in torchdiffeq.
    ``solution`` is ``(2, *y0.shape)``: the state at ``t[0]`` and at the event.
    """
    if not callable(event_fn):
        raise InvalidInputError("event_fn must be callable as event_fn(t, y) -> tensor")
    t = torch.as_tensor(t)
    if t.ndim != 1 or t.numel() < 1:
        raise InvalidInputError("t must be a 1-D tensor whose first entry is the initial time")
    t_dir = t[:2] if t.numel() >= 2 else torch.stack([t[0], t[0] + 1])
    pb = make_problem(func, y0, t_dir, rtol, atol, method, options,
                      callback_suffix=callback_suffix)
    t0 = pb.t_out[0]
    spec = pb.method
    if spec.kind == "adaptive":
        stepper = get_stepper(spec.tableau)

        def interp(a, ya, b, yb, ks, h, s):
            return stepper.interpolate(ya, ks, h, (s - a) / h)

        watcher = _EventWatcher(pb, event_fn, interp)
        from neurode.solvers.api import _adaptive_config

        cfg: AdaptiveConfig = _adaptive_config(pb)
        res = integrate_adaptive(pb.f, pb.y0, [t0, math.inf], stepper, cfg,
                                 callbacks=pb.callbacks, event=watcher, time_sign=pb.sign)
        if res.event_step is None:
            raise res.error if res.error is not None else InvalidInputError("no event found")
        ts, ys, h, ks = res.event_step
        s_ev = res.t_final
        y_ev = stepper.interpolate(ys, ks, h, (s_ev - ts) / h)
    elif spec.kind == "fixed":
        s_ev, y_ev = _fixed_until_event(pb, event_fn)
    else:
        raise InvalidInputError(
            f"events are supported by the adaptive and fixed-step Runge–Kutta methods, "
            f"not {spec.name!r}")
    sol = torch.stack([pb.y0, y_ev])
    event_t = torch.tensor(pb.sign * s_ev, dtype=pb.t.dtype, device=pb.t.device)
    sol = pb.unflatten(sol) if pb.is_tuple else sol
    return event_t, sol


def _fixed_until_event(pb: Problem, event_fn, max_steps: int = 1_000_000):
    step = pb.options.get("step_size")
    if step is None:
        raise InvalidInputError("events with a fixed-step method need options['step_size']")
    h = float(step)
    stepper = get_stepper(pb.method.tableau)
    f = pb.f

    def interp(a, ya, b, yb, data, hh, s):
        f0, f1 = data
        return _hermite(ya, f0, yb, f1, hh, (s - a) / hh)

    watcher = _EventWatcher(pb, event_fn, interp)
    t, y = pb.t_out[0], pb.y0
    k0 = f(t, y, 0)
    for _ in range(max_steps):
        _, y1 = stepper.step(f, t, y, h, k0)
        f1 = f(t + h, y1, 0)
        s = watcher(t, y, t + h, y1, (k0, f1), h)
        if s is not None:
            return s, interp(t, y, t + h, y1, (k0, f1), h, s)
        t, y, k0 = t + h, y1, f1
    raise InvalidInputError(f"no event within {max_steps} steps of size {h}")
