"""Dense output, output times, time direction, state structure, dtypes, callbacks and the options
that shape the steps (step_t, jump_t, grids, interpolation, perturb, min/max step, norm).

Every accuracy check compares with an exact solution in float64 (unless the dtype is the point).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import neurode
from neurode.solvers.norms import rms_norm

F64 = torch.float64

A = torch.tensor([[-0.1, -1.0], [1.0, -0.1]], dtype=F64)
Z0 = torch.tensor([0.6, 0.3], dtype=F64)


def _tensor(*xs, dtype=F64):
    return torch.tensor(xs, dtype=dtype)


def spiral(t, z):
    return A @ z


def spiral_exact(t):
    t = torch.as_tensor(t, dtype=F64).reshape(-1)
    return torch.stack([torch.linalg.matrix_exp(A * ti) @ Z0 for ti in t])


class Recorder:
    """A vector field that records the times it is called at and the steps it is told about."""

    def __init__(self, f):
        self.f = f
        self.ts: list[float] = []
        self.steps: list[tuple[float, float]] = []
        self.accepted: list[tuple[float, float]] = []
        self.rejected: list[tuple[float, float]] = []

    def __call__(self, t, y):
        self.ts.append(float(t))
        return self.f(t, y)

    def callback_step(self, t, y, dt):
        self.steps.append((float(t), float(dt)))

    def callback_accept_step(self, t, y, dt):
        self.accepted.append((float(t), float(dt)))

    def callback_reject_step(self, t, y, dt):
        self.rejected.append((float(t), float(dt)))


# --- dense output --------------------------------------------------------------------------------

# Dense error bound as a multiple of tol (measured at tol=1e-8 on [0, 10]: dopri5 2.2, tsit5 0.9,
# dopri8 2.5, bosh3 15; bosh3's global error itself is ~15·tol, see test_convergence.py).
DENSE_BOUND = {"dopri5": 10.0, "tsit5": 10.0, "dopri8": 10.0, "bosh3": 50.0}


@pytest.mark.parametrize("method", sorted(DENSE_BOUND))
@pytest.mark.parametrize("tol", [1e-5, 1e-8])
def test_adaptive_dense_output_matches_exact_solution_between_steps(method, tol):
    sol = neurode.solve_ivp(spiral, Z0, _tensor(0.0, 10.0), method=method, rtol=tol, atol=tol,
                            dense=True)
    tq = torch.linspace(0, 10, 1001, dtype=F64)
    assert sol.stats.n_accepted < 1000  # so most query times lie strictly inside steps
    err = float((sol.evaluate(tq) - spiral_exact(tq)).abs().max())
    assert err <= DENSE_BOUND[method] * tol, f"{method}: dense error {err:.3g} at tol {tol:g}"


@pytest.mark.parametrize("method", sorted(DENSE_BOUND))
def test_odeint_dense_is_the_dense_output_of_solve_ivp(method):
    tq = torch.linspace(0, 10, 257, dtype=F64)
    y = neurode.odeint_dense(spiral, Z0, 0.0, 10.0, method=method, rtol=1e-8, atol=1e-8)
    sol = neurode.solve_ivp(spiral, Z0, _tensor(0.0, 10.0), method=method, rtol=1e-8, atol=1e-8,
                            dense=True)
    assert torch.equal(y(tq), sol.evaluate(tq))
    assert y(tq).shape == (257, 2)
    assert y(torch.tensor(2.5, dtype=F64)).shape == (2,)
    assert torch.equal(y(0.0), Z0)
    assert float((y(tq) - spiral_exact(tq)).abs().max()) <= DENSE_BOUND[method] * 1e-8


@pytest.mark.parametrize("method", ["rk4", "rk4_classic", "explicit_adams"])
def test_fixed_method_dense_output_is_as_accurate_as_its_grid_values(method):
    h = 0.05
    grid = torch.arange(0, 201, dtype=F64) * h
    sol = neurode.solve_ivp(spiral, Z0, grid, method=method,
                            options={"step_size": h, "max_order": 4} if "adams" in method
                            else {"step_size": h}, dense=True)
    grid_err = float((sol.ys - spiral_exact(grid)).abs().max())
    tq = torch.linspace(0, 10, 1001, dtype=F64)
    dense_err = float((sol.evaluate(tq) - spiral_exact(tq)).abs().max())
    # Cubic Hermite adds O(h⁴)/384 ≈ 2e-8 at most here, below the grid error of these methods.
    assert dense_err <= 1.2 * grid_err + 2e-8, (dense_err, grid_err)
    assert torch.equal(sol.evaluate(grid[40]), sol.ys[40])


def test_dense_output_rejects_times_outside_the_solved_interval():
    sol = neurode.solve_ivp(spiral, Z0, _tensor(0.0, 1.0), dense=True)
    with pytest.raises(neurode.InvalidInputError, match="outside the solved interval"):
        sol.evaluate(1.5)
    no_dense = neurode.solve_ivp(spiral, Z0, _tensor(0.0, 1.0))
    with pytest.raises(neurode.InvalidInputError, match="dense=True"):
        no_dense.evaluate(0.5)


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "dopri8", "bosh3", "fehlberg2",
                                    "adaptive_heun"])
def test_output_times_do_not_shorten_adaptive_steps(method):
    """Outputs between steps come from the continuous extension: 500 output times take exactly
    the steps that 2 do."""
    kw = {"method": method, "rtol": 1e-6, "atol": 1e-6}
    two = neurode.solve_ivp(spiral, Z0, _tensor(0.0, 10.0), **kw)
    many_t = torch.linspace(0, 10, 500, dtype=F64)
    many = neurode.solve_ivp(spiral, Z0, many_t, **kw)
    assert many.stats.n_steps == two.stats.n_steps
    assert many.stats.n_accepted == two.stats.n_accepted
    assert many.stats.n_rejected == two.stats.n_rejected
    assert many.stats.n_steps < 500 or method == "adaptive_heun"
    assert torch.equal(many.ys[-1], two.ys[-1])
    # ... and they are the dense output of those steps.
    dense = neurode.solve_ivp(spiral, Z0, _tensor(0.0, 10.0), dense=True, **kw)
    torch.testing.assert_close(many.ys, dense.evaluate(many_t), rtol=0, atol=1e-14)


# --- time direction ------------------------------------------------------------------------------


def _cos_field(t, y):
    return y * torch.cos(t)  # y(t) = y(t0) exp(sin t − sin t0)


@pytest.mark.parametrize(("method", "options"), [
    ("dopri5", None), ("tsit5", None), ("dopri8", None), ("bosh3", None),
    ("rk4", {"step_size": 0.1}), ("euler", {"step_size": 0.01}),
    ("explicit_adams", {"step_size": 0.05, "max_order": 4}),
    ("implicit_adams", {"step_size": 0.05}),
])
def test_decreasing_times_equal_forward_solve_of_time_reversed_problem(method, options):
    t_back = torch.linspace(4.0, 0.0, 9, dtype=F64)
    y_end = torch.tensor([math.exp(math.sin(4.0))], dtype=F64)
    kw = {"method": method, "options": options, "rtol": 1e-9, "atol": 1e-9}
    back = neurode.odeint(_cos_field, y_end, t_back, **kw)

    # s = −t: dy/ds = −f(−s, y), integrated forward over s ∈ [−4, 0].
    def reversed_field(s, y):
        return -_cos_field(-s, y)

    fwd = neurode.odeint(reversed_field, y_end, -t_back, **kw)
    assert torch.equal(back, fwd)
    exact = torch.exp(torch.sin(t_back)).reshape(-1, 1)
    err = float((back - exact).abs().max())
    assert err <= {"euler": 0.1, "rk4": 1e-5, "explicit_adams": 1e-4,
                   "implicit_adams": 1e-5}.get(method, 1e-7), err
    assert torch.equal(back[0], y_end)


def test_decreasing_times_report_user_times_to_callbacks():
    rec = Recorder(spiral)
    sol = neurode.solve_ivp(rec, Z0, _tensor(0.0, -3.0), rtol=1e-8, atol=1e-8)
    ts = [t for t, _ in rec.accepted]
    dts = [dt for _, dt in rec.accepted]
    assert ts[0] == 0.0
    assert all(dt < 0 for dt in dts)
    assert all(b < a for a, b in itertools.pairwise(ts))
    assert math.isclose(ts[-1] + dts[-1], -3.0, abs_tol=1e-12)
    assert all(-3.0 <= t <= 0.0 for t in rec.ts)
    torch.testing.assert_close(sol.ys[-1], spiral_exact(-3.0)[0], rtol=0, atol=1e-7)


def test_dense_output_in_decreasing_time():
    y = neurode.odeint_dense(spiral, Z0, 0.0, -5.0, rtol=1e-9, atol=1e-9)
    tq = torch.linspace(-5.0, 0.0, 101, dtype=F64)
    err = float((y(tq) - spiral_exact(tq)).abs().max())
    assert err <= 1e-8, err
    assert y.t_span == (0.0, -5.0)


# --- state structure -----------------------------------------------------------------------------

OMEGA = 2.0


def _oscillator_tuple(t, state):
    x, v = state
    return v, -OMEGA**2 * x


def _oscillator_flat(t, y):
    return torch.stack([y[1], -OMEGA**2 * y[0]])


def _oscillator_exact(t, x0=1.0, v0=0.5):
    return torch.cos(OMEGA * t) * x0 + torch.sin(OMEGA * t) * v0 / OMEGA


@pytest.mark.parametrize(("method", "options"), [
    ("euler", {"step_size": 0.01}), ("midpoint", {"step_size": 0.02}),
    ("rk4", {"step_size": 0.05}), ("explicit_adams", {"step_size": 0.05, "max_order": 4}),
])
def test_tuple_state_gives_the_numbers_of_the_flat_state_for_fixed_methods(method, options):
    t = torch.linspace(0, 5, 11, dtype=F64)
    x0, v0 = torch.tensor(1.0, dtype=F64), torch.tensor(0.5, dtype=F64)
    xs, vs = neurode.odeint(_oscillator_tuple, (x0, v0), t, method=method, options=options)
    flat = neurode.odeint(_oscillator_flat, torch.stack([x0, v0]), t, method=method,
                          options=options)
    assert xs.shape == (11,) and vs.shape == (11,)
    torch.testing.assert_close(xs, flat[:, 0], rtol=0, atol=1e-14)
    torch.testing.assert_close(vs, flat[:, 1], rtol=0, atol=1e-14)


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "dopri8", "bosh3"])
def test_tuple_state_matches_flat_state_within_tolerance_for_adaptive_methods(method):
    tol = 1e-8
    t = torch.linspace(0, 5, 11, dtype=F64)
    x0, v0 = torch.tensor(1.0, dtype=F64), torch.tensor(0.5, dtype=F64)
    xs, _ = neurode.odeint(_oscillator_tuple, (x0, v0), t, method=method, rtol=tol, atol=tol)
    flat = neurode.odeint(_oscillator_flat, torch.stack([x0, v0]), t, method=method, rtol=tol,
                          atol=tol)
    bound = 50 * tol if method == "bosh3" else 10 * tol
    assert float((xs - _oscillator_exact(t)).abs().max()) <= bound
    assert float((xs - flat[:, 0]).abs().max()) <= bound


def test_tuple_default_norm_is_the_max_of_per_component_rms_norms():
    """With the flat state given that same norm, the adaptive steps and numbers are identical."""
    t = torch.linspace(0, 5, 11, dtype=F64)
    x0, v0 = torch.tensor([1.0, 0.2], dtype=F64), torch.tensor([0.5], dtype=F64)

    def f_tuple(t, s):
        x, v = s
        return torch.stack([v[0], -x[1]]), -OMEGA**2 * x[:1]

    def f_flat(t, y):
        return torch.cat([torch.stack([y[2], -y[1]]), -OMEGA**2 * y[:1]])

    def mixed(y):
        return torch.maximum(rms_norm(y[:2]), rms_norm(y[2:]))

    sol_t = neurode.solve_ivp(f_tuple, (x0, v0), t, rtol=1e-6, atol=1e-6)
    sol_f = neurode.solve_ivp(f_flat, torch.cat([x0, v0]), t, rtol=1e-6, atol=1e-6,
                              options={"norm": mixed})
    assert sol_t.stats == sol_f.stats
    torch.testing.assert_close(torch.cat(sol_t.ys, dim=1), sol_f.ys, rtol=0, atol=1e-14)


# --- dtypes and shapes ---------------------------------------------------------------------------

DTYPE_CASES = [torch.float32, torch.float64, torch.complex64, torch.complex128]


@pytest.mark.parametrize("dtype", DTYPE_CASES, ids=str)
@pytest.mark.parametrize(("method", "options"), [
    ("dopri5", None), ("tsit5", None), ("dopri8", None), ("rk4", {"step_size": 0.002}),
])
def test_real_and_complex_dtypes_are_solved_accurately_in_their_dtype(dtype, method, options):
    omega = 3.0
    single = dtype in (torch.float32, torch.complex64)
    tol = 1e-5 if single else 1e-9
    real_dtype = torch.float32 if single else F64
    t = torch.linspace(0, 2, 9, dtype=real_dtype)
    td = t.double()
    if dtype.is_complex:
        y0 = torch.tensor([1.0 + 0.0j], dtype=dtype)

        def f(t, y):
            return 1j * omega * y

        exact = torch.exp(1j * omega * td).reshape(-1, 1)
    else:
        y0 = torch.tensor([1.0, 0.0], dtype=dtype)

        def f(t, y):
            return torch.stack([-omega * y[1], omega * y[0]])

        exact = torch.stack([torch.cos(omega * td), torch.sin(omega * td)], dim=-1)
    y = neurode.odeint(f, y0, t, method=method, options=options, rtol=tol, atol=tol)
    assert y.dtype == dtype
    assert y.shape == (9, *y0.shape)
    assert torch.equal(y[0], y0)
    err = float((y.to(exact.dtype) - exact).abs().max())
    assert err <= 10 * tol, f"{dtype} {method}: error {err:.3g}"


@pytest.mark.parametrize(("method", "options"), [
    ("dopri5", None), ("dopri8", None), ("rk4", {"step_size": 0.01}),
    ("explicit_adams", {"step_size": 0.01, "max_order": 4}),
])
def test_batched_state_shape_is_kept_and_every_element_is_accurate(method, options):
    g = torch.Generator().manual_seed(1)
    y0 = torch.randn(3, 4, 5, generator=g, dtype=F64)
    k = torch.rand(3, 4, 5, generator=g, dtype=F64) + 0.1
    t = torch.linspace(0, 1, 5, dtype=F64)
    y = neurode.odeint(lambda t, y: -k * y, y0, t, method=method, options=options)
    assert y.shape == (5, 3, 4, 5)
    exact = y0 * torch.exp(-k * t.reshape(-1, 1, 1, 1))
    torch.testing.assert_close(y, exact, rtol=1e-6, atol=1e-8)
    assert torch.equal(y[0], y0)


@pytest.mark.parametrize("method", sorted(neurode.METHODS))
def test_single_output_time_returns_y0_with_a_leading_axis(method):
    y0 = torch.randn(3, 4, dtype=F64)
    y = neurode.odeint(lambda t, y: -y, y0, _tensor(0.3), method=method)
    assert y.shape == (1, 3, 4)
    assert torch.equal(y, y0[None])
    xs, vs = neurode.odeint(_oscillator_tuple, (y0[0], y0[1]), _tensor(0.3), method=method)
    assert torch.equal(xs, y0[0][None]) and torch.equal(vs, y0[1][None])


@pytest.mark.parametrize("method", sorted(neurode.METHODS))
def test_first_output_row_is_y0_exactly(method):
    y0 = torch.tensor([0.1234567890123, -2.5], dtype=F64)
    for t in (torch.linspace(0, 1, 4, dtype=F64), torch.linspace(1, -1, 4, dtype=F64)):
        y = neurode.odeint(lambda t, y: torch.sin(y) * t, y0, t, method=method)
        assert torch.equal(y[0], y0)


# --- callbacks -----------------------------------------------------------------------------------


def _fast_oscillator(t, y):
    return torch.stack([-10.0 * y[1], 10.0 * y[0]])


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "dopri8", "bosh3", "fehlberg2",
                                    "adaptive_heun"])
def test_step_callbacks_fire_once_per_step_and_match_stats(method):
    rec = Recorder(_fast_oscillator)
    # A first step far too long forces rejections.
    sol = neurode.solve_ivp(rec, _tensor(1.0, 0.0), _tensor(0.0, 3.0), method=method,
                            rtol=1e-5, atol=1e-7, options={"first_step": 1.0})
    assert sol.stats.n_rejected > 0
    assert len(rec.steps) == sol.stats.n_steps
    assert len(rec.accepted) == sol.stats.n_accepted
    assert len(rec.rejected) == sol.stats.n_rejected
    assert sol.stats.n_steps == sol.stats.n_accepted + sol.stats.n_rejected
    # Accepted steps tile [0, 3].
    assert rec.accepted[0][0] == 0.0
    for (t0, h0), (t1, _) in itertools.pairwise(rec.accepted):
        assert math.isclose(t0 + h0, t1, rel_tol=0, abs_tol=1e-14)
    assert math.isclose(rec.accepted[-1][0] + rec.accepted[-1][1], 3.0, abs_tol=1e-14)
    assert rec.rejected[0] == (0.0, 1.0)


@pytest.mark.parametrize("method", ["euler", "rk4", "explicit_adams", "implicit_adams"])
def test_fixed_methods_call_accept_callback_for_every_grid_step(method):
    rec = Recorder(_fast_oscillator)
    sol = neurode.solve_ivp(rec, _tensor(1.0, 0.0), _tensor(0.0, 1.0), method=method,
                            options={"step_size": 0.125})
    starts = [t for t, _ in rec.accepted]
    assert starts == [0.125 * i for i in range(8)]
    assert [dt for _, dt in rec.accepted] == [0.125] * 8
    assert len(rec.steps) == sol.stats.n_steps == sol.stats.n_accepted == 8
    assert rec.rejected == [] and sol.stats.n_rejected == 0


# --- step_t and jump_t ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "dopri8", "bosh3"])
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_step_t_makes_steps_land_exactly_on_those_times(method, direction):
    rec = Recorder(_fast_oscillator)
    stops = [0.3, 1.1, 2.0, 2.2]
    sol = neurode.solve_ivp(rec, _tensor(1.0, 0.0), _tensor(0.0, 3.0 * direction),
                            method=method,
                            options={"step_t": torch.tensor([direction * s for s in stops],
                                                         dtype=F64)})
    starts = [t for t, _ in rec.accepted]
    for s in stops:
        assert direction * s in starts, f"no step starts at {direction * s}"
    exact_end = torch.tensor([math.cos(30.0), direction * math.sin(30.0)], dtype=F64)
    torch.testing.assert_close(sol.ys[-1], exact_end, rtol=0, atol=1e-5)


def _piecewise_constant(t, y):
    return torch.where(t < 1.0, torch.ones_like(y), -2.0 * torch.ones_like(y))


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "dopri8", "bosh3"])
def test_jump_t_integrates_a_discontinuous_rhs_accurately(method):
    """y' = a(t) y with a = −1 before t = 1 and +0.5 after: y = e^{−t}, then e^{−1} e^{(t−1)/2}.

    The step ending at the jump samples the left side at its c = 1 stages (see the next test);
    dopri5 then gives ~2·tol, as torchdiffeq's dopri5 with jump_t does (17·tol without that).
    """

    def f(t, y):
        return torch.where(t < 1.0, -y, 0.5 * y)

    t = _tensor(0.0, 0.5, 1.0, 1.5, 3.0)
    exact = torch.tensor([math.exp(-0.0), math.exp(-0.5), math.exp(-1.0),
                          math.exp(-1.0 + 0.25), math.exp(-1.0 + 1.0)], dtype=F64)
    tol = 1e-8
    sol = neurode.solve_ivp(f, _tensor(1.0), t, method=method, rtol=tol, atol=tol,
                            options={"jump_t": _tensor(1.0)})
    err = float((sol.ys[:, 0] - exact).abs().max())
    assert err <= 10 * tol, err


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "dopri8", "bosh3"])
def test_jump_t_step_ending_at_the_jump_sees_the_left_limit(method):
    """A piecewise-constant RHS is integrated exactly by every RK method when the steps land on
    the jump and no stage of the step before it samples the right side. Then every error
    estimate is zero: no step may be rejected and the result is exact.

    Evaluating those stages at the jump itself would see the value after the jump, reject the
    step and make the controller crawl up to the jump (22 rejections, 77 steps for dopri5).
    """
    sol = neurode.solve_ivp(_piecewise_constant, _tensor(0.0), _tensor(0.0, 0.5, 1.0, 2.5),
                            method=method, rtol=1e-8, atol=1e-8,
                            options={"jump_t": _tensor(1.0)})
    torch.testing.assert_close(sol.ys[:, 0], _tensor(0.0, 0.5, 1.0, -2.0), rtol=0, atol=1e-13)
    assert sol.stats.n_rejected == 0, sol.stats
    assert sol.stats.n_accepted <= 12, sol.stats


# --- fixed grids ---------------------------------------------------------------------------------


def test_grid_constructor_sets_the_steps_exactly():
    grid = [0.0, 0.1, 0.3, 0.6, 1.0, 1.5, 2.0]

    def grid_constructor(func, y0, t):
        assert torch.equal(t, _tensor(0.0, 2.0))
        return torch.tensor(grid, dtype=F64)

    rec = Recorder(lambda t, y: -y)
    y = neurode.odeint(rec, _tensor(1.0), _tensor(0.0, 2.0), method="euler",
                       options={"grid_constructor": grid_constructor})
    assert [t for t, _ in rec.accepted] == grid[:-1]
    # Euler on y' = −y: y_N = Π (1 − h_i).
    expected = math.prod(1 - (b - a) for a, b in itertools.pairwise(grid))
    assert math.isclose(float(y[-1, 0]), expected, rel_tol=1e-15)


def test_step_size_grid_shortens_only_the_last_step():
    rec = Recorder(lambda t, y: -y)
    y = neurode.odeint(rec, _tensor(1.0), _tensor(0.0, 1.0), method="euler",
                       options={"step_size": 0.3})
    starts = [t for t, _ in rec.accepted]
    torch.testing.assert_close(torch.tensor(starts, dtype=F64), _tensor(0.0, 0.3, 0.6, 0.9),
                               rtol=0, atol=1e-15)
    assert math.isclose(rec.accepted[-1][0] + rec.accepted[-1][1], 1.0, abs_tol=1e-15)
    assert math.isclose(float(y[-1, 0]), 0.7**3 * 0.9, rel_tol=1e-14)


@pytest.mark.parametrize(("method", "extra"), [
    ("rk4", {}), ("rk4_classic", {}), ("heun3", {}), ("implicit_adams", {"max_order": 4}),
])
def test_cubic_interpolation_beats_linear_between_grid_points(method, extra):
    tq = torch.arange(0, 40, dtype=F64) * 0.25  # grid 0.5: odd entries are midpoints
    ex = spiral_exact(tq)
    out = {}
    for interp in ("linear", "cubic"):
        out[interp] = neurode.odeint(spiral, Z0, tq, method=method, rtol=1e-12, atol=1e-12,
                                     options={"step_size": 0.5, "interp": interp, **extra})
    # Same values on the grid ...
    assert torch.equal(out["linear"][0::2], out["cubic"][0::2])
    grid_err = float((out["cubic"][0::2] - ex[0::2]).abs().max())
    lin_err = float((out["linear"][1::2] - ex[1::2]).abs().max())
    cub_err = float((out["cubic"][1::2] - ex[1::2]).abs().max())
    # ... and between them linear interpolation adds h²|y''|/8 ≈ 0.03 while cubic Hermite adds
    # O(h⁴), leaving the method's own error (rk4: 0.019 vs 0.0014; heun3: 0.023 vs 0.013).
    assert cub_err < 0.7 * lin_err, (cub_err, lin_err)
    assert cub_err <= 1.5 * grid_err + 2e-3, (cub_err, grid_err)


def test_perturb_evaluates_just_after_and_just_before_grid_points():
    """A RHS jumping at a grid point (t = 1) is integrated exactly by rk4 (3/8 rule, which has a
    stage at c = 1) only if stages at grid points see the correct side of the jump."""
    t = _tensor(0.0, 2.0)
    opts = {"step_size": 0.25}
    rec = Recorder(_piecewise_constant)
    y = neurode.odeint(rec, _tensor(0.0), t, method="rk4", options={**opts, "perturb": True})
    assert math.isclose(float(y[-1, 0]), 1.0 - 2.0, abs_tol=1e-14)
    assert 1.0 not in rec.ts
    assert math.nextafter(1.0, 2.0) in rec.ts  # first stage of the step from 1
    assert math.nextafter(1.0, 0.0) in rec.ts  # last stage of the step to 1
    assert math.nextafter(0.0, 1.0) in rec.ts and 0.0 not in rec.ts

    rec = Recorder(_piecewise_constant)
    y = neurode.odeint(rec, _tensor(0.0), t, method="rk4", options=opts)
    assert 1.0 in rec.ts
    # Without perturb the c = 1 stage of the step [0.75, 1] sees −2 instead of 1:
    # an error of h · b₄ · 3 = 0.25 · 1/8 · 3.
    assert math.isclose(float(y[-1, 0]), -1.0 - 0.25 * 3 / 8, abs_tol=1e-14)


def test_perturb_in_decreasing_time_steps_to_the_correct_side():
    def f(t, y):  # jump at t = 1, integrated from 2 down to 0
        return torch.where(t > 1.0, torch.ones_like(y), -2.0 * torch.ones_like(y))

    rec = Recorder(f)
    y = neurode.odeint(rec, _tensor(0.0), _tensor(2.0, 0.0), method="rk4",
                       options={"step_size": 0.25, "perturb": True})
    # y(0) = y(2) − ∫_0^2 f = 0 − (1·1 + (−2)·1) = 1
    assert math.isclose(float(y[-1, 0]), 1.0, abs_tol=1e-14)
    assert 1.0 not in rec.ts


# --- min_step, max_step, first_step, norm --------------------------------------------------------


def test_max_step_bounds_every_step():
    rec = Recorder(spiral)
    sol = neurode.solve_ivp(rec, Z0, _tensor(0.0, 10.0), options={"max_step": 0.05},
                            method="dopri5")
    hs = [h for _, h in rec.steps]
    assert max(hs) <= 0.05 + 1e-15
    assert sol.stats.n_accepted >= 200
    assert float((sol.ys[-1] - spiral_exact(10.0)[0]).abs().max()) < 1e-8


def test_min_step_bounds_every_step_but_the_last_and_forces_acceptance():
    rec = Recorder(spiral)
    sol = neurode.solve_ivp(rec, Z0, _tensor(0.0, 10.3), method="dopri5",
                            options={"min_step": 0.5})
    hs = [h for _, h in rec.accepted]
    assert min(hs[:-1]) >= 0.5
    assert math.isclose(hs[-1], 0.3, abs_tol=1e-12)
    assert sol.stats.n_rejected == 0  # steps of min_step are accepted even if too inaccurate
    # dopri5 with h = 0.5 on this problem: error ~1e-5, far above the 1e-7 tolerance.
    err = float((sol.ys[-1] - spiral_exact(10.3)[0]).abs().max())
    assert 1e-7 < err < 1e-4


def test_first_step_is_the_first_attempted_step():
    rec = Recorder(spiral)
    neurode.solve_ivp(rec, Z0, _tensor(0.0, 1.0), options={"first_step": 0.0123})
    assert rec.steps[0] == (0.0, 0.0123)


def test_custom_norm_is_used_for_error_control():
    """Scaling the norm by c is the same as dividing both tolerances by c (the initial step
    heuristic uses the norm too), so the solves coincide."""
    t = torch.linspace(0, 10, 5, dtype=F64)
    calls = []

    def scaled(x):
        calls.append(1)
        return rms_norm(x) * 1e-3

    loose = neurode.solve_ivp(spiral, Z0, t, rtol=1e-4, atol=1e-4)
    tight_scaled = neurode.solve_ivp(spiral, Z0, t, rtol=1e-7, atol=1e-7,
                                     options={"norm": scaled})
    tight = neurode.solve_ivp(spiral, Z0, t, rtol=1e-7, atol=1e-7)
    assert len(calls) >= tight_scaled.stats.n_steps
    assert tight_scaled.stats == loose.stats
    assert tight.stats.n_steps > 2 * loose.stats.n_steps
    torch.testing.assert_close(tight_scaled.ys, loose.ys, rtol=0, atol=1e-12)


def test_custom_norm_receives_the_tuple_structure():
    seen = []

    def norm(parts):
        seen.append(tuple(p.shape for p in parts))
        return torch.stack([p.abs().max() for p in parts]).max()

    x0, v0 = torch.ones(2, 3, dtype=F64), torch.zeros(4, dtype=F64)

    def f(t, s):
        return -s[0], s[1] + 1

    xs, vs = neurode.odeint(f, (x0, v0), _tensor(0.0, 1.0), method="dopri5",
                            options={"norm": norm}, rtol=1e-9, atol=1e-9)
    assert seen and set(seen) == {((2, 3), (4,))}
    torch.testing.assert_close(xs[-1], torch.full((2, 3), math.exp(-1), dtype=F64), rtol=1e-8,
                               atol=0)
    torch.testing.assert_close(vs[-1], torch.full((4,), math.e - 1, dtype=F64), rtol=1e-8,
                               atol=0)


# the adaptive explicit methods of order >= 3 (the second-order ones need ~10^4 steps at 1e-9;
# the mechanism at fault, the outputs' emission, is shared by all)
_ADAPTIVE_EXPLICIT = sorted(n for n, s in neurode.METHODS.items()
                            if s.adaptive and s.per_sample and n != "auto" and s.order >= 3)


@pytest.mark.parametrize("decisions", ["host", "device", "per_sample"])
@pytest.mark.parametrize("method", _ADAPTIVE_EXPLICIT)
def test_last_output_is_written_when_the_step_end_rounds_below_it(method, decisions):
    """A bouncing ball's flight from one impact to the next: the last step lands on t[-1], but
    its start plus its size rounds to one unit below t[-1]. The output there was once left
    unwritten (NaN) while the solve reported success."""
    g, v0 = 9.81, 12.51982848241895
    t = torch.tensor([1.4278431229270654, 3.980305606600655], dtype=torch.float64)

    def f(t, y):
        return torch.stack([y[1], torch.full_like(y[1], -g)])

    s = float(t[1] - t[0])
    exact = torch.tensor([v0 * s - g * s * s / 2, v0 - g * s], dtype=torch.float64)
    if decisions == "per_sample":  # a batch of one: the per-sample loop's own output window
        def fb(t, y):
            return torch.stack([y[:, 1], torch.full_like(y[:, 1], -g)], 1)

        y0 = torch.tensor([[0.0, v0]], dtype=torch.float64)
        sol = neurode.solve_ivp(fb, y0, t, method=method, rtol=1e-9, atol=1e-9,
                                per_sample=True)
        assert int(sol.sample_status[0]) == 0
        last = sol.ys[-1, 0]
    else:
        y0 = torch.tensor([0.0, v0], dtype=torch.float64)
        sol = neurode.solve_ivp(f, y0, t, method=method, rtol=1e-9, atol=1e-9,
                                options={"decisions": decisions})
        assert sol.status == 0
        last = sol.ys[-1]
    assert torch.isfinite(sol.ys).all()
    torch.testing.assert_close(last, exact, rtol=0, atol=1e-6)
