"""``torch.func`` over the custom-gradient solves: ``vmap`` over ``y0`` (forward, ``grad`` of it and
per-sample gradients ``vmap(grad(...))``) equals looping over the samples."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import grad, vmap

import neurode

F64 = torch.float64
T = torch.linspace(0.0, 1.2, 3, dtype=F64)


class Field(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 3)).double()

    def forward(self, t, y):
        return self.net(y) - 0.3 * y


SOLVES = {
    "adjoint": lambda f, y0: neurode.odeint_adjoint(f, y0, T, rtol=1e-8, atol=1e-8),
    "checkpoint": lambda f, y0: neurode.odeint_checkpoint(f, y0, T, rtol=1e-8, atol=1e-8),
    "reversible": lambda f, y0: neurode.odeint_reversible(f, y0, T, options={"step_size": 0.02}),
}


def _loss(ys):
    return (ys[-1] ** 2).sum() + ys[1].sum()


def _y0s():
    return torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=F64)


@pytest.mark.parametrize("name", list(SOLVES))
def test_vmap_forward_and_input_gradients_equal_the_per_sample_loop(name):
    f, solve = Field(), SOLVES[name]
    y0s = _y0s()
    batched = vmap(lambda y0: solve(f, y0))(y0s)
    looped = torch.stack([solve(f, y0) for y0 in y0s])
    assert batched.shape == (4, 3, 3)
    torch.testing.assert_close(batched, looped, rtol=0, atol=0)

    g_batched = vmap(grad(lambda y0: _loss(solve(f, y0))))(y0s)
    g_loop = torch.stack([torch.autograd.grad(_loss(solve(f, y0)), y0)[0]
                          for y0 in y0s.clone().requires_grad_().unbind(0)])
    # The adjoint inside transforms takes functional VJPs (same math, other rounding), which can
    # tip an adaptive step decision: agreement to the backward tolerance there.
    tol = 1e-7 if name == "adjoint" else 1e-12
    torch.testing.assert_close(g_batched, g_loop, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", list(SOLVES))
def test_per_sample_parameter_gradients_and_grad_of_vmap(name):
    f, solve = Field(), SOLVES[name]
    params = {k: v.detach() for k, v in f.named_parameters()}
    y0s = _y0s()

    def loss(p, y0):
        return _loss(_call(f, p, y0, solve))

    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, y0s)
    total = grad(lambda p: vmap(lambda y0: loss(p, y0))(y0s).sum())(params)
    for b in range(4):
        ref = torch.autograd.grad(_loss(solve(f, y0s[b])), list(f.parameters()))
        for (k, _), r in zip(f.named_parameters(), ref, strict=True):
            torch.testing.assert_close(per_sample[k][b], r, rtol=1e-7, atol=1e-9)
    for k, v in total.items():
        torch.testing.assert_close(v, per_sample[k].sum(0), rtol=1e-7, atol=1e-9)


def _call(f, p, y0, solve):
    """``solve`` with ``f``'s parameters replaced by ``p`` (the module reads them itself)."""
    with torch.nn.utils.stateless._reparametrize_module(f, p):
        return solve(f, y0)


def test_vmap_over_times_is_refused_with_a_clear_error():
    f = Field()
    ts = torch.stack([T, 2 * T])
    with pytest.raises(neurode.InvalidInputError, match="only y0 may be batched"):
        vmap(lambda t: neurode.odeint_adjoint(f, torch.ones(3, dtype=F64), t))(ts)
