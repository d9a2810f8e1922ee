"""The asynchronous leapfrog integrator (method "alf") and MALI's reversible gradient.

The reversible gradient is the gradient of the discrete ALF solve, recovered by inverting the
steps from the final state; so it is checked against backprop through ``neurode.odeint(...,
method="alf")`` with the same options, which takes the very same steps.
"""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck

import neurode
from neurode.gradients.reversible import odeint_reversible
from neurode.solvers.steppers.alf import ALF

F64 = torch.float64


def _t(*xs):
    return torch.tensor(xs, dtype=F64)


class MLPField(nn.Module):
    """A nonlinear field whose linear part is a rotation: its flow is neither strongly
    contracting nor expanding, so it can be run backwards (and forwards) over long horizons."""

    def __init__(self, d: int = 4, hidden: int = 16, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(d, d, generator=g, dtype=F64)
        self.S = nn.Parameter(0.5 * (a - a.T))
        self.l1 = nn.Linear(d, hidden, dtype=F64)
        self.l2 = nn.Linear(hidden, d, dtype=F64)
        with torch.no_grad():
            for p in (*self.l1.parameters(), *self.l2.parameters()):
                p.copy_(torch.randn(p.shape, generator=g, dtype=F64) / math.sqrt(p.shape[-1]))
            self.l2.weight.mul_(0.3)

    def forward(self, t, z):
        return z @ self.S.T + self.l2(torch.tanh(self.l1(z) + 0.1 * torch.sin(t)))


def _rel(a, b):
    return float((a - b).norm() / b.norm())


# --- the step and its inverse --------------------------------------------------------------------


def _alf(eta: float, z: torch.Tensor) -> tuple[ALF, callable]:
    return ALF(eta, batch=1, n=z.numel(), dtype=z.dtype, device=z.device, sign=1.0,
               time_dtype=F64, per_sample=False)


def _field(f):
    return lambda tu, y: f(float(tu), y.view(-1)).view(1, -1)


def alf_step(f, s, h, z, v, eta=1.0):
    """One ALF step from floats ``s``, ``h`` through the ALF stepper: ``(z1, v1, u)``."""
    out = _alf(eta, z).step(_field(f), _t(s), _t(h), z.view(1, -1), v.view(1, -1), error=False)
    return out.y1[0], out.carry[0], out.raw[0][0]


def alf_inverse(f, s, h, z1, v1, eta=1.0):
    """The ALF stepper's inverse step: ``(z, v)`` at ``s``."""
    z, v = _alf(eta, z1).inverse(_field(f), _t(s), _t(h), z1.view(1, -1), v1.view(1, -1))
    return z[0], v[0]


def _rotation_field(seed=0, d=8):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=F64)
    S = (a - a.T) / math.sqrt(d)
    W = torch.randn(d, d, generator=g, dtype=F64) / math.sqrt(d)
    b = 0.1 * torch.randn(d, generator=g, dtype=F64)

    def f(s, z, perturb=0):
        return S @ z + 0.5 * torch.tanh(W @ z + b) * math.cos(s)

    return f, torch.randn(d, generator=g, dtype=F64)


def test_step_with_consistent_v_is_the_explicit_midpoint_rule():
    f, z = _rotation_field()
    h, s = 0.1, 0.3
    z1, v1, u = alf_step(f, s, h, z, f(s, z))
    mid = f(s + h / 2, z + h / 2 * f(s, z))
    torch.testing.assert_close(u, mid, rtol=0, atol=1e-15)
    torch.testing.assert_close(z1, z + h * mid, rtol=0, atol=1e-15)
    torch.testing.assert_close(v1, 2 * mid - f(s, z), rtol=0, atol=1e-15)


def test_inverse_reconstructs_the_state_after_a_thousand_varying_steps():
    f, z0 = _rotation_field()
    v0 = f(0.0, z0)
    g = torch.Generator().manual_seed(1)
    hs = (0.005 + 0.02 * torch.rand(1000, generator=g, dtype=F64)).tolist()
    ts = [0.0]
    for h in hs[:-1]:
        ts.append(ts[-1] + h)
    z, v = z0, v0
    for s, h in zip(ts, hs, strict=True):
        z, v, _ = alf_step(f, s, h, z, v)
    assert float((z - z0).abs().max()) > 0.1  # the state really moved
    for s, h in zip(reversed(ts), reversed(hs), strict=True):
        z, v = alf_inverse(f, s, h, z, v)
    drift_z = float((z - z0).abs().max() / z0.abs().max())
    drift_v = float((v - v0).abs().max() / v0.abs().max())
    # Measured: ~5e-15 (z) and ~1e-14 (v) after 1,000 steps there and back.
    assert drift_z < 1e-13, drift_z
    assert drift_v < 1e-13, drift_v


def test_damped_step_is_inverted_too_but_amplifies_rounding():
    f, z0 = _rotation_field(seed=2)
    v0 = f(0.0, z0)
    eta, h, n = 0.9, 0.02, 30  # the inverse amplifies rounding by 1/(2η − 1) = 1.25 per step
    z, v = z0, v0
    for k in range(n):
        z, v, _ = alf_step(f, k * h, h, z, v, eta)
    for k in range(n - 1, -1, -1):
        z, v = alf_inverse(f, k * h, h, z, v, eta)
    torch.testing.assert_close(z, z0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(v, v0, rtol=1e-10, atol=1e-10)


# --- the method "alf" through odeint ----------------------------------------------------------


def _oscillator(t, y):
    return torch.stack([y[1], -y[0]])


def _logistic(t, y):
    return y * (1 - y)


def _logistic_exact(t, y0):
    return 1 / (1 + (1 / y0 - 1) * torch.exp(-t))


def test_alf_is_registered_and_solves_with_odeint_and_solve_ivp():
    assert "alf" in neurode.METHODS
    t = torch.linspace(0, 1, 5, dtype=F64)
    y = neurode.odeint(_oscillator, _t(1.0, 0.0), t, method="alf", rtol=1e-8, atol=1e-10)
    exact = torch.stack([torch.cos(t), -torch.sin(t)], dim=1)
    torch.testing.assert_close(y, exact, rtol=0, atol=1e-7)
    sol = neurode.solve_ivp(_oscillator, _t(1.0, 0.0), t, method="alf", dense=True)
    assert sol.success and sol.stats.n_accepted > 0
    assert sol.stats.nfe == sol.stats.n_steps + 2  # v0, the initial-step probe, one per step
    # Dense output (cubic Hermite through (z, v)) is continuous and second-order accurate.
    yt = sol.evaluate(_t(0.123, 0.777))
    ex = torch.stack([torch.cos(_t(0.123, 0.777)), -torch.sin(_t(0.123, 0.777))], dim=1)
    torch.testing.assert_close(yt, ex, rtol=0, atol=1e-6)


def test_steps_land_exactly_on_every_output_time():
    acc = []

    class Rec(nn.Module):
        def forward(self, t, y):
            return _oscillator(t, y)

        def callback_accept_step(self, t, y, dt):
            acc.append((float(t), float(dt)))

    t = _t(0.0, 0.1, 0.35, 0.7, 2.0)
    sol = neurode.solve_ivp(Rec(), _t(1.0, 0.0), t, method="alf", rtol=1e-4, atol=1e-6)
    starts = {s for s, _ in acc}
    assert {0.0, 0.1, 0.35, 0.7} <= starts
    assert len(acc) == sol.stats.n_accepted
    assert math.isclose(acc[-1][0] + acc[-1][1], 2.0, abs_tol=1e-15)


def test_fixed_steps_converge_at_order_two():
    y0 = _t(0.2)
    t = _t(0.0, 1.0, 3.0)
    exact = _logistic_exact(t, y0[0])[:, None]
    errs = []
    hs = [0.2, 0.1, 0.05, 0.025, 0.0125]
    for h in hs:
        y = neurode.odeint(_logistic, y0, t, method="alf", options={"step_size": h})
        errs.append(float((y - exact).abs().max()))
    slopes = [math.log2(a / b) for a, b in itertools.pairwise(errs)]
    # Measured: 2.00, 2.00, 2.00, 2.00.
    assert all(1.9 < s < 2.1 for s in slopes), slopes


def test_damped_fixed_steps_are_first_order():
    y0 = _t(0.2)
    t = _t(0.0, 3.0)
    exact = _logistic_exact(t, y0[0])[:, None]
    errs = [float((neurode.odeint(_logistic, y0, t, method="alf",
                                  options={"step_size": h, "eta": 0.8}) - exact).abs().max())
            for h in (0.02, 0.01, 0.005)]
    slopes = [math.log2(a / b) for a, b in itertools.pairwise(errs)]
    assert all(0.9 < s < 1.2 for s in slopes), slopes


def test_pinned_adaptive_steps_equal_fixed_steps():
    t = _t(0.0, 0.5, 1.0)
    a = neurode.odeint(_logistic, _t(0.2), t, method="alf", options={"step_size": 0.05})
    b = neurode.odeint(_logistic, _t(0.2), t, method="alf",
                       options={"first_step": 0.05, "min_step": 0.05, "max_step": 0.05})
    torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


@pytest.mark.parametrize("tol", [1e-4, 1e-6, 1e-8])
def test_adaptive_alf_meets_its_tolerance_on_smooth_problems(tol):
    t = torch.linspace(0, 2, 5, dtype=F64)
    sol = neurode.solve_ivp(_logistic, _t(0.2), t, method="alf", rtol=tol, atol=tol)
    err = float((sol.ys - _logistic_exact(t, torch.tensor(0.2, dtype=F64))[:, None]).abs().max())
    assert err <= tol, (tol, err)
    t = torch.linspace(0, 2 * math.pi, 5, dtype=F64)
    sol = neurode.solve_ivp(_oscillator, _t(1.0, 0.0), t, method="alf", rtol=tol, atol=tol)
    exact = torch.stack([torch.cos(t), -torch.sin(t)], dim=1)
    err = float((sol.ys - exact).abs().max())
    assert err <= 5 * tol, (tol, err)  # measured ~3.7 tol over one period


def test_steps_grow_like_tol_to_the_minus_one_half():
    t = _t(0.0, 2 * math.pi)
    n = [neurode.solve_ivp(_oscillator, _t(1.0, 0.0), t, method="alf", rtol=tol,
                           atol=tol).stats.n_accepted for tol in (1e-4, 1e-6)]
    assert 7 < n[1] / n[0] < 13, n  # 100× tighter → √100 = 10× more steps


def test_tuple_state_and_decreasing_time():
    x0, v0 = _t(1.0), _t(0.0)
    t = torch.linspace(0, -2, 4, dtype=F64)
    xs, vs = neurode.odeint(lambda t, y: (y[1], -y[0]), (x0, v0), t, method="alf",
                            rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(xs[:, 0], torch.cos(t), rtol=0, atol=1e-8)
    torch.testing.assert_close(vs[:, 0], -torch.sin(t), rtol=0, atol=1e-8)


def test_backprop_through_odeint_alf_matches_finite_differences():
    W = torch.tensor([[0.0, 1.0], [-1.0, -0.1]], dtype=F64, requires_grad=True)
    y0 = _t(0.5, -0.3).requires_grad_()

    def fn(y0, W):
        return neurode.odeint(lambda t, y: torch.tanh(W @ y), y0, _t(0.0, 0.7, 1.5),
                              method="alf", options={"step_size": 0.1})

    assert gradcheck(fn, (y0, W))


# --- the reversible gradient -------------------------------------------------------------------


def _loss(ys):
    return (ys**2).sum() + (ys[1] * torch.arange(ys.shape[-1], dtype=F64)).sum()


def test_reversible_gradient_equals_backprop_through_alf_over_a_long_horizon():
    func = MLPField()
    y0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    y0.requires_grad_()
    t = torch.linspace(0, 20, 6, dtype=F64).requires_grad_()
    kw = {"rtol": 1e-4, "atol": 1e-6, "options": {"max_num_steps": 100_000}}
    ys = neurode.odeint(func, y0, t, method="alf", **kw)
    ref = torch.autograd.grad(_loss(ys), (y0, t, *func.parameters()))
    ys_r = odeint_reversible(func, y0, t, **kw)
    assert torch.equal(ys_r, ys)  # the same steps, the same arithmetic
    got = torch.autograd.grad(_loss(ys_r), (y0, t, *func.parameters()))
    names = ["y0", "t", *(n for n, _ in func.named_parameters())]
    errs = {n: _rel(g, r) for n, g, r in zip(names, got, ref, strict=True)}
    # Measured: ≤ 4e-15 for every tensor, over ~3,100 accepted steps.
    assert max(errs.values()) <= 1e-8, errs


def test_reversible_gradient_tuple_state_decreasing_time_and_adjoint_params():
    g = torch.Generator().manual_seed(4)
    A = (0.7 * torch.randn(2, 2, generator=g, dtype=F64)).requires_grad_()
    w = torch.randn(2, generator=g, dtype=F64).requires_grad_()

    def func(t, y):
        x, p = y
        return p, -torch.tanh(A @ x) * (1 + 0.1 * t) + w * p.sin()

    x0 = torch.randn(2, generator=g, dtype=F64).requires_grad_()
    p0 = torch.randn(2, generator=g, dtype=F64).requires_grad_()
    t = torch.linspace(3, -2, 5, dtype=F64).requires_grad_()
    kw = {"rtol": 1e-6, "atol": 1e-8}

    def loss(out):
        x, p = out
        return (x**3).sum() + (p[2] * x[-1]).sum()

    ref = torch.autograd.grad(loss(neurode.odeint(func, (x0, p0), t, method="alf", **kw)),
                              (x0, p0, t, A, w))
    out = odeint_reversible(func, (x0, p0), t, adjoint_params=(A, w), **kw)
    assert isinstance(out, tuple) and out[0].shape == (5, 2)
    got = torch.autograd.grad(loss(out), (x0, p0, t, A, w))
    for name, a, b in zip(("x0", "p0", "t", "A", "w"), got, ref, strict=True):
        assert _rel(a, b) <= 1e-8, (name, _rel(a, b))


def test_reversible_gradient_with_damping_and_fixed_steps():
    func = MLPField(d=3, hidden=8, seed=5)
    y0 = torch.randn(3, dtype=F64).requires_grad_()
    t = _t(0.0, 1.0, 2.5)
    opts = {"step_size": 0.05, "eta": 0.95}  # 50 steps: amplification 1/0.9⁵⁰ ≈ 200
    ref = torch.autograd.grad(_loss(neurode.odeint(func, y0, t, method="alf", options=opts)),
                              (y0, *func.parameters()))
    got = torch.autograd.grad(_loss(odeint_reversible(func, y0, t, options=opts)),
                              (y0, *func.parameters()))
    for a, b in zip(got, ref, strict=True):
        assert _rel(a, b) <= 1e-10


def test_gradcheck_reversible_in_float64():
    W = (0.5 * torch.randn(3, 3, generator=torch.Generator().manual_seed(6), dtype=F64))
    W.requires_grad_()
    b = _t(0.1, -0.2, 0.05).requires_grad_()
    y0 = _t(0.3, -0.4, 0.8).requires_grad_()
    t = _t(0.0, 0.5, 1.3)

    def fn(y0, W, b):
        return odeint_reversible(lambda t, y: torch.tanh(W @ y) + b, y0, t,
                                 options={"step_size": 0.1}, adjoint_params=(W, b))

    assert gradcheck(fn, (y0, W, b))

    # Adaptive steps: the gradient equals backprop through the same ALF solve (tests above);
    # finite differences across adaptive step selection are not smooth, so no gradcheck there.


def test_reversible_memory_does_not_grow_with_the_number_of_steps():
    """Count the tensors autograd saves during the forward pass: backprop through odeint saves
    some per step, the reversible solve a fixed handful (t, the outputs, the parameters)."""
    func = MLPField(d=3, hidden=8, seed=7)
    y0 = torch.randn(3, dtype=F64).requires_grad_()
    t = _t(0.0, 2.0)

    def saved(fn, h):
        count = [0]

        def pack(x):
            count[0] += 1
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            fn(func, y0, t, method="alf", options={"step_size": h})
        return count[0]

    rev = [saved(odeint_reversible, h) for h in (0.1, 0.01)]
    bp = [saved(neurode.odeint, h) for h in (0.1, 0.01)]
    assert rev[0] == rev[1] <= 2 + len(list(func.parameters()))
    assert bp[1] > 5 * bp[0]


def test_reversible_single_output_time_and_no_grad():
    func = MLPField(d=2, hidden=4)
    y0 = _t(0.5, 0.1).requires_grad_()
    ys = odeint_reversible(func, y0, _t(0.3))
    assert torch.equal(ys, y0[None].detach())
    (g,) = torch.autograd.grad(ys.sum(), y0)
    torch.testing.assert_close(g, torch.ones(2, dtype=F64))
    with torch.no_grad():
        ys = odeint_reversible(func, y0, _t(0.0, 1.0))
    assert ys.grad_fn is None


# --- errors ------------------------------------------------------------------------------------


def test_reversible_refuses_other_methods():
    with pytest.raises(neurode.InvalidInputError, match="method='alf' only"):
        odeint_reversible(MLPField(d=2), _t(1.0, 0.0), _t(0.0, 1.0), method="dopri5")


def test_reversible_needs_a_module_or_adjoint_params():
    y0 = _t(1.0).requires_grad_()
    with pytest.raises(neurode.InvalidInputError, match="adjoint_params"):
        odeint_reversible(lambda t, y: -y, y0, _t(0.0, 1.0))


@pytest.mark.parametrize(("options", "pattern"), [
    ({"eta": 0.5}, r"eta.*\(0.5, 1\]"),
    ({"eta": 1.5}, r"eta.*\(0.5, 1\]"),
    ({"eta": "x"}, "eta"),
    ({"step_size": -0.1}, "step_size"),
    ({"step_size": 0.1, "first_step": 0.1}, "cannot be combined with first_step"),
    ({"min_step": 1.0, "max_step": 0.1}, "min_step"),
])
def test_bad_alf_options_are_rejected(options, pattern):
    with pytest.raises(neurode.InvalidInputError, match=pattern):
        neurode.odeint(_oscillator, _t(1.0, 0.0), _t(0.0, 1.0), method="alf", options=options)
    y0 = _t(1.0, 0.0).requires_grad_()
    with pytest.raises(neurode.InvalidInputError, match=pattern):
        odeint_reversible(_oscillator, y0, _t(0.0, 1.0), options=options, adjoint_params=())


def test_jump_t_restarts_alf_in_odeint_but_is_refused_by_the_reversible_gradient():
    """y' = -y before t = 0.5 and +1 after: ALF restarts v = f(t+, y) at the jump and stays
    second-order accurate; odeint_reversible cannot invert that restart and says so."""
    def f(t, y):
        return torch.where(t < 0.5, -y, torch.ones_like(y))

    y = neurode.odeint(f, _t(1.0), _t(0.0, 1.0), method="alf", rtol=1e-8, atol=1e-10,
                       options={"jump_t": [0.5]})
    exact = math.exp(-0.5) + 0.5
    assert abs(float(y[-1, 0]) - exact) < 1e-6
    with pytest.raises(neurode.InvalidInputError, match="jump_t"):
        odeint_reversible(f, _t(1.0).requires_grad_(), _t(0.0, 1.0), adjoint_params=(),
                          options={"jump_t": [0.5]})


def test_solver_failures_raise_neurode_errors():
    y0 = _t(1.0)
    with pytest.raises(neurode.MaxStepsReachedError, match="max_num_steps=5"):
        neurode.odeint(_oscillator, _t(1.0, 0.0), _t(0.0, 10.0), method="alf",
                       options={"max_num_steps": 5})

    def nan_late(t, y):
        return torch.full_like(y, math.nan) if float(t) > 0.5 else -y

    with pytest.raises(neurode.NonFiniteStateError):
        neurode.odeint(nan_late, y0, _t(0.0, 1.0), method="alf")
    with pytest.raises(neurode.NonFiniteStateError):
        neurode.odeint(nan_late, y0, _t(0.0, 1.0), method="alf", options={"step_size": 0.1})
    with pytest.raises(neurode.NonFiniteStateError):
        odeint_reversible(nan_late, y0.clone().requires_grad_(), _t(0.0, 1.0),
                          options={"step_size": 0.1}, adjoint_params=())
    with pytest.raises(neurode.NonFiniteStateError, match="initial time"):
        neurode.odeint(lambda t, y: -y, _t(math.nan), _t(0.0, 1.0), method="alf")
    sol = neurode.solve_ivp(_oscillator, _t(1.0, 0.0), _t(0.0, 5.0, 10.0), method="alf",
                            options={"max_num_steps": 50}, throw=False)
    assert sol.status == -1 and torch.isnan(sol.ys[-1]).all()


def test_inaccurate_reconstruction_warns():
    """Strong dissipation run backwards amplifies rounding (here e^{2·10}); the backward pass
    measures the drift at the output times and says so rather than return a silent error."""
    y0 = _t(1.0, -0.5).requires_grad_()
    with pytest.warns(RuntimeWarning, match="reconstruction"):
        ys = odeint_reversible(lambda t, y: -2.0 * y, y0, _t(0.0, 10.0),
                               options={"step_size": 0.01}, adjoint_params=())
        ys[-1].sum().backward()
    y0.grad = None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ys = odeint_reversible(_oscillator, y0, _t(0.0, 10.0), options={"step_size": 0.01},
                               adjoint_params=())
        ys[-1].sum().backward()
