"""Every registered method × every feature: it works (checked against an exact solution) or
raises the named error the feature table of docs/guide/options.md lists for it — never
accepted and ignored.

The features are the shared parts of the two loops: terminal events, ``perturb``, the three step
callbacks, decreasing time, tuple states, float32 and float64, ``throw=False`` statuses; and for
the adaptive methods ``step_t``, ``jump_t``, ``min_step``/``max_step`` and per-sample mode.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import pytest
import torch

import neurode

F32, F64 = torch.float32, torch.float64
TABLE_PAGE = Path(__file__).resolve().parents[1] / "docs" / "guide" / "options.md"
NAMES = sorted({spec.name for spec in neurode.METHODS.values()})
ADAPTIVE = [n for n in NAMES if neurode.METHODS[n].adaptive]
H = 0.01  # fixed grids


def _unsupported() -> dict[tuple[str, str], str]:
    """(method, feature) -> the named exception or warning, from the docs' table."""
    text = TABLE_PAGE.read_text()
    start = text.index("<!-- feature-matrix -->")
    end = text.index("<!-- /feature-matrix -->")
    out = {}
    for line in text[start:end].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        methods = re.findall(r"`([^`]+)`", cells[0])
        features = re.findall(r"`([^`]+)`", cells[1])
        err = re.findall(r"`([^`]+)`", cells[2])[0]
        for m in methods:
            for f in features:
                out[(m, f)] = err
    return out


UNSUPPORTED = _unsupported()


def _expected(method: str, feature: str):
    """The exception/warning class the docs list for (method, feature), or None."""
    name = UNSUPPORTED.get((method, feature))
    if name is None and neurode.METHODS[method].adaptive:
        name = UNSUPPORTED.get(("adaptive", feature))
    if name is None and not neurode.METHODS[method].adaptive:
        name = UNSUPPORTED.get(("fixed", feature))
    if name is None:
        return None
    return getattr(neurode, name, None) or getattr(__builtins__, name, None) or \
        {"UserWarning": UserWarning}[name]


def _options(method: str, **extra) -> dict:
    spec = neurode.METHODS[method]
    o = {} if spec.adaptive else {"step_size": H}
    if method == "alf" and not extra.get("_fixed_alf"):
        o = {}
    extra.pop("_fixed_alf", None)
    return {**o, **extra}


def _tol(method: str, dtype) -> float:
    """What the solve below may miss the exact solution by."""
    spec = neurode.METHODS[method]
    if spec.adaptive:  # 100 × rtol: the global error of the low-order pairs accumulates
        return 1e-4 if dtype == F64 else 1e-2
    err = H ** spec.order  # a fixed grid's global error, O(h^p) with a modest constant
    return max(err, 1e-10 if dtype == F64 else 2e-5)


def _rtol(dtype) -> dict:
    return {"rtol": 1e-6, "atol": 1e-6} if dtype == F64 else {"rtol": 1e-4, "atol": 1e-5}


def _decay(t, y):
    return -y


def _run(method, fn, feature):
    """Call ``fn``; if the docs list (method, feature) as unsupported, expect its error."""
    exp = _expected(method, feature)
    if exp is None:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            return fn()
    if issubclass(exp, Warning):
        with pytest.warns(exp):
            fn()
        return None
    with pytest.raises(exp):
        fn()
    return None


# --- every method ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("method", NAMES)
def test_dtypes_and_reverse_time(method, dtype):
    y0 = torch.tensor([1.0, 2.0], dtype=dtype)
    for t in (torch.linspace(0, 1, 5, dtype=dtype), torch.linspace(1, 0, 5, dtype=dtype)):
        def solve(t=t):
            return neurode.odeint(_decay, y0, t, method=method, options=_options(method),
                                  **_rtol(dtype))
        ys = _run(method, solve, "float32" if dtype == F32 else "reverse time")
        if ys is None:
            continue
        assert ys.dtype == dtype and ys.shape == (5, 2)
        exact = y0 * torch.exp(-(t - t[0])).unsqueeze(1)
        err = float((ys - exact).abs().max() / exact.abs().max())
        assert err <= _tol(method, dtype), (method, dtype, err)


@pytest.mark.parametrize("method", NAMES)
def test_tuple_states(method):
    y0 = (torch.tensor(1.0, dtype=F64), torch.ones(2, 3, dtype=F64))
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=F64)  # on the fixed grids

    def f(t, s):
        return -s[0], -2 * s[1]

    ys = _run(method, lambda: neurode.odeint(f, y0, t, method=method, options=_options(method),
                                             **_rtol(F64)), "tuple states")
    if ys is None:
        return
    assert ys[0].shape == (4,) and ys[1].shape == (4, 2, 3)
    err = max(float((ys[0] - torch.exp(-t)).abs().max()),
              float((ys[1] - torch.exp(-2 * t).view(4, 1, 1)).abs().max()))
    assert err <= 3 * _tol(method, F64), (method, err)


@pytest.mark.parametrize("method", NAMES)
def test_terminal_events(method):
    """y' = −y from 1 until y = 1/2: t* = ln 2, and the state at the event is 1/2."""
    t0 = torch.tensor([0.0], dtype=F64)
    opts = _options(method, _fixed_alf=False)

    def solve():
        return neurode.odeint_event(_decay, torch.tensor([1.0], dtype=F64), t0[0],
                                    event_fn=lambda t, y: y[0] - 0.5, method=method,
                                    options=opts or None, **_rtol(F64))

    out = _run(method, solve, "events")
    if out is None:
        return
    t_ev, sol = out
    tol = max(_tol(method, F64), 1e-6)
    assert abs(float(t_ev) - math.log(2)) <= 4 * tol, (method, float(t_ev))
    assert abs(float(sol[-1, 0]) - 0.5) <= 4 * tol


def _oscillator(t, y):
    return torch.stack([y[1], -y[0]])


@pytest.mark.parametrize("method", NAMES)
def test_hybrid_events_directions_and_resets(method):
    """y0 = sin t on [0, 13]: rising zeros at 2π, 4π, falling at π, 3π, located to the method's
    tolerance; then a terminal event at the second falling zero after a reset that flips the
    velocity at the first (the mirror image: y0 = −sin(t − π) + … crosses again at 2π)."""
    y0 = torch.tensor([0.0, 1.0], dtype=F64)
    t = torch.tensor([0.0, 13.0], dtype=F64)
    opts = _options(method) or None
    tol = max(_tol(method, F64), 1e-6)
    spec = neurode.METHODS[method]
    if "newton" in spec.families and not spec.adaptive:
        # implicit fixed grids: each step is a Newton solve, and every segment is solved twice
        # (search, then the differentiable solve), so a 5x coarser grid keeps this test cheap;
        # the tolerance is that grid's O(h^p) error (cubic output between grid points, whose
        # O(h^4) error stays below it)
        opts = {"step_size": 5 * H, "interp": "cubic"}
        tol = max((5 * H) ** spec.order, 1e-6)
    if method == "fehlberg2":  # its global error is ~10³ × rtol (test_convergence.py explains)
        tol *= 30

    def solve(direction):
        return neurode.odeint_hybrid(_oscillator, y0, t, event_fn=lambda t, y: y[0],
                                     direction=direction, method=method, options=opts,
                                     **_rtol(F64))

    out = _run(method, lambda: solve(+1), "hybrid events")
    if out is None:
        return
    expected = {+1: [2 * math.pi, 4 * math.pi], -1: [math.pi, 3 * math.pi],
                0: [math.pi, 2 * math.pi, 3 * math.pi, 4 * math.pi]}
    for d, times in expected.items():
        sol = out if d == +1 else solve(d)
        got = [float(e.t.detach()) for e in sol.events]
        assert len(got) == len(times), (method, d, got)
        assert max(abs(a - b) for a, b in zip(got, times, strict=True)) <= 4 * tol, (method, d)
    # a reset at each falling zero, (y, v) -> (y, −v), sends the solution back up, so it falls
    # through 0 every π; a second, terminal function t − 10 ends the solve
    sol = neurode.odeint_hybrid(
        _oscillator, y0, torch.tensor([0.0, 5.0, 13.0], dtype=F64),
        event_fn=lambda t, y: torch.stack([y[0], t - 10.0]), direction=(-1, +1),
        terminal=(False, True), reset=lambda t, y, k: torch.stack([y[0], -y[1]]),
        method=method, options=opts, **_rtol(F64))
    got = [float(e.t.detach()) for e in sol.events]
    want = [math.pi, 2 * math.pi, 3 * math.pi, 10.0]
    assert [e.index for e in sol.events] == [0, 0, 0, 1] and sol.terminated, (method, got)
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 8 * tol, (method, got)
    # t = 5 lies on the second branch (π, 2π), where y = −sin t; t = 13 holds the end state
    assert abs(float(sol.ys[1, 0]) + math.sin(5.0)) <= 8 * tol
    assert torch.equal(sol.ys[2], sol.events[-1].y)


class _Grid(torch.nn.Module):
    """dy/dt = 1, except exactly at the grid points t = k·h, where it is 0: a defect that only
    evaluations *at* grid points see, as at a discontinuity."""

    def __init__(self, dtype):
        super().__init__()
        self.points = {float(torch.tensor(k * H, dtype=dtype)) for k in range(0, 101)}

    def forward(self, t, y):
        return torch.zeros_like(y) if float(t) in self.points else torch.ones_like(y)


@pytest.mark.parametrize("method", NAMES)
def test_perturb_evaluates_inside_the_steps(method):
    y0 = torch.zeros(1, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    opts = _options(method, perturb=True)
    ys = _run(method, lambda: neurode.odeint(_Grid(F64), y0, t, method=method, options=opts),
              "perturb")
    if ys is None:
        return
    assert abs(float(ys[-1, 0]) - 1.0) < 1e-10, (method, float(ys[-1, 0]))


@pytest.mark.parametrize("method", ["euler", "rk4", "explicit_adams", "implicit_euler"])
def test_without_perturb_the_grid_point_defect_is_seen(method):
    """The check above can fail: methods that evaluate at grid points see the defect."""
    plain = neurode.odeint(_Grid(F64), torch.zeros(1, dtype=F64),
                           torch.tensor([0.0, 1.0], dtype=F64), method=method,
                           options=_options(method))
    assert abs(float(plain[-1, 0]) - 1.0) > 1e-3


class _Counting(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = {"step": 0, "accept": 0, "reject": 0}

    def forward(self, t, y):
        return -y * (1 + 5 * torch.sin(20 * t) ** 2)  # uneven, so adaptive methods reject

    def callback_step(self, t, y, dt):
        assert t.ndim == 0 and dt.ndim == 0 and y.shape == (2,)
        self.calls["step"] += 1

    def callback_accept_step(self, t, y, dt):
        self.calls["accept"] += 1

    def callback_reject_step(self, t, y, dt):
        self.calls["reject"] += 1


@pytest.mark.parametrize("method", NAMES)
def test_step_callbacks_match_the_statistics(method):
    f = _Counting()
    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    opts = _options(method, first_step=0.5) if neurode.METHODS[method].adaptive and \
        method != "scipy_solver" else _options(method)

    def solve():
        return neurode.solve_ivp(f, y0, t, method=method, options=opts, rtol=1e-6, atol=1e-6)

    exp = _expected(method, "callbacks")
    if exp is not None:  # the method never calls some callback: it says so
        with pytest.warns(exp, match="never be called"):
            sol = solve()
    else:
        sol = solve()
    s = sol.stats
    if method == "scipy_solver":
        assert f.calls == {"step": 0, "accept": 0, "reject": 0}
        return
    assert f.calls["step"] == s.n_steps
    assert f.calls["accept"] == s.n_accepted
    assert f.calls["reject"] == s.n_rejected
    if neurode.METHODS[method].adaptive:
        assert s.n_rejected > 0  # the reject callback was really exercised


@pytest.mark.parametrize("method", NAMES)
def test_throw_false_reports_a_failure_status(method):
    """y' = y², y(0) = 1 blows up at t = 1: a failure status, a message, NaN after it."""
    t = torch.tensor([0.0, 0.5, 2.0], dtype=F64)
    sol = neurode.solve_ivp(lambda t, y: y * y, torch.ones(1, dtype=F64), t, method=method,
                            options=_options(method), throw=False, rtol=1e-5, atol=1e-5)
    assert sol.status < 0 and not sol.success
    assert sol.message and sol.message != "success"
    assert abs(float(sol.ys[1, 0]) - 2.0) < 0.05  # y(0.5) = 2 (Euler's O(h) error: 0.03)
    assert torch.isnan(sol.ys[2]).all() or not torch.isfinite(sol.ys[2]).all()
    with pytest.raises(neurode.SolverError):
        neurode.odeint(lambda t, y: y * y, torch.ones(1, dtype=F64), t, method=method,
                       options=_options(method), rtol=1e-5, atol=1e-5)


# --- adaptive methods --------------------------------------------------------------------------


class _Ends(torch.nn.Module):
    """Records where accepted steps end."""

    def __init__(self, f):
        super().__init__()
        self.f = f
        self.ends: list[float] = []
        self.sizes: list[float] = []

    def forward(self, t, y):
        return self.f(t, y)

    def callback_accept_step(self, t, y, dt):
        self.ends.append(float(t + dt))
        self.sizes.append(abs(float(dt)))


@pytest.mark.parametrize("method", ADAPTIVE)
def test_step_t_makes_steps_land_on_those_times(method):
    f = _Ends(_decay)
    stops = [0.123, 0.5, 0.77]

    def solve():
        return neurode.odeint(f, torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
                              method=method, options={"step_t": stops}, rtol=1e-5, atol=1e-5)

    ys = _run(method, solve, "step_t")
    if ys is None:
        return
    for s in stops:
        assert s in f.ends, (method, s)
    assert abs(float(ys[-1, 0]) - math.exp(-1)) < 1e-3


@pytest.mark.parametrize("method", ADAPTIVE)
def test_jump_t_integrates_a_discontinuous_field(method):
    """y' = −1 before t = 0.4, +2 after: y(1) = 1 − 0.4 + 1.2 exactly for a solve that lands on
    the jump and sees its left limit before and its right limit after."""
    def f(t, y):
        return torch.where(t < 0.4, -torch.ones_like(y), 2 * torch.ones_like(y))

    def solve():
        return neurode.odeint(f, torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
                              method=method, options={"jump_t": [0.4]}, rtol=1e-6, atol=1e-6)

    ys = _run(method, solve, "jump_t")
    if ys is None:
        return
    assert abs(float(ys[-1, 0]) - 1.8) < 1e-9, (method, float(ys[-1, 0]))


@pytest.mark.parametrize("method", ADAPTIVE)
def test_min_and_max_step_bound_the_steps(method):
    f = _Ends(_decay) if method != "scipy_solver" else _decay  # SciPy calls no callbacks

    def solve():
        return neurode.odeint(f, torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
                              method=method, options={"max_step": 0.05, "min_step": 0.01},
                              rtol=1e-6, atol=1e-6)

    ys = _run(method, solve, "min_step/max_step")
    if ys is None:
        return
    if method != "scipy_solver":  # SciPy takes its own steps (no callbacks)
        assert max(f.sizes) <= 0.05 + 1e-15
        assert min(f.sizes[:-1]) >= 0.01 - 1e-15
        assert len(f.sizes) >= 20
    assert abs(float(ys[-1, 0]) - math.exp(-1)) < 1e-4


@pytest.mark.parametrize("method", ADAPTIVE)
def test_per_sample_mode_equals_each_sample_alone(method):
    k = torch.tensor([0.5, 1.0, 3.0, 8.0], dtype=F64)
    y0 = torch.ones(4, 1, dtype=F64)
    t = torch.linspace(0, 1, 6, dtype=F64)

    def f(tt, y):
        return -k.unsqueeze(1) * y

    tol = 1e-6 if (neurode.METHODS[method].order or 5) >= 3 else 1e-4  # 2nd order: many steps
    opts = {"max_outputs_per_step": 8}  # no step shortened to bound the outputs it covers

    def solve():
        return neurode.solve_ivp(f, y0, t, method=method, per_sample=True, rtol=tol, atol=tol,
                                 options=opts)

    sol = _run(method, solve, "per-sample")
    if sol is None:
        return
    exact = torch.exp(-k.unsqueeze(0) * t.unsqueeze(1)).unsqueeze(-1)
    # (fehlberg2's first-order estimate lets its global error reach ~140 × tol here, alone too)
    assert float((sol.ys - exact).abs().max()) < 200 * tol
    for b in range(4):  # the same steps as the sample solved alone
        alone = neurode.solve_ivp(lambda tt, y, kb=float(k[b]): -kb * y, y0[b], t,
                                  method=method, rtol=tol, atol=tol)
        assert int(sol.stats.n_steps[b]) == alone.stats.n_steps, (method, b)
    steps = sol.stats.n_steps
    assert steps.shape == (4,) and bool(steps[-1] > steps[0])  # each sample its own steps
