"""Hybrid solves (``neurode.odeint_hybrid``): many events, directions, resets, per sample.

The bouncing ball has a closed form: dropped from rest at height ``h0`` under gravity ``g`` with
restitution ``e``, it lands at ``t_1 = √(2h0/g)`` and then after each flight of ``2 e^k t_1``, so
``t_n = t_1 (1 + 2 Σ_{k=1}^{n−1} e^k)``; its derivatives in ``e`` and ``h0`` are exact too.
Free fall is a quadratic, which every Runge–Kutta method of order ≥ 2 integrates exactly, so the
event times are checked to 1e-9 and their gradients to 1e-7, through backprop and the adjoint.
"""

from __future__ import annotations

import math

import pytest
import torch

import neurode

F64 = torch.float64
G = 9.81


def closed_form(n: int, e: float, h0: float) -> tuple[float, float, float]:
    """``(t_n, ∂t_n/∂e, ∂t_n/∂h0)``."""
    t1 = math.sqrt(2 * h0 / G)
    s = sum(e ** k for k in range(1, n))
    ds = sum(k * e ** (k - 1) for k in range(1, n))
    tn = t1 * (1 + 2 * s)
    return tn, 2 * t1 * ds, tn / (2 * h0)


def fall(t, y):
    return torch.stack([y[1], torch.full_like(y[1], -G)])


def height(t, y):
    return y[0]


def ball(e0=0.8, h00=10.0):
    e = torch.tensor(e0, dtype=F64, requires_grad=True)
    h0 = torch.tensor(h00, dtype=F64, requires_grad=True)

    def bounce(t, y, which):
        return torch.stack([torch.zeros_like(y[0]), -e * y[1]])

    y0 = torch.stack([h0, torch.zeros((), dtype=F64)])
    return e, h0, y0, bounce


@pytest.mark.parametrize("adjoint", [False, True], ids=["odeint", "odeint_adjoint"])
def test_bouncing_ball_ten_bounces_and_their_gradients(adjoint):
    e, h0, y0, bounce = ball()
    t10 = closed_form(10, 0.8, 10.0)[0]
    t = torch.tensor([0.0, t10 + 0.05], dtype=F64)
    sol = neurode.odeint_hybrid(fall, y0, t, event_fn=height, direction=-1, reset=bounce,
                                rtol=1e-10, atol=1e-10, adjoint=adjoint,
                                adjoint_params=(e,) if adjoint else None)
    assert len(sol.events) == 10 and not sol.terminated
    for n, ev in enumerate(sol.events, start=1):
        assert float(ev.t.detach()) == pytest.approx(closed_form(n, 0.8, 10.0)[0], abs=1e-9)
        assert ev.index == 0 and ev.sample is None
        assert abs(float(ev.y[0])) < 1e-9  # on the floor, falling
        assert float(ev.y_after[1]) == pytest.approx(-0.8 * float(ev.y[1]), rel=1e-12)
    g_e, g_h = torch.autograd.grad(sol.event_t[9], (e, h0))
    _, de, dh = closed_form(10, 0.8, 10.0)
    assert float(g_e) == pytest.approx(de, abs=1e-7)
    assert float(g_h) == pytest.approx(dh, abs=1e-7)


def test_adjoint_options_reach_the_backward_solve():
    """``adjoint_options`` are the backward solve's options (as in odeint_adjoint): the
    seminorm runs and gives the same gradient; an unknown key is refused by name."""
    e, h0, y0, bounce = ball()
    t3 = closed_form(3, 0.8, 10.0)[0]
    t = torch.tensor([0.0, t3 + 0.05], dtype=F64)
    kw = dict(event_fn=height, direction=-1, reset=bounce, rtol=1e-10, atol=1e-10,
              adjoint=True, adjoint_params=(e,))
    sol = neurode.odeint_hybrid(fall, y0, t, adjoint_options={"norm": "seminorm"}, **kw)
    g_e, g_h = torch.autograd.grad(sol.event_t[2], (e, h0))
    _, de, dh = closed_form(3, 0.8, 10.0)
    assert float(g_e) == pytest.approx(de, abs=1e-7)
    assert float(g_h) == pytest.approx(dh, abs=1e-7)
    with pytest.raises(neurode.UnknownOptionError, match="no_such_option"):
        sol = neurode.odeint_hybrid(fall, y0, t, adjoint_options={"no_such_option": 1}, **kw)
        torch.autograd.grad(sol.event_t[2], (e,))


@pytest.mark.parametrize("adjoint", [False, True], ids=["odeint", "odeint_adjoint"])
def test_state_after_resets_has_the_closed_form_gradient(adjoint):
    # between bounces n and n+1 the height is v_n (t − t_n) − g (t − t_n)²/2 with
    # v_n = e^n √(2 g h0): its derivative in e and h0, through 3 resets
    e, h0, y0, bounce = ball()
    t3 = closed_form(3, 0.8, 10.0)[0]
    ts = t3 + 0.3
    sol = neurode.odeint_hybrid(fall, y0, torch.tensor([0.0, ts], dtype=F64), event_fn=height,
                                direction=-1, reset=bounce, rtol=1e-11, atol=1e-11,
                                adjoint=adjoint, adjoint_params=(e,) if adjoint else None)
    assert len(sol.events) == 3
    y = sol.ys[-1, 0]
    g_e, g_h = torch.autograd.grad(y, (e, h0))

    def height_at(ev, hv):
        t_n = closed_form(3, ev, hv)[0]
        v_n = ev ** 3 * math.sqrt(2 * G * hv)
        dt = ts - t_n
        return v_n * dt - G * dt * dt / 2

    assert float(y) == pytest.approx(height_at(0.8, 10.0), abs=1e-9)
    eps = 1e-6
    fd_e = (height_at(0.8 + eps, 10.0) - height_at(0.8 - eps, 10.0)) / (2 * eps)
    fd_h = (height_at(0.8, 10.0 + eps) - height_at(0.8, 10.0 - eps)) / (2 * eps)
    assert float(g_e) == pytest.approx(fd_e, rel=1e-6)
    assert float(g_h) == pytest.approx(fd_h, rel=1e-6)


def test_directions_count_only_their_crossings():
    # y = sin t from y' = cos t: rising zeros at 0⁺? no — at 2π, 4π; falling at π, 3π
    t = torch.tensor([0.0, 13.0], dtype=F64)
    y0 = torch.zeros(1, dtype=F64)

    def f(t, y):
        return torch.cos(t).reshape(1)

    for d, want in ((+1, [2, 4]), (-1, [1, 3]), (0, [1, 2, 3, 4])):
        sol = neurode.odeint_hybrid(f, y0, t, event_fn=lambda t, y: y[0], direction=d,
                                    rtol=1e-10, atol=1e-12)
        got = [float(ev.t.detach()) for ev in sol.events]
        assert got == pytest.approx([k * math.pi for k in want], abs=1e-8), d


def test_outputs_after_an_event_come_from_the_reset_trajectory():
    _, _, y0, bounce = ball()
    t1 = closed_form(1, 0.8, 10.0)[0]
    t = torch.tensor([0.0, 0.5 * t1, t1, t1 + 0.2], dtype=F64)
    sol = neurode.odeint_hybrid(fall, y0, t, event_fn=height, direction=-1, reset=bounce,
                                rtol=1e-10, atol=1e-10)
    v1 = math.sqrt(2 * G * 10.0)
    assert float(sol.ys[1, 0]) == pytest.approx(10 - G * (0.5 * t1) ** 2 / 2, abs=1e-9)
    assert float(sol.ys[3, 0]) == pytest.approx(0.8 * v1 * 0.2 - G * 0.02, abs=1e-9)
    assert float(sol.ys[3, 1]) == pytest.approx(0.8 * v1 - G * 0.2, abs=1e-9)


def test_terminal_event_freezes_the_remaining_outputs():
    sol = neurode.odeint_hybrid(fall, torch.tensor([10.0, 0.0], dtype=F64),
                                torch.linspace(0, 5, 6, dtype=F64), event_fn=height,
                                direction=-1, terminal=True, rtol=1e-10, atol=1e-10)
    [ev] = sol.events
    assert sol.terminated and ev.terminal and ev.y_after is None
    t1 = closed_form(1, 0.8, 10.0)[0]  # ≈ 1.43
    assert float(ev.t.detach()) == pytest.approx(t1, abs=1e-9)
    for row in sol.ys[2:]:
        assert torch.equal(row, ev.y)


def test_per_sample_events_equal_each_sample_solved_alone():
    g = torch.Generator().manual_seed(3)
    h0 = 1.0 + 9.0 * torch.rand(64, generator=g, dtype=F64)
    y0 = torch.stack([h0, torch.zeros(64, dtype=F64)], 1)
    t = torch.tensor([0.0, 1.0, 2.5], dtype=F64)
    kw = dict(event_fn=height, direction=-1, terminal=True, rtol=1e-10, atol=1e-10)
    sol = neurode.odeint_hybrid(fall, y0, t, per_sample=True, **kw)
    assert sol.ys.shape == (3, 64, 2)
    assert [ev.sample for ev in sol.events] == list(range(64))
    for b in range(64):
        alone = neurode.odeint_hybrid(fall, y0[b], t, **kw)
        ev = sol.events[b]
        assert float(ev.t.detach()) == pytest.approx(float(alone.events[0].t), abs=1e-9)
        assert float(ev.t.detach()) == pytest.approx(math.sqrt(2 * float(h0[b]) / G), abs=1e-9)
        assert torch.allclose(sol.ys[:, b], alone.ys, rtol=0, atol=1e-12)
    assert bool(sol.terminated.all())


def test_max_events_stops_a_zeno_ball_with_a_named_error():
    _, _, y0, bounce = ball(e0=0.5)
    with pytest.raises(neurode.SolverError, match="max_events=25"):
        neurode.odeint_hybrid(fall, y0.detach(), torch.tensor([0.0, 10.0], dtype=F64),
                              event_fn=height, direction=-1, reset=bounce, max_events=25,
                              rtol=1e-10, atol=1e-10)


def test_tuple_states_and_several_functions():
    def f(t, y):
        x, v = y
        return v, -x

    y0 = (torch.zeros(1, dtype=F64), torch.ones(1, dtype=F64))
    sol = neurode.odeint_hybrid(f, y0, torch.tensor([0.0, 7.0], dtype=F64),
                                event_fn=lambda t, y: torch.stack([y[0][0] - 0.5, y[1][0]]),
                                direction=(+1, -1), rtol=1e-10, atol=1e-12)
    got = [(ev.index, round(float(ev.t.detach()), 8)) for ev in sol.events]
    # x = sin t rises through 0.5 at π/6 and 2π + π/6; v = cos t falls through 0 at π/2, 5π/2
    want = [(0, math.pi / 6), (1, math.pi / 2), (0, 2 * math.pi + math.pi / 6)]
    assert [i for i, _ in got] == [i for i, _ in want]
    assert [t for _, t in got] == pytest.approx([t for _, t in want], abs=1e-8)
    assert isinstance(sol.ys, tuple) and sol.ys[0].shape == (2, 1)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"direction": (1, -1)}, "direction has 2 entries"),
    ({"direction": 2}, "direction entries"),
    ({"terminal": "yes"}, "terminal entries"),
    ({"max_events": -1}, "max_events"),
    ({"reset": lambda t, y, k: y[:1]}, "reset"),
])
def test_bad_arguments_name_the_problem(kwargs, match):
    with pytest.raises(neurode.InvalidInputError, match=match):
        neurode.odeint_hybrid(fall, torch.tensor([1.0, 0.0], dtype=F64),
                              torch.tensor([0.0, 2.0], dtype=F64), event_fn=height,
                              **{"direction": -1, **kwargs})


def test_stop_after_ends_at_the_nth_event_and_an_output_at_an_event_is_the_state_before():
    _, _, y0, bounce = ball()
    t1, t2 = closed_form(1, 0.8, 10.0)[0], closed_form(2, 0.8, 10.0)[0]
    t = torch.tensor([0.0, t1, t2 + 1.0, 100.0], dtype=F64)
    sol = neurode.odeint_hybrid(fall, y0.detach(), t, event_fn=height, direction=-1,
                                reset=bounce, stop_after=3, rtol=1e-10, atol=1e-10)
    assert len(sol.events) == 3 and sol.terminated and sol.events[-1].terminal
    assert [e.terminal for e in sol.events] == [False, False, True]
    # the output at t1 is the state arriving at the floor, velocity still downwards
    assert float(sol.ys[1, 1]) == pytest.approx(-math.sqrt(2 * G * 10.0), rel=1e-9)
    assert torch.equal(sol.ys[3], sol.events[-1].y)


def test_float32_times_with_an_event_on_an_output_time_and_a_zeno_ball():
    # the event time is compared with the outputs in t's own precision (float32 rounds it)
    t = torch.linspace(0, 2, 21)
    sol = neurode.odeint_hybrid(lambda t, y: -y, torch.ones(1), t,
                                event_fn=lambda t, y: t - 1.0, direction=1,
                                reset=lambda t, y, k: y + 1)
    assert len(sol.events) == 1 and float(sol.events[0].t.detach()) == pytest.approx(1.0)
    assert float(sol.ys[10, 0]) == pytest.approx(math.exp(-1.0), rel=1e-4)  # just before
    assert float(sol.ys[11, 0]) == pytest.approx((math.exp(-1.0) + 1) * math.exp(-0.1),
                                                 rel=1e-4)
    # bounces accumulating at ~12.85 s stop with a named error, not an internal one
    bounce = lambda t, y, k: torch.stack([torch.zeros_like(y[0]), -0.8 * y[1]])  # noqa: E731
    with pytest.raises(neurode.SolverError, match=r"accumulate|max_events"):
        neurode.odeint_hybrid(fall, torch.tensor([10.0, 0.0]), torch.tensor([0.0, 100.0]),
                              event_fn=height, direction=-1, reset=bounce, max_events=200)


def test_max_events_bounds_the_count_even_with_a_later_stop_after():
    _, _, y0, bounce = ball()
    with pytest.raises(neurode.SolverError, match="max_events=2"):
        neurode.odeint_hybrid(fall, y0.detach(), torch.tensor([0.0, 100.0], dtype=F64),
                              event_fn=height, direction=-1, reset=bounce, max_events=2,
                              stop_after=3, rtol=1e-10, atol=1e-10)
