"""Quadratures beside the state (:mod:`neurode.solvers.quadrature`): accuracy and order, and the
adjoint's use of them for the parameter adjoints (no concatenation into the solver state)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import neurode
import neurode.solvers.adaptive as adaptive_mod
import neurode.solvers.fixed as fixed_mod
from neurode.solvers.adaptive import AdaptiveConfig, integrate_adaptive
from neurode.solvers.controller import rms_norm
from neurode.solvers.fixed import integrate_fixed, make_grid
from neurode.solvers.quadrature import Quadrature, attach
from neurode.solvers.rk import get_stepper
from neurode.solvers.tableaux import TABLEAUX

F64 = torch.float64


def _field(s, y, perturb=0):
    """y' = [-y0, y0·cos s]; quadratures q' = (y0², [sin s, 1])."""
    k = torch.stack([-y[0], y[0] * math.cos(s)])
    return attach(k, [y[0] ** 2, torch.tensor([math.sin(s), 1.0], dtype=F64)])


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
    stepper = get_stepper(TABLEAUX[method])
    for tol in (1e-5, 1e-8):
        cfg = AdaptiveConfig(rtol=tol, atol=tol, norm=rms_norm)
        quad = Quadrature(_q0(), stepper, rtol=tol, atol=tol, controlled=controlled)
        y0 = torch.tensor([1.0, 0.0], dtype=F64)
        res = integrate_adaptive(_field, y0, [0.0, 2.0], stepper, cfg, quad=quad)
        assert res.status == 0
        err = _err(quad.values, _exact_q(2.0))
        assert err < 20 * tol, (method, tol, err)


def test_controlled_quadrature_takes_more_steps_when_its_integrand_is_harder():
    """The step control sees the quadrature only when controlled: a fast-oscillating integrand
    that the state does not have forces smaller steps (and a smaller quadrature error)."""
    stepper = get_stepper(TABLEAUX["dopri5"])

    def f(s, y, perturb=0):
        return attach(-y, [torch.tensor([math.sin(40 * s)], dtype=F64)])

    out = {}
    for controlled in (False, True):
        quad = Quadrature([torch.zeros(1, dtype=F64)], stepper, rtol=1e-7, atol=1e-7,
                          controlled=controlled)
        res = integrate_adaptive(f, torch.ones(1, dtype=F64), [0.0, 1.0], stepper,
                                 AdaptiveConfig(rtol=1e-7, atol=1e-7, norm=rms_norm), quad=quad)
        exact = (1 - math.cos(40.0)) / 40
        out[controlled] = (res.n_accepted, abs(float(quad.values[0][0]) - exact))
    assert out[True][0] > 2 * out[False][0], out
    assert out[True][1] < 1e-6 < out[False][1], out


@pytest.mark.parametrize(("method", "order"), [("euler", 1), ("midpoint", 2), ("heun3", 3),
                                               ("rk4", 4)])
def test_fixed_grid_quadrature_converges_at_the_method_order(method, order):
    stepper = get_stepper(TABLEAUX[method])
    errs = []
    hs = [0.1, 0.05, 0.025]
    for h in hs:
        quad = Quadrature(_q0(), stepper)
        y0 = torch.tensor([1.0, 0.0], dtype=F64)
        integrate_fixed(_field, y0, [0.0, 1.0], make_grid([0.0, 1.0], h, None), stepper,
                        quad=quad)
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


@pytest.mark.parametrize(("method", "options"), [("dopri5", None), ("rk4", {"step_size": 0.01})])
def test_adjoint_integrates_parameter_adjoints_beside_a_state_of_twice_the_size(
        monkeypatch, method, options):
    """The backward solve hands the loop the state (z, a) only (2 × 6 numbers here, not
    6 + 6 + 227), and its gradient equals the all-in-one-state adjoint (forced by a tensor
    tolerance, which the quadrature path does not take) and backprop."""
    f = _MLP()
    y0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    t = torch.linspace(0, 2, 5, dtype=F64)  # on rk4's grid: no O(h²) output interpolation
    params = [y0, *f.parameters()]
    sizes = []
    loop = adaptive_mod.integrate_adaptive if method == "dopri5" else fixed_mod.integrate_fixed
    name = "integrate_adaptive" if method == "dopri5" else "integrate_fixed"

    def spy(fn, y, *a, **k):
        sizes.append(y.numel())
        return loop(fn, y, *a, **k)

    monkeypatch.setattr(f"neurode.solvers.api.{name}", spy)
    tol = {"rtol": 1e-10, "atol": 1e-10}
    ys = neurode.odeint_adjoint(f, y0, t, method=method, options=options, **tol)
    g_quad = torch.autograd.grad((ys**2).sum(), params)
    assert sizes[1:] == [12] * 4, sizes  # forward solve, then 4 backward intervals
    sizes.clear()
    ys = neurode.odeint_adjoint(f, y0, t, method=method, options=options,
                                adjoint_rtol=torch.tensor(1e-10, dtype=F64), **tol)
    g_cat = torch.autograd.grad((ys**2).sum(), params)
    n_params = sum(p.numel() for p in f.parameters())
    assert sizes[1:] == [12 + n_params] * 4, sizes
    ys = neurode.odeint(f, y0, t, method=method, options=options, **tol)
    g_ref = torch.autograd.grad((ys**2).sum(), params)
    for gq, gc, gr in zip(g_quad, g_cat, g_ref, strict=True):
        assert float((gq - gc).norm() / gc.norm()) < 1e-8
        # Adjoint (continuous) vs backprop (discrete): dopri5 at 1e-10, rk4 within its O(h⁴).
        assert float((gq - gr).norm() / gr.norm()) < (1e-7 if method == "dopri5" else 1e-6)
