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
from typing import Any

import torch
from torch import Tensor, nn

from neurode.errors import InvalidInputError
from neurode.gradients._functorch import in_transform, param_names, solve_function
from neurode.solvers.api import _integrate, odeint
from neurode.solvers.controller import rms_norm
from neurode.solvers.problem import Problem, make_problem
from neurode.solvers.quadrature import Quadrature, attach
from neurode.solvers.registry import get_method
from neurode.solvers.rk import get_stepper

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
        adjoint_options = ({k: v for k, v in options.items() if k not in _ADJOINT_ONLY_OPTIONS}
                           if (options is not None and same) else {})
    else:
        adjoint_options = dict(adjoint_options)
    return adjoint_rtol, adjoint_atol, adjoint_method, adjoint_options


def _resolve_params(func, adjoint_params) -> tuple[Tensor, ...]:
    if adjoint_params is None:
        if not isinstance(func, nn.Module):
            raise InvalidInputError(
                "func must be an nn.Module for odeint_adjoint to find its parameters; otherwise "
                "pass adjoint_params=(tensors func depends on,) (or () for none)")
        return tuple(func.parameters())
    params = tuple(adjoint_params)
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise InvalidInputError(f"adjoint_params[{i}] must be a Tensor, got {type(p).__name__}")
    return params


class _SwapParams:
    """Temporarily replace named parameters of a module (functional evaluation)."""

    def __init__(self, module: nn.Module, names: list[str], values):
        self.module, self.names, self.values = module, names, values

    def __enter__(self):
        self.ctx = torch.nn.utils.stateless._reparametrize_module(
            self.module, dict(zip(self.names, self.values, strict=True)))
        self.ctx.__enter__()

    def __exit__(self, *exc):
        return self.ctx.__exit__(*exc)


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
    pb = spec.pb
    with torch.no_grad():
        pb.y0 = y0.detach()
        res = _integrate(pb)
        if res.status < 0:
            raise res.error
        spec.nfe_forward = res.nfe
        return torch.stack(res.ys)


def _adjoint_backward(spec: _Spec, t: Tensor, ys: Tensor, params: Sequence[Tensor],
                      grad_ys: Tensor, needs: Sequence[bool]):
    pb = spec.pb
    user_func = pb.user_func
    unflatten_state = pb.user_state
    shapes = pb.shapes
    opts = spec.adjoint
    n = ys.shape[0]
    # needs (not p.requires_grad): inside torch.func transforms the backward may see unwrapped
    # parameters that no longer say they require grad.
    grad_params_wanted = list(needs[3:3 + len(params)])
    active = [p for p, w in zip(params, grad_params_wanted, strict=True) if w]
    t_user = pb.t.detach().to(pb.time_dtype)

    def f_flat(tt: Tensor, y: Tensor) -> Tensor:
        out = user_func(tt, unflatten_state(y))
        if shapes is not None:
            out = torch.cat([o.reshape(-1) for o in out])
        return out

    counter = [0]
    # The saved parameters are swapped into func (functional VJP) unless func still reads them:
    # after a torch.func.functional_call has returned, or inside a transform, it does not.
    functional = not all(p.requires_grad for p in active)
    names = None if spec.param_names is None else [
        n for n, w in zip(spec.param_names, grad_params_wanted, strict=True) if w]

    def vjp(tt: Tensor, y: Tensor, a: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """``(f, −a·∂f/∂z, −a·∂f/∂θ)`` at ``(tt, y)``: one VJP."""
        counter[0] += 1
        if names is not None and (functional or in_transform()):
            # Inside a torch.func transform (torch.func.grad) autograd.grad is unavailable: use
            # a functional VJP. Outside, autograd.grad is ~1.5x faster.
            def fn(y_, *ps):
                with _SwapParams(user_func, names, ps):
                    return f_flat(tt, y_)

            fy, pull = torch.func.vjp(fn, y, *active)
            grads = pull(-a)
        else:
            with torch.enable_grad():
                y_ = y.detach().requires_grad_(True)
                fy = f_flat(tt, y_)
                grads = torch.autograd.grad(fy, (y_, *active), -a, allow_unused=True)
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
    # stage arithmetic on them): for the Runge–Kutta methods with the default norm or seminorm
    # and scalar tolerances. Otherwise (Adams, a user norm, per-component tolerances) they join
    # the state.
    use_quad = (a_spec.kind in ("adaptive", "fixed") and a_spec.tableau is not None
                and norm_opt in (None, "seminorm") and bool(active)
                and all(isinstance(x, (int, float)) for x in (opts["rtol"], opts["atol"])))
    if use_quad:
        options.pop("norm", None)  # (z, a) as a tuple: the mixed norm is the seminorm
    elif norm_opt == "seminorm":
        # Leave the parameter adjoints out of the error control (Kidger et al. 2021): they never
        # feed back into z or a, so their error does not compound.
        options["norm"] = lambda s: torch.maximum(rms_norm(s[0]), rms_norm(s[1]))
    elif norm_opt is None:
        options.pop("norm", None)

    a = grad_ys[-1].clone()
    a_p = [torch.zeros_like(p) for p in active]
    grad_t = torch.zeros_like(t_user) if needs[2] else None
    first_step = None
    with torch.no_grad():
        for i in range(n - 1, 0, -1):
            yi = ys[i]
            if grad_t is not None:
                grad_t[i] = (grad_ys[i] * f_flat(t_user[i], yi)).real.sum()
            if (t_user[i] - t_user[i - 1]).abs() > 0:
                o = dict(options)
                if first_step is not None and pb.method.kind == "adaptive" \
                        and "first_step" not in opts["options"]:
                    o["first_step"] = first_step  # no fresh step-size search per interval
                span = torch.stack([t_user[i], t_user[i - 1]])
                if use_quad:
                    aug_pb = make_problem(aug_func_za, (yi, a), span, opts["rtol"],
                                          opts["atol"], opts["method"], o, callback_suffix="")
                    aug_pb.f = _attaching(aug_pb.f, last_q)
                    quad = Quadrature(a_p, get_stepper(a_spec.tableau), scale=aug_pb.sign,
                                      rtol=float(opts["rtol"]), atol=float(opts["atol"]),
                                      controlled=norm_opt is None)
                    res = _integrate(aug_pb, quad=quad)
                else:
                    aug_pb = make_problem(aug_func, (yi, a, *a_p), span, opts["rtol"],
                                          opts["atol"], opts["method"], o, callback_suffix="")
                    res = _integrate(aug_pb)
                if res.status < 0:
                    raise res.error
                if res.h_next is not None:
                    first_step = res.h_next
                out = aug_pb.unflatten(res.ys[-1][None])
                a = out[1][0]
                a_p = quad.values if use_quad else [x[0] for x in out[2:]]
            if i > 1:
                a = a + grad_ys[i - 1]
        if grad_t is not None:  # y(t_0) = y0 itself does not move with t_0: g_0 is left out
            grad_t[0] = -(a * f_flat(t_user[0], ys[0])).real.sum()
        a = a + grad_ys[0]
    spec.nfe_backward = counter[0]
    grad_params: list[Tensor | None] = []
    it = iter(a_p)
    for w in grad_params_wanted:
        grad_params.append(next(it) if w else None)
    grad_t_out = None if grad_t is None else grad_t.to(t.dtype)
    return (a if needs[1] else None), grad_t_out, grad_params


def _attaching(f, last_q: list[list[Tensor]]):
    """Wrap the internal field so that each returned stage value carries its ``−a·∂f/∂θ``."""

    def fq(s: float, y: Tensor, perturb: int = 0) -> Tensor:
        return attach(f(s, y, perturb), last_q[0])

    return fq


_AdjointSolve = solve_function("_AdjointSolve", "ys = odeint(...); backward: the adjoint solve.",
                               _adjoint_forward, _adjoint_backward)


def odeint_adjoint(func: Callable, y0, t, *, rtol: float | Tensor = 1e-7,
                   atol: float | Tensor = 1e-9, method: str | None = None,
                   options: dict[str, Any] | None = None, event_fn: Callable | None = None,
                   adjoint_rtol: float | Tensor | None = None,
                   adjoint_atol: float | Tensor | None = None,
                   adjoint_method: str | None = None,
                   adjoint_options: dict[str, Any] | None = None,
                   adjoint_params: Sequence[Tensor] | None = None):
    """:func:`neurode.odeint` whose gradient is computed by the adjoint method (O(1) memory).

    Same arguments as ``torchdiffeq.odeint_adjoint``:

    Args:
        adjoint_rtol, adjoint_atol, adjoint_method: settings of the backward solve (default: the
            forward ones).
        adjoint_options: options of the backward solve (default: the forward options minus
            ``norm``); ``{"norm": "seminorm"}`` leaves the parameter adjoints out of the error
            norm, which usually saves backward evaluations.
        adjoint_params: the tensors to differentiate ``func`` with respect to (default
            ``func.parameters()``, so ``func`` must then be an ``nn.Module``); ``()`` for none.

    Returns:
        As :func:`neurode.odeint`. Gradients flow to ``y0``, to every adjoint parameter and to
        every entry of ``t``.
    """
    if event_fn is not None:
        from neurode.gradients.events import odeint_event_adjoint

        return odeint_event_adjoint(func, y0, t, event_fn, rtol=rtol, atol=atol, method=method,
                                    options=options, adjoint_rtol=adjoint_rtol,
                                    adjoint_atol=adjoint_atol, adjoint_method=adjoint_method,
                                    adjoint_options=adjoint_options,
                                    adjoint_params=adjoint_params)
    if options is not None and options.get("per_sample", False):
        from neurode.gradients.per_sample_adjoint import odeint_adjoint_per_sample

        if adjoint_method not in (None, method) or adjoint_options is not None:
            raise InvalidInputError(
                "per-sample adjoint: the backward pass replays the forward's own steps, so "
                "adjoint_method and adjoint_options do not apply; leave them unset")
        return odeint_adjoint_per_sample(func, y0, t, rtol=rtol, atol=atol, method=method,
                                         options=options, adjoint_params=adjoint_params)
    if options is not None and "per_sample" in options:
        options = {k: v for k, v in options.items() if k != "per_sample"}
    params = _resolve_params(func, adjoint_params)
    pb = make_problem(func, y0, t, rtol, atol, method, options)
    a_rtol, a_atol, a_method, a_options = _adjoint_defaults(
        rtol, atol, pb.method.name if method is None else method, options, adjoint_rtol,
        adjoint_atol, adjoint_method, adjoint_options)
    spec = _Spec(pb, len(params), {"rtol": a_rtol, "atol": a_atol, "method": a_method,
                                  "options": a_options})
    needs_grad = torch.is_grad_enabled() and (
        pb.y0.requires_grad or pb.t.requires_grad or any(p.requires_grad for p in params))
    if not needs_grad:  # nothing listed needs a gradient: no graph at all (as torchdiffeq)
        with torch.no_grad():
            return odeint(func, y0, t, rtol=rtol, atol=atol, method=method, options=options)
    spec.param_names = param_names(func, params)
    ys = _AdjointSolve.apply(spec, pb.y0, pb.t, *params)
    out = pb.unflatten(ys.reshape(ys.shape[0], -1)) if pb.is_tuple else ys
    return out
