"""The adjoint method for per-sample solves: one joint adjoint system for the whole batch.

Forward: the adaptive loop in per-sample mode without a graph, recording each iteration's
per-sample step ``[t_n, t_{n+1}]`` (a few ``(B,)`` tensors per iteration, never a state) with
every output time landed on.

Backward: the augmented system ``z' = f(z)``, ``a' = −a·∂f/∂z``, ``a_θ' = −a·∂f/∂θ`` is stepped
back over those same per-sample steps in reverse, by the same explicit Runge–Kutta stepper the
forward used, on the state ``[z, a]`` ``(B, 2N)`` with each sample's own (negative) step.
Replaying the forward's accepted steps needs no error control, so no step is ever rejected, and
the parameter adjoint (shared by the batch) becomes a plain quadrature: one vector–Jacobian
product per stage with the cotangent ``h_b·a_b`` scaled per sample gives both
``h_b·a_b ∂f_b/∂z`` (divided by ``h_b`` afterwards) and ``Σ_b h_b a_b ∂f_b/∂θ``, the batch's
parameter increment with each sample's own step. At every output time the jump ``dL/dy(t_i)``
is added to ``a`` and ``z`` restarts from the stored forward value. Memory is O(B·N) beside the
recorded times; no host synchronisation in the backward loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from neurode.errors import InvalidInputError
from neurode.gradients._params import resolve_params, vjp_grad
from neurode.solvers.api import integrate, raise_failure, time_grad_start, with_time_grad
from neurode.solvers.problem import Problem, make_problem
from neurode.solvers.quadrature import attach, stage_q
from neurode.solvers.steppers.erk import ExplicitRK

__all__ = ["odeint_adjoint_per_sample"]


class _Spec:
    def __init__(self, pb: Problem, params):
        self.pb = pb
        self.params = params
        self.steps = None


class _Augmented:
    """The field of ``[z, a]`` for the backward replay; ``h`` ``(B, 1)`` is the signed step of
    the step being replayed (the VJP cotangent is scaled by it)."""

    def __init__(self, pb: Problem, params):
        self.pb = pb
        self.params = params
        self.N = pb.layout.n
        self.h: Tensor | None = None
        self.div: Tensor | None = None

    def __call__(self, tu: Tensor, Y: Tensor) -> Tensor:
        N = self.N
        z, a = Y[:, :N], Y[:, N:]
        L = self.pb.layout
        with torch.enable_grad():
            zg = z.detach().requires_grad_(True)
            fz = L.from_user(self.pb.func(tu, L.to_user(zg)))
            vj = vjp_grad(fz, (zg, *self.params), a * self.h)
        ka = torch.zeros_like(a) if vj[0] is None else -vj[0] / self.div
        q = [torch.zeros_like(p) if v is None else v for p, v in zip(self.params, vj[1:],
                                                                      strict=True)]
        return attach(torch.cat([fz.detach(), ka], 1), q)


class _PerSampleAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: _Spec, y0: Tensor, *params: Tensor) -> Tensor:
        with torch.no_grad():
            pb = spec.pb.with_y0(y0.detach())
            res = integrate(pb, per_sample_record=True)
        raise_failure(pb, res)
        # iterations in which no sample advanced (rejections all round, the tail after the
        # last sample finished) change nothing backwards: drop them (one host sync)
        steps = res.steps
        moved = torch.stack([s[2] for s in steps]).any(1).tolist() if steps else []
        spec.steps = [s for s, m in zip(steps, moved, strict=True) if m]
        ctx.spec = spec
        ctx.save_for_backward(res.ys, *params)
        return res.ys

    @staticmethod
    def backward(ctx, grad_ys: Tensor):
        spec = ctx.spec
        pb = spec.pb
        ys, *params = ctx.saved_tensors
        T, B, N = ys.shape
        gt = grad_ys.transpose(0, 1)  # (B, T, N)
        ys_t = ys.transpose(0, 1)
        z = ys[-1].clone()
        a = grad_ys[-1].clone()
        g_params = [torch.zeros_like(p) for p in params]
        tab = pb.method.tableau
        L = pb.layout
        stepper = ExplicitRK(tab, batch=B, n=2 * N, dtype=L.dtype, device=L.device, sign=pb.sign,
                             time_dtype=pb.time_dtype, per_sample=True)
        aug = _Augmented(pb, params)
        b = [(j, float(x)) for j, x in enumerate(tab.b) if x != 0.0]
        rdtype = L.real_dtype
        for t_b, t_a, acc, idx_b, idx_a in reversed(spec.steps):
            # the jump dL/dy(t_i) for a step that ended on output i (< T−1: that one is a's start)
            hit = (acc & (idx_a > idx_b) & (idx_b < T - 1)).unsqueeze(1)
            at = idx_b.clamp(max=T - 1).view(B, 1, 1).expand(B, 1, N)
            a = a + torch.where(hit, gt.gather(1, at).squeeze(1), 0.0)
            # restart z from the stored forward solution (the backward drift of z is then
            # bounded by one output interval, as in the joint adjoint)
            z = torch.where(hit, ys_t.gather(1, at).squeeze(1), z)
            dt = torch.where(acc, t_b - t_a, 0.0).to(t_a.dtype)  # negative: backwards
            h = (dt if pb.sign > 0 else -dt).to(rdtype).unsqueeze(1)
            aug.h = h
            aug.div = torch.where(h != 0, h, 1.0)
            out = stepper.step(aug, t_a, dt, torch.cat([z, a], 1), None, None, error=False,
                               want_f1=False)
            z, a = out.y1[:, :N], out.y1[:, N:]
            for j, w in b:
                for gp, v in zip(g_params, stage_q(out.raw[j]), strict=True):
                    gp.sub_(v, alpha=w)
        if T > 1:  # with one output time, g[0] is g[-1], a's start
            a = a + grad_ys[0]
        return (None, a, *g_params)


def odeint_adjoint_per_sample(func, y0, t: Tensor, *, rtol: float = 1e-7, atol: float = 1e-9,
                              method: str | None = None, options: dict[str, Any] | None = None,
                              adjoint_params: Sequence[Tensor] | None = None):
    """Per-sample solve (as ``odeint(..., options={"per_sample": True})``) whose gradient is
    computed by the joint per-sample adjoint (module docstring). Returns ``(T, B, ...)``."""
    params = resolve_params(func, adjoint_params)
    pb = make_problem(func, y0, t, rtol, atol, method, options, per_sample=True)
    if pb.method.tableau is None or not hasattr(pb.method.tableau, "fsal"):
        raise InvalidInputError(
            f"the per-sample adjoint replays explicit Runge–Kutta steps; method "
            f"{pb.method.name!r} is not one")
    # dL/dt in closed form, as for backprop (neurode.solvers.api._solve)
    time_grad = pb.t.requires_grad and torch.is_grad_enabled()
    needs = torch.is_grad_enabled() and (pb.y0.requires_grad or time_grad
                                         or any(p.requires_grad for p in params))
    if not needs:
        with torch.no_grad():
            res = integrate(pb)
        raise_failure(pb, res)  # as with gradients: failed samples are an error, not NaN rows
        return pb.layout.trajectory(res.ys)
    spec = _Spec(pb, params)
    y0 = time_grad_start(pb).y0 if time_grad else pb.y0
    ys = _PerSampleAdjoint.apply(spec, y0, *params)
    if time_grad:
        ys = torch.stack([pb.y0] + [with_time_grad(pb, i, ys[i]) for i in range(1, len(ys))])
    return pb.layout.trajectory(ys)
