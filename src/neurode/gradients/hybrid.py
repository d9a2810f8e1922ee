"""Hybrid solves: many events, each with a direction, terminal or not, with state resets.

``odeint_hybrid`` integrates from ``t[0]`` to ``t[-1]`` and returns the solution at every ``t``,
stopping at each event on the way:

* the event functions are the ``E`` values of ``event_fn(t, y)``; function ``e`` counts only
  crossings in ``direction[e]`` (+1 rising, −1 falling, 0 both) and is ``terminal[e]`` or not;
* at a non-terminal event ``reset(t*, y, which)`` gives the state the solve goes on from (no
  reset: the same state); outputs after ``t*`` come from the reset trajectory, outputs at
  ``t*`` itself are the state just before the event; ``max_events`` bounds the number of
  events (a Zeno accumulation stops with a named error, never an endless loop);
* after a terminal event the solve ends and the remaining outputs hold the state at the event;
* two functions crossing at the same instant make one event (the first found); the other is ~0
  at the restart and, like the one that fired, is watched from the first step's end on.

Each segment between events is solved twice: a search without a graph
(`neurode.solvers.api.find_event`: the shared event watcher of every loop, Illinois root
finding on the method's dense output), then a differentiable solve from the segment's start to
the event time by ``odeint`` or ``odeint_adjoint``. The event time gets its derivative from the
implicit function theorem (`neurode.gradients.events.reroute`), the next segment starts at
that time (``odeint``'s time gradients carry ``∂/∂t0``) from the reset state, so gradients of
event times and of states after resets reach ``y0`` and the parameters through backprop or
through the adjoint (whose jump conditions at events and resets are exactly these chain rules).

Per-sample mode (``per_sample=True``, ``y0`` of shape ``(B, ...)``, ``event_fn(t, y)`` on one
sample's state): every sample has its own events and steps; a sample stopped by a terminal
event stays frozen while the others go on. Samples are solved one after the other (the segments
of different samples do not line up), so this mode trades the batched speed of per-sample
solving for exactly each sample's own solution.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from neurode.errors import InvalidInputError, SolverError
from neurode.gradients.adjoint import odeint_adjoint
from neurode.gradients.events import reroute
from neurode.solvers.api import find_event, odeint
from neurode.solvers.loops.events import EventSpec

__all__ = ["Event", "HybridSolution", "odeint_hybrid"]

State = Tensor | tuple[Tensor, ...]


@dataclass
class Event:
    """One event: its time ``t`` (0-d, differentiable), which event function fired
    (``index``), the sample (per-sample mode, else None), the state just before (``y``) and
    the state the solve went on from (``y_after``: the reset's output; None after a terminal
    event).

    Attributes:
        t: the event time, a 0-d tensor in ``t``'s dtype; differentiable w.r.t. ``y0``, the
            parameters and earlier resets (implicit function theorem).
        index: which event function fired: the 0-based position of its value in
            ``event_fn(t, y)``.
        y: the state at the event, just before any reset (shaped like ``y0``, or like one
            sample of it in per-sample mode; a tuple for tuple states).
        y_after: the state the solve went on from: ``reset(t, y, index)``, or ``y`` itself
            without ``reset``; None after a terminal event.
        terminal: whether this event ended the solve (a terminal function, or the
            ``stop_after``-th event).
        sample: the sample's index in the batch in per-sample mode, else None.
    """

    t: Tensor
    index: int
    y: State
    y_after: State | None
    terminal: bool
    sample: int | None = None


@dataclass
class HybridSolution:
    """Result of [`odeint_hybrid`][neurode.odeint_hybrid]: ``ys`` at ``ts`` (``(T, *y0.shape)``,
    tuples for tuple states), every event in order (per sample: ordered by sample, then time),
    ``terminated`` (joint: whether a terminal event ended the solve; per sample: a ``(B,)`` bool
    tensor).

    Attributes:
        ts: the output times ``(T,)``, as given.
        ys: the solution at ``ts``, ``(T, *y0.shape)`` (a tuple of such for tuple states;
            ``(T, B, ...)`` in per-sample mode). An output exactly at an event holds the state
            just before it; outputs after a terminal event hold the state at the event.
        events: every [`Event`][neurode.Event] in order (per sample: by sample, then time).
        terminated: joint: whether a terminal event (or ``stop_after``) ended the solve; per
            sample: a ``(B,)`` bool tensor, one flag per sample.
    """

    ts: Tensor
    ys: State
    events: list[Event] = field(default_factory=list)
    terminated: bool | Tensor = False

    @property
    def event_t(self) -> Tensor:
        """All event times ``(n_events,)`` (differentiable)."""
        if not self.events:
            return self.ts.new_zeros(0)
        return torch.stack([e.t.reshape(()) for e in self.events])

    @property
    def event_index(self) -> Tensor:
        """Which function fired at each event ``(n_events,)``."""
        return torch.tensor([e.index for e in self.events], dtype=torch.int64)


def _per_function(value, E: int, name: str, kind) -> tuple:
    vals = tuple(value) if isinstance(value, (list, tuple)) else (value,) * E
    if len(vals) != E:
        raise InvalidInputError(f"{name} has {len(vals)} entries; event_fn returns {E} values")
    for v in vals:
        if kind is int and v not in (-1, 0, 1):
            raise InvalidInputError(f"{name} entries must be -1 (falling), 0 (both) or +1 "
                                    f"(rising), got {v!r}")
        if kind is bool and not isinstance(v, bool):
            raise InvalidInputError(f"{name} entries must be bools, got {v!r}")
    return vals


def _flat(g) -> Tensor:
    if isinstance(g, Tensor):
        return g.reshape(-1)
    return torch.stack([torch.as_tensor(x).reshape(()) for x in g])


def _rows(ys: State, lo: int, hi: int | None) -> list[State]:
    if isinstance(ys, Tensor):
        return list(ys[lo:hi].unbind(0))
    n = ys[0].shape[0] if hi is None else hi
    return [tuple(c[i] for c in ys) for i in range(lo, n)]


def _last(ys: State) -> State:
    return ys[-1] if isinstance(ys, Tensor) else tuple(c[-1] for c in ys)


def _stack(rows: list[State], like: State) -> State:
    if isinstance(like, Tensor):
        return torch.stack(rows)
    return tuple(torch.stack([r[k] for r in rows]) for k in range(len(like)))


def _check_reset(y_new, y_old, t: float) -> None:
    if isinstance(y_old, Tensor):
        ok = isinstance(y_new, Tensor) and y_new.shape == y_old.shape
    else:
        ok = (isinstance(y_new, (tuple, list)) and len(y_new) == len(y_old)
              and all(isinstance(a, Tensor) and a.shape == b.shape
                      for a, b in zip(y_new, y_old, strict=True)))
    if not ok:
        raise InvalidInputError(f"reset(t, y, which) at t={t:.6g} must return a state shaped "
                                "like y (a tensor, or a tuple of tensors for tuple states)")


def odeint_hybrid(func: Callable, y0: State, t: Tensor, *, event_fn: Callable,
                  direction: int | Sequence[int] = 0, terminal: bool | Sequence[bool] = False,
                  reset: Callable | None = None, max_events: int = 1000,
                  stop_after: int | None = None,
                  rtol: float = 1e-7, atol: float = 1e-9, method: str | None = None,
                  options: dict[str, Any] | None = None, adjoint: bool = False,
                  adjoint_params: Sequence[Tensor] | None = None,
                  adjoint_options: dict[str, Any] | None = None,
                  per_sample: bool = False) -> HybridSolution:
    """Solve a hybrid system: ``dy/dt = func(t, y)`` between events, ``reset`` at them.

    Args:
        func: ``func(t, y)`` as for [`neurode.odeint`][].
        y0: initial state as for [`neurode.odeint`][] (a tensor or a tuple of tensors).
        t: 1-D output times, strictly monotone; the solve runs from ``t[0]`` to ``t[-1]``.
        event_fn: ``event_fn(t, y)`` → ``E`` values (a 0-d tensor, a tensor of ``E``, or a
            tuple); an event of function ``e`` is a zero crossing of its value.
        direction: per function (or one for all): +1 rising, −1 falling, 0 both (0).
        terminal: per function (or one for all): whether its event ends the solve (False).
        reset: ``reset(t, y, which) -> y_new`` applied at every non-terminal event (None: the
            state goes on unchanged); differentiable.
        max_events: at most this many events (1000); one more raises
            [`SolverError`][neurode.SolverError].
        stop_after: end the solve at this event (it is then terminal: "ten bounces"), or None.
        rtol: relative tolerance as for [`neurode.odeint`][] (also of the event search).
        atol: absolute tolerance as for [`neurode.odeint`][].
        method: any method of [`neurode.METHODS`][] (default ``"dopri5"``).
        options: method options as for [`neurode.odeint`][].
        adjoint: differentiate each segment with [`neurode.odeint_adjoint`][] (memory
            O(1) in the steps) instead of backprop through the solver.
        adjoint_params: with ``adjoint``: the tensors to differentiate ``func`` with respect to
            (default ``func.parameters()``).
        adjoint_options: with ``adjoint``: the options of each segment's backward solve, as
            ``adjoint_options`` of [`neurode.odeint_adjoint`][] (e.g. ``{"norm": "seminorm"}``).
        per_sample: ``y0`` is a batch ``(B, ...)`` whose samples are independent hybrid
            systems, each with its own events (module docstring); ``func``/``event_fn``/
            ``reset`` then see one sample's state (no batch dimension).

    Returns:
        [`HybridSolution`][neurode.HybridSolution] with the outputs and the events.
    """
    if not callable(event_fn):
        raise InvalidInputError("event_fn must be callable as event_fn(t, y) -> values")
    if reset is not None and not callable(reset):
        raise InvalidInputError("reset must be callable as reset(t, y, which) -> y")
    if not isinstance(max_events, int) or isinstance(max_events, bool) or max_events < 0:
        raise InvalidInputError(f"max_events must be a non-negative int, got {max_events!r}")
    if stop_after is not None and (not isinstance(stop_after, int)
                                   or isinstance(stop_after, bool) or stop_after < 1):
        raise InvalidInputError(f"stop_after must be a positive int or None, got {stop_after!r}")
    t = torch.as_tensor(t)
    if t.ndim != 1 or t.numel() < 2:
        raise InvalidInputError("t must be a 1-D tensor of at least two output times")
    kw = dict(event_fn=event_fn, direction=direction, terminal=terminal, reset=reset,
              max_events=max_events, stop_after=stop_after, rtol=rtol, atol=atol,
              method=method, options=options,
              adjoint=adjoint, adjoint_params=adjoint_params, adjoint_options=adjoint_options)
    if per_sample:
        return _per_sample(func, y0, t, kw)
    return _joint(func, y0, t, **kw)


def _per_sample(func, y0, t, kw) -> HybridSolution:
    is_tuple = not isinstance(y0, Tensor)
    parts = list(y0) if is_tuple else [y0]
    if not parts or any(p.ndim < 1 or p.shape[0] != parts[0].shape[0] for p in parts):
        raise InvalidInputError("per-sample y0 must be (B, ...) (every tuple component with the "
                                "same batch size B)")
    B = parts[0].shape[0]
    sols = []
    for b in range(B):
        yb = tuple(p[b] for p in parts) if is_tuple else parts[0][b]
        sol = _joint(func, yb, t, **kw)
        for e in sol.events:
            e.sample = b
        sols.append(sol)
    if is_tuple:
        ys = tuple(torch.stack([s.ys[k] for s in sols], 1) for k in range(len(parts)))
    else:
        ys = torch.stack([s.ys for s in sols], 1)
    return HybridSolution(ts=t, ys=ys, events=[e for s in sols for e in s.events],
                          terminated=torch.tensor([bool(s.terminated) for s in sols]))


def _joint(func, y0, t, *, event_fn, direction, terminal, reset, max_events, stop_after, rtol,
           atol, method, options, adjoint, adjoint_params, adjoint_options) -> HybridSolution:
    with torch.no_grad():
        E = _flat(event_fn(t[0], y0)).numel()
    if E == 0:
        raise InvalidInputError("event_fn returned no values")
    direction = _per_function(direction, E, "direction", int)
    terminal = _per_function(terminal, E, "terminal", bool)
    sign = 1.0 if float(t[-1]) > float(t[0]) else -1.0
    t_user = t.detach().to(torch.float64).tolist()
    if any((b - a) * sign <= 0 for a, b in itertools.pairwise(t_user)):
        raise InvalidInputError("t must be strictly increasing or strictly decreasing")
    if adjoint:
        def solve(y, ts):
            return odeint_adjoint(func, y, ts, rtol=rtol, atol=atol, method=method,
                                  options=options, adjoint_params=adjoint_params,
                                  adjoint_options=adjoint_options)
    else:
        if adjoint_params is not None or adjoint_options is not None:
            raise InvalidInputError("adjoint_params / adjoint_options apply with adjoint=True")

        def solve(y, ts):
            return odeint(func, y, ts, rtol=rtol, atol=atol, method=method, options=options)

    def values(tt, yy):
        return _flat(event_fn(tt, yy))

    spec = EventSpec(values, direction)
    rows: list[State] = [y0]
    events: list[Event] = []
    t_k: Tensor = t[0]
    y_k = y0
    i = 1  # next output
    terminated = False
    while True:
        t_start = float(t_k.detach())
        found = find_event(func, _detach(y_k), t_start, t_user[-1], spec, rtol=rtol, atol=atol,
                           method=method, options=options)
        if found is None:
            ts = torch.cat([t_k.reshape(1).to(t.dtype), t[i:]])
            ys = solve(y_k, ts)
            rows.extend(_rows(ys, 1, None))
            break
        t_star, which, y_found = found
        # the event time as t's dtype holds it (float32 times round): compared with the
        # outputs, and the segment's times, in that precision
        t_star = float(torch.tensor(t_star, dtype=t.dtype))
        if (t_star - t_start) * sign <= 0:
            raise SolverError(
                f"events accumulate at t={t_star:.9g}: the next event time equals the last one "
                f"in t's dtype ({t.dtype}), after {len(events)} events (a Zeno accumulation, "
                "or a reset that leaves the state on its event surface); make the event "
                "terminal, stop earlier (stop_after, a shorter t) or use float64 times",
                t=t_star)
        if len(events) >= max_events:
            raise SolverError(
                f"max_events={max_events} reached at t={t_star:.6g}: events keep coming (a "
                "Zeno accumulation, or a reset that leaves the state on an event surface "
                "crossing it again); raise max_events, or make the event terminal",
                t=t_star)
        j = i
        while j < len(t_user) and (t_user[j] - t_star) * sign < 0:
            j += 1
        at_event = j < len(t_user) and t_user[j] == t_star
        star = torch.tensor([t_star], dtype=t.dtype, device=t.device)
        ts = torch.cat([t_k.reshape(1).to(t.dtype), t[i:j], star])
        ys = solve(y_k, ts)
        rows.extend(_rows(ys, 1, 1 + (j - i)))

        def g_which(tt, yy, which=which):
            return _flat(event_fn(tt, yy))[which]

        event_t, ys = reroute(func, g_which, y_k, star[0], ys)
        # the state at the event: the located one's value (on the far side of the crossing, to
        # the root finder's resolution; the differentiable solve's differs by ~tol and may lie
        # before it, so the next segment would cross again at once), the solve's derivative
        y_minus = _with_value(_last(ys), y_found)
        if at_event:  # an output exactly at the event: the state just before it
            rows.append(y_minus)
            j += 1
        i = j
        if terminal[which] or (stop_after is not None and len(events) + 1 >= stop_after):
            events.append(Event(event_t, which, y_minus, None, True))
            terminated = True
            rows.extend([y_minus] * (len(t_user) - i))
            break
        y_plus = reset(event_t, y_minus, which) if reset is not None else y_minus
        _check_reset(y_plus, y_minus, t_star)
        events.append(Event(event_t, which, y_minus, y_plus, False))
        if (t_user[-1] - t_star) * sign <= 0:  # the event ends the span
            rows.extend([y_plus] * (len(t_user) - i))
            break
        t_k, y_k = event_t, y_plus
        # the function that fired is ~0 here, of either sign: watched from the first step's end
        spec = EventSpec(values, direction, unsigned=(which,))
    ys_all = _stack(rows, y0)
    return HybridSolution(ts=t, ys=ys_all, events=events, terminated=terminated)


def _with_value(y: State, value: State) -> State:
    """``value`` with the derivative of ``y`` (``y + stop_grad(value − y)``)."""
    if isinstance(y, Tensor):
        return y + (value.to(y.dtype).reshape(y.shape) - y).detach()
    return tuple(a + (b.to(a.dtype).reshape(a.shape) - a).detach()
                 for a, b in zip(y, value, strict=True))


def _detach(y: State) -> State:
    return y.detach() if isinstance(y, Tensor) else tuple(c.detach() for c in y)
