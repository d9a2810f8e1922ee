"""neurode.nn and neurode.data: blocks, regularisers, ODE-Net, CNFs and flow matching."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import neurode
from neurode.data import TOY_2D, load_digits, load_torchvision, periodic_series, sample_2d
from neurode.nn import (
    CNF,
    ConcatConv2d,
    ConcatLinear,
    ConcatMLP,
    GRUBaseline,
    LatentODE,
    ODEBlock,
    ODEFunc,
    ODENetClassifier,
    RegularizedODEFunc,
    SecondOrderFunc,
    count_parameters,
    flow_matching_loss,
)

F64 = torch.float64


class Linear(nn.Module):
    def __init__(self, A: torch.Tensor):
        super().__init__()
        self.A = nn.Parameter(A.clone())

    def forward(self, t, z):
        return z @ self.A.T


def _mlp_field(dim=2, hidden=32, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return ConcatMLP(dim, hidden, layers=2).to(dtype)


# --- layers and blocks -------------------------------------------------------------------------


def test_concat_layers_see_time_shared_or_per_sample():
    lin = ConcatLinear(3, 4)
    x = torch.randn(5, 3)
    a, b = lin(torch.tensor(0.0), x), lin(torch.tensor(1.0), x)
    assert not torch.allclose(a, b)
    per = lin(torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0]), x)
    assert torch.allclose(per[1], b[1]) and torch.allclose(per[0], a[0])
    conv = ConcatConv2d(2, 3)
    img = torch.randn(4, 2, 6, 6)
    assert conv(torch.tensor(0.5), img).shape == (4, 3, 6, 6)
    with pytest.raises(ValueError, match="one time per sample"):
        lin(torch.zeros(2), x)


def test_odefunc_counts_evaluations_and_block_reports_forward_and_backward_nfe():
    func = ODEFunc(nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2)))
    block = ODEBlock(func, gradient="adjoint", rtol=1e-5, atol=1e-5)
    x = torch.randn(8, 2, requires_grad=True)
    out = block(x)
    assert out.shape == (8, 2) and block.nfe_forward == func.nfe > 0
    out.sum().backward()
    assert block.nfe_backward > 0 and func.nfe == block.nfe_forward + block.nfe_backward
    assert x.grad is not None and all(p.grad is not None for p in func.parameters())
    # the forward count is the solver's own: the same solve reports the same NFE
    with torch.no_grad():
        sol = neurode.solve_ivp(lambda t, y: func.net(y), x.detach(),
                                torch.tensor([0.0, 1.0]), rtol=1e-5, atol=1e-5)
    assert block.nfe_forward == sol.stats.nfe


def test_gradient_methods_of_the_block_agree():
    grads = {}
    for gradient, method in (("backprop", "dopri5"), ("adjoint", "dopri5"),
                             ("checkpoint", "dopri5"), ("reversible", "alf"),
                             ("backprop", "alf")):
        field = _mlp_field(dtype=F64)
        block = ODEBlock(field, gradient=gradient, method=method, rtol=1e-9, atol=1e-9)
        x = torch.linspace(-1, 1, 8, dtype=F64).view(4, 2).requires_grad_(True)
        block(x).pow(2).sum().backward()
        grads[gradient if method != "alf" or gradient != "backprop" else "backprop alf"] = \
            torch.cat([x.grad.flatten()] + [p.grad.flatten()
                                                          for p in field.parameters()])
    ref = grads["backprop"]
    for k in ("adjoint", "checkpoint"):
        assert torch.allclose(grads[k], ref, rtol=1e-5, atol=1e-7), k
    # ALF is a different (second-order) discretisation: close, not equal
    assert torch.allclose(grads["reversible"], ref, rtol=1e-2, atol=1e-3)
    # ... and the reversible adjoint is exact for ALF: it equals backprop through the same steps
    assert torch.allclose(grads["reversible"], grads["backprop alf"], rtol=1e-8, atol=1e-10)


def test_augmented_block_appends_zero_channels_and_trains():
    field = _mlp_field(dim=3)
    block = ODEBlock(field, augment_dim=1, gradient="backprop")
    x = torch.randn(6, 2, requires_grad=True)
    out = block(x)
    assert out.shape == (6, 3)
    start = torch.cat([x.detach(), torch.zeros(6, 1)], 1)
    expected = neurode.odeint(field, start, torch.tensor([0.0, 1.0]), rtol=1e-3, atol=1e-3)[-1]
    assert torch.allclose(out.detach(), expected, atol=1e-6)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def _grads_with_an_evaluation_in_between(module, loss_of, x, x_eval, evaluate):
    """Parameter gradients of ``loss_of(module(x))``, and the same when ``evaluate(x_eval)``
    runs under no_grad between that forward pass and its backward."""
    out = []
    for between in (False, True):
        torch.manual_seed(1)
        module.zero_grad()
        loss = loss_of(module, x)
        if between:
            with torch.no_grad():
                evaluate(module, x_eval)
        loss.backward()
        out.append(torch.cat([p.grad.flatten() for p in module.parameters()]))
    return out


@pytest.mark.parametrize("gradient", ["adjoint", "checkpoint"])
def test_an_evaluation_between_forward_and_backward_changes_no_cnf_gradient(gradient):
    cnf = CNF(_mlp_field(dtype=F64), dim=2, trace="hutchinson", gradient=gradient, rtol=1e-6,
              atol=1e-6)
    x, x_eval = torch.randn(16, 2, dtype=F64), torch.randn(5, 2, dtype=F64)
    plain, interleaved = _grads_with_an_evaluation_in_between(
        cnf, lambda m, x: -m.log_prob(x).mean(), x, x_eval, lambda m, x: m.log_prob(x))
    assert plain.abs().max() > 0
    assert torch.allclose(plain, interleaved, rtol=1e-10, atol=1e-12)


def test_an_evaluation_between_forward_and_backward_changes_no_regularised_block_gradient():
    block = ODEBlock(_mlp_field(dtype=F64), gradient="adjoint", jacobian_weight=0.1,
                     kinetic_weight=0.1, rtol=1e-6, atol=1e-6)

    def loss_of(m, x):
        return m(x).pow(2).sum() + m.regularization

    x, x_eval = torch.randn(8, 2, dtype=F64), torch.randn(3, 2, dtype=F64)
    plain, interleaved = _grads_with_an_evaluation_in_between(block, loss_of, x, x_eval,
                                                              lambda m, x: m(x))
    assert torch.allclose(plain, interleaved, rtol=1e-10, atol=1e-12)


def test_reversible_gradient_works_with_the_default_method():
    x = torch.randn(4, 2, requires_grad=True)
    block = ODEBlock(_mlp_field(), gradient="reversible")
    assert block.method == "alf"
    block(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    model = ODENetClassifier("ode", dim=8, gradient="reversible", options={"step_size": 0.25})
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_modules_hold_each_parameter_once():
    field = _mlp_field()
    n = len(field.state_dict())
    assert len(CNF(field, dim=2).state_dict()) == n
    block = ODEBlock(field, kinetic_weight=1.0, jacobian_weight=1.0)
    assert len(block.state_dict()) == n


def test_block_times_follow_the_input_dtype():
    A = torch.tensor([[-1.0, 0.3], [0.0, -2.0]], dtype=F64)
    x = torch.tensor([[1.0, 1.0]], dtype=F64)
    block = ODEBlock(Linear(A), t=(0.0, 0.1), gradient="backprop", rtol=1e-12, atol=1e-14)
    exact = x @ torch.linalg.matrix_exp(0.1 * A).T
    assert torch.allclose(block(x), exact, rtol=1e-12, atol=0)


def test_bad_block_arguments_are_named():
    with pytest.raises(neurode.InvalidInputError, match="gradient"):
        ODEBlock(_mlp_field(), gradient="magic")
    with pytest.raises(neurode.InvalidInputError, match="augment_dim"):
        ODEBlock(_mlp_field(), augment_dim=-1)


# --- second order and regularisers --------------------------------------------------------------


class _Spring(nn.Module):
    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(1.0, dtype=F64))
        self.c = nn.Parameter(torch.tensor(0.1, dtype=F64))

    def forward(self, t, x, v):
        return -self.k * x - self.c * v


def test_second_order_dynamics_solve_a_damped_spring_and_differentiate():
    spring = _Spring()
    block = ODEBlock(SecondOrderFunc(spring), t=(0.0, 2.0), rtol=1e-10, atol=1e-10,
                     gradient="adjoint")
    y = block(torch.tensor([[1.0, 0.0]], dtype=F64))
    c, w = 0.1, math.sqrt(1 - 0.1**2 / 4)  # x = e^{−ct/2}(cos wt + c/(2w) sin wt)
    exact = math.exp(-c) * (math.cos(2 * w) + c / (2 * w) * math.sin(2 * w))
    assert abs(float(y[0, 0].detach()) - exact) < 1e-8
    (gk,) = torch.autograd.grad(y[0, 0], spring.k)
    eps = 1e-6
    vals = []
    for d in (eps, -eps):
        with torch.no_grad():
            spring.k += d
            vals.append(float(block(torch.tensor([[1.0, 0.0]], dtype=F64))[0, 0]))
            spring.k -= d
    assert abs(float(gk) - (vals[0] - vals[1]) / (2 * eps)) < 1e-6


A2 = torch.tensor([[-0.3, 1.0], [-1.2, 0.1]], dtype=F64)


def _kinetic_direct(A, z0, T, n=4001):
    """∫₀ᵀ ‖A z(t)‖² dt with z(t) = exp(At) z0, composite Simpson."""
    ts = torch.linspace(0, T, n, dtype=F64)
    vals = torch.stack([(A @ torch.linalg.matrix_exp(A * t) @ z0).pow(2).sum() for t in ts])
    h = T / (n - 1)
    return float(h / 3 * (vals[0] + vals[-1] + 4 * vals[1:-1:2].sum() + 2 * vals[2:-1:2].sum()))


def test_regularisers_match_direct_computation_on_a_linear_field():
    z0 = torch.tensor([[1.0, -0.5], [0.3, 2.0]], dtype=F64)
    T = 1.5
    block = ODEBlock(Linear(A2), t=(0.0, T), rtol=1e-10, atol=1e-10, gradient="backprop",
                     kinetic_weight=1.0, jacobian_weight=0.0, estimator="exact")
    block(z0)
    kin = torch.tensor([_kinetic_direct(A2, z, T) for z in z0], dtype=F64).mean()
    assert abs(float(block.regularization) - float(kin)) < 1e-7
    block = ODEBlock(Linear(A2), t=(0.0, T), rtol=1e-10, atol=1e-10, gradient="backprop",
                     kinetic_weight=0.0, jacobian_weight=1.0, estimator="exact")
    block(z0)
    assert abs(float(block.regularization) - T * float(A2.pow(2).sum())) < 1e-9
    # Hutchinson: unbiased for ‖A‖_F² (per draw εᵀ A Aᵀ ε)
    reg = RegularizedODEFunc(Linear(A2), estimator="hutchinson", noise="gaussian")
    z = torch.randn(4000, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    reg.resample(z)
    _, _, jac = reg(torch.tensor(0.0), (z, None, None))
    se = float(jac.std()) / math.sqrt(len(jac))
    assert abs(float(jac.mean()) - float(A2.pow(2).sum())) < 3 * se


def test_regulariser_gradient_matches_finite_differences():
    A = A2.clone()
    z0 = torch.tensor([[1.0, -0.5]], dtype=F64)

    def value(A):
        block = ODEBlock(Linear(A), t=(0.0, 1.0), rtol=1e-11, atol=1e-11, gradient="backprop",
                         kinetic_weight=1.0, jacobian_weight=0.5, estimator="exact")
        block(z0)
        return block.regularization, block.func.func.A

    v, param = value(A)
    (g,) = torch.autograd.grad(v, param)
    eps = 1e-6
    fd = torch.zeros_like(A)
    for i in range(2):
        for j in range(2):
            E = torch.zeros_like(A)
            E[i, j] = eps
            fd[i, j] = (float(value(A + E)[0]) - float(value(A - E)[0])) / (2 * eps)
    assert torch.allclose(g, fd, rtol=1e-5, atol=1e-7), (g, fd)


# --- ODE-Net ---------------------------------------------------------------------------------


def test_odenet_has_about_a_third_of_the_resnets_parameters():
    n = {k: count_parameters(ODENetClassifier(k, dim=64, downsample=2))
         for k in ("ode", "resnet", "rknet")}
    assert n["ode"] == n["rknet"]
    assert 0.3 < n["ode"] / n["resnet"] < 0.4, n


def test_odenet_learns_digits_above_90_percent():
    torch.manual_seed(0)
    pytest.importorskip("sklearn")  # the bundled digits ship with scikit-learn
    xtr, ytr, xte, yte = load_digits(seed=0)
    model = ODENetClassifier("ode", dim=32, downsample=1, rtol=1e-3, atol=1e-3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(4):
        perm = torch.randperm(len(ytr))
        for i in range(0, len(ytr), 64):
            idx = perm[i:i + 64]
            loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert model.nfe[0] > 0 and model.nfe[1] > 0
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    assert acc > 0.9, acc


# --- CNF and flow matching -----------------------------------------------------------------------


def test_cnf_log_density_change_of_a_linear_field_is_minus_trace_times_t():
    A = torch.tensor([[0.2, -1.0], [0.7, -0.6]], dtype=F64)
    cnf = CNF(Linear(A), dim=2, t1=1.3, trace="exact", rtol=1e-10, atol=1e-10)
    x = torch.randn(5, 2, dtype=F64)
    z0, c0 = cnf.inverse(x)
    assert torch.allclose(c0, torch.full((5,), -float(torch.trace(A)) * 1.3, dtype=F64),
                          atol=1e-9)
    exact_z0 = x @ torch.linalg.matrix_exp(-A * 1.3).T
    assert torch.allclose(z0, exact_z0, atol=1e-8)
    expected = cnf.base_log_prob(exact_z0) - float(torch.trace(A)) * 1.3
    assert torch.allclose(cnf.log_prob(x), expected, atol=1e-8)


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_hutchinson_trace_is_unbiased(noise):
    A = torch.tensor([[0.2, -1.0, 0.3], [0.7, -0.6, 0.1], [0.0, 0.4, 0.5]], dtype=F64)
    cnf = CNF(Linear(A), dim=3, t1=1.0, trace="hutchinson", noise=noise, rtol=1e-9,
              atol=1e-9)
    x = torch.randn(1, 3, dtype=F64).expand(2000, 3).contiguous()
    torch.manual_seed(3)
    with torch.no_grad():
        _, c0 = cnf.inverse(x)  # one noise draw per sample
    se = float(c0.std()) / math.sqrt(len(c0))
    assert abs(float(c0.mean()) + float(torch.trace(A))) < 3 * se


def test_flow_matching_trains_a_flow_whose_density_integrates_to_one():
    torch.manual_seed(0)
    field = _mlp_field(dim=2, hidden=64)
    opt = torch.optim.Adam(field.parameters(), lr=3e-3)
    data = sample_2d("8gaussians", 4000, seed=0)
    first = None
    for _ in range(300):
        x1 = data[torch.randint(0, len(data), (256,))]
        loss = flow_matching_loss(field, x1)
        first = float(loss) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.7 * first
    cnf = CNF(field, dim=2, trace="exact", rtol=1e-5, atol=1e-5)
    # the trained flow moves mass towards the data: samples spread like the data
    with torch.no_grad():
        s = cnf.sample(2000)
    assert abs(float(s.pow(2).sum(1).mean().sqrt()) - float(data.pow(2).sum(1).mean().sqrt())) \
        < 0.5
    # exp(log p) integrates to ≈1 over a grid covering the mass
    n = 80
    g = torch.linspace(-6, 6, n)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        p = cnf.log_prob(grid).exp()
    mass = float(p.sum()) * float(g[1] - g[0]) ** 2
    assert abs(mass - 1.0) < 0.03, mass


def test_fixed_step_sampling_equals_a_hand_written_euler_loop():
    field = _mlp_field(dim=2, hidden=16)
    z0 = torch.randn(64, 2)
    cnf = CNF(field, dim=2)
    with torch.no_grad():
        ours = cnf.sample(64, z0=z0, method="euler", options={"step_size": 0.05})
        x = z0.clone()
        for k in range(20):
            x = x + 0.05 * field(torch.tensor(k * 0.05), x)
    assert torch.allclose(ours, x, atol=1e-5)


# --- data -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TOY_2D))
def test_toy_densities_are_seeded_finite_and_spread(name):
    a, b = sample_2d(name, 500, seed=1), sample_2d(name, 500, seed=1)
    assert a.shape == (500, 2) and torch.equal(a, b) and torch.isfinite(a).all()
    assert 0.3 < float(a.std()) < 4.0


def test_data_errors_are_clear():
    with pytest.raises(neurode.InvalidInputError, match="unknown 2-D data set"):
        sample_2d("swissroll", 10)
    with pytest.raises(neurode.InvalidInputError, match="nothing is downloaded"):
        load_torchvision("mnist", "/nonexistent/folder")
    pytest.importorskip("sklearn")
    xtr, ytr, xte, _ = load_digits()
    assert xtr.shape[1:] == (1, 8, 8) and len(xtr) + len(xte) == 1797
    assert float(xtr.max()) <= 1.0 and set(ytr.tolist()) == set(range(10))


# --- latent ODE -------------------------------------------------------------------------------


def test_periodic_series_are_irregular_per_series_and_seeded():
    t, x, tf, _ = periodic_series(8, 20, n_future=5, seed=3)
    assert t.shape == (8, 20) and x.shape == (8, 20, 1) and tf.shape == (8, 5)
    assert (t[:, 1:] > t[:, :-1]).all() and not torch.equal(t[0], t[1])
    assert (tf.min(1).values > t.max(1).values).all()
    assert torch.equal(periodic_series(8, 20, seed=3)[0], t)


def test_latent_ode_decodes_each_series_on_its_own_times():
    torch.manual_seed(0)
    model = LatentODE(latent_dim=3, hidden=16, rnn_hidden=16, rtol=1e-7, atol=1e-8)
    t, _, _, _ = periodic_series(4, 10, seed=0)
    z0 = torch.randn(4, 3)
    with torch.no_grad():
        both = model.decode(z0, t)
        alone = torch.cat([model.decode(z0[b:b + 1], t[b:b + 1]) for b in range(4)])
    assert both.shape == (4, 10, 1)
    assert torch.allclose(both, alone, atol=1e-5)


def test_latent_ode_and_gru_baseline_training_lowers_their_losses():
    torch.manual_seed(0)
    t, x, tf, xf = periodic_series(128, 20, n_future=10, seed=0)
    model = LatentODE(latent_dim=4, hidden=32, rnn_hidden=32)
    gru = GRUBaseline(hidden=32)
    opt_m = torch.optim.Adam(model.parameters(), lr=1e-2)
    opt_g = torch.optim.Adam(gru.parameters(), lr=1e-2)
    with torch.no_grad():
        torch.manual_seed(1)
        start_m = model.elbo_loss(x, t)[0].item()
        start_g = gru.loss(x, t).item()
    for _ in range(40):
        idx = torch.randint(0, 128, (32,))
        loss, _ = model.elbo_loss(x[idx], t[idx])
        opt_m.zero_grad()
        loss.backward()
        opt_m.step()
        lg = gru.loss(x[idx], t[idx])
        opt_g.zero_grad()
        lg.backward()
        opt_g.step()
    with torch.no_grad():
        torch.manual_seed(1)
        end_m = model.elbo_loss(x, t)[0].item()
        end_g = gru.loss(x, t).item()
        pred = model.extrapolate(x, t, tf)
        pred_g = gru.extrapolate(x, t, tf)
    assert end_m < 0.6 * start_m, (start_m, end_m)
    assert end_g < 0.5 * start_g, (start_g, end_g)
    assert pred.shape == xf.shape and pred_g.shape == xf.shape
    assert torch.isfinite(pred).all() and torch.isfinite(pred_g).all()


def test_augmented_block_gradients_match_finite_differences():
    field = _mlp_field(dim=3, hidden=8, dtype=F64)
    block = ODEBlock(field, augment_dim=1, gradient="adjoint", rtol=1e-10, atol=1e-10)
    x = torch.tensor([[0.3, -0.7], [1.1, 0.2]], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: block(x), (x,), atol=1e-6, rtol=1e-5)


def test_cnf_maximum_likelihood_training_with_the_adjoint_lowers_the_nll():
    torch.manual_seed(0)
    cnf = CNF(_mlp_field(dim=2, hidden=32), dim=2, trace="hutchinson", rtol=1e-4, atol=1e-4,
              gradient="adjoint")
    data = sample_2d("moons", 2000, seed=0)
    opt = torch.optim.Adam(cnf.parameters(), lr=1e-2)
    with torch.no_grad():
        start = -cnf.log_prob(data[:500]).mean().item()
    for _ in range(30):
        x = data[torch.randint(0, 2000, (128,))]
        loss = -cnf.log_prob(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = -cnf.log_prob(data[:500]).mean().item()
    assert end < start - 0.3, (start, end)


def test_spiral_fitting_loss_falls_tenfold():
    from neurode.data import spiral_trajectory

    torch.manual_seed(0)
    t, _, obs = spiral_trajectory(100, t_max=10.0, noise=0.01, seed=0)
    func = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 2))
    field = ODEFunc(func)
    opt = torch.optim.Adam(field.parameters(), lr=1e-2)

    def batch_loss(starts):
        y0 = obs[starts]
        ts = t[:10] - t[0]
        idx = starts.unsqueeze(0) + torch.arange(10).unsqueeze(1)
        pred = neurode.odeint_adjoint(field, y0, ts, rtol=1e-5, atol=1e-6)
        return (pred - obs[idx]).pow(2).mean()

    with torch.no_grad():
        first = batch_loss(torch.arange(0, 90, 3)).item()
    for _ in range(150):
        loss = batch_loss(torch.randint(0, 90, (16,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = batch_loss(torch.arange(0, 90, 3)).item()
    assert last < first / 10, (first, last)


def test_gru_baseline_extrapolates_from_one_observation_and_refuses_to_score_it():
    from neurode.nn import GRUBaseline

    torch.manual_seed(0)
    g = GRUBaseline(2, 8)
    x, t = torch.randn(3, 1, 2), torch.zeros(3, 1)
    out = g.extrapolate(x, t, torch.ones(3, 2))
    assert out.shape == (3, 2, 2) and torch.isfinite(out).all()
    assert g.extrapolate(x, t, torch.ones(3, 0)).shape == (3, 0, 2)
    with pytest.raises(neurode.InvalidInputError, match="at least 2 observations"):
        g.loss(x, t)
    with pytest.raises(neurode.InvalidInputError, match="t_new must be"):
        g.extrapolate(x, t, torch.ones(2))


def test_time_input_layers_raise_the_named_input_error():
    from neurode.nn import ConcatLinear

    with pytest.raises(neurode.InvalidInputError, match=r"t must be 0-d or of shape \(2,\)"):
        ConcatLinear(3, 4)(torch.zeros(3), torch.randn(2, 3))
