"""Per-sample stepping: every sample of a batch with its own steps, the host asked rarely."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from host_reads import HostReads

import neurode
from neurode.solvers.api import integrate
from neurode.solvers.problem import make_problem

F64 = torch.float64


def _vdp_batch(mu: Tensor):  # noqa: F821 - annotation only
    def f(t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, mu * (1 - x**2) * v - x], -1)

    return f


def _vdp_one(mu: float):
    return lambda t, y: torch.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])


MUS = torch.tensor([0.3, 1.0, 4.0, 12.0], dtype=F64)


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "dopri8", "fehlberg2",
                                    "adaptive_heun"])
def test_per_sample_equals_solving_each_sample_alone(method):
    y0 = torch.tensor([[2.0, 0.0], [1.0, 1.0], [-0.5, 2.0], [2.0, -1.0]], dtype=F64)
    ts = torch.linspace(0, 4, 17, dtype=F64)
    # a window as long as the output grid: steps are never shortened to bound the outputs per
    # step, so each sample takes exactly the steps it takes alone
    sol = neurode.solve_ivp(_vdp_batch(MUS), y0, ts, method=method, rtol=1e-6, atol=1e-8,
                            per_sample=True, options={"max_outputs_per_step": 16})
    assert sol.status == 0 and sol.ys.shape == (17, 4, 2)
    for b in range(4):
        alone = neurode.solve_ivp(_vdp_one(float(MUS[b])), y0[b], ts, method=method, rtol=1e-6,
                                  atol=1e-8)
        assert int(sol.stats.n_steps[b]) == alone.stats.n_steps
        assert int(sol.stats.n_rejected[b]) == alone.stats.n_rejected
        diff = (sol.ys[:, b] - alone.ys).abs().max().item()
        if diff > 1e-10:
            # rounding (the batch sums a stage's terms in another order), amplified through the
            # step sequence: on the stiff sample a low-order method turns a 1-ulp change of y0
            # into ~1e-6. The difference must be of that size and far below the solution error.
            y0p = y0[b] * (1 + 2.0**-52)
            spread = (neurode.solve_ivp(_vdp_one(float(MUS[b])), y0p, ts, method=method,
                                        rtol=1e-6, atol=1e-8).ys - alone.ys).abs().max().item()
            ref = neurode.odeint(_vdp_one(float(MUS[b])), y0[b], ts, method="dopri8",
                                 rtol=1e-12, atol=1e-12)
            assert diff <= 20 * spread, (method, diff, spread)
            assert diff <= 0.1 * (alone.ys - ref).abs().max().item(), (method, diff)
    assert torch.equal(sol.ys[0], y0)


def test_per_sample_times_may_differ_per_sample_and_run_backwards():
    A = torch.tensor([[-0.1, -1.0], [1.0, -0.1]], dtype=F64)
    y0 = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]], dtype=F64)
    t = torch.stack([torch.linspace(0, 3, 6, dtype=F64), torch.linspace(1, 2, 6, dtype=F64),
                     torch.linspace(-2, 5, 6, dtype=F64)])
    sol = neurode.solve_ivp(lambda t, y: y @ A.T, y0, t, rtol=1e-10, atol=1e-12,
                            per_sample=True)
    for b in range(3):
        for k in range(6):
            exact = torch.linalg.matrix_exp(A * (t[b, k] - t[b, 0])) @ y0[b]
            assert torch.allclose(sol.ys[k, b], exact, atol=1e-8)
    back = neurode.solve_ivp(lambda t, y: y @ A.T, y0, t.flip(1), rtol=1e-10, atol=1e-12,
                             per_sample=True)
    for b in range(3):
        exact = torch.linalg.matrix_exp(A * (t[b, 0] - t[b, -1])) @ y0[b]
        assert torch.allclose(back.ys[-1, b], exact, atol=1e-8)


def test_func_sees_each_samples_own_time():
    # dy/dt = cos(t) per sample from different starts: y(t) = y0 + sin(t) − sin(t0)
    t = torch.stack([torch.linspace(0, 1, 5, dtype=F64), torch.linspace(3, 7, 5, dtype=F64)])
    seen = []

    def f(tt, y):
        seen.append(tt.shape)
        return torch.cos(tt).unsqueeze(1).expand_as(y)

    y = neurode.odeint(f, torch.zeros(2, 1, dtype=F64), t, rtol=1e-10, atol=1e-12,
                       options={"per_sample": True})
    exact = (torch.sin(t) - torch.sin(t[:, :1])).T.unsqueeze(-1)
    assert torch.allclose(y, exact, atol=1e-8)
    assert all(s == (2,) for s in seen)


def test_gradients_through_the_per_sample_solve_match_each_sample_alone():
    mu = MUS.clone().requires_grad_(True)
    y0 = torch.tensor([[2.0, 0.0], [1.0, 1.0], [-0.5, 2.0], [2.0, -1.0]], dtype=F64,
                      requires_grad=True)
    ts = torch.linspace(0, 3, 7, dtype=F64)
    w = torch.linspace(-1, 1, 7 * 4 * 2, dtype=F64).reshape(7, 4, 2)
    y = neurode.odeint(_vdp_batch(mu), y0, ts, rtol=1e-9, atol=1e-9,
                       options={"per_sample": True})
    g_y0, g_mu = torch.autograd.grad((w * y).sum(), (y0, mu))
    for b in range(4):
        mb = mu[b].detach().clone().requires_grad_(True)
        yb0 = y0[b].detach().clone().requires_grad_(True)
        yb = neurode.odeint(lambda t, y, mb=mb: torch.stack([y[1], mb * (1 - y[0] ** 2) * y[1]
                                                               - y[0]]),
                            yb0, ts, rtol=1e-9, atol=1e-9)
        gb_y0, gb_mu = torch.autograd.grad((w[:, b] * yb).sum(), (yb0, mb))
        assert torch.allclose(g_y0[b], gb_y0, rtol=1e-8, atol=1e-10)
        assert torch.allclose(g_mu[b], gb_mu, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("sync_every", [1, 8, 32])
def test_host_conversions_at_most_one_per_sync_every_steps(sync_every):
    y0 = torch.tensor([[2.0, 0.0]] * 4, dtype=torch.float32)
    ts = torch.linspace(0, 6, 50)
    f = _vdp_batch(MUS.float())
    with HostReads() as hc:
        r = integrate(make_problem(f, y0, ts, 1e-5, 1e-5, "dopri5",
                                   {"sync_every": sync_every}, per_sample=True))
    assert (r.status == 0).all()
    assert r.iterations > 50
    # the loop's checks, plus a constant number at set-up (validating t)
    loop_checks = math.ceil(r.iterations / sync_every)
    assert r.host_syncs == loop_checks
    assert hc.count <= loop_checks + 4, (hc.count, r.iterations)
    if sync_every == 1:
        assert hc.count >= r.iterations  # the counter does see the per-step check


def test_heterogeneous_batch_takes_fewer_steps_per_sample_within_tolerance():
    integrate = pytest.importorskip("scipy.integrate")
    B = 12
    mu = torch.logspace(math.log10(0.1), math.log10(50.0), B, dtype=F64)
    y0 = torch.tensor([[2.0, 0.0]] * B, dtype=F64)
    ts = torch.linspace(0, 10, 41, dtype=F64)
    rtol = atol = 1e-6
    joint = neurode.solve_ivp(_vdp_batch(mu), y0, ts, rtol=rtol, atol=atol)
    per = neurode.solve_ivp(_vdp_batch(mu), y0, ts, rtol=rtol, atol=atol, per_sample=True)
    steps_per_sample = per.stats.n_steps.double().mean().item()
    assert joint.stats.n_steps >= 2 * steps_per_sample, (joint.stats.n_steps, steps_per_sample)
    worst = 0.0
    for b in range(B):
        m = float(mu[b])
        ref = integrate.solve_ivp(lambda t, y, m=m: [y[1], m * (1 - y[0] ** 2) * y[1] - y[0]],
                                  (0, 10), [2.0, 0.0], method="Radau", rtol=1e-12, atol=1e-12,
                                  t_eval=ts.numpy()).y.T
        err = np.abs(per.ys[:, b].numpy() - ref) / (atol + rtol * np.abs(ref))
        worst = max(worst, float(err.max()))
    # global error at local tolerance 1e-6 over ~10 relaxation phases: within a small multiple
    assert worst <= 50.0, worst


def test_failing_samples_report_their_own_status_and_leave_the_others_alone():
    y0 = torch.tensor([[1.0], [1.0], [1.0]], dtype=F64)
    rate = torch.tensor([1.0, 2.0, 1.0], dtype=F64)

    def f(t, y):  # sample 1 blows up: y' = 4y² from 1 reaches infinity at t = 0.25
        out = -rate.unsqueeze(1) * y
        return torch.where(torch.tensor([False, True, False]).unsqueeze(1), 4 * y**2, out)

    sol = neurode.solve_ivp(f, y0, torch.linspace(0, 1, 5, dtype=F64), per_sample=True,
                            throw=False)
    assert sol.sample_status[0] == 0 and sol.sample_status[2] == 0
    assert sol.sample_status[1] < 0 and sol.status < 0 and "sample 1" in sol.message
    assert torch.allclose(sol.ys[-1, 0], torch.exp(torch.tensor([-1.0], dtype=F64)), atol=1e-6)
    assert torch.isnan(sol.ys[-1, 1]).all()
    with pytest.raises(neurode.SolverError, match="sample 1"):
        neurode.solve_ivp(f, y0, torch.linspace(0, 1, 5, dtype=F64), per_sample=True)


@pytest.mark.parametrize("per_sample", [True, False])
def test_nan_at_min_step_fails_as_non_finite_instead_of_being_accepted(per_sample):
    # past t = 0.5 the field is NaN; min_step forbids the steps that could approach it
    def f(t, y):  # t is (B,) per sample, 0-d jointly
        late = (t > 0.5).reshape(-1, 1) if t.ndim else t > 0.5
        return torch.where(late, torch.full_like(y, math.nan), -y)

    y0 = torch.ones(3, 1, dtype=F64)
    sol = neurode.solve_ivp(f, y0, torch.linspace(0, 1, 3, dtype=F64), per_sample=per_sample,
                            throw=False, options={"min_step": 1e-3, "max_num_steps": 10_000})
    assert sol.status == -3, sol.message
    assert sol.stats.n_steps.max() < 200 if per_sample else sol.stats.n_steps < 200
    if per_sample:
        assert (sol.sample_status == -3).all()


def test_func_output_of_the_wrong_dtype_is_a_func_output_error():
    with pytest.raises(neurode.FuncOutputError, match="dtype"):
        neurode.odeint(lambda t, y: (-y).float(), torch.ones(2, 1, dtype=F64),
                       torch.linspace(0, 1, 3, dtype=F64), options={"per_sample": True})


def test_a_step_cut_short_to_land_on_an_output_does_not_shrink_the_next_step():
    # with one output per step, the step from 5 to 5 + 1e-6 lands short; the next keeps its
    # planned size instead of regrowing from 1e-6 (the joint loop's rule: 56 steps either way)
    A = torch.tensor([[-0.1, -1.0], [1.0, -0.1]], dtype=F64)
    y0 = torch.tensor([[1.0, 0.0]], dtype=F64)

    def steps(ts):
        sol = neurode.solve_ivp(lambda t, y: y @ A.T, y0, torch.tensor(ts, dtype=F64),
                                per_sample=True, rtol=1e-6, atol=1e-8,
                                options={"max_outputs_per_step": 1})
        return int(sol.stats.n_steps[0])

    assert steps([0.0, 5.0, 5.0 + 1e-6, 10.0]) <= steps([0.0, 5.0, 10.0]) + 2  # 63 without


def test_max_num_steps_counts_each_samples_own_steps():
    y0 = torch.tensor([[2.0, 0.0]] * 4, dtype=F64)
    t = torch.linspace(0, 10, 5, dtype=F64)
    free = neurode.solve_ivp(_vdp_batch(MUS), y0, t, per_sample=True)
    cap = int(free.stats.n_steps.sort().values[1]) + 1  # above the two easiest samples' needs
    sol = neurode.solve_ivp(_vdp_batch(MUS), y0, t, per_sample=True, throw=False,
                            options={"max_num_steps": cap})
    assert "max_num_steps" in sol.message
    # samples that need fewer steps than the cap finish exactly as without it; the others stop
    # at the cap, counted in their own steps (not in iterations of the batch)
    easy = free.stats.n_steps < cap
    assert torch.equal(sol.sample_status == 0, easy)
    assert torch.equal(sol.stats.n_steps[~easy], torch.full_like(sol.stats.n_steps[~easy], cap))
    assert torch.equal(sol.ys[:, easy], free.ys[:, easy])
    with pytest.raises(neurode.MaxStepsReachedError):
        neurode.odeint(_vdp_batch(MUS), y0, torch.linspace(0, 10, 5, dtype=F64),
                       options={"per_sample": True, "max_num_steps": 40})


@pytest.mark.parametrize("kwargs, needle", [
    (dict(t=torch.zeros(3, 4)), "one row per sample"),
    (dict(t=torch.tensor([[0.0, 1.0, 0.5]] * 4)), "strictly increasing"),
    (dict(method="rk4"), "adaptive explicit"),
    (dict(method="radau"), "adaptive explicit"),
    (dict(options={"per_sample": True, "sync_every": 0}), "sync_every"),
    (dict(y0=(torch.zeros(4, 2), torch.zeros(3, 2))), "same batch size"),
    (dict(options={"max_outputs_per_step": 2}), "per-sample solving only"),
    # the options shared with the joint loop are checked by the same code
    (dict(options={"per_sample": True, "first_step": 0.0}), "first_step"),
    (dict(options={"per_sample": True, "min_step": 0.5, "max_step": 0.1}), "exceeds max_step"),
    (dict(options={"per_sample": True, "ifactor": 0.5}), "ifactor"),
])
def test_bad_per_sample_input_is_named(kwargs, needle):
    args = dict(y0=torch.zeros(4, 2), t=torch.linspace(0, 1, 3), method="dopri5",
                options={"per_sample": True})
    args.update(kwargs)
    with pytest.raises(neurode.InvalidInputError, match=needle):
        neurode.odeint(lambda t, y: -y, args["y0"], args["t"], method=args["method"],
                       options=args["options"])


def test_per_sample_needs_no_dense_flag_and_says_so():
    with pytest.raises(neurode.InvalidInputError, match="dense"):
        neurode.solve_ivp(lambda t, y: -y, torch.zeros(2, 1), torch.linspace(0, 1, 3),
                          per_sample=True, dense=True)


def test_compiled_step_gives_the_same_solution():
    y0 = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=F64)
    ts = torch.linspace(0, 2, 9, dtype=F64)
    f = _vdp_batch(MUS[:2])
    eager = neurode.solve_ivp(f, y0, ts, rtol=1e-8, atol=1e-10, per_sample=True)
    comp = neurode.solve_ivp(f, y0, ts, rtol=1e-8, atol=1e-10, per_sample=True,
                             options={"compile": True})
    assert torch.allclose(eager.ys, comp.ys, rtol=1e-6, atol=1e-8)
    assert torch.equal(eager.stats.n_steps, comp.stats.n_steps)


# --- the per-sample adjoint ---------------------------------------------------------------------


class _Field(torch.nn.Module):
    """A damped, time-forced MLP field with one per-sample parameter ``k`` (B,)."""

    def __init__(self, B):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(),
                                       torch.nn.Linear(16, 2)).to(F64)
        for p in self.net.parameters():
            p.data = torch.randn(p.shape, generator=g, dtype=F64) * 0.5
        self.k = torch.nn.Parameter(torch.linspace(0.2, 1.5, B, dtype=F64))
        self.shapes = []

    def forward(self, t, y):
        self.shapes.append(tuple(y.shape))
        rot = torch.stack([y[:, 1], -y[:, 0]], 1)
        return rot - self.k.unsqueeze(1) * y + self.net(y) * torch.cos(t).unsqueeze(1)


@pytest.mark.parametrize("shared_times", [True, False])
def test_per_sample_adjoint_matches_backprop(shared_times):
    B = 4
    field = _Field(B)
    y0 = torch.tensor([[1.0, 0.0], [0.5, -1.0], [-1.0, 2.0], [0.0, 0.3]], dtype=F64,
                      requires_grad=True)
    if shared_times:
        t = torch.linspace(0, 3, 7, dtype=F64)
    else:
        t = torch.stack([torch.linspace(0.4 * b, 2.0 + b, 6, dtype=F64) for b in range(B)])
    w = torch.randn(t.shape[-1], B, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    params = (y0, *field.parameters())
    opts = {"per_sample": True}
    y = neurode.odeint(field, y0, t, rtol=1e-10, atol=1e-10, options=opts)
    g_bp = torch.autograd.grad((w * y).sum(), params)
    field.shapes.clear()
    y_adj = neurode.odeint_adjoint(field, y0, t, rtol=1e-10, atol=1e-10, options=opts)
    n_forward_calls = len(field.shapes)
    g_adj = torch.autograd.grad((w * y_adj).sum(), params)
    assert torch.allclose(y_adj, y, atol=1e-12)
    for a, b in zip(g_adj, g_bp, strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-8), (a - b).abs().max()
    # one joint adjoint system: every backward evaluation is of the whole batch
    assert len(field.shapes) > n_forward_calls
    assert set(field.shapes) == {(B, 2)}


def test_per_sample_adjoint_with_one_output_time_is_the_identity():
    y0 = torch.randn(3, 2, dtype=F64, requires_grad=True)
    y = neurode.odeint_adjoint(_Field(3), y0, torch.zeros(1, dtype=F64),
                               options={"per_sample": True})
    (g,) = torch.autograd.grad(y.sum(), y0)
    assert torch.equal(g, torch.ones_like(y0))


def test_per_sample_adjoint_without_grad_raises_on_failed_samples():
    def f(t, y):  # y' = y², from 1: infinite at t = 1
        return y * y

    with torch.no_grad(), pytest.raises(neurode.SolverError, match="samples failed"):
        neurode.odeint_adjoint(f, torch.ones(2, 1, dtype=F64),
                               torch.linspace(0, 2, 3, dtype=F64), options={"per_sample": True},
                               adjoint_params=())


def test_per_sample_adjoint_rejects_an_adjoint_method():
    # (time gradients are supported: tests/test_drop_in.py)
    field = _Field(2)
    y0 = torch.zeros(2, 2, dtype=F64, requires_grad=True)
    t = torch.linspace(0, 1, 3, dtype=F64)
    with pytest.raises(neurode.InvalidInputError, match="adjoint_method"):
        neurode.odeint_adjoint(field, y0, t, options={"per_sample": True},
                               adjoint_method="rk4")
