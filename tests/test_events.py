"""Terminal events: the event time and the state there, and their gradients (implicit function
theorem) against the closed-form free fall x(t) = x0 + v0 t − g t²/2."""

from __future__ import annotations

import math

import pytest
import torch

import neurode

F64 = torch.float64
G = 9.81
X0, V0 = 10.0, 2.0
R = math.sqrt(V0**2 + 2 * G * X0)  # impact speed
T_STAR = (V0 + R) / G  # impact time


class Fall(torch.nn.Module):
    """State (height, velocity); the gravity g is a parameter."""

    def __init__(self):
        super().__init__()
        self.g = torch.nn.Parameter(torch.tensor(G, dtype=F64))

    def forward(self, t, y):
        return torch.stack([y[1], -self.g * torch.ones_like(y[1])])


def ground(t, y):
    return y[0]


def solve(interface, method="dopri5", options=None, reverse=False):
    f = Fall()
    y0 = torch.tensor([X0, V0], dtype=F64, requires_grad=True)
    et, sol = neurode.odeint_event(f, y0, torch.tensor(0.0, dtype=F64), event_fn=ground,
                                   odeint_interface=interface, rtol=1e-10, atol=1e-10,
                                   method=method, options=options, reverse_time=reverse)
    return f, y0, et, sol


@pytest.mark.parametrize("interface", [neurode.odeint, neurode.odeint_adjoint],
                         ids=["backprop", "adjoint"])
def test_event_time_and_its_gradient_match_free_fall(interface):
    f, y0, et, sol = solve(interface)
    assert abs(et.item() - T_STAR) < 1e-12
    assert sol.shape == (2, 2) and abs(sol[-1, 0].item()) < 1e-10
    g_y0, g_g = torch.autograd.grad(et, (y0, f.g))
    gx, gv, gg = g_y0[0].item(), g_y0[1].item(), g_g.item()
    assert gx == pytest.approx(1 / R, rel=1e-9)
    assert gv == pytest.approx((1 + V0 / R) / G, rel=1e-9)
    assert gg == pytest.approx(-(V0 + R) / G**2 + X0 / (R * G), rel=1e-8)


@pytest.mark.parametrize("interface", [neurode.odeint, neurode.odeint_adjoint],
                         ids=["backprop", "adjoint"])
def test_state_at_event_has_implicit_function_gradient(interface):
    """Impact velocity −sqrt(v0² + 2 g x0): d/dx0 = −g/R, d/dv0 = −v0/R."""
    _, y0, _, sol = solve(interface)
    assert sol[-1, 1].item() == pytest.approx(-R, rel=1e-10)
    (g,) = torch.autograd.grad(sol[-1, 1], y0)
    torch.testing.assert_close(g, torch.tensor([-G / R, -V0 / R], dtype=F64), rtol=1e-8,
                               atol=1e-12)


@pytest.mark.parametrize(("method", "options"), [("tsit5", None), ("dopri8", None),
                                                 ("rk4", {"step_size": 0.01})])
def test_event_located_by_other_methods(method, options):
    _, y0, et, _ = solve(neurode.odeint, method, options)
    assert abs(et.item() - T_STAR) < 1e-9
    (g,) = torch.autograd.grad(et, y0)
    assert g[0].item() == pytest.approx(1 / R, rel=1e-6)


def test_event_in_reverse_time():
    """Backwards from the top of the trajectory of a ball thrown up: x(t) crosses 0 at t < 0."""
    _, _, et, _ = solve(neurode.odeint, reverse=True)
    assert et.item() == pytest.approx((V0 - R) / G, abs=1e-10)


def test_vector_event_function_stops_at_first_crossing():
    f = Fall()
    y0 = torch.tensor([X0, V0], dtype=F64)
    et, _ = neurode.odeint_event(f, y0, torch.tensor(0.0, dtype=F64),
                                 event_fn=lambda t, y: torch.stack([y[0] - 5.0, y[0]]),
                                 rtol=1e-10, atol=1e-10)
    t5 = (V0 + math.sqrt(V0**2 + 2 * G * (X0 - 5.0))) / G
    assert et.item() == pytest.approx(t5, abs=1e-10)


@pytest.mark.parametrize("interface", [neurode.odeint, neurode.odeint_adjoint],
                         ids=["backprop", "adjoint"])
def test_vector_event_function_differentiates_the_value_that_crossed(interface):
    """Of (x − 5, v + 100) only x − 5 crosses: t* and dt*/d(x0, v0) are those of x = 5 alone
    (the second value's derivative, which a sum over the values would mix in, must not count)."""
    f = Fall()
    y0 = torch.tensor([X0, V0], dtype=F64, requires_grad=True)
    et, _ = neurode.odeint_event(f, y0, torch.tensor(0.0, dtype=F64),
                                 event_fn=lambda t, y: torch.stack([y[0] - 5.0, y[1] + 100.0]),
                                 odeint_interface=interface, rtol=1e-10, atol=1e-10)
    r5 = math.sqrt(V0**2 + 2 * G * (X0 - 5.0))
    assert et.item() == pytest.approx((V0 + r5) / G, abs=1e-10)
    (g,) = torch.autograd.grad(et, y0)
    assert g[0].item() == pytest.approx(1 / r5, rel=1e-8)
    assert g[1].item() == pytest.approx((1 + V0 / r5) / G, rel=1e-8)


def test_tuple_state_event():
    def f(t, state):
        _, v = state
        return v, -G * torch.ones_like(v)

    x0 = torch.tensor([X0], dtype=F64, requires_grad=True)
    v0 = torch.tensor([V0], dtype=F64)
    et, (_, vs) = neurode.odeint_event(f, (x0, v0), torch.tensor(0.0, dtype=F64),
                                        event_fn=lambda t, s: s[0].sum(), rtol=1e-10,
                                        atol=1e-10)
    assert et.item() == pytest.approx(T_STAR, abs=1e-10)
    assert vs[-1].item() == pytest.approx(-R, rel=1e-10)
    (g,) = torch.autograd.grad(et, x0)
    assert g.item() == pytest.approx(1 / R, rel=1e-8)
