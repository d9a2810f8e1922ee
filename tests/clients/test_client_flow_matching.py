"""Meta's flow_matching (``flow_matching.solver.ODESolver``) on torchdiffeq and on neurode.

``flow_matching/solver/ode_solver.py`` does ``from torchdiffeq import odeint`` (its only use of
torchdiffeq; no other module of the package imports it) and calls ``odeint(f, x, time_grid,
method=..., options={"step_size": h} or {}, atol=..., rtol=...)``; ``compute_likelihood`` solves a
tuple state ``(x, log_det)``, from t=1 back to t=0. Everything runs in float64 but the tests of the
client's float32 defaults.

Tolerances: a fixed-step solve takes the same steps in both libraries, so outputs and gradients
agree to rounding (``ROUNDING`` x max|y|). An adaptive solve chooses its own steps: the outputs
must agree to ``ADAPTIVE_SLACK`` x (atol + rtol max|y|) where torchdiffeq itself is that accurate
(dopri5), and in every adaptive case neurode's error against a far tighter solve (torchdiffeq's
dopri8 at rtol 1e-12 through the same client) must be at most twice torchdiffeq's or
``ADAPTIVE_SLACK`` x tolerance — the gradients of the discrete adaptive solve too, which no
tolerance controls directly.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

# flow_matching imports torchdiffeq in flow_matching.solver (the package itself imports nothing).
ODESolver = pytest.importorskip("flow_matching.solver").ODESolver
ModelWrapper = pytest.importorskip("flow_matching.utils").ModelWrapper

PKG = "flow_matching"
ROUNDING = 1e-12
ADAPTIVE_SLACK = 10.0
RTOL, ATOL = 1e-7, 1e-9
EXACT = {"method": "dopri8", "rtol": 1e-12, "atol": 1e-14}


class Velocity(ModelWrapper):
    """A small time-dependent MLP velocity u_t(x), as a flow-matching model would be."""

    def __init__(self, dim: int = 3, hidden: int = 16):
        torch.manual_seed(1)
        net = torch.nn.Sequential(torch.nn.Linear(dim + 1, hidden), torch.nn.Tanh(),
                                  torch.nn.Linear(hidden, dim)).double()
        super().__init__(net)

    def forward(self, x: torch.Tensor, t: torch.Tensor, **extras) -> torch.Tensor:
        tt = t.reshape(1, 1).expand(x.shape[0], 1).to(x.dtype)
        return self.model(torch.cat([x, tt], dim=1))


def x_init(batch: int = 4, dim: int = 3) -> torch.Tensor:
    return torch.randn(batch, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2))


def grid(*times: float) -> torch.Tensor:
    return torch.tensor(times, dtype=torch.float64)


def sample_with_grads(method: str, step_size: float | None, time_grid: torch.Tensor,
                      return_intermediates: bool, rtol: float = RTOL, atol: float = ATOL):
    """sample(enable_grad=True), then backward through the solve to x_init and the model."""

    def fn():
        model = Velocity()
        x0 = x_init().requires_grad_()
        out = ODESolver(velocity_model=model).sample(
            x_init=x0, step_size=step_size, method=method, atol=atol, rtol=rtol,
            time_grid=time_grid, return_intermediates=return_intermediates, enable_grad=True)
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        loss = (out * weights).sum() + (out**2).sum()
        grads = torch.autograd.grad(loss, [x0, *model.parameters()])
        return [out.detach(), *grads]

    return fn


def names(n_grads: int) -> list[str]:
    return ["output", "grad x_init"] + [f"grad param {i}" for i in range(n_grads - 2)]


FIXED = [("euler", 0.05), ("midpoint", 0.1), ("rk4", 0.1), ("heun3", 0.1)]


@pytest.mark.parametrize(("method", "step_size"), FIXED)
def test_sample_fixed_step_final(twice, method, step_size):
    ref, new = twice.run(sample_with_grads(method, step_size, grid(0.0, 1.0), False), PKG)
    assert twice.neurode_calls == {"odeint": 1}
    assert twice.rebound == {"flow_matching.solver.ode_solver.odeint"}
    assert new[0].shape == (4, 3)
    for what, n, t in zip(names(len(ref)), new, ref, strict=True):
        twice.close(what, n, t, rtol=ROUNDING, atol=0)


@pytest.mark.parametrize(("method", "step_size"), [("euler", 0.05), ("midpoint", 0.1)])
def test_sample_fixed_step_intermediates_off_grid(twice, method, step_size):
    # 0.33 and 0.75 fall between steps: both libraries interpolate linearly there.
    fn = sample_with_grads(method, step_size, grid(0.0, 0.33, 0.75, 1.0), True)
    ref, new = twice.run(fn, PKG)
    assert new[0].shape == (4, 4, 3)
    for what, n, t in zip(names(len(ref)), new, ref, strict=True):
        twice.close(what, n, t, rtol=ROUNDING, atol=0)


ADAPTIVE = [
    # method, time grid, return_intermediates, rtol = atol (None: RTOL, ATOL)
    ("dopri5", grid(0.0, 0.25, 0.5, 0.75, 1.0), True, None),
    ("dopri5", grid(1.0, 0.0), False, 1e-5),  # flow_matching's default tolerances, reversed
    ("bosh3", grid(0.0, 1.0), False, None),
]


@pytest.mark.parametrize(("method", "time_grid", "intermediates", "tol"), ADAPTIVE)
def test_sample_adaptive(twice, method, time_grid, intermediates, tol):
    rtol, atol = (RTOL, ATOL) if tol is None else (tol, tol)
    ref, new = twice.run(sample_with_grads(method, None, time_grid, intermediates, rtol, atol),
                         PKG)
    exact = sample_with_grads(EXACT["method"], None, time_grid, intermediates,
                              EXACT["rtol"], EXACT["atol"])()
    assert new[0].shape == ((len(time_grid), 4, 3) if intermediates else (4, 3))
    if method == "dopri5":  # torchdiffeq's bosh3 is ~100x its tolerance off: no direct bound
        twice.close("output", new[0], ref[0], rtol=ADAPTIVE_SLACK * rtol,
                    atol=ADAPTIVE_SLACK * atol)
    for what, n, t, e in zip(names(len(ref)), new, ref, exact, strict=True):
        twice.accurate(what, n, t, e, rtol=rtol, atol=atol, slack=ADAPTIVE_SLACK)


def test_sample_float32_client_defaults(twice):
    # The client's defaults: euler, float32 time grid [0, 1], enable_grad=False.
    def fn():
        model = Velocity().float()
        out = ODESolver(velocity_model=model).sample(x_init=x_init().float(), step_size=0.125)
        assert not out.requires_grad and out.dtype == torch.float32
        return out

    ref, new = twice.run(fn, PKG)
    twice.close("output", new, ref, rtol=1e-6, atol=0)


def log_p0(x: torch.Tensor) -> torch.Tensor:
    """Standard normal log-density, summed over the feature dimension."""
    return -0.5 * (x**2).sum(dim=1) - 0.5 * x.shape[1] * math.log(2 * math.pi)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """compute_likelihood makes its log_det zeros and Hutchinson signs in the default dtype."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def likelihood(method: str, step_size: float | None, exact_divergence: bool,
               rtol: float = RTOL, atol: float = ATOL, dtype: torch.dtype = torch.float64,
               time_grid: torch.Tensor | None = None):
    def fn():
        torch.manual_seed(3)  # the Hutchinson estimator draws its projection by randn_like
        model = Velocity().to(dtype)
        x1 = x_init().to(dtype).requires_grad_()
        sol, log_p = ODESolver(velocity_model=model).compute_likelihood(
            x_1=x1, log_p0=log_p0, step_size=step_size, method=method, atol=atol, rtol=rtol,
            time_grid=grid(1.0, 0.5, 0.0) if time_grid is None else time_grid,
            return_intermediates=True, exact_divergence=exact_divergence, enable_grad=True)
        # The dynamics return detached values, so the gradient reaches x_1 only through the
        # solver's own arithmetic (y0 + h sum b k) and the source log-density.
        (grad,) = torch.autograd.grad(log_p.sum() + sol[-1].sum(), [x1])
        return [sol.detach(), log_p.detach(), grad]

    return fn


LIKELIHOOD = [("euler", 0.05, True), ("midpoint", 0.1, False), ("dopri5", None, True),
              ("dopri5", None, False)]
WHAT = ["x at time_grid", "log likelihood", "grad x_1"]


@pytest.mark.parametrize(("method", "step_size", "exact_divergence"), LIKELIHOOD)
def test_compute_likelihood(twice, method, step_size, exact_divergence):
    # float64 default dtype: the client's log_det zeros and Hutchinson signs follow x_1's dtype.
    with default_dtype(torch.float64):
        ref, new = twice.run(likelihood(method, step_size, exact_divergence), PKG)
        if step_size is None:
            exact = likelihood(EXACT["method"], None, exact_divergence, EXACT["rtol"],
                               EXACT["atol"])()
    assert new[0].shape == (3, 4, 3) and new[1].shape == (4,)
    if step_size is not None:
        for w, n, t in zip(WHAT, new, ref, strict=True):
            twice.close(w, n, t, rtol=ROUNDING, atol=0)
        return
    for w, n, t, e in zip(WHAT, new, ref, exact, strict=True):
        twice.close(w, n, t, rtol=ADAPTIVE_SLACK * RTOL, atol=ADAPTIVE_SLACK * ATOL)
        twice.accurate(w, n, t, e, rtol=RTOL, atol=ATOL, slack=ADAPTIVE_SLACK)


def test_compute_likelihood_float32_client_defaults(twice):
    # Hutchinson estimator, euler, float32 model and data, the client's float32 grid [1, 0].
    fn = likelihood("euler", 0.1, False, dtype=torch.float32, time_grid=torch.tensor([1.0, 0.0]))
    ref, new = twice.run(fn, PKG)
    for w, n, t in zip(WHAT, new, ref, strict=True):
        twice.close(w, n, t, rtol=1e-6, atol=0)


# a tuple y0 of mixed dtypes (float64 x_1, float32 log-det zeros) is solved in float64, as
# torchdiffeq's concatenation does
def test_compute_likelihood_float64_data_float32_default_dtype(twice):
    ref, new = twice.run(likelihood("euler", 0.05, True), PKG)
    assert ref[1].dtype == torch.float64
    for w, n, t in zip(WHAT, new, ref, strict=True):
        twice.close(w, n, t, rtol=ROUNDING, atol=0)
