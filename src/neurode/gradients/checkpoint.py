"""Checkpointed adjoint (ACA; Zhuang et al., ICML 2020): the gradient of the discrete solve.

The forward pass runs without a graph and keeps, per accepted step, only ``(t_n, h_n, z_n)``.
The backward pass walks the steps in reverse, recomputes each one from ``z_n`` with a graph —
through the same stepper the forward used — and back-propagates the running adjoint through that
step alone (plus the outputs interpolated inside it). The result equals backprop through the
solver to rounding, with memory O(steps × state) for the checkpoints and O(one step's graph) for
autograd, never O(steps × graph).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from neurode.errors import InvalidInputError
from neurode.gradients._functorch import solve_function, with_params
from neurode.gradients._params import needs_grad, param_names, resolve_params, vjp_grad
from neurode.solvers.api import integrate, odeint, raise_failure
from neurode.solvers.problem import Problem, make_problem
from neurode.solvers.steppers.base import hermite

__all__ = ["odeint_checkpoint"]


class _Spec:
    def __init__(self, pb: Problem):
        self.pb = pb
        self.record = None
        self.t_end = pb.t_out[-1]
        self.nfe_forward = 0
        self.nfe_backward = 0
        self.param_names: list[str] | None = None
        self.stepper = None
        self.adaptive = False


def _checkpoint_forward(spec: _Spec, y0: Tensor, t: Tensor, *params: Tensor) -> Tensor:
    with torch.no_grad():
        pb = spec.pb.with_y0(y0.detach())
        res = integrate(pb, record="steps")
        raise_failure(pb, res)
    spec.record = res.record
    spec.t_end = float(res.t_final[0])
    spec.nfe_forward = res.nfe
    spec.stepper = res.extra["stepper"]
    spec.adaptive = res.extra["loop"] == "adaptive"
    return res.ys[:, 0]


def _backward(spec: _Spec, t: Tensor, ys: Tensor, params: Sequence[Tensor], grad_ys: Tensor,
              needs: Sequence[bool], active: Sequence[Tensor]):
    pb = spec.pb
    field = pb.field
    t_out = pb.t_out
    rec = spec.record
    stepper = spec.stepper
    adaptive = spec.adaptive
    sign = pb.sign
    g = pb.opts.grid
    interp = g.interp if g is not None else "linear"
    perturb = g.perturb if g is not None else False
    jumps = set(pb.jump_t)
    grad_p = [torch.zeros_like(p) for p in active]
    nfe0 = field.nfe
    dev = ys.device
    a = torch.zeros_like(ys[0])
    m = len(rec.t)
    for n in range(m - 1, -1, -1):
        t0, h, y_n = rec.t[n], rec.h[n], rec.y[n]
        t1 = t0 + h
        lo, hi = bisect.bisect_right(t_out, t0), bisect.bisect_right(t_out, t1)
        inner = [i for i in range(lo, hi) if t_out[i] != t1]
        s = torch.tensor([t0], dtype=torch.float64, device=dev)
        ds = torch.tensor([h], dtype=torch.float64, device=dev)
        with torch.enable_grad():
            yn = y_n.detach().requires_grad_(True)
            if adaptive:
                k0 = stepper.start(field, s, yn, after=t0 in jumps)
                out = stepper.step(field, s, ds, yn, k0, None, error=False,
                                   want_f1=bool(inner),
                                   before=(t1 in jumps) or None)
            else:
                out = stepper.step(field, s, ds, yn, None, None, error=False,
                                   want_f1=bool(inner) and interp == "cubic",
                                   before=perturb or None, after=perturb)
            y1 = out.y1
            outs, gouts = [y1], [a.view(1, -1)]
            for i in range(lo, hi):
                if t_out[i] == t1:
                    gouts[0] = gouts[0] + grad_ys[i].view(1, -1)
            if inner:
                thetas = [(t_out[i] - t0) / h for i in inner]
                if adaptive:
                    if stepper.n_extra:
                        stepper.complete(field, s, ds, yn, out.dense)
                    vals = stepper.interpolate(yn, y1, out.dense, sign * h, thetas)
                elif interp == "cubic":
                    f0, f1 = stepper.slopes(out)
                    vals = torch.stack([hermite(yn[0], f0[0], y1[0], f1[0], sign * h, th)
                                        for th in thetas])
                else:
                    vals = torch.stack([torch.lerp(yn[0], y1[0], th) if yn.is_floating_point()
                                        else yn[0] + th * (y1[0] - yn[0]) for th in thetas])
                outs.append(vals)
                gouts.append(grad_ys[inner])
            grads = vjp_grad(outs, [yn, *active], gouts)
        a = grads[0][0] if grads[0] is not None else torch.zeros_like(a)
        for j, gp in enumerate(grads[1:]):
            if gp is not None:
                grad_p[j] += gp
    spec.nfe_backward = field.nfe - nfe0

    grad_t = None
    if needs[2]:
        with torch.no_grad():
            tt = torch.zeros(len(t_out), dtype=torch.float64, device=dev)
            for i in range(1, len(t_out)):
                fi = field(pb.user_time(t_out[i]), ys[i].view(1, -1))[0]
                tt[i] = (grad_ys[i] * fi).real.sum()
            tt[0] = -(a * field(pb.user_time(t_out[0]), ys[0].view(1, -1))[0]).real.sum()
        grad_t = tt.to(t.dtype)
    grad_y0 = (a + grad_ys[0]).view(1, -1)
    it = iter(grad_p)
    grad_params = [next(it) if w else None for w in needs[3:3 + len(params)]]
    return (grad_y0 if needs[1] else None), grad_t, *grad_params


_CheckpointSolve = solve_function(
    "_CheckpointSolve", "ys = odeint(...); backward: each accepted step recomputed (ACA).",
    _checkpoint_forward, with_params(_backward))


def odeint_checkpoint(func: Callable, y0: Tensor | tuple[Tensor, ...], t: Tensor, *,
                      rtol: float | Tensor = 1e-7,
                      atol: float | Tensor = 1e-9, method: str | None = None,
                      options: dict[str, Any] | None = None,
                      adjoint_params: Sequence[Tensor] | None = None
                      ) -> Tensor | tuple[Tensor, ...]:
    """[`neurode.odeint`][] with the checkpointed adjoint (ACA) as its gradient.

    The gradient equals backprop through the solver (to rounding) at the memory of the accepted
    states only. Works for the explicit Runge–Kutta methods, adaptive and fixed-grid.
    ``adjoint_params`` as in [`neurode.odeint_adjoint`][].

    Args:
        func: ``func(t, y)`` as for [`neurode.odeint`][]; an ``nn.Module`` unless
            ``adjoint_params`` is given.
        y0: initial state as for [`neurode.odeint`][] (a tensor or a tuple of tensors).
        t: 1-D output times as for [`neurode.odeint`][] (joint solves only).
        rtol: relative tolerance as for [`neurode.odeint`][] (default ``1e-7``).
        atol: absolute tolerance as for [`neurode.odeint`][] (default ``1e-9``).
        method: an explicit Runge–Kutta method of ``neurode.METHODS`` (default ``"dopri5"``).
        options: method options as for [`neurode.odeint`][]; not ``per_sample``.
        adjoint_params: the tensors to differentiate ``func`` with respect to (default
            ``func.parameters()``); ``()`` for none.

    Returns:
        As [`neurode.odeint`][]: ``(len(t), *y0.shape)`` (a tuple of such for tuple ``y0``).

    Raises:
        InvalidInputError: bad arguments as for [`neurode.odeint`][]; a method that is not
            an explicit Runge–Kutta method (``auto``, Adams, implicit, ALF, SciPy); per-sample
            mode.
        SolverError: the integration failed (a subclass names why).
    """
    params = resolve_params(func, adjoint_params)
    pb = make_problem(func, y0, t, rtol, atol, method, options)
    spec_m = pb.method
    if spec_m.tableau is None or not hasattr(spec_m.tableau, "fsal"):
        raise InvalidInputError(
            f"the checkpointed adjoint supports the explicit Runge–Kutta methods; got method "
            f"{spec_m.name!r}")
    if pb.per_sample:
        raise InvalidInputError("the checkpointed adjoint solves joint problems; for per-sample "
                                "gradients use odeint_adjoint(..., options={'per_sample': True})")
    if not needs_grad(pb.y0, pb.t, params):  # nothing needs a gradient: no graph at all
        with torch.no_grad():
            return odeint(func, y0, t, rtol=rtol, atol=atol, method=method, options=options)
    spec = _Spec(pb)
    spec.param_names = param_names(func, params)
    ys = _CheckpointSolve.apply(spec, pb.y0, pb.t, *params)
    return pb.layout.trajectory(ys.unsqueeze(1))
