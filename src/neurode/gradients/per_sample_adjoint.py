"""The adjoint method for per-sample solves: one joint adjoint system for the whole batch.

Forward: :func:`~neurode.solvers.batched.integrate_per_sample` without a graph, recording each
iteration's per-sample step ``[t_n, t_{n+1}]`` (a few ``(B,)`` tensors per iteration, never a
state) with every output time landed on.

Backward: the augmented system ``z' = f(z)``, ``a' = −a·∂f/∂z``, ``a_θ' = −a·∂f/∂θ`` is stepped
back over those same per-sample steps in reverse, with the same Runge–Kutta weights. Replaying
the forward's accepted steps needs no error control, so no step is ever rejected, and the
parameter adjoint (shared by the batch) becomes a plain quadrature: one vector–Jacobian product
per stage with the cotangent ``dt_b·a_b`` scaled per sample gives both ``dt_b·a_b ∂f_b/∂z``
(divided by ``dt_b`` afterwards) and ``Σ_b dt_b a_b ∂f_b/∂θ``, the batch's parameter increment
with each sample's own step. At every output time the jump ``dL/dy(t_i)`` is added to ``a``.
Memory is O(B·N) beside the recorded times; no host synchronisation in the backward loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from neurode.errors import InvalidInputError
from neurode.solvers.batched import _coeffs, integrate_per_sample
from neurode.solvers.registry import get_method

__all__ = ["odeint_adjoint_per_sample"]


class _Spec:
    def __init__(self, func, t, method, rtol, atol, options):
        self.func, self.t, self.method = func, t, method
        self.rtol, self.atol, self.options = rtol, atol, options
        self.steps = None
        self.sign = 1.0
        self.shape = None


class _PerSampleAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: _Spec, y0: Tensor, *params: Tensor) -> Tensor:
        with torch.no_grad():
            res = integrate_per_sample(spec.func, y0, spec.t, method=spec.method,
                                       rtol=spec.rtol, atol=spec.atol, options=spec.options,
                                       record_steps=True)
        failure = res.failure(spec.options)
        if failure is not None:
            raise failure[1]
        # iterations in which no sample advanced (rejections all round, the tail after the
        # last sample finished) change nothing backwards: drop them (one host sync)
        moved = torch.stack([s[2] for s in res.steps]).any(1).tolist() if res.steps else []
        spec.steps = [s for s, m in zip(res.steps, moved, strict=True) if m]
        spec.shape = y0.shape
        spec.sign = -1.0 if spec.t.ndim and spec.t.shape[-1] > 1 and bool(
            (spec.t[..., -1] < spec.t[..., 0]).any()) else 1.0
        ctx.spec = spec
        ctx.save_for_backward(res.ys, *params)
        return res.ys

    @staticmethod
    def backward(ctx, grad_ys: Tensor):
        spec = ctx.spec
        ys, *params = ctx.saved_tensors
        T, B = ys.shape[0], ys.shape[1]
        g = grad_ys.reshape(T, B, -1)
        N = g.shape[2]
        gt = g.transpose(0, 1)  # (B, T, N)
        ys_t = ys.reshape(T, B, -1).transpose(0, 1)
        z = ys[-1].reshape(B, N)
        a = g[-1].clone()
        g_params = [torch.zeros_like(p) for p in params]
        cf = _coeffs(get_method(spec.method).tableau)
        n_stages = 1 + max(j for j, _ in cf.b)  # stages with weight (dopri5: not the FSAL one)
        sign = spec.sign
        t_dtype = spec.t.dtype
        shape = spec.shape
        rdtype = z.real.dtype if z.is_complex() else z.dtype
        func = spec.func

        b_weights = dict(cf.b)

        def stage(tf: Tensor, zi: Tensor, ai: Tensor, dt: Tensor):
            """``(f, −a·∂f/∂z)`` at one stage; parameter increments added to ``g_params``."""
            with torch.enable_grad():
                zg = zi.detach().requires_grad_(True)
                fz = func(tf, zg.view(shape)).reshape(B, N)
                fz = fz if sign > 0 else -fz
                vj = torch.autograd.grad(fz, (zg, *params), grad_outputs=ai * dt,
                                         allow_unused=True)
            return fz.detach(), vj

        for t_b, t_a, acc, idx_b, idx_a in reversed(spec.steps):
            # the jump dL/dy(t_i) for a step that ended on output i (< T−1: that one is a's start)
            hit = (acc & (idx_a > idx_b) & (idx_b < T - 1)).unsqueeze(1)
            at = idx_b.clamp(max=T - 1).view(B, 1, 1).expand(B, 1, N)
            a = a + torch.where(hit, gt.gather(1, at).squeeze(1), 0.0)
            # restart z from the stored forward solution (the backward drift of z is then
            # bounded by one output interval, as in the joint adjoint)
            z = torch.where(hit, ys_t.gather(1, at).squeeze(1), z)
            dt = torch.where(acc, t_b - t_a, 0.0)  # internal time; negative: backwards
            dtr = dt.to(rdtype).unsqueeze(1)
            dt_div = torch.where((dt != 0).unsqueeze(1), dtr, 1.0)
            tf0 = (t_a if sign > 0 else -t_a).to(t_dtype)
            dtf = (dt if sign > 0 else -dt).to(t_dtype)
            kz, ka = [], []
            for i in range(n_stages):
                if i == 0:
                    zi, ai = z, a
                else:
                    row = cf.a_rows[i]
                    zi = z + dtr * sum(c * kz[j] for j, c in row)
                    ai = a + dtr * sum(c * ka[j] for j, c in row)
                fz, vj = stage(torch.add(tf0, dtf, alpha=cf.c[i]), zi, ai, dtr)
                kz.append(fz)
                ka.append(-vj[0] / dt_div if vj[0] is not None else torch.zeros_like(ai))
                bi = b_weights.get(i, 0.0)
                if bi != 0.0:
                    for gp, v in zip(g_params, vj[1:], strict=True):
                        if v is not None:
                            gp.sub_(v, alpha=bi)
            z = z + dtr * sum(c * kz[j] for j, c in cf.b)
            a = a + dtr * sum(c * ka[j] for j, c in cf.b)
        if T > 1:  # with one output time, g[0] is g[-1], a's start
            a = a + g[0]
        return (None, a.reshape(shape), *g_params)


def odeint_adjoint_per_sample(func, y0: Tensor, t: Tensor, *, rtol: float = 1e-7,
                              atol: float = 1e-9, method: str | None = None,
                              options: dict[str, Any] | None = None,
                              adjoint_params: Sequence[Tensor] | None = None) -> Tensor:
    """Per-sample solve (as ``odeint(..., options={"per_sample": True})``) whose gradient is
    computed by the joint per-sample adjoint (module docstring). Returns ``(T, B, ...)``."""
    from neurode.gradients.adjoint import _resolve_params

    if isinstance(t, Tensor) and t.requires_grad:
        raise InvalidInputError("the per-sample adjoint does not differentiate with respect to t; "
                                "pass t.detach() (or use odeint with per_sample for backprop)")
    params = _resolve_params(func, adjoint_params)
    method = "dopri5" if method is None else method
    spec = _Spec(func, t, method, rtol, atol, dict(options or {}))
    needs_grad = torch.is_grad_enabled() and (y0.requires_grad
                                              or any(p.requires_grad for p in params))
    if not needs_grad:
        with torch.no_grad():
            res = integrate_per_sample(func, y0, t, method=method, rtol=rtol, atol=atol,
                                       options=spec.options)
        failure = res.failure(spec.options)
        if failure is not None:  # as with gradients: failed samples are an error, not NaN rows
            raise failure[1]
        return res.ys
    return _PerSampleAdjoint.apply(spec, y0, *params)
