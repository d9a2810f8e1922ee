"""Implicit solvers: fixed-grid implicit RK, adaptive Radau IIA(5), the SciPy backend.

Orders against an exact solution, stiff benchmarks against SciPy's Radau, gradients against
``gradcheck``, closed forms and ``matrix_exp``, and the errors a failed Newton iteration gives.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import neurode
from neurode.solvers.tableaux import IMPLICIT_TABLEAUX

pytest.importorskip("scipy.integrate")  # bench_stiff, loaded below, needs SciPy

F64 = torch.float64

FIXED_ORDERS = {"implicit_euler": 1, "implicit_midpoint": 2, "trapezoid": 2, "radauIIA3": 3,
                "radauIIA5": 5, "gl4": 4, "gl6": 6, "sdirk2": 2, "trbdf2": 2}


def test_every_fixed_implicit_method_is_registered_with_its_order():
    assert set(FIXED_ORDERS) == set(IMPLICIT_TABLEAUX)
    for name, order in FIXED_ORDERS.items():
        assert name in neurode.METHODS
        assert IMPLICIT_TABLEAUX[name].order == order


# --- orders of convergence ---------------------------------------------------------------------


def _rational(t, y):  # y' = −2 t y², y(0) = 1  →  y = 1/(1 + t²): nonlinear, non-autonomous
    return -2.0 * t * y**2


@pytest.mark.parametrize("method", sorted(FIXED_ORDERS))
def test_fixed_implicit_empirical_order_equals_theory(method):
    order = FIXED_ORDERS[method]
    T = 2.0
    hs = (0.2, 0.1, 0.05) if order >= 4 else (0.1, 0.05, 0.025)
    errs = []
    for h in hs:
        y = neurode.odeint(_rational, torch.tensor([1.0], dtype=F64),
                           torch.tensor([0.0, T], dtype=F64), method=method, rtol=1e-13,
                           atol=1e-15, options={"step_size": h})
        errs.append(abs(float(y[-1, 0]) - 1.0 / (1.0 + T**2)))
    slopes = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert abs(slopes[-1] - order) < 0.3, (method, errs, slopes)


def test_sdirk2_and_trbdf2_are_different_methods_on_a_nonlinear_problem():
    kw = dict(rtol=1e-13, atol=1e-15, options={"step_size": 0.1})
    t = torch.tensor([0.0, 2.0], dtype=F64)
    a = neurode.odeint(_rational, torch.tensor([1.0], dtype=F64), t, method="sdirk2", **kw)
    b = neurode.odeint(_rational, torch.tensor([1.0], dtype=F64), t, method="trbdf2", **kw)
    assert abs(float(a[-1, 0] - b[-1, 0])) > 1e-8


@pytest.mark.parametrize("method", ["implicit_euler", "radauIIA5", "gl4"])
def test_fixed_implicit_methods_are_stable_on_a_very_stiff_linear_problem(method):
    # λ h = −1e6: explicit methods explode; A-stable implicit ones stay bounded.
    lam = -1e6
    y = neurode.odeint(lambda t, y: lam * (y - torch.cos(t)), torch.tensor([0.0], dtype=F64),
                       torch.linspace(0, 1, 11, dtype=F64), method=method,
                       options={"step_size": 0.1})
    assert torch.isfinite(y).all() and float(y.abs().max()) <= 1.5
    if method != "gl4":  # L-stable: the fast mode is damped to the slow manifold y ≈ cos t
        assert torch.allclose(y[-1], torch.cos(torch.tensor([1.0], dtype=F64)), atol=1e-3)


# --- adaptive Radau on the stiff benchmarks ----------------------------------------------------


def _load_bench_stiff():
    """The stiff problems and the SciPy stepping helper of benchmarks/bench_stiff.py."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_stiff.py"
    spec = importlib.util.spec_from_file_location("bench_stiff", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_BENCH = _load_bench_stiff()
STIFF = _BENCH.PROBLEMS


def _scipy_steps(name, fnp, y0, ts, rtol, atol):
    """Outputs at ``ts`` and the step count of SciPy's solver class stepped by hand."""
    out, stats = _BENCH.scipy_solve(name, fnp, y0, ts, rtol, atol)
    return out, stats["steps"]


@pytest.mark.parametrize("problem", sorted(STIFF))
def test_radau_matches_scipy_reference_within_10_rtol_in_comparable_steps(problem):
    f, fnp, y0, ts, atol = STIFF[problem]
    rtol = 1e-6
    ref, _ = _scipy_steps("Radau", fnp, y0, ts, 1e-10, atol * 1e-4)
    scipy_steps = min(_scipy_steps(m, fnp, y0, ts, rtol, atol)[1] for m in ("Radau", "BDF"))
    sol = neurode.solve_ivp(f, torch.tensor(y0, dtype=F64), torch.tensor(ts, dtype=F64),
                            method="radau", rtol=rtol, atol=atol)
    assert sol.status == 0
    err = np.abs(sol.ys.numpy() - ref) / (atol + rtol * np.abs(ref))
    assert err.max() <= 10.0, err.max()
    assert sol.stats.n_steps <= 3 * scipy_steps, (sol.stats.n_steps, scipy_steps)
    assert sol.stats.n_jac > 0 and sol.stats.n_lu >= sol.stats.n_jac
    # dopri5 cannot do it in ten times Radau's steps
    explicit = neurode.solve_ivp(f, torch.tensor(y0, dtype=F64), torch.tensor(ts, dtype=F64),
                                 method="dopri5", rtol=rtol, atol=atol, throw=False,
                                 options={"max_num_steps": 10 * sol.stats.n_steps})
    assert explicit.status == -1 and explicit.stats.n_jac == 0


def test_radau_dense_output_and_reverse_time():
    A = torch.tensor([[-1000.0, 1.0], [0.0, -0.5]], dtype=F64)
    y0 = torch.tensor([1.0, 1.0], dtype=F64)
    sol = neurode.solve_ivp(lambda t, y: A @ y, y0, torch.tensor([0.0, 2.0], dtype=F64),
                            method="radau", rtol=1e-8, atol=1e-10, dense=True)
    for tq in (0.003, 0.7, 1.9):
        exact = torch.linalg.matrix_exp(A * tq) @ y0
        assert torch.allclose(sol.evaluate(torch.tensor(tq, dtype=F64)), exact, rtol=1e-6,
                              atol=1e-8)
    # backwards from t = 2 on the non-stiff direction of a rotation
    R = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=F64)
    y = neurode.odeint(lambda t, y: R @ y, y0, torch.tensor([2.0, 0.5, -1.0], dtype=F64),
                       method="radau", rtol=1e-9, atol=1e-11)
    for k, tq in enumerate((2.0, 0.5, -1.0)):
        assert torch.allclose(y[k], torch.linalg.matrix_exp(R * (tq - 2.0)) @ y0, atol=1e-7)


def test_radau_complex_and_tuple_states():
    y = neurode.odeint(lambda t, y: 1j * y, torch.tensor([1.0 + 0j], dtype=torch.complex128),
                       torch.tensor([0.0, 1.0], dtype=F64), method="radau", rtol=1e-10,
                       atol=1e-12)
    assert abs(complex(y[-1, 0]) - complex(math.cos(1.0), math.sin(1.0))) < 1e-8
    x, v = neurode.odeint(lambda t, s: (s[1], -s[0]),
                          (torch.tensor(1.0, dtype=F64), torch.tensor(0.0, dtype=F64)),
                          torch.tensor([0.0, 1.0], dtype=F64), method="radau", rtol=1e-10,
                          atol=1e-12)
    assert abs(float(x[-1]) - math.cos(1.0)) < 1e-8 and abs(float(v[-1]) + math.sin(1.0)) < 1e-8


@pytest.mark.parametrize("jacobian", ["fd", "krylov"])
@pytest.mark.parametrize("method", ["radau", "radauIIA3", "sdirk2"])
def test_jacobian_modes_agree_with_autodiff(method, jacobian):
    f, _, y0, _, _ = STIFF["vdp_mu1000"]
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    kw = dict(rtol=1e-7, atol=1e-9)
    opts = {} if method == "radau" else {"step_size": 2e-3}
    ref = neurode.solve_ivp(f, torch.tensor(y0, dtype=F64), ts, method=method, options=opts, **kw)
    other = neurode.solve_ivp(f, torch.tensor(y0, dtype=F64), ts, method=method,
                              options={**opts, "jacobian": jacobian}, **kw)
    assert torch.allclose(other.ys, ref.ys, rtol=1e-5, atol=1e-7)
    if jacobian == "krylov":
        assert other.stats.n_jac == 0 and other.stats.n_lu == 0
    else:
        assert other.stats.n_jac > 0


# --- gradients ---------------------------------------------------------------------------------


def _stiff_linear(p):
    """``y' = A(p) y`` with eigenvalues −p0 (stiff, p0 ≈ 1000) and −p1."""
    return torch.stack([torch.stack([-p[0], p[2]]),
                        torch.stack([torch.zeros((), dtype=p.dtype), -p[1]])])


@pytest.mark.parametrize("method", ["implicit_euler", "sdirk2", "trbdf2", "radauIIA3", "gl4"])
def test_gradcheck_through_fixed_implicit_solve(method):
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)

    def fn(y0, p):
        A = _stiff_linear(p)
        return neurode.odeint(lambda t, y: A @ y + torch.sin(y), y0, t, method=method,
                              rtol=1e-12, atol=1e-14, options={"step_size": 0.1})

    y0 = torch.tensor([1.0, -0.5], dtype=F64, requires_grad=True)
    p = torch.tensor([50.0, 0.7, 2.0], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (y0, p), atol=1e-6, rtol=1e-5)


def test_gradient_is_from_the_implicit_function_theorem_not_unrolled_newton():
    # Implicit Euler on y' = λ y³: y1 = y0 + h λ y1³, so dy1/dλ = h y1³ / (1 − 3 h λ y1²).
    lam = torch.tensor(-20.0, dtype=F64, requires_grad=True)
    h, y0 = 0.05, 1.5
    calls = {"graph": 0}

    def f(t, y):
        out = lam * y**3
        if out.requires_grad and torch.is_grad_enabled() \
                and not torch._C._functorch.is_functorch_wrapped_tensor(y):
            calls["graph"] += 1
        return out

    sol = neurode.solve_ivp(f, torch.tensor([y0], dtype=F64), torch.tensor([0.0, h], dtype=F64),
                            method="implicit_euler", options={"step_size": h})
    y1 = float(sol.ys[-1, 0].detach())
    assert abs(y1 - y0 - h * float(lam.detach()) * y1**3) < 1e-12
    (g,) = torch.autograd.grad(sol.ys[-1, 0], lam)
    assert abs(float(g) - h * y1**3 / (1 - 3 * h * float(lam.detach()) * y1**2)) < 1e-12
    # Newton took several iterations, yet the graph records one residual evaluation at the
    # converged stage (plus the probe for closed-over parameters), not one per iteration.
    assert sol.stats.nfe >= 5
    assert calls["graph"] == 2


@pytest.mark.parametrize("method", ["radau", "gl6"])
def test_gradient_on_stiff_linear_system_matches_matrix_exp_and_finite_differences(method):
    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=F64)
    w = torch.tensor([[0.3, -1.0], [1.0, 0.5], [0.7, 2.0]], dtype=F64)
    opts = {} if method == "radau" else {"step_size": 0.02}

    def loss(p, solver=True):
        A = _stiff_linear(p)
        if solver:
            y = neurode.odeint(lambda t, y: A @ y, y0, t, method=method, rtol=1e-10,
                               atol=1e-12, options=opts)
        else:
            y = torch.stack([torch.linalg.matrix_exp(A * tk) @ y0 for tk in t])
        return (w * y).sum()

    p = torch.tensor([1000.0, 0.5, 3.0], dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(loss(p), p)
    (g_exact,) = torch.autograd.grad(loss(p, solver=False), p)
    assert torch.allclose(g, g_exact, rtol=1e-5, atol=1e-8), (g, g_exact)
    eps = 1e-5
    with torch.no_grad():
        fd = torch.stack([(loss(p + eps * e) - loss(p - eps * e)) / (2 * eps)
                          for e in torch.eye(3, dtype=F64)])
    assert torch.allclose(g, fd, rtol=1e-4, atol=1e-6), (g, fd)


def test_radau_through_odeint_adjoint_matches_backprop():
    p = torch.tensor([30.0, 0.5, 3.0], dtype=F64, requires_grad=True)

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(p.detach().clone())

        def forward(self, t, y):
            return _stiff_linear(self.p) @ y + 0.1 * torch.sin(t) * y

    func = Field()
    y0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    kw = dict(method="radau", rtol=1e-8, atol=1e-10)
    y = neurode.odeint(func, y0, t, **kw)
    g_bp = torch.autograd.grad(y.sum(), (y0, func.p))
    y = neurode.odeint_adjoint(func, y0, t, **kw)
    g_adj = torch.autograd.grad(y.sum(), (y0, func.p))
    for a, b in zip(g_adj, g_bp, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), (a, b)


# --- errors ------------------------------------------------------------------------------------


def test_newton_failure_names_time_step_and_remedies():
    with pytest.raises(neurode.NewtonConvergenceError) as info:
        neurode.odeint(lambda t, y: -50.0 * y**3, torch.tensor([2.0], dtype=F64),
                       torch.tensor([0.0, 1.0, 2.0], dtype=F64), method="radauIIA5",
                       options={"step_size": 0.5, "max_iters": 1})
    err = info.value
    msg = str(err)
    assert "t=0" in msg and "dt=5.000e-01" in msg and "max_iters" in msg and "step_size" in msg
    assert err.t == 0.0 and err.dt == 0.5
    sol = neurode.solve_ivp(lambda t, y: -50.0 * y**3, torch.tensor([2.0], dtype=F64),
                            torch.tensor([0.0, 1.0, 2.0], dtype=F64), method="radauIIA5",
                            options={"step_size": 0.5, "max_iters": 1}, throw=False)
    assert sol.status != 0 and "Newton" in sol.message


@pytest.mark.parametrize("options, needle", [({"jacobian": "exact"}, "options['jacobian']"),
                                             ({"max_iters": 0}, "options['max_iters']")])
def test_bad_newton_options_are_named(options, needle):
    with pytest.raises(neurode.InvalidInputError) as info:
        neurode.odeint(lambda t, y: -y, torch.tensor([1.0], dtype=F64),
                       torch.tensor([0.0, 1.0], dtype=F64), method="radau", options=options)
    assert needle in str(info.value)


# --- the SciPy backend -------------------------------------------------------------------------


def _oscillator(t, y):
    return torch.stack([y[1], -y[0]])


@pytest.mark.parametrize("solver", ["RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA"])
def test_scipy_solver_matches_the_exact_solution_forwards_and_backwards(solver):
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    for t in (torch.linspace(0, 3, 7, dtype=F64), torch.linspace(1, -2, 7, dtype=F64)):
        sol = neurode.solve_ivp(_oscillator, y0, t, method="scipy_solver", rtol=1e-9,
                                atol=1e-11, options={"solver": solver})
        dt = t - t[0]
        exact = torch.stack([torch.cos(dt), -torch.sin(dt)], 1)
        tol = 1e-4 if solver == "RK23" else 1e-6
        assert (sol.ys - exact).abs().max() < tol, solver
        assert sol.stats.n_steps > 0 and sol.stats.nfe > 0


def test_scipy_solver_honours_max_step_and_max_num_steps():
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    t = torch.tensor([0.0, 10.0], dtype=F64)
    sol = neurode.solve_ivp(_oscillator, y0, t, method="scipy_solver",
                            options={"solver": "RK45", "max_step": 0.01})
    assert sol.stats.n_steps >= 1000
    sol = neurode.solve_ivp(_oscillator, y0, t, method="scipy_solver", throw=False,
                            options={"solver": "RK45", "max_step": 0.01, "max_num_steps": 50})
    assert sol.status == -1 and "max_num_steps=50" in sol.message


@pytest.mark.parametrize("options, needle", [
    ({"solver": "Euler"}, "options['solver']"),
    ({"solver": "BDF", "min_step": 1e-3}, "options['min_step']"),
])
def test_scipy_solver_bad_options_are_named(options, needle):
    with pytest.raises(neurode.InvalidInputError) as info:
        neurode.odeint(_oscillator, torch.tensor([1.0, 0.0], dtype=F64),
                       torch.tensor([0.0, 1.0], dtype=F64), method="scipy_solver",
                       options=options)
    assert needle in str(info.value)


def test_scipy_solver_warns_that_no_gradient_flows():
    y0 = torch.tensor([1.0, 0.0], dtype=F64, requires_grad=True)
    with pytest.warns(UserWarning, match="no gradient"):
        y = neurode.odeint(_oscillator, y0, torch.tensor([0.0, 1.0], dtype=F64),
                           method="scipy_solver")
    assert not y.requires_grad


@pytest.mark.parametrize("solver", ["LSODA", "Radau"])
def test_scipy_solver_as_the_adjoints_backward_solver(solver):
    func = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    func = func.to(F64)
    field = lambda t, y: func(y)  # noqa: E731
    y0 = torch.tensor([[0.5, -1.0]], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    params = tuple(func.parameters())
    y = neurode.odeint(field, y0, t, method="dopri5", rtol=1e-10, atol=1e-12)
    g_ref = torch.autograd.grad(y.sum(), (y0, *params))
    y = neurode.odeint_adjoint(field, y0, t, method="dopri5", rtol=1e-10, atol=1e-12,
                               adjoint_params=params, adjoint_method="scipy_solver",
                               adjoint_options={"solver": solver})
    g = torch.autograd.grad(y.sum(), (y0, *params))
    for a, b in zip(g, g_ref, strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-8)
