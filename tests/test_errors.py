"""Bad inputs and failed integrations raise the right neurode exception, with a message that
names the problem (and, for failures, where it happened)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import neurode

F64 = torch.float64
Y0 = torch.tensor([1.0], dtype=F64)
T01 = torch.tensor([0.0, 1.0], dtype=F64)


def _t(*xs):
    return torch.tensor(xs, dtype=F64)


def decay(t, y):
    return -y


def square(t, y):
    return y**2  # y(0) = 1: y = 1 / (1 − t), singular at t = 1


def nan_after_half(t, y):
    return torch.full_like(y, math.nan) if float(t) > 0.5 else -y


# --- the exception hierarchy -----------------------------------------------------------------


def test_exception_hierarchy_lets_callers_catch_builtin_types():
    assert issubclass(neurode.InvalidInputError, ValueError)
    assert issubclass(neurode.UnknownMethodError, neurode.InvalidInputError)
    assert issubclass(neurode.UnknownOptionError, neurode.InvalidInputError)
    assert issubclass(neurode.FuncOutputError, ValueError)
    for cls in (neurode.NonFiniteStateError, neurode.StepSizeTooSmallError,
                neurode.MaxStepsReachedError):
        assert issubclass(cls, neurode.SolverError)
        assert issubclass(cls, RuntimeError)
    for cls in (neurode.InvalidInputError, neurode.FuncOutputError, neurode.SolverError):
        assert issubclass(cls, neurode.NeurodeError)


def test_input_errors_are_catchable_as_value_error():
    with pytest.raises(ValueError, match="strictly increasing"):
        neurode.odeint(decay, Y0, _t(0.0, 1.0, 0.5))
    with pytest.raises(ValueError, match="unknown method"):
        neurode.odeint(decay, Y0, T01, method="nope")
    with pytest.raises(ValueError, match="shape"):
        neurode.odeint(lambda t, y: torch.zeros(2, dtype=F64), Y0, T01)


def test_solver_errors_are_catchable_as_runtime_error():
    with pytest.raises(RuntimeError, match="max_num_steps"):
        neurode.odeint(decay, Y0, _t(0.0, 100.0), method="dopri5",
                       options={"max_num_steps": 5})


# --- times -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("t", "pattern"), [
    (_t(0.0, 1.0, 0.5), r"t\[1\]=1.0 and t\[2\]=0.5 are not monotone"),
    (_t(0.0, -1.0, -0.5), r"t\[1\]=-1.0 and t\[2\]=-0.5 are not monotone"),
    (_t(0.0, 1.0, 1.0, 2.0), r"t\[1\]=1.0 and t\[2\]=1.0 are repeated"),
    (_t(0.0, 0.0), r"repeated"),
    (_t(0.0, 1.0).reshape(1, 2), r"t must be 1-D .*shape \(1, 2\)"),
    (torch.zeros(2, 2, dtype=F64), r"t must be 1-D"),
    (_t(), r"t is empty"),
    (_t(0.0, math.nan), r"t contains NaN"),
    (_t(0.0, math.inf), r"t contains NaN or inf"),
    (torch.tensor([0.0, 1.0], dtype=torch.complex128), r"t must be real"),
])
def test_bad_times_raise_invalid_input_naming_the_problem(t, pattern):
    with pytest.raises(neurode.InvalidInputError, match=pattern):
        neurode.odeint(decay, Y0, t)
    with pytest.raises(neurode.InvalidInputError, match=pattern):
        neurode.solve_ivp(decay, Y0, t, method="rk4")


# --- initial state ---------------------------------------------------------------------------


@pytest.mark.parametrize(("y0", "pattern"), [
    (torch.tensor([1, 2]), r"y0 must be floating point or complex.*torch\.int64"),
    (torch.tensor([True]), r"y0 must be floating point or complex.*torch\.bool"),
    ((torch.tensor([1.0]), torch.tensor([1])), r"y0\[1\] must be floating point"),
    (1.0, r"y0 must be a Tensor or a tuple of Tensors, got float"),
    (np.array([1.0]), r"y0 must be a Tensor or a tuple of Tensors, got ndarray"),
    ([1.0, 2.0], r"y0 must be a Tensor or a tuple of Tensors; got a tuple containing float"),
    ((), r"y0 is an empty tuple"),
    # (a tuple of mixed dtypes is promoted, as torchdiffeq does: tests/test_drop_in.py)
    ((torch.ones(1, dtype=F64), torch.ones(1, dtype=torch.int64)),
     r"y0\[1\] must be floating point or complex"),
])
def test_bad_initial_state_raises_invalid_input_naming_the_problem(y0, pattern):
    with pytest.raises(neurode.InvalidInputError, match=pattern):
        neurode.odeint(decay, y0, T01)


def test_non_callable_func_is_rejected():
    with pytest.raises(neurode.InvalidInputError, match="func must be callable"):
        neurode.odeint(torch.ones(1), Y0, T01)


# --- the vector field's output -----------------------------------------------------------------


@pytest.mark.parametrize(("method", "options"), [
    ("dopri5", None), ("rk4", {"step_size": 0.1}), ("explicit_adams", {"step_size": 0.1}),
])
@pytest.mark.parametrize(("func", "pattern"), [
    (lambda t, y: torch.zeros(3, dtype=F64), r"func returned shape \(3,\) for y0 of shape \(1,\)"),
    (lambda t, y: y.float(), r"func returned dtype torch.float32 for y0 of dtype torch.float64"),
    (lambda t, y: 1.0, r"func must return a Tensor like y0, got float"),
    (lambda t, y: y.numpy(), r"func must return a Tensor like y0, got ndarray"),
    (lambda t, y: (y,), r"func must return a Tensor like y0, got tuple"),
])
def test_bad_func_output_raises_func_output_error(func, pattern, method, options):
    with pytest.raises(neurode.FuncOutputError, match=pattern):
        neurode.odeint(func, Y0, T01, method=method, options=options)


@pytest.mark.parametrize(("func", "pattern"), [
    (lambda t, s: s[0], r"func must return a tuple of 2 Tensors matching y0, got Tensor"),
    (lambda t, s: (s[0],), r"func must return a tuple of 2 Tensors.*of length 1"),
    (lambda t, s: (s[0], s[0]), r"func returned shape \(1,\) for y0\[1\] of shape \(2,\)"),
    # a narrower component is promoted (as torchdiffeq's concatenation); a wider one is an error
    (lambda t, s: (s[0], s[1].to(torch.complex128)),
     r"func returned dtype torch.complex128 for y0\[1\]"),
])
def test_bad_func_output_for_tuple_state_names_the_component(func, pattern):
    y0 = (torch.ones(1, dtype=F64), torch.ones(2, dtype=F64))
    with pytest.raises(neurode.FuncOutputError, match=pattern):
        neurode.odeint(func, y0, T01)


def test_real_derivative_for_complex_state_is_a_dtype_error():
    y0 = torch.ones(1, dtype=torch.complex128)
    with pytest.raises(neurode.FuncOutputError, match=r"dtype torch\.float64 for y0 of dtype "
                                                      r"torch\.complex128"):
        neurode.odeint(lambda t, y: y.real, y0, T01)


# --- method and options ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["rk45", "Dopri5", "", 5])
def test_unknown_method_lists_valid_methods(method):
    with pytest.raises(neurode.UnknownMethodError) as info:
        neurode.odeint(decay, Y0, T01, method=method)
    msg = str(info.value)
    assert f"unknown method {method!r}" in msg
    for name in ("dopri5", "tsit5", "dopri8", "rk4", "euler", "implicit_adams"):
        assert name in msg


def test_unknown_option_names_it_and_lists_valid_options():
    with pytest.raises(neurode.UnknownOptionError) as info:
        neurode.odeint(decay, Y0, T01, method="dopri5", options={"stepsize": 0.1, "rtol": 1})
    msg = str(info.value)
    assert "'rtol', 'stepsize'" in msg and "'dopri5'" in msg
    for name in ("first_step", "max_num_steps", "step_t", "jump_t", "norm"):
        assert name in msg


def test_fixed_grid_option_is_unknown_to_adaptive_method_and_vice_versa():
    with pytest.raises(neurode.UnknownOptionError, match=r"'step_size'.*valid options are:.*"
                                                         r"first_step"):
        neurode.odeint(decay, Y0, T01, method="dopri5", options={"step_size": 0.1})
    with pytest.raises(neurode.UnknownOptionError, match=r"'first_step'.*valid options are:.*"
                                                         r"step_size"):
        neurode.odeint(decay, Y0, T01, method="rk4", options={"first_step": 0.1})
    with pytest.raises(neurode.UnknownOptionError, match="'max_iters'"):
        neurode.odeint(decay, Y0, T01, method="explicit_adams", options={"max_iters": 2})


def test_options_without_method_go_to_dopri5_as_in_torchdiffeq():
    with_options = neurode.solve_ivp(decay, Y0, T01, method="dopri5", options={"first_step": 0.1})
    ys = neurode.odeint(decay, Y0, T01, options={"first_step": 0.1})
    assert torch.equal(ys, with_options.ys)
    with pytest.raises(neurode.UnknownOptionError, match="method 'dopri5'"):
        neurode.odeint(decay, Y0, T01, options={"step_size": 0.1})


@pytest.mark.parametrize(("kw", "pattern"), [
    ({"rtol": -1e-3}, r"rtol must be a non-negative number, got -0.001"),
    ({"atol": -1e-9}, r"atol must be a non-negative number"),
    ({"rtol": math.nan}, r"rtol must be a non-negative number, got nan"),
    ({"rtol": "tight"}, r"rtol must be a number or a tensor, got str"),
    ({"rtol": torch.tensor([1e-3, -1e-3], dtype=F64)}, r"rtol must be non-negative"),
    ({"atol": torch.ones(3, dtype=F64)}, r"atol of shape \(3,\) does not broadcast"),
])
def test_bad_tolerances_are_rejected(kw, pattern):
    with pytest.raises(neurode.InvalidInputError, match=pattern):
        neurode.odeint(decay, torch.ones(2, dtype=F64), T01, **kw)


@pytest.mark.parametrize(("method", "options", "pattern"), [
    ("rk4", {"step_size": 0.0}, r"step_size'\] must be > 0"),
    ("rk4", {"step_size": -0.1}, r"step_size'\] must be > 0"),
    ("rk4", {"interp": "quadratic"}, r"interp'\] must be 'linear' or 'cubic'"),
    ("rk4", {"step_size": 0.1, "grid_constructor": lambda f, y, t: t},
     "step_size or grid_constructor, not both"),
    ("euler", {"grid_constructor": lambda f, y, t: _t(0.0, 0.5)}, r"grid from t\[0\]"),
    ("euler", {"grid_constructor": lambda f, y, t: _t(0.0, 0.6, 0.4, 1.0)}, "strictly increasing"),
    ("dopri5", {"min_step": 1.0, "max_step": 0.1}, "min_step=1.0 exceeds max_step=0.1"),
    ("dopri5", {"safety": 1.5}, r"safety'\] must be in \(0, 1\]"),
    ("dopri5", {"first_step": 0.0}, r"first_step'\] must be non-zero"),
    ("dopri5", {"step_t": _t(0.5, math.nan)}, r"step_t'\] contains NaN"),
    ("dopri5", {"norm": "max"}, r"norm'\] must be callable"),
    ("explicit_adams", {"max_order": 0}, r"max_order'\] must be ≥ 1"),
])
def test_bad_option_values_are_rejected(method, options, pattern):
    with pytest.raises(neurode.InvalidInputError, match=pattern):
        neurode.odeint(decay, Y0, T01, method=method, options=options)


# --- non-finite states -----------------------------------------------------------------------


@pytest.mark.parametrize(("method", "options"), [
    ("euler", {"step_size": 0.01}), ("rk4", {"step_size": 0.01}),
    ("explicit_adams", {"step_size": 0.01}), ("implicit_adams", {"step_size": 0.01}),
])
def test_blow_up_with_fixed_method_raises_non_finite_naming_the_output_time(method, options):
    t = torch.linspace(0, 3, 31, dtype=F64)
    with pytest.raises(neurode.NonFiniteStateError) as info:
        neurode.odeint(square, Y0, t, method=method, options=options)
    e = info.value
    # The first non-finite output comes soon after the singularity at t = 1.
    assert 1.0 < e.t <= 1.5
    assert f"t={e.t:.6g}" in str(e)
    assert "non-finite" in str(e)


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_nan_from_func_with_fixed_method_names_the_grid_step_where_it_appeared(method):
    t = torch.linspace(0, 1, 11, dtype=F64)
    with pytest.raises(neurode.NonFiniteStateError, match=r"from t=0\.5 to t=0\.51") as info:
        neurode.odeint(nan_after_half, Y0, t, method=method, options={"step_size": 0.01})
    assert math.isclose(info.value.t, 0.5)


@pytest.mark.parametrize("method", ["euler", "rk4", "explicit_adams"])
def test_nan_from_func_with_fixed_method_is_located_within_a_grid_step(method):
    """Only the end time is requested: the error still says the NaN appeared near t = 0.5."""
    with pytest.raises(neurode.NonFiniteStateError) as info:
        neurode.odeint(nan_after_half, Y0, T01, method=method, options={"step_size": 0.01})
    assert 0.5 <= info.value.t <= 0.52, str(info.value)


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "dopri8", "bosh3"])
def test_nan_from_func_with_adaptive_method_raises_non_finite_state(method):
    """func returns NaN for t > 0.5: NonFiniteStateError (the documented meaning: "NaN or inf
    appeared in the state or in the vector field's value"), located at t ≈ 0.5.

    The loop rejects steps with a NaN error ratio and shrinks towards t = 0.5; when the step
    underflows it must blame the NaN, not stiffness.
    """
    with pytest.raises(neurode.NonFiniteStateError) as info:
        neurode.odeint(nan_after_half, Y0, T01, method=method)
    assert math.isclose(info.value.t, 0.5, abs_tol=1e-6)
    assert re.search(r"t=0\.5\b", str(info.value))


@pytest.mark.parametrize(("method", "options"), [
    ("dopri5", None), ("dopri8", None), ("rk4", {"step_size": 0.1}),
])
def test_nan_in_y0_raises_non_finite_state(method, options):
    """NaN in y0 is reported at the initial time, not as a step-size underflow (h = 0)."""
    with pytest.raises(neurode.NonFiniteStateError, match="t=0"):
        neurode.odeint(decay, torch.tensor([1.0, math.nan], dtype=F64), T01, method=method,
                       options=options)


def test_nan_in_state_from_first_step_of_adaptive_method_raises_non_finite_state():
    """y0 is finite but f(t0, y0) is not: the state can never be advanced."""
    with pytest.raises(neurode.SolverError, match="t=0") as info:
        neurode.odeint(lambda t, y: torch.log(y - 2.0), Y0, T01)
    assert isinstance(info.value, neurode.NonFiniteStateError), type(info.value).__name__


# --- step size underflow and max_num_steps ---------------------------------------------------


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "dopri8"])
def test_blow_up_with_tight_tolerance_raises_step_size_too_small(method):
    with pytest.raises(neurode.StepSizeTooSmallError) as info:
        neurode.odeint(square, Y0, _t(0.0, 2.0), method=method, rtol=1e-10, atol=1e-10)
    e = info.value
    assert math.isclose(e.t, 1.0, abs_tol=1e-6)
    assert 0 < e.dt < 1e-12
    msg = str(e)
    assert "step size underflow" in msg
    assert re.search(r"dt=\d\.\d{3}e-1\d", msg)
    assert "at t=1" in msg


def test_underflow_in_decreasing_time_reports_user_time():
    """y' = −y², y(0) = 1 backwards: y = 1 / (1 + t), singular at t = −1."""
    with pytest.raises(neurode.StepSizeTooSmallError, match="at t=-1") as info:
        neurode.odeint(lambda t, y: -(y**2), Y0, _t(0.0, -2.0), rtol=1e-10, atol=1e-10)
    # t and dt are the user's time (not the internal forward time s = −t).
    assert math.isclose(info.value.t, -1.0, abs_tol=1e-6), info.value.t
    assert info.value.dt < 0


@pytest.mark.parametrize("method", ["dopri5", "dopri8", "bosh3"])
def test_max_num_steps_reached_says_how_many_and_where(method):
    with pytest.raises(neurode.MaxStepsReachedError) as info:
        neurode.odeint(decay, Y0, _t(0.0, 100.0), method=method, options={"max_num_steps": 10})
    e = info.value
    msg = str(e)
    assert "max_num_steps=10 reached" in msg
    assert "before t=100" in msg
    assert 0.0 < e.t < 100.0
    assert f"at t={e.t:.6g}" in msg


def test_max_num_steps_in_decreasing_time_reports_user_time():
    with pytest.raises(neurode.MaxStepsReachedError) as info:
        neurode.odeint(decay, Y0, _t(0.0, -100.0), method="dopri5",
                       options={"max_num_steps": 10})
    e = info.value
    assert "before t=-100" in str(e)
    assert re.search(r"at t=-\d", str(e))
    assert -100.0 < e.t < 0.0, e.t


# --- solve_ivp(throw=False) --------------------------------------------------------------------


def test_failed_solve_without_throw_returns_partial_rows_and_status():
    t = _t(0.0, 0.5, 0.9, 1.5, 2.0)
    sol = neurode.solve_ivp(square, Y0, t, throw=False, rtol=1e-10, atol=1e-10)
    assert sol.status == -2 and not sol.success
    assert "step size underflow" in sol.message and "t=1" in sol.message
    assert sol.ys.shape == (5, 1)
    torch.testing.assert_close(sol.ys[:3, 0], 1.0 / (1.0 - t[:3]), rtol=1e-8, atol=0)
    assert torch.isnan(sol.ys[3:]).all()
    assert sol.stats.n_steps > 0


def test_max_steps_without_throw_returns_status_minus_one():
    t = torch.linspace(0, 100, 5, dtype=F64)
    sol = neurode.solve_ivp(decay, Y0, t, options={"max_num_steps": 10}, throw=False)
    assert sol.status == -1 and not sol.success
    assert "max_num_steps=10" in sol.message
    assert torch.equal(sol.ys[0], Y0)
    assert torch.isnan(sol.ys[1:]).all()
    assert sol.stats.n_steps == 10


def test_tuple_state_failure_without_throw_pads_every_component_with_nan():
    y0 = (torch.ones(2, dtype=F64), torch.ones(3, dtype=F64))
    sol = neurode.solve_ivp(lambda t, s: (s[0] ** 2, -s[1]), y0, _t(0.0, 0.5, 2.0), throw=False,
                            rtol=1e-10, atol=1e-10)
    assert sol.status == -2
    xs, vs = sol.ys
    assert xs.shape == (3, 2) and vs.shape == (3, 3)
    torch.testing.assert_close(xs[1], torch.full((2,), 2.0, dtype=F64), rtol=1e-8, atol=0)
    torch.testing.assert_close(vs[1], torch.full((3,), math.exp(-0.5), dtype=F64), rtol=1e-8,
                               atol=0)
    assert torch.isnan(xs[2]).all() and torch.isnan(vs[2]).all()


@pytest.mark.parametrize(("method", "options"), [
    ("rk4", {"step_size": 0.01}), ("euler", {"step_size": 0.01}),
    ("explicit_adams", {"step_size": 0.01}),
])
def test_fixed_method_non_finite_without_throw_reports_failure(method, options):
    """With throw=False a fixed-grid solve that produced inf/NaN reports status -3."""
    t = torch.linspace(0, 3, 7, dtype=F64)
    sol = neurode.solve_ivp(square, Y0, t, method=method, options=options, throw=False)
    assert not torch.isfinite(sol.ys[-1]).all()
    assert sol.status == -3, (sol.status, sol.message)
    assert not sol.success
    assert "non-finite" in sol.message


def test_successful_solve_reports_success():
    sol = neurode.solve_ivp(decay, Y0, T01)
    assert sol.status == 0 and sol.success and sol.message == "success"
    assert math.isclose(float(sol.ys[-1, 0]), math.exp(-1), rel_tol=1e-7)


@pytest.mark.parametrize("method", ["dopri5", "alf"])
def test_steps_pinned_at_min_step_terminate_when_an_output_time_rounds_above_it(method):
    """first_step = min_step = max_step and an output time that is not a float multiple of the
    step: the last step before the output is min_step plus a rounding error and must still be
    accepted (it cannot shrink), rather than rejected for ever."""
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    opts = {"first_step": 0.05, "min_step": 0.05, "max_step": 0.05, "max_num_steps": 1000}
    sol = neurode.solve_ivp(lambda t, y: y * (1 - y), torch.tensor(0.2, dtype=torch.float64),
                            t, method=method, options=opts)
    assert sol.status == 0
    assert sol.stats.n_accepted == 20
    exact = 1 / (1 + 4 * math.exp(-1.0))
    assert abs(float(sol.ys[-1]) - exact) < 1e-3
