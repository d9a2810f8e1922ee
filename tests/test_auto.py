"""``method="auto"``: the explicit method by tolerance, Radau while stiff, and the stiffness tests.

Checked: the estimate ``h|λ|`` of the stiffness test is exact on linear problems for every
adaptive explicit tableau; stability boundaries against known values; the tolerance choice;
Van der Pol μ = 1000 switches to Radau on the slow manifolds and back to the explicit method in
the fast transitions, within 2× Radau's own steps and to Radau's accuracy; a non-stiff problem
never switches; gradients through ``odeint`` equal backpropagation through the very segments
replayed one by one, and ``odeint_adjoint`` agrees; dense output, events and per-sample solves;
the checkpointed adjoint refuses ``auto`` by name.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import neurode
from neurode.solvers.loops.auto import BY_TOLERANCE, explicit_for
from neurode.solvers.loops.stiffness import StiffnessTest, spectral_radius
from neurode.solvers.steppers.erk import ExplicitRK
from neurode.solvers.tableaux import TABLEAUX

F64 = torch.float64
ADAPTIVE_ERK = [n for n, t in TABLEAUX.items() if t.adaptive]


def vdp(mu):
    def f(t, y):
        return torch.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])
    return f


Y0 = torch.tensor([2.0, 0.0], dtype=F64)


@pytest.mark.parametrize("name", ADAPTIVE_ERK)
def test_stiffness_estimate_is_exact_on_a_linear_problem(name):
    # y' = A y: k_j − k_i = A (Y_j − Y_i), so the estimate is ‖hA d‖/‖d‖ for d = Y_j − Y_i; with
    # A = λI it is h|λ| exactly, whatever the stages.
    tab = TABLEAUX[name]
    lam, h = -7.0, 0.05
    st = ExplicitRK(tab, batch=1, n=3, dtype=F64, device="cpu", sign=1.0, time_dtype=F64,
                    per_sample=False)
    y = torch.tensor([[1.0, -2.0, 0.5]], dtype=F64)
    out = st.step(lambda t, z: lam * z, 0.0, h, y, None, None)
    test = StiffnessTest(tab)
    [est] = test.estimates([(None, out, 0.0, h)])
    # (Y_j − Y_i is a small difference of two O(1) states: ~1e-9 relative rounding for dopri8)
    assert est == pytest.approx(abs(lam) * h, rel=1e-7)


def test_stability_boundaries_match_known_values():
    # |R(−x)| ≤ 1 on [−β, 0]: RK4 2.785, DOPRI5 3.307 (Hairer & Wanner II, IV.2).
    assert TABLEAUX["rk4_classic"].stability_boundary == pytest.approx(2.7853, abs=1e-4)
    assert TABLEAUX["dopri5"].stability_boundary == pytest.approx(3.3066, abs=1e-4)
    assert TABLEAUX["euler"].stability_boundary == pytest.approx(2.0, abs=1e-9)
    for name in ("vern6", "vern7", "vern8", "vern9"):
        assert 4.0 < TABLEAUX[name].stability_boundary < 6.5


def test_spectral_radius_by_power_iteration():
    J = torch.tensor([[-1000.0, 1.0], [0.0, -0.5]], dtype=F64)
    assert spectral_radius(J) == pytest.approx(1000.0, rel=1e-3)
    rot = torch.tensor([[0.0, -3.0], [3.0, 0.0]], dtype=F64)  # ±3i
    assert spectral_radius(rot) == pytest.approx(3.0, rel=1e-9)


@pytest.mark.parametrize("rtol", [1e-3, 1e-5, 1e-7, 1e-9, 1e-11])
def test_auto_starts_with_the_method_of_its_tolerance_and_never_switches_when_nonstiff(rtol):
    A = torch.tensor([[-0.1, -1.0], [1.0, -0.1]], dtype=F64)
    z0 = torch.tensor([0.6, 0.3], dtype=F64)
    t = torch.linspace(0, 10, 11, dtype=F64)
    sol = neurode.solve_ivp(lambda t, z: A @ z, z0, t, method="auto", rtol=rtol, atol=rtol)
    name = explicit_for(rtol)
    assert [s.method for s in sol.stats.segments] == [name]
    ref = neurode.solve_ivp(lambda t, z: A @ z, z0, t, method=name, rtol=rtol, atol=rtol)
    assert torch.equal(sol.ys, ref.ys)
    assert sol.stats.nfe == ref.stats.nfe
    assert name == next(m for bound, m in BY_TOLERANCE if rtol >= bound)


def test_auto_on_van_der_pol_switches_and_stays_within_twice_radaus_steps():
    f = vdp(1000.0)
    t = torch.linspace(0, 3000, 16, dtype=F64)
    auto = neurode.solve_ivp(f, Y0, t, method="auto", rtol=1e-6, atol=1e-6)
    radau = neurode.solve_ivp(f, Y0, t, method="radau", rtol=1e-6, atol=1e-6)
    ref = neurode.solve_ivp(f, Y0, t, method="radau", rtol=1e-10, atol=1e-10)
    segs = auto.stats.segments
    methods = [s.method for s in segs]
    assert methods[0] == explicit_for(1e-6) and "radau" in methods
    assert all(a != b for a, b in itertools.pairwise(methods))  # alternating
    assert methods.count("radau") >= 3  # one slow branch per half-period
    # contiguous segments covering the span; their counts add up to the solve's
    assert segs[0].t0 == 0.0 and segs[-1].t1 == 3000.0
    assert all(a.t1 == b.t0 for a, b in itertools.pairwise(segs))
    assert sum(s.n_steps for s in segs) == auto.stats.n_steps
    assert sum(s.nfe for s in segs) == auto.stats.nfe
    assert auto.stats.n_steps <= 2 * radau.stats.n_steps
    # err/tol = max |y − ref| / (atol + rtol |ref|): measured 2.0 for auto, 0.4 for radau
    scale = 1e-6 + 1e-6 * ref.ys.abs()
    assert float(((auto.ys - ref.ys).abs() / scale).max()) <= 5.0


def _replay(f, y0, segments, t_out):
    """The solve redone segment by segment with each segment's own method."""
    y = y0
    rows = [y0]
    for seg in segments:
        inside = [s for s in t_out if seg.t0 < s <= seg.t1]
        ts = torch.tensor([seg.t0, *inside] + ([seg.t1] if not inside or inside[-1] != seg.t1
                                               else []), dtype=F64)
        ys = neurode.odeint(f, y, ts, method=seg.method, rtol=1e-6, atol=1e-6)
        rows.extend(ys[1:1 + len(inside)].unbind(0))
        y = ys[-1]
    return torch.stack(rows)


def test_auto_gradient_equals_backprop_through_the_same_steps():
    mu = torch.tensor(200.0, dtype=F64, requires_grad=True)
    y0 = Y0.clone().requires_grad_(True)
    t = torch.tensor([0.0, 150.0, 300.0], dtype=F64)

    def f(t, y):
        return torch.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])

    sol = neurode.solve_ivp(f, y0, t, method="auto", rtol=1e-6, atol=1e-6)
    assert len(sol.stats.segments) >= 3
    ys = neurode.odeint(f, y0, t, method="auto", rtol=1e-6, atol=1e-6)
    g = torch.autograd.grad(ys[1:].sum(), (mu, y0))
    rep = _replay(f, y0, sol.stats.segments, t.tolist())
    assert torch.allclose(ys, rep, rtol=1e-12, atol=1e-12)
    g_rep = torch.autograd.grad(rep[1:].sum(), (mu, y0))
    for a, b in zip(g, g_rep, strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_auto_adjoint_agrees_with_backprop():
    # The adjoint reconstructs z backwards in time, which no method can do stably through the
    # stiff branches of Van der Pol (errors off the slow manifold grow like e^{μ t} backwards);
    # on a non-stiff problem auto runs forward and backward and agrees with backprop.
    w = torch.tensor([[-0.1, -1.0], [1.0, -0.1]], dtype=F64, requires_grad=True)
    z0 = torch.tensor([0.6, 0.3], dtype=F64, requires_grad=True)
    t = torch.linspace(0, 5, 6, dtype=F64)

    def f(t, z):
        return torch.tanh(w @ z)

    ys = neurode.odeint(f, z0, t, method="auto", rtol=1e-9, atol=1e-9)
    g = torch.autograd.grad((ys ** 2).sum(), (w, z0))
    ya = neurode.odeint_adjoint(f, z0, t, method="auto", rtol=1e-9, atol=1e-9,
                                adjoint_params=(w,))
    g_adj = torch.autograd.grad((ya ** 2).sum(), (w, z0))
    for a, b in zip(g, g_adj, strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-8)


def test_auto_dense_output_across_segments_equals_the_solves_outputs():
    f = vdp(1000.0)
    t = torch.tensor([0.0, 0.02, 400.0, 807.1, 1000.0], dtype=F64)
    sol = neurode.solve_ivp(f, Y0, t, method="auto", rtol=1e-6, atol=1e-6, dense=True)
    assert len(sol.stats.segments) >= 3
    assert torch.allclose(sol.evaluate(t), sol.ys, rtol=1e-10, atol=1e-12)


def test_auto_event_found_in_a_stiff_segment():
    f = vdp(1000.0)

    def crossing(t, y):
        return y[0]

    t_ev, sol = neurode.odeint_event(f, Y0, torch.tensor(0.0, dtype=F64), event_fn=crossing,
                                     method="auto", rtol=1e-8, atol=1e-8)
    t_ref, _ = neurode.odeint_event(f, Y0, torch.tensor(0.0, dtype=F64), event_fn=crossing,
                                    method="radau", rtol=1e-10, atol=1e-10)
    assert 800 < float(t_ev.detach()) < 820
    assert float(t_ev.detach()) == pytest.approx(float(t_ref), rel=1e-6)
    assert abs(float(sol[-1][0])) < 1e-6


def test_auto_per_sample_is_the_explicit_method_of_its_tolerance():
    A = torch.tensor([[-0.1, -1.0], [1.0, -0.1]], dtype=F64)
    z0 = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0, 5, 6, dtype=F64)
    f = lambda t, z: z @ A.T  # noqa: E731
    a = neurode.solve_ivp(f, z0, t, method="auto", rtol=1e-8, atol=1e-8, per_sample=True)
    b = neurode.solve_ivp(f, z0, t, method=explicit_for(1e-8), rtol=1e-8, atol=1e-8,
                          per_sample=True)
    assert torch.equal(a.ys, b.ys)
    assert torch.equal(a.stats.nfe, b.stats.nfe)
    # the per-sample adjoint runs it as that method too; Newton's options would never be used
    w = A.clone().requires_grad_(True)
    g = [torch.autograd.grad(neurode.odeint_adjoint(
        lambda t, z: z @ w.T, z0, t, method=m, rtol=1e-8, atol=1e-8,
        options={"per_sample": True}, adjoint_params=(w,)).sum(), w)[0]
        for m in ("auto", explicit_for(1e-8))]
    assert torch.equal(g[0], g[1])
    with pytest.raises(neurode.UnknownOptionError, match="max_iters"):
        neurode.solve_ivp(f, z0, t, method="auto", per_sample=True, options={"max_iters": 3})


def test_auto_refuses_the_checkpointed_adjoint_by_name():
    p = torch.tensor(1.0, dtype=F64, requires_grad=True)
    with pytest.raises(neurode.InvalidInputError, match="auto"):
        neurode.odeint_checkpoint(lambda t, y: -p * y, torch.ones(2, dtype=F64),
                                  torch.tensor([0.0, 1.0], dtype=F64), method="auto",
                                  adjoint_params=(p,))


def test_auto_max_num_steps_counts_every_segment():
    f = vdp(1000.0)
    t = torch.tensor([0.0, 3000.0], dtype=F64)
    with pytest.raises(neurode.MaxStepsReachedError):
        neurode.odeint(f, Y0, t, method="auto", rtol=1e-6, atol=1e-6,
                       options={"max_num_steps": 150})


def test_every_joint_solve_reports_its_one_segment():
    t = torch.tensor([0.0, 2.0], dtype=F64)
    sol = neurode.solve_ivp(lambda t, y: -y, torch.ones(3, dtype=F64), t, method="vern8")
    [seg] = sol.stats.segments
    assert (seg.method, seg.t0, seg.t1) == ("vern8", 0.0, 2.0)
    assert (seg.nfe, seg.n_steps) == (sol.stats.nfe, sol.stats.n_steps)


def test_auto_switches_with_device_decisions_tuple_states_and_jumps_alike():
    f = vdp(1000.0)
    t = torch.linspace(0, 1000, 11, dtype=F64)
    ref = neurode.solve_ivp(f, Y0, t, method="radau", rtol=1e-10, atol=1e-10).ys

    def f_tuple(t, y):
        x, v = y
        return v, 1000.0 * (1 - x ** 2) * v - x

    runs = {
        "host": neurode.solve_ivp(f, Y0, t, method="auto", rtol=1e-6, atol=1e-6),
        "device": neurode.solve_ivp(f, Y0, t, method="auto", rtol=1e-6, atol=1e-6,
                                    options={"sync_every": 8}),
        "jump": neurode.solve_ivp(f, Y0, t, method="auto", rtol=1e-6, atol=1e-6,
                                  options={"jump_t": [500.0], "step_t": [250.0]}),
    }
    tup = neurode.solve_ivp(f_tuple, (Y0[0], Y0[1]), t, method="auto", rtol=1e-6, atol=1e-6)
    for name, sol in runs.items():
        assert [s.method for s in sol.stats.segments][:2] == [explicit_for(1e-6), "radau"], name
        assert float((sol.ys - ref).abs().max()) < 1e-4, name
    assert [s.method for s in tup.stats.segments][:2] == [explicit_for(1e-6), "radau"]
    assert float((torch.stack(tup.ys, -1) - ref).abs().max()) < 1e-4
