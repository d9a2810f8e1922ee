"""Quadratures beside the state (:mod:`neurode.solvers.quadrature`): accuracy and order, and the
adjoint's use of them for the parameter adjoints (no concatenation into the solver state)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

import neurode
import neurode.solvers.api as api_mod
from neurode.solvers.api import integrate
from neurode.solvers.problem import make_problem
from neurode.solvers.quadrature import AttachingField, Quadrature
from neurode.solvers.tableaux import TABLEAUX

F64 = torch.float64


def _solve(func_q, y0, t1, method, quad, **kw):
    """Integrate ``func_q(t, y) -> (dy/dt, q)`` on [0, t1], the q's into ``quad``."""
    last = [[]]

    def f(t, y):
        k, q = func_q(t, y)
        last[0] = q
        return k

    pb = make_problem(f, y0, torch.tensor([0.0, t1], dtype=F64), kw.pop("rtol", 1e-7),
                      kw.pop("atol", 1e-9), method, kw.pop("options", None))
    pb = dataclasses.replace(pb, field=AttachingField(pb.field, last))
    res = integrate(pb, quad=quad)
    assert res.ok()
    return res


def _field(t, y):
    """y' = [-y0, y0·cos t]; quadratures q' = (y0², [sin t, 1])."""
    k = torch.stack([-y[0], y[0] * torch.cos(t)])
    return k, [y[0] ** 2, torch.stack([torch.sin(t), torch.ones_like(t)])]


def _exact_q(t1):
    # ∫ e^{-2s} ds, ∫ sin s ds, ∫ 1 ds over [0, t1] (y0(0) = 1).
    return [(1 - math.exp(-2 * t1)) / 2, torch.tensor([1 - math.cos(t1), t1], dtype=F64)]


def _q0():
    return [torch.tensor(0.0, dtype=F64), torch.zeros(2, dtype=F64)]


def _err(values, exact):
    return max(abs(float(values[0]) - exact[0]), float((values[1] - exact[1]).abs().max()))


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "dopri8"])
@pytest.mark.parametrize("controlled", [True, False])
def test_adaptive_quadrature_meets_the_tolerance(method, controlled):
    for tol in (1e-5, 1e-8):
        quad = Quadrature(_q0(), TABLEAUX[method], rtol=tol, atol=tol, controlled=controlled)
        y0 = torch.tensor([1.0, 0.0], dtype=F64)
        _solve(_field, y0, 2.0, method, quad, rtol=tol, atol=tol)
        err = _err(quad.values, _exact_q(2.0))
        assert err < 20 * tol, (method, tol, err)


def test_controlled_quadrature_takes_more_steps_when_its_integrand_is_harder():
    """The step control sees the quadrature only when controlled: a fast-oscillating integrand
    that the state does not have forces smaller steps (and a smaller quadrature error)."""
    def f(t, y):
        return -y, [torch.sin(40 * t).reshape(1)]

    out = {}
    for controlled in (False, True):
        quad = Quadrature([torch.zeros(1, dtype=F64)], TABLEAUX["dopri5"], rtol=1e-7, atol=1e-7,
                          controlled=controlled)
        res = _solve(f, torch.ones(1, dtype=F64), 1.0, "dopri5", quad, rtol=1e-7, atol=1e-7)
        exact = (1 - math.cos(40.0)) / 40
        out[controlled] = (int(res.n_accepted[0]), abs(float(quad.values[0][0]) - exact))
    assert out[True][0] > 2 * out[False][0], out
    assert out[True][1] < 1e-6 < out[False][1], out


@pytest.mark.parametrize(("method", "order"), [("euler", 1), ("midpoint", 2), ("heun3", 3),
                                               ("rk4", 4)])
def test_fixed_grid_quadrature_converges_at_the_method_order(method, order):
    errs = []
    hs = [0.1, 0.05, 0.025]
    for h in hs:
        quad = Quadrature(_q0(), TABLEAUX[method])
        y0 = torch.tensor([1.0, 0.0], dtype=F64)
        _solve(_field, y0, 1.0, method, quad, options={"step_size": h})
        errs.append(abs(float(quad.values[0]) - _exact_q(1.0)[0]))
    slope = math.log(errs[0] / errs[-1]) / math.log(hs[0] / hs[-1])
    assert abs(slope - order) < 0.2, (method, errs, slope)


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Linear(3, 32), nn.Tanh(), nn.Linear(32, 3)).double()

    def forward(self, t, y):
        return self.net(y) * torch.cos(t)


def _mixed_rms(state):
    """The largest RMS over the components of the adjoint's state tuple."""
    return max(x.pow(2).mean().sqrt() for x in state)


@pytest.mark.parametrize(("method", "options"), [("dopri5", None), ("rk4", {"step_size": 0.01})])
def test_adjoint_integrates_parameter_adjoints_beside_a_state_of_twice_the_size(
        monkeypatch, method, options):
    """The backward solve hands the loop the state (z, a) only (2 × 6 numbers here, not
    6 + 6 + 227), and its gradient equals the all-in-one-state adjoint (forced by a custom
    adjoint norm, which the quadrature path does not take) and backprop."""
    f = _MLP()
    y0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    t = torch.linspace(0, 2, 5, dtype=F64)  # on rk4's grid: no O(h²) output interpolation
    params = [y0, *f.parameters()]
    sizes = []
    name = "AdaptiveLoop" if method == "dopri5" else "FixedLoop"
    loop = getattr(api_mod, name)

    def spy(pb, *a, **k):
        sizes.append(pb.y0.numel())
        return loop(pb, *a, **k)

    monkeypatch.setattr(api_mod, name, spy)
    tol = {"rtol": 1e-10, "atol": 1e-10}
    ys = neurode.odeint_adjoint(f, y0, t, method=method, options=options, **tol)
    g_quad = torch.autograd.grad((ys**2).sum(), params)
    assert sizes[1:] == [12] * 4, sizes  # forward solve, then 4 backward intervals
    ys = neurode.odeint(f, y0, t, method=method, options=options, **tol)
    g_ref = torch.autograd.grad((ys**2).sum(), params)
    g_cat = g_ref
    if method == "dopri5":  # (a fixed grid takes no norm: its backward is always the quadrature)
        sizes.clear()
        ys = neurode.odeint_adjoint(f, y0, t, method=method, options=options,
                                    adjoint_options={"norm": _mixed_rms}, **tol)
        g_cat = torch.autograd.grad((ys**2).sum(), params)
        n_params = sum(p.numel() for p in f.parameters())
        assert sizes[1:] == [12 + n_params] * 4, sizes
    for gq, gc, gr in zip(g_quad, g_cat, g_ref, strict=True):
        if method == "dopri5":
            assert float((gq - gc).norm() / gc.norm()) < 1e-8
        # Adjoint (continuous) vs backprop (discrete): dopri5 at 1e-10, rk4 within its O(h⁴).
        assert float((gq - gr).norm() / gr.norm()) < (1e-7 if method == "dopri5" else 1e-6)
