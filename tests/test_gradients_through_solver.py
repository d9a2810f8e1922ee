"""Backpropagation through the solver's operations (discretise-then-optimise).

``torch.autograd.gradcheck`` compares autograd's Jacobian with central finite differences in
float64. For fixed grids the solver is a smooth function of its inputs, so the check is exact.

Adaptive methods choose their step sizes from an error ratio computed under ``no_grad``: autograd
differentiates the computation *with those step sizes held fixed*, while finite differences see
a solver whose steps move with the input. The two differ by (∂y/∂h)(∂h/∂input), which is of the
size of the local error, i.e. O(tol): with rtol = atol = 1e-10 that is far below gradcheck's
atol = 1e-5 (a step-count change at a perturbed input would add a jump of O(tol) / eps ≈ 1e-4,
which is why the tolerance must be tight, not loose). Each adaptive method is also checked with
its steps pinned (``min_step = max_step = first_step``), where the adaptive solver becomes a
fixed-step one and gradcheck is exact at any tolerance.

Gradients are also compared with exact sensitivities of linear problems (matrix exponentials).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

import neurode

F64 = torch.float64
T_OUT = torch.tensor([0.0, 0.5, 1.3], dtype=F64)

FIXED = {
    "euler": {"step_size": 0.1},
    "rk4": {"step_size": 0.1},
    "explicit_adams": {"step_size": 0.1, "max_order": 4},
    "implicit_adams": {"step_size": 0.1, "max_order": 4},
}
ADAPTIVE = ("dopri5", "tsit5", "dopri8")
PINNED = {"first_step": 0.1, "min_step": 0.1, "max_step": 0.1}


@pytest.fixture
def params():
    g = torch.Generator().manual_seed(0)
    W = (0.5 * torch.randn(3, 3, generator=g, dtype=F64)).requires_grad_()
    b = (0.1 * torch.randn(3, generator=g, dtype=F64)).requires_grad_()
    y0 = torch.randn(3, generator=g, dtype=F64).requires_grad_()
    return y0, W, b


def _solve(method, **kw):
    def fn(y0, W, b):
        def f(t, y):
            return torch.tanh(W @ y) + b

        return neurode.odeint(f, y0, T_OUT, method=method, **kw)

    return fn


@pytest.mark.parametrize("method", sorted(FIXED))
def test_gradcheck_fixed_methods_wrt_y0_and_parameters(method, params):
    assert gradcheck(_solve(method, options=FIXED[method], rtol=1e-12, atol=1e-12), params)


@pytest.mark.parametrize("method", ADAPTIVE)
def test_gradcheck_adaptive_methods_with_tight_tolerance(method, params):
    # Step sizes adapt to the perturbed inputs; see the module docstring for why this passes.
    assert gradcheck(_solve(method, rtol=1e-10, atol=1e-10), params)


@pytest.mark.parametrize("method", ADAPTIVE)
def test_gradcheck_adaptive_methods_with_pinned_steps(method, params):
    # min_step = max_step pins every step (bar the last, which lands on the output time), so the
    # step sizes do not depend on the input and the solve is exactly differentiable.
    assert gradcheck(_solve(method, options=PINNED), params)


def test_gradcheck_through_tuple_state():
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(2, generator=g, dtype=F64).requires_grad_()
    v0 = torch.randn(2, generator=g, dtype=F64).requires_grad_()
    k = torch.tensor([1.5, 0.7], dtype=F64).requires_grad_()
    t = torch.linspace(0, 2, 4, dtype=F64)

    def fn(x0, v0, k, method, options):
        def f(t, s):
            x, v = s
            return v, -k * torch.sin(x)

        return neurode.odeint(f, (x0, v0), t, method=method, options=options, rtol=1e-10,
                              atol=1e-10)

    for method, options in (("rk4", {"step_size": 0.05}), ("dopri5", None)):
        assert gradcheck(lambda *a, m=method, o=options: fn(*a, m, o), (x0, v0, k))


def test_tuple_gradient_matches_exact_oscillator_sensitivities():
    """x'' = −ω² x: x(T) = x0 cos ωT + v0 sin(ωT)/ω."""
    x0 = torch.tensor(1.0, dtype=F64, requires_grad=True)
    v0 = torch.tensor(0.5, dtype=F64, requires_grad=True)
    w = torch.tensor(2.0, dtype=F64, requires_grad=True)
    T = 1.7
    xs, _ = neurode.odeint(lambda t, s: (s[1], -w**2 * s[0]), (x0, v0),
                           torch.tensor([0.0, T], dtype=F64), rtol=1e-11, atol=1e-11)
    gx0, gv0, gw = torch.autograd.grad(xs[-1], (x0, v0, w))
    c, s = math.cos(2.0 * T), math.sin(2.0 * T)
    assert math.isclose(float(gx0), c, abs_tol=1e-8)
    assert math.isclose(float(gv0), s / 2.0, abs_tol=1e-8)
    # ∂/∂ω [x0 cos ωT + v0 sin(ωT)/ω] = −x0 T sin ωT + v0 (T cos ωT / ω − sin ωT / ω²)
    d_w = -1.0 * T * s + 0.5 * (T * c / 2.0 - s / 4.0)
    assert math.isclose(float(gw), d_w, abs_tol=1e-8)


SPIRAL = torch.tensor([[-0.1, -1.0], [1.0, -0.1]], dtype=F64)


@pytest.mark.parametrize(("method", "options", "tol"), [
    ("dopri5", None, 1e-8), ("tsit5", None, 1e-8), ("dopri8", None, 1e-8),
    ("rk4", {"step_size": 0.01}, 1e-8), ("explicit_adams", {"step_size": 0.01, "max_order": 4},
                                         1e-7),
])
def test_jacobian_wrt_y0_equals_matrix_exponential(method, options, tol):
    z0 = torch.tensor([0.6, 0.3], dtype=F64)
    T = 3.0

    def end_state(z0):
        return neurode.odeint(lambda t, z: SPIRAL @ z, z0, torch.tensor([0.0, T], dtype=F64),
                              method=method, options=options, rtol=1e-10, atol=1e-10)[-1]

    J = torch.autograd.functional.jacobian(end_state, z0)
    torch.testing.assert_close(J, torch.linalg.matrix_exp(SPIRAL * T), rtol=0, atol=tol)


@pytest.mark.parametrize(("method", "options"), [
    ("dopri5", None), ("dopri8", None), ("rk4", {"step_size": 0.01}),
])
def test_parameter_gradient_equals_exact_sensitivity(method, options):
    """y' = −k y: y(T) = y0 e^{−kT}, so ∂y(T)/∂k = −T y0 e^{−kT} at every output time."""
    k = torch.tensor(0.8, dtype=F64, requires_grad=True)
    y0 = torch.tensor([2.0], dtype=F64)
    t = torch.linspace(0, 2, 5, dtype=F64)
    y = neurode.odeint(lambda t, y: -k * y, y0, t, method=method, options=options, rtol=1e-11,
                       atol=1e-11)
    grads = torch.stack([torch.autograd.grad(y[i, 0], k, retain_graph=True)[0]
                         for i in range(1, 5)])
    exact = -t[1:] * 2.0 * torch.exp(-0.8 * t[1:])
    torch.testing.assert_close(grads, exact, rtol=1e-7, atol=1e-9)


def test_gradient_in_decreasing_time_matches_exact_sensitivity():
    """Backwards from t = 2 to 0 for y' = −k y: y(0) = y(2) e^{2k}, ∂y(0)/∂k = 2 y(2) e^{2k}."""
    k = torch.tensor(0.8, dtype=F64, requires_grad=True)
    y2 = torch.tensor([0.5], dtype=F64)
    y = neurode.odeint(lambda t, y: -k * y, y2, torch.tensor([2.0, 0.0], dtype=F64),
                       rtol=1e-11, atol=1e-11)
    (g,) = torch.autograd.grad(y[-1, 0], k)
    assert math.isclose(float(g), 2 * 0.5 * math.exp(1.6), rel_tol=1e-8)


def test_gradient_through_dense_output_matches_exact_sensitivity():
    k = torch.tensor(0.8, dtype=F64, requires_grad=True)
    y = neurode.odeint_dense(lambda t, y: -k * y, torch.tensor([2.0], dtype=F64), 0.0, 2.0,
                             rtol=1e-11, atol=1e-11)
    (g,) = torch.autograd.grad(y(1.234)[0], k)
    assert math.isclose(float(g), -1.234 * 2.0 * math.exp(-0.8 * 1.234), rel_tol=1e-7)


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_gradient_wrt_times_matches_central_differences(method, direction):
    """dL/dt for every entry of t (initial time included), forward and backward in time."""
    torch.manual_seed(0)
    W = torch.randn(2, 2, dtype=torch.float64) * 0.5

    def f(t, y):
        return torch.tanh(y @ W) + torch.sin(t) * y

    y0 = torch.tensor([0.3, -0.2], dtype=torch.float64)
    tv = [0.1, 0.7, 1.3] if direction == "forward" else [1.3, 0.5, 0.2]

    def loss(t):
        ys = neurode.odeint(f, y0, t, method=method, rtol=1e-11, atol=1e-11)
        return (ys**2).sum()

    t = torch.tensor(tv, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(loss(t), t)
    eps = 1e-6
    fd = torch.stack([(loss(t.detach() + eps * e) - loss(t.detach() - eps * e)) / (2 * eps)
                      for e in torch.eye(3, dtype=torch.float64)])
    torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-7)
    assert g[0].abs() > 1e-3  # the initial time really matters here
