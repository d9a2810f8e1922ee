"""Forward-mode sensitivities (``odeint_jvp``): the tangent ODE solved alongside the state.

References: ``torch.func.jvp`` through :func:`neurode.odeint` (the derivative of the discrete
solver), central finite differences, and closed forms for ``dz/dt = A z``: ``exp(A t)·Δz0`` for
the initial state and the Fréchet derivative of the matrix exponential for ``A`` (top-right block
of ``exp([[A, E], [0, A]] t)``).

Runge–Kutta methods commute with linearisation, so on a given step sequence the tangent equals the
derivative of the discrete solution to rounding: on fixed grids always, for adaptive methods with
``options={"norm": "seminorm"}`` (same steps as ``odeint``). Under the default norm the tangent
also steers the step size, and the two agree to O(tol).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jvp

import neurode
from neurode.gradients.forward import odeint_jvp

F64 = torch.float64
T_OUT = torch.tensor([0.0, 0.4, 1.1, 2.0], dtype=F64)
TOL = {"rtol": 1e-10, "atol": 1e-10}


class MLP(nn.Module):
    def __init__(self, n: int = 3, hidden: int = 8, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.l1 = nn.Linear(n, hidden, dtype=F64)
        self.l2 = nn.Linear(hidden, n, dtype=F64)

    def forward(self, t, y):
        return self.l2(torch.tanh(self.l1(y))) * torch.cos(t)


class Linear(nn.Module):
    def __init__(self, A):
        super().__init__()
        self.A = nn.Parameter(A)

    def forward(self, t, y):
        return self.A @ y


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _directions(m: nn.Module, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    y0 = torch.randn(3, generator=g, dtype=F64)
    v = torch.randn(3, generator=g, dtype=F64)
    dps = tuple(torch.randn(p.shape, generator=g, dtype=F64) for p in m.parameters())
    return y0, v, dps


def _jvp_through_odeint(m, y0, v, dps, t=T_OUT, **kw):
    """Forward-mode AD through the solver's operations, w.r.t. y0 and the parameters."""
    names = [n for n, _ in m.named_parameters()]
    ps = tuple(p.detach() for p in m.parameters())

    def solve(y, *p):
        def f(tt, yy):
            return functional_call(m, dict(zip(names, p, strict=True)), (tt, yy))

        return neurode.odeint(f, y, t, **kw)

    return jvp(solve, (y0, *ps), (v, *dps))


CASES = {
    "rk4": ({"method": "rk4", "options": {"step_size": 0.05}}, {}),
    "dopri5-seminorm": ({"method": "dopri5", **TOL}, {"norm": "seminorm"}),
    "tsit5-seminorm": ({"method": "tsit5", **TOL}, {"norm": "seminorm"}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_tangent_equals_jvp_through_solver_to_rounding_on_the_same_steps(case):
    kw, extra = CASES[case]
    m = MLP()
    y0, v, dps = _directions(m)
    ys_ref, ws_ref = _jvp_through_odeint(m, y0, v, dps, **kw)
    opts = {**(kw.get("options") or {}), **extra}
    with torch.no_grad():
        ys, ws = odeint_jvp(m, y0, T_OUT, tangent_y0=v, tangent_params=dps,
                            **{**kw, "options": opts})
    assert ys.shape == ws.shape == (len(T_OUT), 3)
    assert _rel(ys, ys_ref) < 1e-14
    assert _rel(ws, ws_ref) < 1e-13
    torch.testing.assert_close(ws[0], v, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_tangent_in_error_control_agrees_with_jvp_through_solver_to_tolerance(method):
    # Default norm: w takes part in the step-size choice, so the steps differ from odeint's and
    # the agreement is O(tol) (measured ~1e-9 relative at rtol = atol = 1e-10), not rounding.
    m = MLP()
    y0, v, dps = _directions(m)
    ys_ref, ws_ref = _jvp_through_odeint(m, y0, v, dps, method=method, **TOL)
    with torch.no_grad():
        ys, ws = odeint_jvp(m, y0, T_OUT, tangent_y0=v, tangent_params=dps, method=method, **TOL)
    assert _rel(ys, ys_ref) < 1e-8
    assert _rel(ws, ws_ref) < 1e-8


def test_tangent_wrt_y0_only_matches_jvp_through_odeint():
    m = MLP()
    y0, v, _ = _directions(m)
    with torch.no_grad():
        _, ws = odeint_jvp(m, y0, T_OUT, tangent_y0=v, method="dopri5", options={
            "norm": "seminorm"}, **TOL)
        _, ws_ref = jvp(lambda y: neurode.odeint(m, y, T_OUT, method="dopri5", **TOL), (y0,),
                        (v,))
    assert _rel(ws, ws_ref) < 1e-13


@pytest.mark.parametrize(("method", "options", "tol"), [
    ("rk4", {"step_size": 0.05}, 1e-8),  # smooth map of the inputs: FD error ~eps²
    ("dopri5", None, 1e-6),  # steps move with the input: FD sees O(tol/eps) on top
])
def test_tangent_matches_central_finite_differences(method, options, tol):
    m = MLP()
    y0, v, dps = _directions(m)
    names = [n for n, _ in m.named_parameters()]
    ps = [p.detach() for p in m.parameters()]
    eps = 1e-5

    def solve(s):
        p = {n: q + s * d for n, q, d in zip(names, ps, dps, strict=True)}
        return neurode.odeint(lambda tt, y: functional_call(m, p, (tt, y)), y0 + s * v, T_OUT,
                              method=method, options=options, **TOL)

    with torch.no_grad():
        fd = (solve(eps) - solve(-eps)) / (2 * eps)
        _, ws = odeint_jvp(m, y0, T_OUT, tangent_y0=v, tangent_params=dps, method=method,
                           options=options, **TOL)
    assert _rel(ws, fd) < tol


def _linear_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    A = 0.5 * torch.randn(4, 4, generator=g, dtype=F64)
    E = torch.randn(4, 4, generator=g, dtype=F64)
    z0 = torch.randn(4, generator=g, dtype=F64)
    v = torch.randn(4, generator=g, dtype=F64)
    return A, E, z0, v


def _expm_frechet(A, E):
    """(exp(A), L(A, E)) from exp([[A, E], [0, A]]) = [[exp(A), L(A, E)], [0, exp(A)]]."""
    n = A.shape[0]
    big = torch.zeros(2 * n, 2 * n, dtype=A.dtype)
    big[:n, :n], big[:n, n:], big[n:, n:] = A, E, A
    X = torch.linalg.matrix_exp(big)
    return X[:n, :n], X[:n, n:]


@pytest.mark.parametrize("t", [torch.tensor([0.0, 0.3, 1.0, 1.7], dtype=F64),
                               torch.tensor([1.0, 0.2, -0.5], dtype=F64)],
                         ids=["forward", "reverse"])
def test_linear_ode_tangents_match_matrix_exponential_and_its_frechet_derivative(t):
    A, E, z0, v = _linear_problem()
    m = Linear(A)
    with torch.no_grad():
        ys, ws_z = odeint_jvp(m, z0, t, tangent_y0=v, method="dopri5", **TOL)
        _, ws_A = odeint_jvp(m, z0, t, tangent_params=[E], method="dopri5", **TOL)
        _, ws_both = odeint_jvp(m, z0, t, tangent_y0=v, tangent_params=[E], method="dopri5",
                                **TOL)
    for i, ti in enumerate(t):
        tau = float(ti - t[0])
        expAt, L = _expm_frechet(A * tau, E * tau)
        assert _rel(ys[i], expAt @ z0) < 1e-8
        assert _rel(ws_z[i], expAt @ v) < 1e-8
        if i > 0:
            assert _rel(ws_A[i], L @ z0) < 1e-8
            assert _rel(ws_both[i], expAt @ v + L @ z0) < 1e-8
    assert float(ws_A[0].abs().max()) == 0.0


def test_tangent_is_linear_in_the_direction():
    m = MLP()
    y0, v, dps = _directions(m)
    _, u, dqs = _directions(m, seed=2)
    kw = {"method": "dopri5", "options": {"norm": "seminorm"}, **TOL}
    with torch.no_grad():
        _, w1 = odeint_jvp(m, y0, T_OUT, tangent_y0=v, tangent_params=dps, **kw)
        _, w2 = odeint_jvp(m, y0, T_OUT, tangent_y0=2 * v,
                           tangent_params=[2 * d for d in dps], **kw)
        _, wu = odeint_jvp(m, y0, T_OUT, tangent_y0=u, tangent_params=dqs, **kw)
        _, wsum = odeint_jvp(m, y0, T_OUT, tangent_y0=v + u,
                             tangent_params=[d + q for d, q in zip(dps, dqs, strict=True)], **kw)
        # Default norm: scaling w changes its error weights (atol), so only O(tol) linearity.
        _, w1d = odeint_jvp(m, y0, T_OUT, tangent_y0=v, tangent_params=dps, method="dopri5",
                            **TOL)
        _, w2d = odeint_jvp(m, y0, T_OUT, tangent_y0=2 * v,
                            tangent_params=[2 * d for d in dps], method="dopri5", **TOL)
    torch.testing.assert_close(w2, 2 * w1, rtol=0, atol=0)  # ×2 is exact in floating point
    assert _rel(wsum, w1 + wu) < 1e-14
    assert _rel(w2d, 2 * w1d) < 1e-8


class Oscillator(nn.Module):
    """A tuple state ``(x (2,), v (2, 1))``: damped nonlinear oscillator."""

    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.tensor([1.0, 2.0], dtype=F64))
        self.c = nn.Parameter(torch.tensor(0.3, dtype=F64))

    def forward(self, t, state):
        x, v = state
        return v[:, 0], (-self.k * torch.sin(x) - self.c * v[:, 0])[:, None]


def test_tuple_state_tangents_match_jvp_through_odeint():
    m = Oscillator()
    y0 = (torch.tensor([0.5, -0.2], dtype=F64), torch.tensor([[0.1], [0.4]], dtype=F64))
    dy0 = (torch.tensor([1.0, 0.5], dtype=F64), torch.tensor([[-0.3], [0.2]], dtype=F64))
    dk, dc = torch.tensor([0.2, -0.1], dtype=F64), torch.tensor(1.0, dtype=F64)
    kw = {"method": "dopri5", "options": {"norm": "seminorm"}, **TOL}
    with torch.no_grad():
        ys, ws = odeint_jvp(m, y0, T_OUT, tangent_y0=dy0, tangent_params=[dk, dc], **kw)

        def solve(x0, v0, k, c):
            def f(tt, s):
                return functional_call(m, {"k": k, "c": c}, (tt, s))

            return neurode.odeint(f, (x0, v0), T_OUT, method="dopri5", **TOL)

        ys_ref, ws_ref = jvp(solve, (*y0, m.k.detach(), m.c.detach()), (*dy0, dk, dc))
    assert isinstance(ys, tuple) and isinstance(ws, tuple) and len(ws) == 2
    assert ws[0].shape == (len(T_OUT), 2) and ws[1].shape == (len(T_OUT), 2, 1)
    for a, b in zip(ys, ys_ref, strict=True):
        assert _rel(a, b) < 1e-14
    for a, b in zip(ws, ws_ref, strict=True):
        assert _rel(a, b) < 1e-13


def test_reverse_time_tangent_matches_jvp_through_odeint():
    m = MLP()
    y0, v, dps = _directions(m)
    t = torch.tensor([2.0, 1.5, 0.3, -0.4], dtype=F64)
    ys_ref, ws_ref = _jvp_through_odeint(m, y0, v, dps, t=t, method="rk4",
                                         options={"step_size": 0.1})
    with torch.no_grad():
        ys, ws = odeint_jvp(m, y0, t, tangent_y0=v, tangent_params=dps, method="rk4",
                            options={"step_size": 0.1})
    assert _rel(ys, ys_ref) < 1e-14
    assert _rel(ws, ws_ref) < 1e-13


def test_missing_tangents_are_zero_and_states_match_odeint():
    m = MLP()
    y0, _, _ = _directions(m)
    with torch.no_grad():
        ys, ws = odeint_jvp(m, y0, T_OUT, method="rk4", options={"step_size": 0.1})
        ys_ref = neurode.odeint(m, y0, T_OUT, method="rk4", options={"step_size": 0.1})
    torch.testing.assert_close(ys, ys_ref, rtol=1e-15, atol=0)
    assert float(ws.abs().max()) == 0.0


def test_params_subset_with_none_entries_moves_only_those_parameters():
    m = MLP()
    y0, _, dps = _directions(m)
    params = [m.l2.weight, m.l1.bias]
    with torch.no_grad():
        _, ws = odeint_jvp(m, y0, T_OUT, params=params, tangent_params=[dps[2], None],
                           method="rk4", options={"step_size": 0.05})
        zero = [torch.zeros_like(d) for d in dps]
        _, ws_ref = _jvp_through_odeint(m, y0, torch.zeros_like(y0),
                                        (zero[0], zero[1], dps[2], zero[3]), method="rk4",
                                        options={"step_size": 0.05})
    assert _rel(ws, ws_ref) < 1e-13


def test_plain_function_supports_tangent_y0():
    W = torch.tensor([[0.0, 1.0], [-1.0, -0.1]], dtype=F64)
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    v = torch.tensor([0.3, -0.7], dtype=F64)

    def f(t, y):
        return W @ torch.tanh(y)

    _, ws = odeint_jvp(f, y0, T_OUT, tangent_y0=v, method="rk4", options={"step_size": 0.05})
    _, ws_ref = jvp(lambda y: neurode.odeint(f, y, T_OUT, method="rk4",
                                             options={"step_size": 0.05}), (y0,), (v,))
    assert _rel(ws, ws_ref) < 1e-13


def test_callbacks_and_grid_constructor_see_the_state_only():
    m = MLP()
    y0, v, _ = _directions(m)
    seen = []
    m.callback_step = lambda t, y, dt: seen.append(tuple(y.shape))

    def grid(func, y, t):
        assert y.shape == y0.shape and func(t[0], y).shape == y0.shape
        return torch.linspace(float(t[0]), float(t[-1]), 41, dtype=F64)

    with torch.no_grad():
        _, ws = odeint_jvp(m, y0, T_OUT, tangent_y0=v, method="rk4",
                           options={"grid_constructor": grid})
        _, ws_ref = odeint_jvp(m, y0, T_OUT, tangent_y0=v, method="rk4",
                               options={"step_size": 0.05})
    assert seen and set(seen) == {(3,)}
    assert _rel(ws, ws_ref) < 1e-14


def _err(match, **kw):
    m = kw.pop("func", None) or MLP()
    y0 = kw.pop("y0", torch.zeros(3, dtype=F64))
    return pytest.raises(neurode.InvalidInputError, match=match), m, y0, kw


@pytest.mark.parametrize(("match", "kw"), [
    (r"tangent_y0 has shape \(2,\); expected \(3,\)", {"tangent_y0": torch.zeros(2, dtype=F64)}),
    (r"tangent_y0 has dtype torch.float32; expected torch.float64",
     {"tangent_y0": torch.zeros(3)}),
    (r"tangent_y0 must be a Tensor of shape \(3,\)", {"tangent_y0": [0.0, 0.0, 0.0]}),
    (r"tangent_y0 must be a tuple of 2 Tensors",
     {"y0": (torch.zeros(2, dtype=F64), torch.zeros(1, dtype=F64)),
      "tangent_y0": torch.zeros(3, dtype=F64)}),
    (r"tangent_y0\[1\] has shape \(2,\); expected \(1,\)",
     {"y0": (torch.zeros(2, dtype=F64), torch.zeros(1, dtype=F64)),
      "tangent_y0": (torch.zeros(2, dtype=F64), torch.zeros(2, dtype=F64))}),
    (r"tangent_params has 1 entries but params has 4", {"tangent_params": [None]}),
    (r"tangent_params\[1\] has shape \(3,\); expected \(8,\)",
     {"tangent_params": [None, torch.zeros(3, dtype=F64), None, None]}),
    (r"params\[0\] .* is not a parameter or buffer of func",
     {"params": [torch.zeros(3, dtype=F64)], "tangent_params": [torch.zeros(3, dtype=F64)]}),
    (r"needs func to be an nn.Module",
     {"func": lambda t, y: -y, "params": [torch.zeros(1, dtype=F64)],
      "tangent_params": [torch.ones(1, dtype=F64)]}),
    (r"options\['norm'\] must be callable", {"method": "dopri5", "options": {"norm": "l2"}}),
])
def test_invalid_inputs_raise_invalid_input_error_naming_the_argument(match, kw):
    ctx, m, y0, kw = _err(match, **kw)
    with ctx:
        odeint_jvp(m, y0, T_OUT, **kw)


def test_wrong_func_output_raises_func_output_error():
    with pytest.raises(neurode.FuncOutputError, match="shape"):
        odeint_jvp(lambda t, y: y[:2], torch.zeros(3, dtype=F64), T_OUT,
                   tangent_y0=torch.ones(3, dtype=F64))


def test_tangent_can_be_backpropagated_for_hessian_vector_products():
    m = MLP()
    y0, v, _ = _directions(m)
    kw = {"method": "rk4", "options": {"step_size": 0.05}}
    y = y0.clone().requires_grad_()
    _, ws = odeint_jvp(m, y, T_OUT, tangent_y0=v, **kw)
    (g,) = torch.autograd.grad(ws[-1].sum(), y)  # = vᵀ ∇²(Σ y(T)) , contracted with v below
    eps = 1e-5
    with torch.no_grad():
        wp = odeint_jvp(m, y0 + eps * v, T_OUT, tangent_y0=v, **kw)[1][-1].sum()
        wm = odeint_jvp(m, y0 - eps * v, T_OUT, tangent_y0=v, **kw)[1][-1].sum()
    fd = float((wp - wm) / (2 * eps))
    assert abs(float(g @ v) - fd) < 1e-7 * abs(fd)


def test_tensor_and_per_component_tolerances_apply_to_state_and_tangent():
    m = MLP()
    y0, v, _ = _directions(m)
    with torch.no_grad():
        _, ws = odeint_jvp(m, y0, T_OUT, tangent_y0=v, method="dopri5", rtol=1e-9, atol=1e-9)
        tol = torch.full((3,), 1e-9, dtype=F64)
        _, ws_t = odeint_jvp(m, y0, T_OUT, tangent_y0=v, method="dopri5", rtol=tol, atol=tol)

        def f(t, s):
            out = m(t, torch.cat(s))
            return out[:2], out[2:]

        kw = {"tangent_y0": (v[:2], v[2:]), "method": "dopri5"}
        _, ws_c = odeint_jvp(f, (y0[:2], y0[2:]), T_OUT, rtol=[1e-9, 1e-9], atol=[1e-9, 1e-9],
                             **kw)
        _, ws_f = odeint_jvp(f, (y0[:2], y0[2:]), T_OUT, rtol=1e-9, atol=1e-9, **kw)
    assert _rel(ws_t, ws) < 1e-12
    for a, b in zip(ws_c, ws_f, strict=True):
        assert _rel(a, b) < 1e-12
