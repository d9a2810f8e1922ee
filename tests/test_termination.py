"""No setting makes a loop run for ever: each of these ends within seconds with a named error
(or, where the problem is well posed, a correct answer), joint and per sample."""

from __future__ import annotations

import contextlib
import math
import signal

import pytest
import torch

import neurode

F64 = torch.float64


@contextlib.contextmanager
def time_limit(seconds: float):
    """Fail the test (instead of hanging) if the body runs longer than ``seconds``."""
    def stop(signum, frame):
        raise TimeoutError(f"did not finish within {seconds} s")

    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def decay(t, y):
    return -y


MODES = [pytest.param(False, id="joint"), pytest.param(True, id="per-sample")]


def _solve(per_sample: bool, y0=None, t=None, **kw):
    y0 = torch.ones(3, 1, dtype=F64) if y0 is None else y0
    t = torch.linspace(0, 1, 3, dtype=F64) if t is None else t
    return neurode.solve_ivp(decay, y0, t, per_sample=per_sample, **kw)


@pytest.mark.parametrize("per_sample", MODES)
@pytest.mark.parametrize(("kw", "pattern"), [
    ({"rtol": 0.0, "atol": 0.0}, "rtol and atol are both 0"),
    ({"options": {"max_step": 0.0}}, "max_step"),
    ({"options": {"max_step": math.nan}}, "max_step"),
    ({"options": {"first_step": math.nan}}, "first_step"),
    ({"options": {"min_step": math.nan}}, "min_step"),
    ({"options": {"first_step": math.inf}}, "first_step"),
    ({"options": {"max_num_steps": 0}}, "max_num_steps"),
    ({"options": {"sync_every": 0}}, "sync_every"),
    ({"options": {"safety": math.nan}}, "safety"),
    ({"options": {"pcoeff": -1.0, "icoeff": 0.5}}, "pcoeff"),
])
def test_settings_that_could_stall_a_loop_are_refused(per_sample, kw, pattern):
    with time_limit(5), pytest.raises(neurode.InvalidInputError, match=pattern):
        _solve(per_sample, **kw)


@pytest.mark.parametrize("per_sample", MODES)
def test_a_zero_length_step_at_a_huge_time_is_a_named_failure(per_sample):
    """t0 = 1e15 (ulp 0.125) with min_step = 1e-3: a step pinned at min_step cannot advance t.
    It must fail as a step-size underflow, not be accepted for ever."""
    t = torch.tensor([1e15, 1e15 + 10.0], dtype=F64)
    with time_limit(10), pytest.raises(neurode.StepSizeTooSmallError):
        _solve(per_sample, t=t, rtol=1e-13, atol=1e-13,
               options={"min_step": 1e-3, "max_step": 1e-3})


@pytest.mark.parametrize("per_sample", MODES)
def test_steps_well_above_the_time_resolution_far_from_zero_solve(per_sample):
    """At t = 1e15 (ulp 0.125) steps of tens of units are fine."""
    t = torch.tensor([1e15, 1e15 + 1024.0], dtype=F64)
    with time_limit(10):
        sol = neurode.solve_ivp(lambda t, y: -y / 256, torch.ones(3, 1, dtype=F64), t,
                                per_sample=per_sample, rtol=1e-6, atol=1e-6)
    assert torch.allclose(sol.ys[-1].reshape(-1), torch.full((3,), math.exp(-4.0), dtype=F64),
                          rtol=1e-4)


@pytest.mark.parametrize("per_sample", MODES)
def test_max_num_steps_stops_every_row_within_its_own_count(per_sample):
    with time_limit(10):
        sol = _solve(per_sample, t=torch.tensor([0.0, 1e6], dtype=F64), throw=False,
                     options={"max_num_steps": 50, "max_step": 1.0})
    assert sol.status == -1
    n = sol.stats.n_steps
    assert (torch.as_tensor(n) == 50).all()


@pytest.mark.parametrize("per_sample", MODES)
def test_a_nan_field_fails_as_non_finite_within_seconds(per_sample):
    def f(t, y):
        return torch.full_like(y, math.nan)

    with time_limit(10), pytest.raises(neurode.NonFiniteStateError):
        neurode.solve_ivp(f, torch.ones(3, 1, dtype=F64), torch.linspace(0, 1, 3, dtype=F64),
                          per_sample=per_sample)


@pytest.mark.parametrize("per_sample", MODES)
def test_a_nan_after_some_time_fails_as_non_finite_even_with_min_step(per_sample):
    def f(t, y):
        tt = t.reshape(-1, 1) if t.ndim else t
        return torch.where(tt < 0.5, -y, torch.full_like(y, math.nan))

    with time_limit(10), pytest.raises(neurode.NonFiniteStateError):
        neurode.solve_ivp(f, torch.ones(3, 1, dtype=F64), torch.linspace(0, 1, 3, dtype=F64),
                          per_sample=per_sample, options={"min_step": 1e-4})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_states_end_with_a_named_error_or_an_accurate_answer(dtype):
    with time_limit(10):
        try:
            ys = neurode.odeint(decay, torch.ones(2, dtype=dtype),
                                torch.linspace(0, 1, 3, dtype=dtype))
        except (neurode.SolverError, neurode.InvalidInputError):
            return
    assert abs(float(ys[-1, 0]) - math.exp(-1)) < 1e-2


def test_a_slow_problem_far_from_t0_gets_a_first_step_it_can_take():
    """dy/dt = −1e-12·y on [1e12, 2e12] (y(2e12) = e^-1): the initial-step heuristic's absolute
    fallback (1e-6) is below the time resolution there (2e-4); scaled by |t0| it is not."""
    t = torch.tensor([1e12, 2e12], dtype=F64)
    with time_limit(10):
        sol = neurode.solve_ivp(lambda t, y: -1e-12 * y, torch.ones(1, dtype=F64), t)
    assert abs(float(sol.ys[-1, 0]) - math.exp(-1)) < 1e-6
    assert sol.stats.n_steps < 100
    with time_limit(10):  # per sample too
        sol = neurode.solve_ivp(lambda t, y: -1e-12 * y, torch.ones(2, 1, dtype=F64), t,
                                per_sample=True)
    assert torch.allclose(sol.ys[-1], torch.full((2, 1), math.exp(-1), dtype=F64), rtol=1e-6)


@pytest.mark.parametrize("method", ["euler", "rk4", "implicit_euler", "explicit_adams"])
def test_an_event_that_never_fires_on_a_fixed_grid_ends(method):
    with time_limit(30), pytest.raises(neurode.MaxStepsReachedError):
        neurode.odeint_event(decay, torch.ones(1, dtype=F64), torch.tensor(0.0, dtype=F64),
                             event_fn=lambda t, y: y[0] + 1.0, method=method,
                             options={"step_size": 0.1, "max_num_steps": 1000})


@pytest.mark.parametrize(("method", "error", "match"), [
    ("dopri5", neurode.MaxStepsReachedError, "without an event"),
    ("alf", neurode.MaxStepsReachedError, "without an event"),
    ("scipy_solver", neurode.SolverError, "no event"),  # LSODA reaches its bound, 1e300
])
def test_an_event_that_never_fires_on_an_adaptive_solve_ends(method, error, match):
    """y' = −y settles at the tolerance's noise level with a constant step (dopri5 at its
    stability limit): without a cap the search for y = −1 would go on for ever."""
    with time_limit(30), pytest.raises(error, match=match):
        neurode.odeint_event(decay, torch.ones(1, dtype=F64), torch.tensor(0.0, dtype=F64),
                             event_fn=lambda t, y: y[0] + 1.0, method=method,
                             options={"max_num_steps": 2000})


def test_an_event_search_whose_time_overflows_says_so():
    with time_limit(30), pytest.raises(neurode.SolverError, match="overflowed"):
        neurode.odeint_event(decay, torch.ones(1, dtype=F64), torch.tensor(0.0, dtype=F64),
                             event_fn=lambda t, y: y[0] + 1.0, method="radau")
