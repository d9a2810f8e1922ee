"""The adjoint method (``neurode.odeint_adjoint``): its gradients against finite differences,
backprop through ``neurode.odeint``, closed forms, and torchdiffeq's interface rules.

The adjoint gradient is the gradient of the *continuous* problem, solved numerically backwards;
backprop differentiates the discrete solve. The two agree only to the accuracy of the solves, so
every comparison here solves tightly (rtol = atol = 1e-10 in float64, or small fixed steps), where
both are within ~1e-9 of the exact sensitivity and agreement to 1e-7 relative is a real check.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck

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
TIGHT = {"rtol": 1e-10, "atol": 1e-10}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


class MLPField(nn.Module):
    """``dy/dt = W2 tanh(W1 y + b1) + b2 + 0.1 sin(t) y`` (non-autonomous, so time grads are
    non-trivial); counts its evaluations."""

    def __init__(self, dim: int = 3, hidden: int = 16, seed: int = 0, gain: float = 1.0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))
        self.net.double()
        with torch.no_grad():
            for p in self.net.parameters():
                p.mul_(gain)
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return self.net(y) + 0.1 * torch.sin(t) * y


class Pendulum(nn.Module):
    """Tuple state ``(x, v)``: ``x' = v``, ``v' = −k sin x − c v`` with parameters k, c."""

    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.tensor([1.5, 0.7], dtype=F64))
        self.c = nn.Parameter(torch.tensor(0.1, dtype=F64))

    def forward(self, t, s):
        x, v = s
        return v, -self.k * torch.sin(x) - self.c * v


# --------------------------------------------------------------------------------------------
# gradcheck against finite differences


def _adjoint_fn(method, options=None, with_t=False, **tol):
    t_fixed = torch.tensor([0.0, 0.5, 1.3], dtype=F64)

    def fn(y0, W, b, *t):
        def f(tt, y):
            return torch.tanh(W @ y) + b + 0.1 * torch.cos(tt) * y

        return neurode.odeint_adjoint(f, y0, t[0] if with_t else t_fixed, method=method,
                                      options=options, adjoint_params=(W, b), **tol)

    return fn


def _gradcheck_inputs(with_t=False):
    g = torch.Generator().manual_seed(0)
    W = (0.5 * torch.randn(3, 3, generator=g, dtype=F64)).requires_grad_()
    b = (0.1 * torch.randn(3, generator=g, dtype=F64)).requires_grad_()
    y0 = torch.randn(3, generator=g, dtype=F64).requires_grad_()
    extra = (torch.tensor([0.1, 0.5, 1.3], dtype=F64, requires_grad=True),) if with_t else ()
    return (y0, W, b, *extra)


def test_gradcheck_adjoint_fixed_step_rk4_wrt_y0_and_parameters():
    # rk4 with h = 0.01: forward and adjoint solves are both accurate to ~1e-9, far below
    # gradcheck's atol = 1e-5, so the continuous adjoint passes against the discrete solver's FD.
    fn = _adjoint_fn("rk4", {"step_size": 0.01}, rtol=1e-12, atol=1e-12)
    assert gradcheck(fn, _gradcheck_inputs())


def test_gradcheck_adjoint_adaptive_dopri5_tight_tolerance_wrt_y0_parameters_and_times():
    assert gradcheck(_adjoint_fn("dopri5", with_t=True, **TIGHT), _gradcheck_inputs(True))


def test_gradcheck_adjoint_adaptive_dopri5_pinned_steps():
    # Pinned steps make the forward solve a smooth function of the inputs; the adjoint solve
    # (same pinned options) is a 0.01-step dopri5, accurate to ~1e-12.
    pinned = {"first_step": 0.01, "min_step": 0.01, "max_step": 0.01}
    assert gradcheck(_adjoint_fn("dopri5", pinned), _gradcheck_inputs())


# --------------------------------------------------------------------------------------------
# agreement with backprop through neurode.odeint


def _mlp_problem(tv, loss_kind):
    f = MLPField(seed=1)
    g = torch.Generator().manual_seed(3)
    y0 = torch.randn(4, 3, generator=g, dtype=F64)
    w = torch.randn(len(tv), 4, 3, generator=g, dtype=F64)

    def loss(ys):
        if loss_kind == "all":
            return (w * ys).sum() + (ys**2).sum()
        if loss_kind == "intermediate":  # the final output does not enter the loss
            return (w[1:-1] * ys[1:-1]).sum() + (ys[1] ** 3).sum()
        return (w[-1] * ys[-1]).sum()

    return f, y0, loss


PROBLEMS = {
    "forward_several_outputs": ([0.0, 0.4, 1.1, 2.0], "all"),
    "reverse_time_several_outputs": ([2.0, 1.3, 0.6, 0.0], "all"),
    "forward_loss_on_intermediate_outputs_only": ([0.0, 0.3, 0.9, 1.6, 2.2], "intermediate"),
    "reverse_time_loss_on_intermediate_outputs_only": ([1.5, 1.0, 0.2, -0.4], "intermediate"),
    "two_times_final_loss": ([0.3, 1.7], "final"),
}


def _grads(interface, f, y0, tv, loss, **kw):
    y0 = y0.clone().requires_grad_()
    t = torch.tensor(tv, dtype=F64, requires_grad=True)
    params = list(f.parameters())
    ys = interface(f, y0, t, **kw)
    return ys.detach(), torch.autograd.grad(loss(ys), [y0, t, *params])


@pytest.mark.parametrize(("method", "options"), [
    ("dopri5", None), ("dopri8", None), ("rk4", {"step_size": 0.005}),
], ids=["dopri5", "dopri8", "rk4"])
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_adjoint_gradients_wrt_y0_params_and_every_time_match_backprop(problem, method, options):
    tv, kind = PROBLEMS[problem]
    f, y0, loss = _mlp_problem(tv, kind)
    kw = dict(method=method, options=options, **TIGHT)
    ys_b, gb = _grads(neurode.odeint, f, y0, tv, loss, **kw)
    ys_a, ga = _grads(neurode.odeint_adjoint, f, y0, tv, loss, **kw)
    torch.testing.assert_close(ys_a, ys_b, rtol=0, atol=0)  # same forward solve
    names = ["y0", "t"] + [n for n, _ in f.named_parameters()]
    for name, a, b in zip(names, ga, gb, strict=True):
        assert rel_err(a, b) < 1e-7, (name, rel_err(a, b))
    assert gb[1][0].abs() > 1e-3  # the initial time matters: dL/dt_0 is really checked
    if kind == "intermediate":
        assert gb[1][-1] == 0 and ga[1][-1] == 0  # the last time does not enter the loss


@pytest.mark.parametrize("tv", [[0.0, 0.7, 1.5, 3.0], [3.0, 2.0, 0.5]], ids=["forward",
                                                                             "reverse"])
def test_adjoint_tuple_state_gradients_match_backprop(tv):
    f = Pendulum()
    x0 = torch.tensor([0.4, -1.0], dtype=F64, requires_grad=True)
    v0 = torch.tensor([0.2, 0.5], dtype=F64, requires_grad=True)
    out = []
    for interface in (neurode.odeint, neurode.odeint_adjoint):
        t = torch.tensor(tv, dtype=F64, requires_grad=True)
        xs, vs = interface(f, (x0, v0), t, **TIGHT)
        loss = (xs**2).sum() + (torch.cos(vs) * torch.arange(len(tv), dtype=F64)[:, None]).sum()
        out.append(torch.autograd.grad(loss, [x0, v0, t, f.k, f.c]))
    for name, b, a in zip(["x0", "v0", "t", "k", "c"], *out, strict=True):
        assert rel_err(a, b) < 1e-7, (name, rel_err(a, b))


def test_adjoint_with_different_backward_method_and_tolerances_matches_backprop():
    tv, kind = PROBLEMS["forward_several_outputs"]
    f, y0, loss = _mlp_problem(tv, kind)
    _, gb = _grads(neurode.odeint, f, y0, tv, loss, **TIGHT)
    _, ga = _grads(neurode.odeint_adjoint, f, y0, tv, loss, rtol=1e-10, atol=1e-10,
                   adjoint_method="dopri8", adjoint_rtol=1e-11, adjoint_atol=1e-11)
    for a, b in zip(ga, gb, strict=True):
        assert rel_err(a, b) < 1e-7


# --------------------------------------------------------------------------------------------
# closed form: the linear ODE z' = A z


def test_linear_ode_gradient_wrt_matrix_equals_frechet_derivative_of_expm():
    """L = <w, exp(AT) z0>. By the Fréchet derivative of the exponential,

        dL/dA = T ∫_0^1 exp(A^T T (1−s)) w z0^T exp(A^T T s) ds
              = top-right block of expm([[A^T T, w z0^T T], [0, A^T T]]),

    and dL/dz0 = exp(A^T T) w, dL/dT = w^T A exp(AT) z0, dL/dt0 = −dL/dT.
    """
    g = torch.Generator().manual_seed(1)
    A = (0.5 * torch.randn(4, 4, generator=g, dtype=F64)).requires_grad_()
    z0 = torch.randn(4, generator=g, dtype=F64).requires_grad_()
    w = torch.randn(4, generator=g, dtype=F64)
    T = 2.0
    t = torch.tensor([0.0, T], dtype=F64, requires_grad=True)
    ys = neurode.odeint_adjoint(lambda tt, z: A @ z, z0, t, rtol=1e-12, atol=1e-12,
                                method="dopri8", adjoint_params=(A,))
    gA, gz0, gt = torch.autograd.grad(w @ ys[-1], (A, z0, t))

    Ad = A.detach()
    M = torch.zeros(8, 8, dtype=F64)
    M[:4, :4] = M[4:, 4:] = Ad.T * T
    M[:4, 4:] = torch.outer(w, z0.detach()) * T
    exact_A = torch.linalg.matrix_exp(M)[:4, 4:]
    # the block formula itself, against autograd through torch.linalg.matrix_exp
    A2 = Ad.clone().requires_grad_()
    (ref,) = torch.autograd.grad(w @ torch.linalg.matrix_exp(A2 * T) @ z0.detach(), A2)
    assert rel_err(exact_A, ref) < 1e-12

    assert rel_err(gA, exact_A) < 1e-8
    assert rel_err(gz0, torch.linalg.matrix_exp(Ad.T * T) @ w) < 1e-8
    dT = w @ Ad @ torch.linalg.matrix_exp(Ad * T) @ z0.detach()
    assert rel_err(gt, torch.stack([-dT, dT])) < 1e-8


# --------------------------------------------------------------------------------------------
# seminorm


def test_seminorm_gives_same_gradient_with_fewer_backward_evaluations():
    # 4 → 64 → 64 → 4 tanh MLP: 4,740 parameters whose adjoints the seminorm leaves out of the
    # backward error control.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                        nn.Linear(64, 4)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.5)

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
            self.nfe = 0

        def forward(self, t, y):
            self.nfe += 1
            return self.net(y)

    f = Counting()
    y0 = torch.randn(8, 4, dtype=F64)
    t = torch.linspace(0, 3, 4, dtype=F64)
    params = list(f.parameters())

    def run(adjoint_options):
        f.nfe = 0
        ys = neurode.odeint_adjoint(f, y0, t, rtol=1e-8, atol=1e-8,
                                    adjoint_options=adjoint_options)
        nfe_fwd = f.nfe
        grads = torch.autograd.grad((ys**2).sum(), params)
        return nfe_fwd, f.nfe - nfe_fwd, torch.cat([g.reshape(-1) for g in grads])

    fwd_full, bwd_full, g_full = run(None)
    fwd_semi, bwd_semi, g_semi = run({"norm": "seminorm"})
    ys = neurode.odeint(f, y0, t, **TIGHT)
    g_ref = torch.cat([g.reshape(-1) for g in torch.autograd.grad((ys**2).sum(), params)])

    assert fwd_full == fwd_semi
    assert bwd_semi < bwd_full, (bwd_semi, bwd_full)
    assert rel_err(g_full, g_ref) < 1e-6
    assert rel_err(g_semi, g_ref) < 1e-6
    assert rel_err(g_semi, g_full) < 1e-6


# --------------------------------------------------------------------------------------------
# interface rules


def test_empty_adjoint_params_give_y0_gradients_only():
    f = MLPField(seed=2)
    y0 = torch.randn(3, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    ys = neurode.odeint_adjoint(f, y0, t, adjoint_params=(), **TIGHT)
    ys.pow(2).sum().backward()
    assert all(p.grad is None for p in f.parameters())
    ys_b = neurode.odeint(f, y0, t, **TIGHT)
    (g_ref,) = torch.autograd.grad(ys_b.pow(2).sum(), y0)
    assert rel_err(y0.grad, g_ref) < 1e-7


@pytest.mark.parametrize("interface", [neurode.odeint_adjoint, neurode.odeint_checkpoint],
                         ids=["adjoint", "checkpoint"])
def test_empty_adjoint_params_and_no_grad_y0_give_output_without_grad(interface):
    f = MLPField(seed=2)
    ys = interface(f, torch.randn(3, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
                   adjoint_params=())
    assert not ys.requires_grad


def test_adjoint_params_subset_gets_gradients_only_for_listed_tensors():
    f = MLPField(seed=2)
    W1 = f.net[0].weight
    y0 = torch.randn(3, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    neurode.odeint_adjoint(f, y0, t, adjoint_params=(W1,), **TIGHT).pow(2).sum().backward()
    assert W1.grad is not None
    assert all(p.grad is None for p in f.parameters() if p is not W1)
    ys = neurode.odeint(f, y0.detach().requires_grad_(), t, **TIGHT)
    (g_ref,) = torch.autograd.grad(ys.pow(2).sum(), W1)
    assert rel_err(W1.grad, g_ref) < 1e-7


def test_plain_function_without_adjoint_params_raises_invalid_input():
    W = torch.randn(3, 3, dtype=F64, requires_grad=True)
    y0 = torch.randn(3, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(neurode.InvalidInputError, match="adjoint_params"):
        neurode.odeint_adjoint(lambda tt, y: W @ y, y0, t)
    with pytest.raises(neurode.InvalidInputError, match="adjoint_params"):
        neurode.odeint_adjoint(lambda tt, y: W @ y, y0, t, adjoint_params=(W, 1.0))
    # with adjoint_params it works
    neurode.odeint_adjoint(lambda tt, y: W @ y, y0, t, adjoint_params=(W,)).sum().backward()
    assert W.grad is not None


def test_callback_step_adjoint_fires_during_backward_only():
    class WithCallbacks(MLPField):
        def __init__(self):
            super().__init__(seed=4)
            self.fwd_steps: list[float] = []
            self.bwd_steps: list[tuple[float, float]] = []

        def callback_step(self, t0, y0, dt):
            self.fwd_steps.append(float(t0))

        def callback_step_adjoint(self, t0, y0, dt):
            self.bwd_steps.append((float(t0), float(dt)))

    f = WithCallbacks()
    y0 = torch.randn(3, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.8, 2.0], dtype=F64)
    ys = neurode.odeint_adjoint(f, y0, t, rtol=1e-6, atol=1e-6)
    n_fwd = len(f.fwd_steps)
    assert n_fwd > 0
    assert f.bwd_steps == []
    ys.sum().backward()
    assert len(f.fwd_steps) == n_fwd  # callback_step is the forward solve's only
    assert len(f.bwd_steps) > 0
    times = [s for s, _ in f.bwd_steps]
    assert all(dt < 0 for _, dt in f.bwd_steps)  # the adjoint runs backwards in time
    assert times == sorted(times, reverse=True)
    assert max(times) <= 2.0 and min(times) >= 0.0


def test_torch_func_grad_over_functional_call_matches_backprop():
    from torch.func import functional_call, grad

    class Model(nn.Module):
        def __init__(self, interface):
            super().__init__()
            self.field = MLPField(seed=5)
            self.interface = interface

        def forward(self, y0):
            t = torch.tensor([0.0, 0.5, 1.2], dtype=F64)
            return (self.interface(self.field, y0, t, **TIGHT) ** 2).sum()

    model = Model(neurode.odeint_adjoint)
    y0 = torch.randn(2, 3, dtype=F64)
    params = {k: v.detach() for k, v in model.named_parameters()}
    g_params = grad(lambda p: functional_call(model, p, (y0,)))(params)
    g_y0 = grad(lambda y: functional_call(model, params, (y,)))(y0)

    ref_model = Model(neurode.odeint)
    ref_model.load_state_dict(model.state_dict())
    y0_ref = y0.clone().requires_grad_()
    names = [n for n, _ in ref_model.named_parameters()]
    ref = torch.autograd.grad(ref_model(y0_ref), [y0_ref, *ref_model.parameters()])
    assert rel_err(g_y0, ref[0]) < 1e-7
    assert set(g_params) == set(names)
    for name, r in zip(names, ref[1:], strict=True):
        assert rel_err(g_params[name], r) < 1e-7, name


def test_inputs_without_grad_return_plain_odeint_results():
    f = MLPField(seed=6)
    f.requires_grad_(False)
    y0 = torch.randn(3, dtype=F64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    ref = neurode.odeint(f, y0, t, rtol=1e-6, atol=1e-6)
    ys = neurode.odeint_adjoint(f, y0, t, rtol=1e-6, atol=1e-6)
    assert not ys.requires_grad
    torch.testing.assert_close(ys, ref, rtol=0, atol=0)
    # grad-requiring inputs under torch.no_grad(): same values, no graph
    f.requires_grad_(True)
    with torch.no_grad():
        ys = neurode.odeint_adjoint(f, y0.clone().requires_grad_(), t, rtol=1e-6, atol=1e-6)
    assert not ys.requires_grad and ys.grad_fn is None
    torch.testing.assert_close(ys, ref, rtol=0, atol=0)
    # tuple states too
    xs, vs = neurode.odeint_adjoint(Pendulum().requires_grad_(False), (y0[:2], y0[1:]), t)
    xr, vr = neurode.odeint(Pendulum(), (y0[:2], y0[1:]), t)
    assert not xs.requires_grad
    torch.testing.assert_close((xs, vs), (xr.detach(), vr.detach()), rtol=0, atol=0)
