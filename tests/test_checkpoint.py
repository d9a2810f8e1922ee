"""The checkpointed adjoint (``neurode.odeint_checkpoint``, ACA): the gradient of the discrete
solve, recomputed step by step in reverse.

It must equal backprop through ``neurode.odeint`` to rounding (≤ 1e-12 relative in float64) for
every explicit Runge–Kutta method, adaptive and fixed-grid, whatever the tolerance: unlike the
continuous adjoint, no accuracy argument is needed. The forward pass must not build a graph that
grows with the number of steps.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import neurode

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread():
    # Tiny problems gain nothing from intra-op threads, and on a loaded 2-core machine OpenMP's
    # spinning barriers make them 10-30x slower (a 4-64-64-4 MLP: 40 s instead of 1.5 s).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


class MLPField(nn.Module):
    def __init__(self, dim: int = 3, hidden: int = 16, seed: int = 0, gain: float = 1.0,
                 time_dependent: bool = True):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))
        self.net.double()
        with torch.no_grad():
            for p in self.net.parameters():
                p.mul_(gain)
        self.time_dependent = time_dependent

    def forward(self, t, y):
        out = self.net(y)
        return out + 0.2 * torch.sin(t) * y if self.time_dependent else out


class Pendulum(nn.Module):
    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.tensor([1.5, 0.7], dtype=F64))
        self.c = nn.Parameter(torch.tensor(0.1, dtype=F64))

    def forward(self, t, s):
        x, v = s
        return v, -self.k * torch.sin(x) - self.c * v


def _grads(interface, f, y0, tv, loss, **kw):
    """Outputs and gradients w.r.t. y0 (tensor or tuple), every time and every parameter."""
    y0s = tuple(y.clone().requires_grad_() for y in (y0 if isinstance(y0, tuple) else (y0,)))
    t = torch.tensor(tv, dtype=F64, requires_grad=True)
    params = list(f.parameters())
    ys = interface(f, y0s if isinstance(y0, tuple) else y0s[0], t, **kw)
    grads = torch.autograd.grad(loss(ys), [*y0s, t, *params])
    return ys, grads


def _assert_equal_to_rounding(ga, gb, tol=1e-12):
    errs = [rel_err(a, b) for a, b in zip(ga, gb, strict=True)]
    assert max(errs) <= tol, errs


METHODS = [
    ("dopri5", None), ("tsit5", None), ("dopri8", None), ("bosh3", None),
    ("rk4", {"step_size": 0.07}), ("midpoint", {"step_size": 0.03, "interp": "cubic"}),
    ("midpoint", {"step_size": 0.03}),
]
METHOD_IDS = ["dopri5", "tsit5", "dopri8", "bosh3", "rk4", "midpoint_cubic", "midpoint_linear"]
TIMES = {"forward": [0.0, 0.37, 1.1, 1.95, 2.5], "reverse": [2.5, 1.63, 0.81, 0.05, -0.5]}


@pytest.mark.parametrize("direction", sorted(TIMES))
@pytest.mark.parametrize(("method", "options"), METHODS, ids=METHOD_IDS)
def test_checkpoint_gradients_equal_backprop_to_rounding(method, options, direction):
    tv = TIMES[direction]
    f = MLPField(seed=1, gain=1.5)
    g = torch.Generator().manual_seed(2)
    y0 = torch.randn(5, 3, generator=g, dtype=F64)
    w = torch.randn(len(tv), 5, 3, generator=g, dtype=F64)

    def loss(ys):  # every output enters, the intermediate ones nonlinearly
        return (w * ys).sum() + (ys[1:-1] ** 2).sum()

    # A loose tolerance: the adaptive methods take few, large steps with the outputs
    # interpolated inside them, and backprop is then far from the continuous gradient.
    kw = dict(method=method, options=options, rtol=1e-4, atol=1e-4)
    ys_b, gb = _grads(neurode.odeint, f, y0, tv, loss, **kw)
    ys_c, gc = _grads(neurode.odeint_checkpoint, f, y0, tv, loss, **kw)
    torch.testing.assert_close(ys_c, ys_b, rtol=0, atol=0)
    _assert_equal_to_rounding(gc, gb)
    assert gb[1][0].abs() > 1e-3  # dL/dt_0 is non-trivial


@pytest.mark.parametrize("direction", sorted(TIMES))
@pytest.mark.parametrize(("method", "options"), [("dopri5", None), ("rk4", {"step_size": 0.1})],
                         ids=["dopri5", "rk4"])
def test_checkpoint_tuple_state_gradients_equal_backprop(method, options, direction):
    tv = TIMES[direction]
    f = Pendulum()
    y0 = (torch.tensor([0.4, -1.0], dtype=F64), torch.tensor([0.2, 0.5], dtype=F64))

    def loss(ys):
        xs, vs = ys
        return (xs**2).sum() + (torch.cos(vs) * torch.arange(len(tv), dtype=F64)[:, None]).sum()

    kw = dict(method=method, options=options, rtol=1e-5, atol=1e-5)
    ys_b, gb = _grads(neurode.odeint, f, y0, tv, loss, **kw)
    ys_c, gc = _grads(neurode.odeint_checkpoint, f, y0, tv, loss, **kw)
    torch.testing.assert_close(ys_c, ys_b, rtol=0, atol=0)
    _assert_equal_to_rounding(gc, gb)


class Switched(nn.Module):
    """``y' = −k y + b·[t > 1]``: a jump in the field at t = 1, declared with ``jump_t``."""

    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.tensor([0.8, 1.3], dtype=F64))
        self.b = nn.Parameter(torch.tensor([0.5, -0.4], dtype=F64))

    def forward(self, t, y):
        return -self.k * y + self.b * (t > 1.0).to(y.dtype) + 0.1 * torch.tanh(y.flip(0))


@pytest.mark.parametrize("tv", [[0.0, 0.6, 1.0, 1.7, 2.5], [2.5, 1.3, 0.4, 0.0]],
                         ids=["forward", "reverse"])
@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
def test_checkpoint_with_jump_t_equals_backprop(method, tv):
    f = Switched()
    y0 = torch.tensor([1.0, -0.5], dtype=F64)

    def loss(ys):
        return (ys**2).sum() + ys[-1].sum()

    kw = dict(method=method, options={"jump_t": [1.0]}, rtol=1e-6, atol=1e-6)
    ys_b, gb = _grads(neurode.odeint, f, y0, tv, loss, **kw)
    ys_c, gc = _grads(neurode.odeint_checkpoint, f, y0, tv, loss, **kw)
    torch.testing.assert_close(ys_c, ys_b, rtol=0, atol=0)
    _assert_equal_to_rounding(gc, gb)


def test_checkpoint_is_exact_where_the_continuous_adjoint_is_visibly_off():
    """A nonlinear MLP field over a long horizon at rtol = atol = 1e-5: the adjoint gradient is
    the continuous one solved to 1e-5, so it differs from the gradient of the discrete solve the
    loss actually saw; ACA reproduces that gradient to rounding."""
    f = MLPField(dim=4, hidden=32, seed=0, gain=2.0, time_dependent=False)
    y0 = torch.randn(16, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    tv = torch.linspace(0, 20, 5, dtype=F64).tolist()

    def loss(ys):
        return (ys**2).mean()

    kw = dict(rtol=1e-5, atol=1e-5)
    _, gb = _grads(neurode.odeint, f, y0, tv, loss, **kw)
    _, gc = _grads(neurode.odeint_checkpoint, f, y0, tv, loss, **kw)
    _, ga = _grads(neurode.odeint_adjoint, f, y0, tv, loss, **kw)
    # MALI's reversible gradient is that of its own discretisation (ALF): its reference is
    # backprop through odeint(method="alf") with the same tolerances.
    _, gb_alf = _grads(neurode.odeint, f, y0, tv, loss, method="alf", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no reconstruction-drift warning either
        _, gr = _grads(neurode.odeint_reversible, f, y0, tv, loss, **kw)
    flat = [torch.cat([g.reshape(-1) for g in gs]) for gs in (gb, gc, ga, gb_alf, gr)]
    err_ckpt, err_adj = rel_err(flat[1], flat[0]), rel_err(flat[2], flat[0])
    err_rev = rel_err(flat[4], flat[3])
    print(f"\n[long horizon, rtol=atol=1e-5] rel. error vs backprop: checkpoint {err_ckpt:.2e}, "
          f"reversible {err_rev:.2e} (vs backprop through alf), adjoint {err_adj:.2e}")
    assert err_ckpt <= 1e-8
    assert err_rev <= 1e-8
    assert err_adj > 1e-4
    assert err_adj > 1e4 * max(err_ckpt, 1e-16)


def _count_saved_tensors(interface, f, setting, kw):
    n = [0]

    def pack(x):
        n[0] += 1
        return x

    y0 = torch.randn(8, 3, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        ys = interface(f, y0, t, **kw(setting))
    ys.sum().backward()  # and the graph is usable
    assert y0.grad is not None
    return n[0]


@pytest.mark.parametrize("kind", ["fixed", "adaptive"])
def test_forward_saves_no_per_step_tensors_for_autograd(kind):
    """The custom Function saves the times, the outputs and the parameters for backward: a
    constant number of tensors, where backprop saves O(steps) (each step's graph)."""
    f = MLPField(seed=3, gain=1.5)
    n_params = len(list(f.parameters()))
    if kind == "fixed":
        def kw(steps):
            return dict(method="rk4", options={"step_size": 1.0 / steps})
        lo, hi = 10, 200
    else:
        def kw(tol):
            return dict(method="dopri5", rtol=tol, atol=tol)
        lo, hi = 1e-3, 1e-10

    counts = {name: (_count_saved_tensors(fn, f, lo, kw), _count_saved_tensors(fn, f, hi, kw))
              for name, fn in (("backprop", neurode.odeint),
                               ("checkpoint", neurode.odeint_checkpoint),
                               ("adjoint", neurode.odeint_adjoint))}
    for name in ("checkpoint", "adjoint"):
        few, many = counts[name]
        assert few == many <= 2 + n_params, (name, counts)
    few, many = counts["backprop"]
    assert many > 3 * few and few > 10 * (2 + n_params), counts


# --------------------------------------------------------------------------------------------
# interface


def test_checkpoint_adjoint_params_subset_and_plain_function():
    W = torch.tensor([[-0.5, 1.0], [-1.0, -0.3]], dtype=F64, requires_grad=True)
    b = torch.tensor([0.1, 0.2], dtype=F64, requires_grad=True)
    y0 = torch.tensor([1.0, 0.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0, 2.0], dtype=F64)

    def f(tt, y):
        return torch.tanh(W @ y) + b

    with pytest.raises(neurode.InvalidInputError, match="adjoint_params"):
        neurode.odeint_checkpoint(f, y0, t)
    ys = neurode.odeint_checkpoint(f, y0, t, adjoint_params=(W,))
    gW, gy0 = torch.autograd.grad(ys.sum(), (W, y0))
    ref = torch.autograd.grad(neurode.odeint(f, y0, t).sum(), (W, y0))
    _assert_equal_to_rounding((gW, gy0), ref)
    ys = neurode.odeint_checkpoint(f, y0, t, adjoint_params=(W,))
    ys.sum().backward()
    assert b.grad is None


def test_checkpoint_rejects_non_runge_kutta_methods():
    y0 = torch.tensor([1.0], dtype=F64, requires_grad=True)
    with pytest.raises(neurode.InvalidInputError, match="Runge"):
        neurode.odeint_checkpoint(lambda t, y: -y, y0, torch.tensor([0.0, 1.0], dtype=F64),
                                  method="explicit_adams", options={"step_size": 0.1},
                                  adjoint_params=())


def test_checkpoint_without_grad_returns_plain_odeint_results():
    f = MLPField(seed=6).requires_grad_(False)
    y0 = torch.randn(3, dtype=F64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    ys = neurode.odeint_checkpoint(f, y0, t, rtol=1e-6, atol=1e-6)
    assert not ys.requires_grad
    torch.testing.assert_close(ys, neurode.odeint(f, y0, t, rtol=1e-6, atol=1e-6), rtol=0,
                               atol=0)


def test_checkpoints_are_stored_in_blocks_and_read_back_exactly():
    """The record keeps copies of the step states in a few large blocks (a heap of thousands of
    small ones fragmented to 3-4x its size); each reads back as the state the step started
    from, and the gradient is unchanged."""
    from neurode.solvers.api import integrate
    from neurode.solvers.loops.common import RowStore
    from neurode.solvers.problem import make_problem

    torch.manual_seed(0)
    y0 = torch.randn(3, 5, dtype=torch.float64)
    pb = make_problem(lambda t, y: -y + torch.sin(t), y0, torch.tensor([0.0, 1.0],
                      dtype=torch.float64), 1e-7, 1e-9, "rk4", {"step_size": 0.01})
    with torch.no_grad():
        res = integrate(pb, record="steps")
    rec = res.record
    assert isinstance(rec.y, RowStore) and len(rec.y) == 100
    assert len(rec.y.blocks) == 1  # 100 states of 120 bytes: one block
    # each stored state is the previous step's rk4 update of the one before
    with torch.no_grad():
        again = integrate(make_problem(lambda t, y: -y + torch.sin(t), y0, torch.tensor(
            [0.0, rec.t[57]], dtype=torch.float64), 1e-7, 1e-9, "rk4", {"step_size": 0.01}))
    torch.testing.assert_close(rec.y[57], again.ys[-1], rtol=1e-12, atol=1e-12)
    store = RowStore()
    store.BLOCK_BYTES = 3 * 5 * 8 * 4  # four rows per block
    for k in range(10):
        store.append(torch.full((1, 15), float(k), dtype=torch.float64))
    assert len(store.blocks) == 3 and [float(r[0, 0]) for r in store] == list(range(10))
    with pytest.raises(IndexError):
        store[10]
