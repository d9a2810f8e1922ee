"""The adjoint sensitivity method (Pontryagin; Chen et al. 2018): O(1) memory in the steps.

Forward: solve without building a graph and keep only the outputs. Backward: solve the augmented
system backwards in time, interval by interval between the output times,

    dz/dt  = f(t, z),           z(t_N) = z_N  (reset to the stored forward value at every t_i)
    da/dt  = −a·∂f/∂z,          a(t_N) = dL/dz(t_N), plus dL/dz(t_i) added at every t_i
    da_θ/dt = −a·∂f/∂θ,         a_θ(t_N) = 0

with one vector–Jacobian product from autograd per evaluation. Gradients w.r.t. the times come
in closed form: ``dL/dt_i = g_i·f(t_i, z_i)`` for the output times and ``dL/dt_0 = −a(t_0)·f(t_0,
z_0)``. (The latter is what integrating ``da_t/dt = −a·∂f/∂t`` gives, because
``d(a·f)/dt = a·∂f/∂t`` along the trajectory; computing it directly saves a time-VJP per
evaluation and is exact.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from neurode.errors import InvalidInputError
from neurode.gradients._functorch import in_transform, solve_function
from neurode.gradients._params import (
    SwapParams,
    needs_grad,
    param_names,
    resolve_params,
    vjp_grad,
)
from neurode.gradients.adjoint_per_sample import odeint_adjoint_per_sample
from neurode.solvers.api import integrate, integrate_event, odeint, raise_failure
from neurode.solvers.norms import rms_norm
from neurode.solvers.problem import Problem, make_problem
from neurode.solvers.quadrature import AttachingField, Quadrature
from neurode.solvers.registry import get_method

__all__ = ["odeint_adjoint"]

_ADJOINT_ONLY_OPTIONS = ("norm",)


def _adjoint_defaults(rtol, atol, method, options, adjoint_rtol, adjoint_atol, adjoint_method,
                      adjoint_options):
    """torchdiffeq's rules: adjoint settings default to the forward ones (norm excepted)."""
    if adjoint_rtol is None:
        adjoint_rtol = rtol
    if adjoint_atol is None:
        adjoint_atol = atol
    if adjoint_method is None:
        adjoint_method = method
    if adjoint_options is None:
        same = adjoint_method == method
        adjoint_options = ({k: v for k, v in options.items()
                            if k not in _ADJOINT_ONLY_OPTIONS and k != "per_sample"}
                           if (options is not None and same) else {})
    else:
        adjoint_options = dict(adjoint_options)
    return adjoint_rtol, adjoint_atol, adjoint_method, adjoint_options


class _Spec:
    """Everything the backward pass needs besides tensors (kept off the autograd inputs)."""

    def __init__(self, pb: Problem, n_params: int, adjoint: dict[str, Any]):
        self.pb = pb
        self.n_params = n_params
        self.adjoint = adjoint
        self.param_names: list[str] | None = None
        self.nfe_forward = 0
        self.nfe_backward = 0


def _adjoint_forward(spec: _Spec, y0: Tensor, t: Tensor, *params: Tensor) -> Tensor:
    with torch.no_grad():
        pb = spec.pb.with_y0(y0.detach())
        res = integrate(pb)
        raise_failure(pb, res)
        spec.nfe_forward = res.nfe
        return res.ys[:, 0]


def _flat_tol(tol, L, like: Tensor):
    """A per-component tolerance (a tensor broadcastable to ``y0``, or one entry per tuple
    component) as a flat ``(N,)`` tensor laid out as the flat state; numbers stay numbers."""
    if isinstance(tol, (int, float)):
        return tol
    if isinstance(tol, Tensor) and tol.numel() == 1:
        return float(tol)
    parts = [tol] if isinstance(tol, Tensor) else list(tol)
    if len(parts) != len(L.shapes):
        raise InvalidInputError(f"adjoint tolerance: expected one entry per component of y0 "
                                f"({len(L.shapes)}), got {len(parts)}")
    flat = [torch.broadcast_to(torch.as_tensor(p, dtype=like.real.dtype, device=like.device),
                               shape).reshape(-1) for p, shape in zip(parts, L.shapes, strict=True)]
    return torch.cat(flat)


def _aug_tols(tol, strictest: float, n_extra: int):
    """Tolerances of the augmented state ``(z, a, a_θ...)``: ``z`` and ``a`` get ``tol``
    (``a`` has ``z``'s layout), the parameter adjoints the strictest of its entries."""
    if not isinstance(tol, Tensor):
        return tol
    return (tol, tol, *([strictest] * n_extra))


def _user_adjoint_norm(norm, L):
    """A user's adjoint norm, called as torchdiffeq documents it: on ``(a_t, y, a_y,
    *a_params)`` for a tensor ``y0`` (``y`` and ``a_y`` in ``y0``'s shape), on ``(a_t, *y,
    *a_y, *a_params)`` for a tuple. neurode gets ``dL/dt`` in closed form instead of
    integrating it, so ``a_t`` is a zero 0-d tensor."""
    def parts(v: Tensor) -> tuple[Tensor, ...]:
        u = L.to_user(v)
        return (u,) if isinstance(u, Tensor) else tuple(u)

    zero: list[Tensor] = []  # a_t, made once

    def adjoint_norm(state):
        y, a, *a_p = state
        if not zero:
            zero.append(torch.zeros((), dtype=y.real.dtype, device=y.device))
        return norm((zero[0], *parts(y), *parts(a), *a_p))

    return adjoint_norm


def _adjoint_backward(spec: _Spec, t: Tensor, ys: Tensor, params: Sequence[Tensor],
                      grad_ys: Tensor, needs: Sequence[bool]):
    pb = spec.pb
    user_func = pb.func
    L = pb.layout
    opts = spec.adjoint
    n = ys.shape[0]
    # needs (not p.requires_grad): inside torch.func transforms the backward may see unwrapped
    # parameters that no longer say they require grad.
    wanted = list(needs[3:3 + len(params)])
    active = [p for p, w in zip(params, wanted, strict=True) if w]
    t_user = pb.t.detach().to(pb.time_dtype)

    def f_flat(tt: Tensor, y: Tensor) -> Tensor:
        return L.from_user(user_func(tt, L.to_user(y.view(1, -1)))).view(-1)

    counter = [0]
    # The saved parameters are swapped into func (functional VJP) unless func still reads them:
    # after a torch.func.functional_call has returned, or inside a transform, it does not.
    functional = not all(p.requires_grad for p in active)
    names = None if spec.param_names is None else [
        nm for nm, w in zip(spec.param_names, wanted, strict=True) if w]

    def vjp(tt: Tensor, y: Tensor, a: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """``(f, −a·∂f/∂z, −a·∂f/∂θ)`` at ``(tt, y)``: one VJP."""
        counter[0] += 1
        if names is not None and (functional or in_transform()):
            # Inside a torch.func transform (torch.func.grad) autograd.grad is unavailable: use
            # a functional VJP. Outside, autograd.grad is ~1.5x faster.
            def fn(y_, *ps):
                with SwapParams(user_func, names, ps):
                    return f_flat(tt, y_)

            fy, pull = torch.func.vjp(fn, y, *active)
            grads = pull(-a)
        else:
            with torch.enable_grad():
                y_ = y.detach().requires_grad_(True)
                fy = f_flat(tt, y_)
                grads = vjp_grad(fy, (y_, *active), -a)
        vjp_y = grads[0] if grads[0] is not None else torch.zeros_like(y)
        vjp_p = [torch.zeros_like(p) if g is None else g for p, g in zip(active, grads[1:],
                                                                          strict=True)]
        return fy.detach(), vjp_y, vjp_p

    def aug_func(tt: Tensor, state):
        """The whole augmented field ``(z, a, a_θ...)`` as one tuple state (any method)."""
        fy, vjp_y, vjp_p = vjp(tt, state[0], state[1])
        return (fy, vjp_y, *vjp_p)

    last_q: list[list[Tensor]] = [[]]

    def aug_func_za(tt: Tensor, state):
        """The ``(z, a)`` part only; ``−a·∂f/∂θ`` goes to the quadrature beside it."""
        fy, vjp_y, vjp_p = vjp(tt, state[0], state[1])
        last_q[0] = vjp_p
        return (fy, vjp_y)

    # Carry the callbacks with the _adjoint suffix onto the augmented function.
    for name in ("callback_step", "callback_accept_step", "callback_reject_step"):
        cb = getattr(user_func, name + "_adjoint", None)
        if cb is not None:
            setattr(aug_func, name, cb)
            setattr(aug_func_za, name, cb)

    norm_opt = opts["options"].get("norm")
    options = dict(opts["options"])
    a_spec = get_method(opts["method"] or "dopri5")
    # The parameter adjoints as a quadrature beside (z, a) (no concatenation into the state, no
    # stage arithmetic on them): for the explicit Runge–Kutta methods with the default norm or
    # seminorm and scalar tolerances. Otherwise they join the state.
    zs = ys[:, 0] if ys.ndim == 3 else ys
    rtol, atol = (_flat_tol(opts[k], L, zs) for k in ("rtol", "atol"))
    use_quad = (a_spec.tableau is not None and hasattr(a_spec.tableau, "fsal")
                and norm_opt in (None, "seminorm") and bool(active))
    # the quadrature's own tolerance: the strictest entry of a per-component one
    q_rtol, q_atol = (float(x.min()) if isinstance(x, Tensor) else float(x) for x in (rtol, atol))
    n_aug = 0 if use_quad else len(active)  # parameter adjoints in the backward state
    aug_rtol, aug_atol = _aug_tols(rtol, q_rtol, n_aug), _aug_tols(atol, q_atol, n_aug)
    if use_quad:
        options.pop("norm", None)  # (z, a) as a tuple: the mixed norm is the seminorm
    elif norm_opt == "seminorm":
        # Leave the parameter adjoints out of the error control (Kidger et al. 2021): they never
        # feed back into z or a, so their error does not compound.
        options["norm"] = lambda s: torch.maximum(rms_norm(s[0]), rms_norm(s[1]))
    elif norm_opt is None:
        options.pop("norm", None)
    elif callable(norm_opt):
        options["norm"] = _user_adjoint_norm(norm_opt, L)

    gs = grad_ys[:, 0] if grad_ys.ndim == 3 else grad_ys
    a = gs[-1].clone()
    a_p = [torch.zeros_like(p) for p in active]
    grad_t = torch.zeros_like(t_user) if needs[2] else None
    first_step = None
    # an adaptive backward solve carries its last step size over to the next interval
    adaptive = "control" in a_spec.families and options.get("step_size") is None
    with torch.no_grad():
        for i in range(n - 1, 0, -1):
            yi = zs[i]
            if grad_t is not None:
                grad_t[i] = (gs[i] * f_flat(t_user[i], yi)).real.sum()
            if (t_user[i] - t_user[i - 1]).abs() > 0:
                o = dict(options)
                if first_step is not None and adaptive and "first_step" not in opts["options"]:
                    o["first_step"] = first_step  # no fresh step-size search per interval
                span = torch.stack([t_user[i], t_user[i - 1]])
                if use_quad:
                    aug_pb = make_problem(aug_func_za, (yi, a), span, aug_rtol, aug_atol,
                                          opts["method"], o)
                    aug_pb = replace(aug_pb, field=AttachingField(aug_pb.field, last_q))
                    quad = Quadrature(a_p, a_spec.tableau, rtol=q_rtol, atol=q_atol,
                                      controlled=norm_opt is None)
                    res = integrate(aug_pb, quad=quad)
                else:
                    aug_pb = make_problem(aug_func, (yi, a, *a_p), span,
                                          aug_rtol, aug_atol, opts["method"], o,
                                          allow_seminorm=False)
                    res = integrate(aug_pb)
                raise_failure(aug_pb, res)
                if res.h_next is not None and adaptive:
                    first_step = float(res.h_next[0])
                out = aug_pb.layout.trajectory(res.ys[-1:])
                a = out[1][0]
                a_p = quad.values if use_quad else [x[0] for x in out[2:]]
            if i > 1:
                a = a + gs[i - 1]
        if grad_t is not None:  # y(t_0) = y0 itself does not move with t_0: g_0 is left out
            grad_t[0] = -(a * f_flat(t_user[0], zs[0])).real.sum()
        a = a + gs[0]
    spec.nfe_backward = counter[0]
    grad_params: list[Tensor | None] = []
    it = iter(a_p)
    for w in wanted:
        grad_params.append(next(it) if w else None)
    grad_t_out = None if grad_t is None else grad_t.to(t.dtype)
    grad_y0 = a.view(1, -1) if needs[1] else None
    return grad_y0, grad_t_out, grad_params


_AdjointSolve = solve_function("_AdjointSolve", "ys = odeint(...); backward: the adjoint solve.",
                               _adjoint_forward, _adjoint_backward)


def odeint_adjoint(func: Callable, y0: Tensor | tuple[Tensor, ...], t: Tensor, *,
                   rtol: float | Tensor = 1e-7,
                   atol: float | Tensor = 1e-9, method: str | None = None,
                   options: dict[str, Any] | None = None, event_fn: Callable | None = None,
                   adjoint_rtol: float | Tensor | None = None,
                   adjoint_atol: float | Tensor | None = None,
                   adjoint_method: str | None = None,
                   adjoint_options: dict[str, Any] | None = None,
                   adjoint_params: Sequence[Tensor] | None = None
                   ) -> Tensor | tuple[Tensor, ...] | tuple[Tensor, Tensor | tuple[Tensor, ...]]:
    """[`neurode.odeint`][] whose gradient is computed by the adjoint method (O(1) memory).

    Same arguments as ``torchdiffeq.odeint_adjoint``:

    Args:
        func: ``func(t, y)`` as for [`neurode.odeint`][]; an ``nn.Module`` unless
            ``adjoint_params`` is given.
        y0: initial state as for [`neurode.odeint`][] (a tensor or a tuple of tensors).
        t: output times as for [`neurode.odeint`][] (``(T,)``, or ``(B, T)`` per sample).
        rtol: relative tolerance of the forward solve (default ``1e-7``).
        atol: absolute tolerance of the forward solve (default ``1e-9``).
        method: method of the forward solve, one of ``neurode.METHODS`` (default
            ``"dopri5"``).
        options: options of the forward solve as for [`neurode.odeint`][]; with
            ``{"per_sample": True}`` the backward pass replays the forward's own steps, so
            ``adjoint_method`` and ``adjoint_options`` must be left unset.
        event_fn: as for [`neurode.odeint`][]: integrate until ``event_fn(t, y)`` crosses zero
            and return ``(event_t, solution)``; the solve to the event is differentiated by the
            adjoint, but ``event_t`` is located without a graph (differentiate it through
            [`neurode.odeint_event`][] with ``odeint_interface=odeint_adjoint``).
        adjoint_rtol: relative tolerance of the backward solve (default: ``rtol``).
        adjoint_atol: absolute tolerance of the backward solve (default: ``atol``).
        adjoint_method: method of the backward solve (default: ``method``).
        adjoint_options: options of the backward solve (default: the forward options minus
            ``norm`` and ``per_sample`` when the backward method is the forward one, else
            none); ``{"norm": "seminorm"}`` leaves the parameter adjoints out of the error
            norm, which usually saves backward evaluations.
        adjoint_params: the tensors to differentiate ``func`` with respect to (default
            ``func.parameters()``, so ``func`` must then be an ``nn.Module``); ``()`` for none.

    Returns:
        As [`neurode.odeint`][]. Gradients flow to ``y0``, to every adjoint parameter and to
        every entry of ``t``.

    Raises:
        InvalidInputError: bad arguments as for [`neurode.odeint`][]; ``func`` is not an
            ``nn.Module`` and ``adjoint_params`` is None; an entry of ``adjoint_params`` is
            not a tensor; ``adjoint_method``/``adjoint_options`` in per-sample mode.
        SolverError: the forward or the backward integration failed.
    """
    if event_fn is not None:
        # find the event without a graph, then solve to it with the adjoint method so that the
        # state at the event carries adjoint gradients
        with torch.no_grad():
            event_t, _ = integrate_event(func, y0, t, event_fn, rtol=rtol, atol=atol,
                                         method=method, options=options)
        t = torch.as_tensor(t)
        t_span = torch.stack([t.reshape(-1)[0], event_t.to(t.dtype)])
        solution = odeint_adjoint(func, y0, t_span, rtol=rtol, atol=atol, method=method,
                                  options=options, adjoint_rtol=adjoint_rtol,
                                  adjoint_atol=adjoint_atol, adjoint_method=adjoint_method,
                                  adjoint_options=adjoint_options, adjoint_params=adjoint_params)
        return event_t, solution
    if options is not None and options.get("per_sample", False):
        if adjoint_method not in (None, method) or adjoint_options is not None:
            raise InvalidInputError(
                "per-sample adjoint: the backward pass replays the forward's own steps, so "
                "adjoint_method and adjoint_options do not apply; leave them unset")
        return odeint_adjoint_per_sample(func, y0, t, rtol=rtol, atol=atol, method=method,
                                         options=options, adjoint_params=adjoint_params)
    params = resolve_params(func, adjoint_params)
    pb = make_problem(func, y0, t, rtol, atol, method, options)
    a_rtol, a_atol, a_method, a_options = _adjoint_defaults(
        rtol, atol, pb.method.name if method is None else method, options, adjoint_rtol,
        adjoint_atol, adjoint_method, adjoint_options)
    spec = _Spec(pb, len(params), {"rtol": a_rtol, "atol": a_atol, "method": a_method,
                                  "options": a_options})
    if not needs_grad(pb.y0, pb.t, params):  # nothing needs a gradient: no graph at all
        with torch.no_grad():
            return odeint(func, y0, t, rtol=rtol, atol=atol, method=method, options=options)
    spec.param_names = param_names(func, params)
    ys = _AdjointSolve.apply(spec, pb.y0, pb.t, *params)
    return pb.layout.trajectory(ys.unsqueeze(1))
