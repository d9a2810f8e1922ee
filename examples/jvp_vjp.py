"""Push a tangent vector forward (JVP) and pull a cotangent back (VJP) through an ODE solve.

    python examples/jvp_vjp.py

For the linear system ``dz/dt = A z`` the flow map is ``z(T) = exp(AT) z0``, so its Jacobian
with respect to ``z0`` is exactly ``J = exp(AT)``:

* **JVP** (forward mode): ``neurode.odeint_jvp`` integrates the tangent equation
  ``dw/dt = ∂f/∂z · w`` beside ``z`` and returns ``w(T) = J v`` for a direction ``v``, in one
  solve, without storing anything for a backward pass. With ``tangent_params`` it gives the
  directional derivative along a change of the parameters too.
* **VJP** (reverse mode): ``torch.autograd.grad`` of ``u · z(T)`` gives ``Jᵀ u``, by
  backpropagating through the solver's steps (``neurode.odeint``) or by solving the adjoint
  equation backwards (``neurode.odeint_adjoint``, O(1) memory in the number of steps).

The script compares both with the exact ``J v`` and ``Jᵀ u``, checks the dot-product identity
``u · (J v) = (Jᵀ u) · v`` that ties them together, and takes a parameter JVP of a small neural
field against a finite difference.
"""

from __future__ import annotations

import torch
from torch import nn

import neurode
from neurode.nn import ODEFunc


class Linear(nn.Module):
    def __init__(self, A: torch.Tensor):
        super().__init__()
        self.A = nn.Parameter(A.clone())

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.A @ z


def main() -> dict[str, float]:
    """Run the comparisons; return their relative errors."""
    dt = torch.float64
    g = torch.Generator().manual_seed(0)
    n, T = 4, 2.0
    A = 0.5 * torch.randn(n, n, generator=g, dtype=dt)
    z0, v, u = (torch.randn(n, generator=g, dtype=dt) for _ in range(3))
    t = torch.tensor([0.0, T], dtype=dt)
    J = torch.linalg.matrix_exp(A * T)
    field = Linear(A)
    tol = {"rtol": 1e-10, "atol": 1e-12}
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    out: dict[str, float] = {}

    # forward mode: J v
    _, ws = neurode.odeint_jvp(field, z0, t, tangent_y0=v, **tol)
    out["jvp"] = rel(ws[-1], J @ v)
    print(f"JVP  J v          rel. error vs exp(AT) v : {out['jvp']:.1e}")

    # reverse mode: J^T u, through the solver and by the adjoint
    vjps = {}
    for name, solve in (("backprop", neurode.odeint), ("adjoint", neurode.odeint_adjoint)):
        y0 = z0.clone().requires_grad_(True)
        zT = solve(field, y0, t, **tol)[-1]
        vjps[name], = torch.autograd.grad(zT, y0, grad_outputs=u)
        out[f"vjp {name}"] = rel(vjps[name], J.T @ u)
        print(f"VJP  Jᵀ u {name:8s} rel. error vs exp(AT)ᵀ u: {out[f'vjp {name}']:.1e}")

    lhs, rhs = (u @ ws[-1]).item(), (vjps["adjoint"] @ v).item()
    out["dot product"] = abs(lhs - rhs) / abs(lhs)
    print(f"u·(J v) = {lhs:+.12f}   (Jᵀ u)·v = {rhs:+.12f}   rel. gap {out['dot product']:.1e}")

    # a parameter direction for a neural field: d z(T) along dθ, vs a central difference
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(n, 16), nn.Tanh(), nn.Linear(16, n)).to(dt)
    field_nn = ODEFunc(net)  # f(t, z) = net(z), a module: odeint_jvp sees its parameters
    params = tuple(field_nn.parameters())
    dtheta = tuple(torch.randn_like(p) for p in params)
    _, w = neurode.odeint_jvp(field_nn, z0, t, tangent_params=dtheta, **tol)
    eps = 1e-5
    with torch.no_grad():
        ends = []
        for s in (1.0, -1.0):
            for p, d in zip(params, dtheta, strict=True):
                p.add_(s * eps * d)
            ends.append(neurode.odeint(field_nn, z0, t, **tol)[-1])
            for p, d in zip(params, dtheta, strict=True):
                p.sub_(s * eps * d)
    fd = (ends[0] - ends[1]) / (2 * eps)
    out["parameter jvp"] = rel(w[-1], fd)
    print(f"JVP along dθ of an MLP field, rel. gap to a central difference: "
          f"{out['parameter jvp']:.1e}")
    return out


if __name__ == "__main__":
    main()
