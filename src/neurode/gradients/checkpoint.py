"""Checkpointed adjoint (ACA; Zhuang et al., ICML 2020): the gradient of the discrete solve.

The forward pass runs without a graph and keeps, per accepted step, only ``(t_n, h_n, z_n)``.
The backward pass walks the steps in reverse, recomputes each one from ``z_n`` with a graph and
back-propagates the running adjoint through that step alone (plus the outputs interpolated inside
it). The result equals backprop through the solver to rounding, with memory O(steps × state) for
the checkpoints and O(one step's graph) for autograd, never O(steps × graph).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from neurode.errors import InvalidInputError
from neurode.gradients._functorch import (
    param_names,
    solve_function,
    with_params,
)
from neurode.gradients.adjoint import _resolve_params
from neurode.solvers.adaptive import DenseRecord, integrate_adaptive
from neurode.solvers.api import _adaptive_config, _grid, odeint
from neurode.solvers.fixed import _hermite, integrate_fixed
from neurode.solvers.problem import Problem, make_problem
from neurode.solvers.rk import get_stepper

__all__ = ["odeint_checkpoint"]


class _Spec:
    def __init__(self, pb: Problem):
        self.pb = pb
        self.steps: DenseRecord | None = None
        self.t_end = pb.t_out[-1]
        self.nfe_forward = 0
        self.nfe_backward = 0
        self.param_names: list[str] | None = None


def _forward(spec: _Spec):
    pb = spec.pb
    kind = pb.method.kind
    stepper = get_stepper(pb.method.tableau)
    if kind == "adaptive":
        res = integrate_adaptive(pb.f, pb.y0, pb.t_out, stepper, _adaptive_config(pb),
                                 callbacks=pb.callbacks, record_steps=True, time_sign=pb.sign)
    else:
        res = integrate_fixed(pb.f, pb.y0, pb.t_out, _grid(pb), stepper,
                              interp=pb.options.get("interp", "linear"),
                              perturb=bool(pb.options.get("perturb", False)),
                              callbacks=pb.callbacks, record_steps=True)
    if res.status < 0:
        raise res.error
    spec.steps = res.dense
    spec.t_end = res.t_final
    spec.nfe_forward = res.nfe
    return res


def _checkpoint_forward(spec: _Spec, y0: Tensor, t: Tensor, *params: Tensor) -> Tensor:
    with torch.no_grad():
        spec.pb.y0 = y0.detach()
        return torch.stack(_forward(spec).ys)


def _backward(spec: _Spec, t: Tensor, ys: Tensor, params: Sequence[Tensor], grad_ys: Tensor,
              needs: Sequence[bool], active: Sequence[Tensor]):
    pb = spec.pb
    f = pb.f
    t_out = pb.t_out
    rec = spec.steps
    stepper = get_stepper(pb.method.tableau)
    adaptive = pb.method.kind == "adaptive"
    fsal = stepper.fsal
    interp = pb.options.get("interp", "linear")
    perturb = bool(pb.options.get("perturb", False))
    jumps = {pb.sign * float(x) for x in torch.as_tensor(pb.options.get("jump_t", []),
                                                         dtype=torch.float64).reshape(-1)}
    grad_p = [torch.zeros_like(p) for p in active]
    nfe = 0

    def counted(s, y, p=0):
        nonlocal nfe
        nfe += 1
        return f(s, y, p)

    a = torch.zeros_like(ys[0])
    m = len(rec.t)
    for n in range(m - 1, -1, -1):
        t0, h, y_n = rec.t[n], rec.h[n], rec.y[n]
        t1 = rec.t[n + 1] if n + 1 < m else spec.t_end
        lo, hi = bisect.bisect_right(t_out, t0), bisect.bisect_right(t_out, t1)
        with torch.enable_grad():
            yn = y_n.detach().requires_grad_(True)
            if adaptive:
                at_jump = t1 in jumps
                k0 = counted(t0, yn, 1 if t0 in jumps else 0)
                ks, y1 = stepper.step(counted, t0, yn, h, k0, perturb=at_jump)
            else:
                at_jump = False
                k0 = counted(t0, yn, 1 if perturb else 0)
                ks, y1 = stepper.step(counted, t0, yn, h, k0, perturb=perturb)
            outs, gouts = [y1], [a]
            dense_ks = f1 = None
            for i in range(lo, hi):
                if t_out[i] == t1:
                    gouts[0] = gouts[0] + grad_ys[i]
                    continue
                th = (t_out[i] - t0) / h
                if adaptive:
                    if dense_ks is None:
                        dense_ks = ks if fsal else [*ks, counted(t1, y1, -1 if at_jump else 0)]
                        if stepper.extra_c:
                            dense_ks = list(dense_ks)
                            stepper.extra_stages(counted, t0, yn, h, dense_ks)
                    outs.append(stepper.interpolate(yn, dense_ks, h, th))
                elif interp == "cubic":
                    if f1 is None:
                        f1 = counted(t1, y1, 0)
                    outs.append(_hermite(yn, k0, y1, f1, h, th))
                else:
                    outs.append(torch.lerp(yn, y1, th) if yn.is_floating_point()
                                else yn + th * (y1 - yn))
                gouts.append(grad_ys[i])
            grads = torch.autograd.grad(outs, [yn, *active], gouts, allow_unused=True)
        a = grads[0] if grads[0] is not None else torch.zeros_like(a)
        for j, g in enumerate(grads[1:]):
            if g is not None:
                grad_p[j] += g
    spec.nfe_backward = nfe

    grad_t = None
    if needs[2]:
        with torch.no_grad():
            tt = torch.zeros(len(t_out), dtype=torch.float64, device=ys.device)
            for i in range(1, len(t_out)):
                fi = pb.sign * f(t_out[i], ys[i], 0)
                tt[i] = (grad_ys[i] * fi).real.sum()
            tt[0] = -(a * pb.sign * f(t_out[0], ys[0], 0)).real.sum()
        grad_t = tt.to(t.dtype)
    grad_y0 = a + grad_ys[0]
    it = iter(grad_p)
    grad_params = [next(it) if w else None for w in needs[3:3 + len(params)]]
    return (grad_y0 if needs[1] else None), grad_t, *grad_params


_CheckpointSolve = solve_function(
    "_CheckpointSolve", "ys = odeint(...); backward: each accepted step recomputed (ACA).",
    _checkpoint_forward, with_params(_backward))


def odeint_checkpoint(func: Callable, y0, t, *, rtol: float | Tensor = 1e-7,
                      atol: float | Tensor = 1e-9, method: str | None = None,
                      options: dict[str, Any] | None = None,
                      adjoint_params: Sequence[Tensor] | None = None):
    """:func:`neurode.odeint` with the checkpointed adjoint (ACA) as its gradient.

    The gradient equals backprop through the solver (to rounding) at the memory of the accepted
    states only. Works for the explicit Runge–Kutta methods, adaptive and fixed-grid.
    ``adjoint_params`` as in :func:`neurode.odeint_adjoint`.
    """
    params = _resolve_params(func, adjoint_params)
    pb = make_problem(func, y0, t, rtol, atol, method, options)
    if pb.method.kind not in ("adaptive", "fixed"):
        raise InvalidInputError(
            f"the checkpointed adjoint supports the explicit Runge–Kutta methods; got method "
            f"{pb.method.name!r}")
    needs_grad = torch.is_grad_enabled() and (
        pb.y0.requires_grad or pb.t.requires_grad or any(p.requires_grad for p in params))
    if not needs_grad:  # nothing listed needs a gradient: no graph at all (as torchdiffeq)
        with torch.no_grad():
            return odeint(func, y0, t, rtol=rtol, atol=atol, method=method, options=options)
    spec = _Spec(pb)
    spec.param_names = param_names(func, params)
    ys = _CheckpointSolve.apply(spec, pb.y0, pb.t, *params)
    return pb.unflatten(ys.reshape(ys.shape[0], -1)) if pb.is_tuple else ys
