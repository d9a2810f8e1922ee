"""What real torchdiffeq code relies on (issue: drop-in fidelity): each test here is a case a
script written for torchdiffeq hit, checked against an exact answer."""

from __future__ import annotations

import math

import pytest
import torch

import neurode

F64 = torch.float64
G = 9.8


def fall(t, y):
    """Free fall: y = (height, velocity)."""
    return torch.stack([y[1], -G * torch.ones_like(y[0])])


# -- events ---------------------------------------------------------------------------------


@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
def test_the_event_time_is_differentiable_with_respect_to_t0(interface):
    # a ball dropped from h at t0 lands at t0 + sqrt(2h/g): d t*/d t0 = 1, d t*/d h = 1/(g t)
    t0 = torch.tensor(0.5, dtype=F64, requires_grad=True)
    h = torch.tensor(1.0, dtype=F64, requires_grad=True)
    y0 = torch.stack([h, torch.zeros((), dtype=F64)])
    kw = {"adjoint_params": ()} if interface == "odeint_adjoint" else {}
    et, _ = neurode.odeint_event(fall, y0, t0, event_fn=lambda t, y: y[0],
                                 odeint_interface=getattr(neurode, interface), **kw)
    fall_t = math.sqrt(2 / G)
    assert abs(float(et.detach()) - (0.5 + fall_t)) < 1e-9
    d_t0, d_h = torch.autograd.grad(et, (t0, h))
    assert abs(float(d_t0) - 1.0) < 1e-7
    assert abs(float(d_h) - 1 / (G * fall_t)) < 1e-7


def test_a_chain_of_bounces_keeps_its_gradient():
    # dropped from h, the ball lands at t1 = sqrt(2h/g) with speed v1 = g t1; the second bounce
    # starts at t1 with the velocity reversed and scaled by e and lands at t2 = t1 (1 + 2e):
    # dt2/dh = (1 + 2e)/(g t1) needs the gradient through the second event's t0 = t1
    e = torch.tensor(0.8, dtype=F64, requires_grad=True)
    h = torch.tensor(1.0, dtype=F64, requires_grad=True)
    y0 = torch.stack([h, torch.zeros((), dtype=F64)])
    t1, sol = neurode.odeint_event(fall, y0, torch.tensor(0.0, dtype=F64),
                                   event_fn=lambda t, y: y[0])
    y1 = torch.stack([torch.zeros((), dtype=F64) + 1e-12, -e * sol[-1][1]])
    t2, _ = neurode.odeint_event(fall, y1, t1, event_fn=lambda t, y: y[0])
    t_fall = math.sqrt(2 / G)
    assert abs(float(t2) - t_fall * (1 + 2 * 0.8)) < 1e-8
    d_e, d_h = torch.autograd.grad(t2, (e, h))
    assert abs(float(d_e) - 2 * t_fall) < 1e-6
    assert abs(float(d_h) - (1 + 2 * 0.8) / (G * t_fall)) < 1e-6


@pytest.mark.parametrize("method,options", [
    ("dopri5", {}), ("bosh3", {}), ("radau", {}), ("rk4", {"step_size": 0.3}),
    ("implicit_euler", {"step_size": 0.3}), ("explicit_adams", {"step_size": 0.3}),
])
def test_an_event_function_forced_to_zero_later_still_finds_the_first_crossing(method, options):
    # y = 1 - t crosses 0.5 at t = 0.5; past t = 1.5 the script forces g = 0 to stop. A step
    # that ends in the zero region contains the real crossing: it must be found, not the end.
    def g(t, y):
        return torch.where(t > 1.5, torch.zeros_like(t), y[0] - 0.5)

    et, sol = neurode.odeint_event(lambda t, y: -torch.ones_like(y),
                                   torch.tensor([1.0], dtype=F64),
                                   torch.tensor(0.0, dtype=F64), event_fn=g, method=method,
                                   options=options)
    assert abs(float(et.detach()) - 0.5) < 1e-9
    assert abs(float(sol[-1, 0]) - 0.5) < 1e-9


@pytest.mark.parametrize("method,options", [("dopri5", {}), ("rk4", {"step_size": 0.1})])
def test_a_nan_event_function_is_an_error_not_an_event(method, options):
    with pytest.raises(neurode.NonFiniteStateError, match="event_fn returned NaN"):
        neurode.odeint_event(lambda t, y: -y, torch.tensor([1.0], dtype=F64),
                             torch.tensor(0.0, dtype=F64), method=method, options=options,
                             event_fn=lambda t, y: y[0] * math.nan)
    # NaN only after a while: reported where it appears
    with pytest.raises(neurode.NonFiniteStateError, match="event_fn returned NaN at t="):
        neurode.odeint_event(lambda t, y: -y, torch.tensor([1.0], dtype=F64),
                             torch.tensor(0.0, dtype=F64), method=method, options=options,
                             event_fn=lambda t, y: torch.where(t > 0.5, math.nan, 1.0) + 0 * t)


# -- adjoints -------------------------------------------------------------------------------


class Decay(torch.nn.Module):
    """``y' = -w·y`` with a regulariser state ``r' = Σ y²`` (ffjord's 0-d extra states)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.3, dtype=F64))

    def forward(self, t, state):
        y, _ = state
        return -self.w * y, (y ** 2).sum()


@pytest.mark.parametrize("fn", ["odeint_adjoint", "odeint_checkpoint"])
def test_a_tuple_state_with_a_0d_component_has_the_backprop_gradient(fn):
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    grads = {}
    for name in ("odeint", fn):
        m = Decay()
        y0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
        ys, rs = getattr(neurode, name)(m, (y0, torch.tensor(0.0, dtype=F64)), t,
                                        rtol=1e-10, atol=1e-12)
        assert rs.shape == (3,)
        (ys[-1].sum() + rs[-1]).backward()
        grads[name] = (float(m.w.grad), y0.grad.clone())
    assert abs(grads[fn][0] - grads["odeint"][0]) < 1e-7
    assert torch.allclose(grads[fn][1], grads["odeint"][1], atol=1e-7)


@pytest.mark.parametrize("fn", ["odeint_adjoint", "odeint_checkpoint", "odeint_reversible"])
def test_a_field_of_t_only_gives_dl_dy0(fn):
    # y' = cos t: y(1) = y0 + sin 1, so dL/dy0 = 1 for L = y(1)
    y0 = torch.tensor([0.5], dtype=F64, requires_grad=True)
    kw = {"options": {"step_size": 0.01}} if fn == "odeint_reversible" else {}
    ys = getattr(neurode, fn)(lambda t, y: torch.cos(t).expand(1), y0,
                              torch.tensor([0.0, 1.0], dtype=F64), adjoint_params=(), **kw)
    assert abs(float(ys[-1, 0]) - (0.5 + math.sin(1.0))) < 1e-4  # alf: second order
    ys[-1].sum().backward()
    assert abs(float(y0.grad) - 1.0) < 1e-12


@pytest.mark.parametrize("params", [True, False], ids=["quadrature", "no-params"])
def test_a_per_component_tensor_atol_works_backwards(params):
    w = torch.tensor([0.5, 2.0], dtype=F64, requires_grad=True)
    y0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    atol = torch.tensor([1e-10, 1e-9], dtype=F64)
    ys = neurode.odeint_adjoint(lambda t, y: -w * y, y0, t, rtol=1e-9, atol=atol,
                                adjoint_params=(w,) if params else ())
    ys[-1].sum().backward()
    # y(1) = y0·exp(-w): dL/dy0 = exp(-w), dL/dw = -y0·exp(-w)
    assert torch.allclose(y0.grad, torch.exp(-w.detach()), atol=1e-7)
    if params:
        assert torch.allclose(w.grad, -y0.detach() * torch.exp(-w.detach()), atol=1e-7)


@pytest.mark.parametrize("fn", ["odeint_adjoint", "odeint_checkpoint", "odeint_reversible"])
def test_a_fixed_grid_solve_that_blows_up_raises_in_every_gradient_method(fn):
    y0 = torch.tensor([1.0], dtype=F64, requires_grad=True)
    kw = {"options": {"step_size": 0.1}}
    if fn != "odeint_reversible":
        kw["method"] = "rk4"
    with pytest.raises(neurode.NonFiniteStateError, match="non-finite"):
        getattr(neurode, fn)(lambda t, y: y ** 3, y0, torch.linspace(0, 5, 6, dtype=F64),
                             adjoint_params=(), **kw)


def test_a_user_adjoint_norm_sees_torchdiffeqs_layout():
    # torchdiffeq calls a custom adjoint norm on (a_t, y, a_y, *a_params) for a tensor y0 and
    # on (a_t, *y, *a_y, *a_params) for a tuple one, each in its own shape
    seen = []

    def norm(state):
        seen.append([tuple(s.shape) for s in state])
        return max(s.abs().max() for s in state)

    lin = torch.nn.Linear(3, 3).double()
    y0 = torch.ones(2, 3, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    ys = neurode.odeint_adjoint(lambda t, y: torch.tanh(lin(y)), y0, t,
                                adjoint_params=tuple(lin.parameters()),
                                adjoint_options={"norm": norm})
    ys[-1].sum().backward()
    assert seen[-1] == [(), (2, 3), (2, 3), (3, 3), (3,)]
    seen.clear()
    y0s = (torch.ones(2, dtype=F64, requires_grad=True), torch.ones(3, dtype=F64))
    ya, yb = neurode.odeint_adjoint(lambda t, s: (-s[0], torch.tanh(lin(s[1]))), y0s, t,
                                    adjoint_params=tuple(lin.parameters()),
                                    adjoint_options={"norm": norm})
    (ya[-1].sum() + yb[-1].sum()).backward()
    assert seen[-1] == [(), (2,), (3,), (2,), (3,), (3, 3), (3,)]


# -- conventions ----------------------------------------------------------------------------


def test_a_grid_constructor_sees_the_users_times_and_returns_a_grid_in_them():
    seen = []

    def grid(func, y0, t):
        seen.append(t.tolist())
        assert func(t[0], y0).shape == y0.shape
        return torch.linspace(float(t[0]), float(t[-1]), 101, dtype=t.dtype)

    t = torch.tensor([1.0, 0.5, 0.0], dtype=F64)
    sol = neurode.solve_ivp(lambda t, y: -y, torch.tensor([1.0], dtype=F64), t, method="rk4",
                            options={"grid_constructor": grid})
    assert seen == [[1.0, 0.5, 0.0]]
    assert sol.stats.n_steps == 100
    assert abs(float(sol.ys[-1, 0]) - math.e) < 1e-9  # y(0) from y(1) = 1


@pytest.mark.parametrize("method,options", [
    ("dopri5", {"max_num_steps": 3}), ("rk4", {"step_size": 0.01, "max_num_steps": 3}),
    ("dopri5", {"max_num_steps": 3, "per_sample": True}),
])
def test_max_num_steps_is_also_torchdiffeqs_assertion_error(method, options):
    with pytest.raises(AssertionError, match=r"^max_num_steps") as info:
        neurode.odeint(lambda t, y: -y, torch.ones(2, 1), torch.tensor([0.0, 10.0]),
                       method=method, options=options)
    assert isinstance(info.value, neurode.MaxStepsReachedError)
    assert isinstance(info.value, neurode.SolverError)


@pytest.mark.parametrize("method,options", [
    ("implicit_euler", {"step_size": 0.01}), ("trapezoid", {"step_size": 0.01}),
    ("radauIIA5", {"step_size": 0.01}), ("gl4", {"step_size": 0.01}),
    ("sdirk2", {"step_size": 0.01}), ("radau", {}),
])
def test_implicit_methods_converge_in_float32_at_the_default_tolerances(method, options):
    def vdp(t, y):
        return torch.stack([y[1], 10 * (1 - y[0] ** 2) * y[1] - y[0]])

    t = torch.linspace(0, 5, 6)
    ys = neurode.odeint(vdp, torch.tensor([2.0, 0.0]), t, method=method, options=options)
    ref = neurode.odeint(vdp, torch.tensor([2.0, 0.0], dtype=F64), t.double(), method=method,
                         options=options)
    assert ys.dtype == torch.float32
    assert float((ys.double() - ref).abs().max()) < 1e-4


# -- per-sample mode ------------------------------------------------------------------------


@pytest.mark.parametrize("fn", ["odeint", "odeint_adjoint"])
@pytest.mark.parametrize("shared", [True, False], ids=["t(T)", "t(B,T)"])
def test_per_sample_solves_differentiate_with_respect_to_t(fn, shared):
    # y' = -k y per sample: y(t_i) = y0·exp(-k (t_i - t_0)); dL/dt_i = -k y(t_i) for L = Σ y,
    # dL/dt_0 = +Σ_i k y(t_i) (i ≥ 1)
    k = torch.tensor([[1.0], [2.0]], dtype=F64)
    y0 = torch.tensor([[1.0], [3.0]], dtype=F64)
    base = torch.tensor([0.0, 0.4, 1.0], dtype=F64)
    t = (base if shared else torch.stack([base, base + 0.25])).clone().requires_grad_(True)
    kw = {"adjoint_params": ()} if fn == "odeint_adjoint" else {}
    ys = getattr(neurode, fn)(lambda tt, y: -k * y, y0, t, rtol=1e-10, atol=1e-12,
                              options={"per_sample": True}, **kw)
    ys.sum().backward()
    tt = t.detach() if not shared else base.expand(2, -1)
    exact = y0 * torch.exp(-k * (tt - tt[:, :1]))            # (B, T)
    d = -k * exact                                          # dL/dt_i per sample
    d[:, 0] = -d[:, 1:].sum(1)
    expected = d.sum(0) if shared else d
    assert torch.allclose(t.grad, expected, atol=1e-7), (t.grad, expected)


def test_a_tuple_of_mixed_dtypes_is_solved_in_the_promoted_dtype():
    # flow_matching's compute_likelihood: (x float64, log-det zeros float32); torchdiffeq
    # concatenates the tuple, so both are solved (and returned) in float64
    x0 = torch.tensor([1.0, 2.0], dtype=F64)
    z0 = torch.zeros(2, dtype=torch.float32)
    xs, zs = neurode.odeint(lambda t, s: (-s[0], torch.ones(2, dtype=torch.float32)), (x0, z0),
                            torch.tensor([0.0, 1.0], dtype=F64))
    assert xs.dtype == zs.dtype == F64
    assert torch.allclose(xs[-1], x0 * math.exp(-1), atol=1e-8)
    assert torch.allclose(zs[-1], torch.ones(2, dtype=F64), atol=1e-12)


@pytest.mark.parametrize("fn", ["odeint_adjoint", "odeint_checkpoint"])
def test_a_parameter_that_reaches_func_through_an_outside_graph_works_backwards(fn):
    # torchcde: interpolation slopes diff(coeffs) are built once, outside func, from a
    # parameter; every VJP of the backward pass walks that graph again
    c = torch.tensor([1.0, 3.0], dtype=F64, requires_grad=True)
    slope = c[1:] ** 2 - c[:1]                     # built once, outside func (pow saves c)
    y0 = torch.tensor([0.0], dtype=F64)
    ys = getattr(neurode, fn)(lambda t, y: slope * torch.ones_like(y), y0,
                              torch.tensor([0.0, 0.5, 1.0], dtype=F64), adjoint_params=(c,))
    ys[-1].sum().backward()                                   # y(1) = c1² - c0
    assert torch.allclose(c.grad, torch.tensor([-1.0, 6.0], dtype=F64), atol=1e-10)
