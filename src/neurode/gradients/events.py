"""Differentiable terminal events.

The event time ``t*`` solves ``g(t*, z(t*)) = 0``. By the implicit function theorem a change
``dΦ`` of the flow at fixed time moves it by ``dt* = −g_z·dΦ / (g_t + g_z·f)``, and the state at
the event by ``dS = dΦ + f dt*``. So for a loss ``L(t*, S)`` the gradient reaching the solver's
state at the (fixed) event time is

    L_S − (L_t + L_S·f) / (g_t + g_z·f) · g_z,

which `_EventRerouting` applies in its backward pass: the solver's own graph (backprop or
adjoint) then carries it to ``y0`` and the parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from neurode.errors import NonFiniteStateError
from neurode.solvers.api import odeint

__all__ = ["odeint_event", "reroute"]


def _flat(x) -> Tensor:
    if isinstance(x, Tensor):
        return x
    return torch.cat([p.reshape(-1) for p in x])


class _EventRerouting(torch.autograd.Function):
    """Identity on ``(event_t, state)``; backward reroutes the time gradient into the state."""

    @staticmethod
    def forward(ctx, func, event_fn, unflatten, event_t: Tensor, state: Tensor):
        ctx.func, ctx.event_fn, ctx.unflatten = func, event_fn, unflatten
        ctx.save_for_backward(event_t, state)
        return event_t.clone(), state.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_t: Tensor, grad_state: Tensor):
        event_t, state = ctx.saved_tensors
        with torch.enable_grad():
            tt = event_t.detach().requires_grad_(True)
            yy = state.detach().requires_grad_(True)
            g = _flat(ctx.event_fn(tt, ctx.unflatten(yy))).reshape(-1)
            # the watcher's event function is min_e(sign_e · g_e), the values signed as at the
            # start: at t* that is the value that crossed, the one nearest zero (its sign
            # cancels in dt*/dθ); indexing by a tensor reads nothing on the host
            crossed = g[g.detach().abs().argmin()]
            g_t, g_y = torch.autograd.grad(crossed, (tt, yy), allow_unused=True)
        with torch.no_grad():
            f = _flat(ctx.func(event_t, ctx.unflatten(state)))
            g_t = torch.zeros_like(event_t) if g_t is None else g_t
            g_y = torch.zeros_like(state) if g_y is None else g_y
            dgdt = g_t + (g_y * f).sum()
            if not bool(torch.isfinite(1.0 / dgdt)) or float(dgdt.abs()) == 0.0:
                raise NonFiniteStateError(
                    "the event function crosses zero tangentially (dg/dt = 0 at the event), so "
                    "the event time has no derivative there", t=float(event_t))
            total_t = (grad_t if grad_t is not None else 0.0) + (grad_state * f).sum()
            new_state_grad = grad_state - (total_t / dgdt) * g_y
        return None, None, None, None, new_state_grad


def reroute(func, event_fn, y0, event_t: Tensor, solution):
    is_tuple = not isinstance(solution, Tensor)
    if is_tuple:
        shapes = [s.shape[1:] for s in solution]
        sizes = [s[0].numel() for s in solution]

        def unflatten(v):
            return tuple(p.view(sh) for p, sh in zip(torch.split(v, sizes), shapes, strict=True))

        state = torch.cat([s[-1].reshape(-1) for s in solution])
    else:
        def unflatten(v):
            return v

        state = solution[-1]
    event_t, state = _EventRerouting.apply(func, event_fn, unflatten, event_t, state)
    if is_tuple:
        parts = unflatten(state)
        solution = tuple(torch.cat([s[:-1], p[None]]) for s, p in zip(solution, parts,
                                                                         strict=True))
    else:
        solution = torch.cat([solution[:-1], state[None]])
    return event_t, solution


def odeint_event(func: Callable, y0: Tensor | tuple[Tensor, ...], t0: Tensor | float, *,
                 event_fn: Callable,
                 reverse_time: bool = False, odeint_interface: Callable = odeint,
                 **kwargs: Any) -> tuple[Tensor, Tensor | tuple[Tensor, ...]]:
    """Solve from ``t0`` until ``event_fn(t, y) = 0``; returns ``(event_t, solution)``.

    torchdiffeq's signature and semantics: ``solution`` holds the state at ``t0`` and at the
    event. ``event_t`` and the state at the event are differentiable w.r.t. ``y0`` and the
    parameters (implicit function theorem), through ``odeint`` (backprop) or
    ``odeint_interface=neurode.odeint_adjoint``.

    Args:
        func: ``func(t, y)`` as for [`neurode.odeint`][].
        y0: initial state at ``t0`` as for [`neurode.odeint`][] (a tensor or a tuple of
            tensors; joint solves only).
        t0: initial time, a float or a 0-d tensor.
        event_fn: ``event_fn(t, y)`` returning a 0-d tensor; the event is its first zero
            crossing after ``t0``. Several values stop the search at the first crossing of any
            (as torchdiffeq), and the implicit gradient of ``event_t`` is that of the value
            that crossed ([`neurode.odeint_hybrid`][] gives directions and resets).
        reverse_time: search backward in time from ``t0`` (default False: forward).
        odeint_interface: the solver that runs the search and the solve to the event, called
            as ``odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)``:
            [`neurode.odeint`][] (the default) or [`neurode.odeint_adjoint`][].
        **kwargs: passed on to ``odeint_interface``: ``rtol``, ``atol``, ``method``,
            ``options`` (fixed-grid methods need ``options["step_size"]``), and for the
            adjoint its ``adjoint_*`` arguments.

    Returns:
        ``(event_t, solution)``: the 0-d event time, and ``(2, *y0.shape)`` (a tuple of such
        for tuple ``y0``) holding the state at ``t0`` and at the event.

    Raises:
        InvalidInputError: bad arguments, ``event_fn`` not callable, or per-sample mode.
        SolverError: no event was found (``event_fn`` kept its sign until ``max_num_steps``
            steps, 50,000 unless given, or the time overflowed), or the integration failed.
    """
    t0 = torch.as_tensor(t0)
    direction = -1.0 if reverse_time else 1.0
    t = torch.cat([t0.reshape(-1), t0.reshape(-1).detach() + direction])
    event_t, solution = odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)
    return reroute(func, event_fn, y0, event_t, solution)
