"""Step decisions on the device: a joint solve asks the host once per ``sync_every`` steps, gives
the same solution as with host decisions, and compiles."""

from __future__ import annotations

import math

import pytest
import torch
from host_reads import HostReads

import neurode
from neurode.solvers.api import integrate
from neurode.solvers.problem import make_problem

F64 = torch.float64


def oscillator(t, y):
    return torch.stack([y[1], -y[0]])


@pytest.mark.parametrize("K", [1, 8, 32])
def test_a_joint_solve_of_500_steps_reads_the_host_once_per_sync_every_steps(K):
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    t = torch.linspace(0, 50, 101, dtype=F64)
    pb = make_problem(oscillator, y0, t, 1e-9, 1e-9, "dopri5", {"sync_every": K})
    with torch.no_grad(), HostReads() as reads:
        res = integrate(pb)
    steps = int(res.n_steps[0])
    assert res.ok() and steps >= 500
    # each window's read, plus a constant: the set-up's checks and a read per segment; the
    # windows shrink near the end (no step is attempted past it)
    assert reads.count <= math.ceil(steps / K) + 12, (reads.count, steps, K)
    assert res.host_syncs <= math.ceil(steps / K) + 6
    exact = torch.stack([torch.cos(t), -torch.sin(t)], 1)
    assert float((res.ys[:, 0] - exact).abs().max()) < 1e-6


def test_host_decisions_read_once_per_step():
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    t = torch.linspace(0, 50, 101, dtype=F64)
    pb = make_problem(oscillator, y0, t, 1e-9, 1e-9, "dopri5", {"decisions": "host"})
    with torch.no_grad(), HostReads() as reads:
        res = integrate(pb)
    assert reads.count >= int(res.n_steps[0])


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "dopri8", "fehlberg2", "alf"])
def test_device_and_host_decisions_take_the_same_steps(method):
    """Same controller, two scalar back ends: the same steps and outputs to rounding."""
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    t = torch.linspace(0, 6, 13, dtype=F64)
    kw = {"method": method, "rtol": 1e-6, "atol": 1e-8}
    host = neurode.solve_ivp(oscillator, y0, t, options={"decisions": "host"}, **kw)
    dev = neurode.solve_ivp(oscillator, y0, t, options={"decisions": "device", "sync_every": 4},
                            **kw)
    assert host.stats.n_steps == dev.stats.n_steps
    assert host.stats.n_rejected == dev.stats.n_rejected
    assert host.stats.nfe == dev.stats.nfe  # no step is attempted after the end
    assert float((host.ys - dev.ys).abs().max()) < 1e-12


def test_device_decisions_with_step_t_jump_t_and_events():
    def f(t, y):
        return torch.where(t < 0.4, -y, 2 * y)

    y0 = torch.ones(1, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    opts = {"step_t": [0.25], "jump_t": [0.4]}
    host = neurode.solve_ivp(f, y0, t, options={**opts, "decisions": "host"})
    dev = neurode.solve_ivp(f, y0, t, options={**opts, "decisions": "device"})
    exact = math.exp(-0.4) * math.exp(2 * 0.6)
    assert abs(float(dev.ys[-1, 0]) - exact) < 1e-6
    assert float((host.ys - dev.ys).abs().max()) < 1e-12
    for decisions in ("host", "device"):
        te, _ = neurode.odeint_event(lambda t, y: -y, y0, torch.tensor(0.0, dtype=F64),
                                     event_fn=lambda t, y: y[0] - 0.5,
                                     options={"decisions": decisions})
        assert abs(float(te) - math.log(2)) < 1e-7


def test_decisions_option_is_checked():
    y0 = torch.ones(1, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(neurode.InvalidInputError, match="decisions"):
        neurode.odeint(lambda t, y: -y, y0, t, options={"decisions": "gpu"})
    with pytest.raises(neurode.InvalidInputError, match="sync_every"):
        neurode.odeint(lambda t, y: -y, y0, t, options={"decisions": "host", "sync_every": 4})
    with pytest.raises(neurode.InvalidInputError, match="per-sample"):
        neurode.odeint(lambda t, y: -y, torch.ones(2, 1), torch.tensor([0.0, 1.0]),
                       options={"decisions": "host", "per_sample": True})


class CountingOscillator(torch.nn.Module):
    """The oscillator as a module that counts its calls, as torchdiffeq's examples do: an
    integer attribute that changes at every call must not recompile the compiled step."""

    def __init__(self):
        super().__init__()
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return torch.stack([y[..., 1], -y[..., 0]], -1)


@pytest.mark.parametrize("per_sample", [False, True], ids=["joint", "per_sample"])
def test_a_compiled_step_gives_the_solution_of_the_eager_one_in_one_graph(per_sample):
    import warnings

    y0 = torch.tensor([[1.0, 0.5], [0.3, -0.2]], dtype=F64)
    t = torch.linspace(0, 6, 13, dtype=F64)
    kw = {"rtol": 1e-8, "atol": 1e-10, "per_sample": per_sample}
    field = CountingOscillator()
    eager = neurode.solve_ivp(field, y0, t, options={"decisions": "device"}, **kw)
    eager_calls, field.nfe = field.nfe, 0
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="options.*compile")  # a graph break warns
        comp = neurode.solve_ivp(field, y0, t, options={"compile": True}, **kw)
    for name in ("n_steps", "nfe"):
        assert torch.equal(torch.as_tensor(getattr(comp.stats, name)),
                           torch.as_tensor(getattr(eager.stats, name))), name
    assert field.nfe == eager_calls  # the module's own count survives compilation
    assert float((comp.ys - eager.ys).abs().max()) < 1e-12


@pytest.mark.parametrize("mode", ["host", "device", "per_sample"])
def test_a_field_that_starts_using_parameters_midway_keeps_its_gradient(mode):
    # y' = -y up to t = 0.5 (nothing requires grad: stage buffers are reused), then y' = p·y:
    # y(1) = y0·exp(-0.5 + 0.5 p), so dy(1)/dp = 0.5·y(1). The loop must notice the first stage
    # value that requires grad and stop reusing buffers autograd now refers to.
    p = torch.tensor(0.8, dtype=F64, requires_grad=True)

    def f(t, y):
        return p * y if float(t.min()) > 0.5 else -y

    # (equal rows: in per-sample mode they take the same steps, so the host test on t holds)
    y0 = torch.tensor([[1.0], [1.0]], dtype=F64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    opts = {"per_sample": True} if mode == "per_sample" else {"decisions": mode}
    if mode == "device":
        opts["sync_every"] = 4
    y1 = neurode.odeint(f, y0, t, method="dopri5", rtol=1e-10, atol=1e-12, options=opts)[-1]
    (g,) = torch.autograd.grad(y1.sum(), p)
    exact = 0.5 * float(y1.detach().sum())
    assert abs(float(g) - exact) < 1e-7 * abs(exact)
