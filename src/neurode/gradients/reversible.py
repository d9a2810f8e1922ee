"""Reversible gradients (MALI; Zhuang et al., ICLR 2021): backprop through ALF at constant memory.

The asynchronous leapfrog step (`neurode.solvers.steppers.alf`) is an explicit bijection of
the augmented state ``(z, v)`` with an inverse that costs one evaluation of ``f``. So the backward
pass needs neither the trajectory nor checkpoints: the forward pass runs without a graph and keeps
the outputs, the final ``v`` and the accepted steps as floats ``(t_n, h_n)``; the backward pass
walks the steps in reverse and, for each,

1. reconstructs ``(z_n, v_n)`` from ``(z_{n+1}, v_{n+1})`` with the inverse step (no graph);
2. recomputes the forward step from ``(z_n, v_n)`` with a graph — the same stepper call as the
   forward one, so the same floating-point computation — and back-propagates the running adjoints
   ``(a_z, a_v)`` through that one step, adding ``dL/dz`` at the output times;

and finally pushes ``a_v`` into ``z_0`` and the parameters through ``v_0 = f(t_0, z_0)``.

The result is the gradient of the discrete ALF solve, i.e. what backprop through
``neurode.odeint(..., method="alf")`` with the same steps gives, up to the rounding error of the
reconstruction. Memory: one step's graph plus two floats per step. Cost: three evaluations of
``f`` per step in the backward pass (inverse, recomputation, its VJP) against one forward.

Gradients w.r.t. the times are the closed forms of the continuous problem, exactly as
[`neurode.odeint`][] attaches them: ``dL/dt_i = g_i·f(t_i, z_i)`` for ``i ≥ 1`` and
``dL/dt_0 = −(dL/dz_0)·f(t_0, z_0)``.

Caveat, inherent to the method: inverting a step runs the dynamics backwards, so rounding errors
grow like the backward flow, and for the damped step (``eta < 1``) additionally by
``1/|1 − 2η|`` per step. For strongly dissipative fields or many damped steps, prefer
[`neurode.odeint_checkpoint`][] or [`neurode.odeint_adjoint`][].
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from neurode.errors import InvalidInputError, NonFiniteStateError
from neurode.gradients._functorch import solve_function, with_params
from neurode.gradients._params import needs_grad, param_names, resolve_params, vjp_grad
from neurode.solvers.api import integrate, odeint, raise_failure
from neurode.solvers.problem import Problem, make_problem

__all__ = ["odeint_reversible"]


class _Spec:
    """Everything the backward pass needs besides tensors: the problem and the step list."""

    def __init__(self, pb: Problem):
        self.pb = pb
        self.step_t: list[float] = []
        self.step_h: list[float] = []
        self.out_steps: list[int] = []
        self.v_final: Tensor | None = None
        self.stepper = None
        self.nfe_forward = 0
        self.nfe_backward = 0
        self.param_names: list[str] | None = None
        self.n_steps = 0
        self.reconstruction_error = 0.0


def _reversible_forward(spec: _Spec, y0: Tensor, t: Tensor, *params: Tensor) -> Tensor:
    with torch.no_grad():
        pb = spec.pb.with_y0(y0.detach())
        res = integrate(pb, record="times")
        raise_failure(pb, res)
        ys = res.ys[:, 0]
        v = res.extra["carry"]
        if not bool(torch.isfinite(ys.sum())) or (
                v is not None and not bool(torch.isfinite(v).all())):
            raise NonFiniteStateError(
                "non-finite value (NaN or inf) in the ALF solution; reduce the step size "
                "(options['step_size'], or rtol/atol) or check func")
    rec = res.record
    spec.step_t, spec.step_h = rec.t, rec.h
    # output j (j ≥ 1) is the state after out_steps[j] accepted steps: outputs are step ends
    ends = {t0 + h: k + 1 for k, (t0, h) in enumerate(zip(rec.t, rec.h, strict=True))}
    spec.out_steps = [0] + [ends.get(to, 0) for to in pb.t_out[1:]]
    spec.v_final = v
    spec.stepper = res.extra["stepper"]
    spec.nfe_forward = res.nfe
    spec.n_steps = len(rec.t)
    return ys


#: Reconstruction drift (relative) above which the backward pass warns: √eps of the dtype.
_DRIFT_WARN = {torch.float64: 1.5e-8, torch.complex128: 1.5e-8, torch.float32: 3.5e-4,
               torch.complex64: 3.5e-4}


def _rel_err(x: Tensor, ref: Tensor) -> float:
    with torch.no_grad():
        scale = float(ref.abs().max()) if ref.numel() else 0.0
        err = float((x - ref).abs().max()) if ref.numel() else 0.0
    r = err / scale if scale > 0 else err
    return r if math.isfinite(r) else math.inf  # NaN must not hide behind max()


def _backward(spec: _Spec, t: Tensor, ys: Tensor, params: Sequence[Tensor], grad_ys: Tensor,
              needs: Sequence[bool], active: Sequence[Tensor]):
    pb = spec.pb
    field = pb.field
    stepper = spec.stepper
    eta = stepper.eta
    dev = ys.device
    grad_p = [torch.zeros_like(p) for p in active]
    nfe0 = field.nfe

    def add_param_grads(grads):
        for j, g in enumerate(grads):
            if g is not None:
                grad_p[j] += g

    n_out = ys.shape[0]
    out_at = {k: j for j, k in enumerate(spec.out_steps) if j >= 1}
    a_z = grad_ys[-1].view(1, -1).clone()
    a_v = torch.zeros_like(a_z)
    drift = 0.0
    if spec.n_steps:
        z, v = ys[-1].view(1, -1), spec.v_final
        for n in range(spec.n_steps - 1, -1, -1):
            s = torch.tensor([spec.step_t[n]], dtype=torch.float64, device=dev)
            ds = torch.tensor([spec.step_h[n]], dtype=torch.float64, device=dev)
            with torch.enable_grad():
                if n > 0:
                    with torch.no_grad():
                        z_n, v_n = stepper.inverse(field, s, ds, z, v)
                    j = out_at.get(n)
                    if j is not None:
                        drift = max(drift, _rel_err(z_n, ys[j].view(1, -1)))
                        z_n = ys[j].view(1, -1)  # the stored output is the exact forward state
                    zn = z_n.detach().requires_grad_(True)
                    vn = v_n.detach().requires_grad_(True)
                    inputs = (zn, vn, *active)
                else:
                    # The first step starts from y0 and v0 = f(t0, y0): recompute both, so that
                    # a_v reaches y0 and the parameters through v0 as well. Reconstructing z0
                    # too costs one evaluation and measures the drift where it is largest.
                    with torch.no_grad():
                        z_rec, _ = stepper.inverse(field, s, ds, z, v)
                    drift = max(drift, _rel_err(z_rec, ys[0].view(1, -1)))
                    zn = ys[0].view(1, -1).detach().requires_grad_(True)
                    vn = stepper.start(field, s, zn)
                    inputs = (zn, *active)
                out = stepper.step(field, s, ds, zn, vn, error=False)
                grads = vjp_grad((out.y1, out.carry), inputs, (a_z, a_v))
            a_z = grads[0] if grads[0] is not None else torch.zeros_like(a_z)
            if n > 0:
                a_v = grads[1] if grads[1] is not None else torch.zeros_like(a_v)
                add_param_grads(grads[2:])
                j = out_at.get(n)
                if j is not None:
                    a_z = a_z + grad_ys[j].view(1, -1)
                z, v = z_n, v_n
            else:
                add_param_grads(grads[1:])
    spec.nfe_backward = field.nfe - nfe0
    spec.reconstruction_error = drift
    tol = _DRIFT_WARN.get(ys.dtype, 1e-6)
    if not drift <= tol:
        warnings.warn(
            f"odeint_reversible: the backward reconstruction of the ALF trajectory drifted by "
            f"{drift:.2e} (relative, at the output times) from the forward states, so the "
            "gradient is inaccurate; the dynamics are too dissipative to run backwards in this "
            "precision"
            + (f", or damping eta={eta} amplifies rounding by 1/|1 - 2*eta| per step"
               if eta != 1.0 else "")
            + ". Use odeint_checkpoint / odeint_adjoint, fewer steps or float64.",
            RuntimeWarning, stacklevel=2)

    grad_t = None
    if needs[2]:
        with torch.no_grad():
            tt = torch.zeros(n_out, dtype=torch.float64, device=dev)
            for i in range(1, n_out):
                fi = field(pb.user_time(pb.t_out[i]), ys[i].view(1, -1))[0]
                tt[i] = (grad_ys[i] * fi).real.sum()
            if n_out > 1:
                tt[0] = -(a_z[0] * field(pb.user_time(pb.t_out[0]), ys[0].view(1, -1))[0]
                          ).real.sum()
        grad_t = tt.to(t.dtype)
    grad_y0 = a_z + grad_ys[0].view(1, -1) if n_out > 1 else grad_ys[0].view(1, -1).clone()
    it = iter(grad_p)
    grad_params = [next(it) if w else None for w in needs[3:3 + len(params)]]
    return (grad_y0 if needs[1] else None), grad_t, *grad_params


_ReversibleSolve = solve_function(
    "_ReversibleSolve", "ys = odeint(..., method='alf'); backward: the inverted steps (MALI).",
    _reversible_forward, with_params(_backward))


def odeint_reversible(func: Callable, y0: Tensor | tuple[Tensor, ...], t: Tensor, *,
                      rtol: float | Tensor = 1e-7,
                      atol: float | Tensor = 1e-9, method: str | None = "alf",
                      options: dict[str, Any] | None = None,
                      adjoint_params: Sequence[Tensor] | None = None
                      ) -> Tensor | tuple[Tensor, ...]:
    """[`neurode.odeint`][] with ALF and MALI's reversible gradient (constant memory).

    Solves with the asynchronous leapfrog method (``method="alf"``, the only one supported; its
    options include ``eta`` and ``step_size``). The gradient is that of the discrete ALF solve,
    computed by reconstructing the trajectory backwards from the final state (module docstring),
    so it equals backprop through ``neurode.odeint(func, y0, t, method="alf", ...)`` to rounding
    while storing no states.

    Args:
        func: ``func(t, y)`` as for [`neurode.odeint`][].
        y0: initial state as for [`neurode.odeint`][] (tuple states are supported).
        t: output times as for [`neurode.odeint`][] (decreasing ``t`` is supported).
        rtol: unused by the fixed-step ALF solve; accepted for the common signature.
        atol: unused by the fixed-step ALF solve; accepted for the common signature.
        options: ALF options (``step_size``, ``eta``, ...); ``jump_t`` is refused: restarting
            ``v`` at a jump is not invertible.
        method: ``"alf"`` (or None).
        adjoint_params: the tensors to differentiate ``func`` with respect to (default
            ``func.parameters()``, so ``func`` must then be an ``nn.Module``); ``()`` for none.

    Returns:
        As [`neurode.odeint`][]. Gradients flow to ``y0``, to every adjoint parameter and to
        every entry of ``t`` (closed-form time sensitivities).
    """
    if method is None:
        method = "alf"
    if method != "alf":
        raise InvalidInputError(
            f"odeint_reversible needs an invertible step and supports method='alf' only, got "
            f"{method!r}; use odeint_checkpoint or odeint_adjoint for other methods")
    params = resolve_params(func, adjoint_params)
    pb = make_problem(func, y0, t, rtol, atol, method, options)
    if pb.jump_t:
        raise InvalidInputError(
            "odeint_reversible does not take options['jump_t']: restarting v = f(t+, y) after a "
            "jump cannot be inverted; use odeint_checkpoint or odeint_adjoint")
    if pb.per_sample:
        raise InvalidInputError("odeint_reversible solves joint problems only")
    if not needs_grad(pb.y0, pb.t, params):
        return odeint(func, y0, t, rtol=rtol, atol=atol, method=method, options=options)
    spec = _Spec(pb)
    spec.param_names = param_names(func, params)
    ys = _ReversibleSolve.apply(spec, pb.y0, pb.t, *params)
    return pb.layout.trajectory(ys.unsqueeze(1))
