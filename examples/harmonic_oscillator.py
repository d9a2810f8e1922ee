"""The damped harmonic oscillator ``x'' = -ω² x - 2ζω x'`` as a second-order ODE.

    python examples/harmonic_oscillator.py [--omega 2.0] [--zeta 0.1]

``neurode.nn.SecondOrderFunc`` turns an acceleration ``a(t, x, v)`` into the first-order system
``d[x, v]/dt = [v, a(t, x, v)]`` over the concatenated state ``[x, v]``. The script

* solves it and compares ``x(t)`` with the closed form (under-damped, ``ζ < 1``):
  ``x = e^{-ζωt} (x0 cos ω_d t + (v0 + ζω x0)/ω_d sin ω_d t)``, ``ω_d = ω √(1 - ζ²)``;
* differentiates the final position ``x(T)`` with respect to ω, once by backpropagating through
  the solver and once with the adjoint method, and compares both with the derivative of the
  closed form (itself from autograd on the formula);
* checks that without damping a high-order adaptive method (not a symplectic one) keeps the
  energy ``(v² + ω² x²)/2`` to about the tolerance over 30 periods.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

import neurode
from neurode.nn import SecondOrderFunc


# --8<-- [start:spring]
class Spring(nn.Module):
    """The acceleration of a damped spring; ω is a trainable parameter."""

    def __init__(self, omega: float, zeta: float):
        super().__init__()
        self.omega = nn.Parameter(torch.tensor(omega, dtype=torch.float64))
        self.zeta = zeta

    def forward(self, t: torch.Tensor, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return -self.omega**2 * x - 2 * self.zeta * self.omega * v
# --8<-- [end:spring]


def exact_position(t: torch.Tensor, x0: float, v0: float, omega: torch.Tensor,
                   zeta: float) -> torch.Tensor:
    wd = omega * math.sqrt(1 - zeta**2)
    return torch.exp(-zeta * omega * t) * (x0 * torch.cos(wd * t)
                                           + (v0 + zeta * omega * x0) / wd * torch.sin(wd * t))


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the three checks; return their errors."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--omega", type=float, default=2.0)
    p.add_argument("--zeta", type=float, default=0.1, help="damping ratio, in [0, 1)")
    p.add_argument("--t-end", type=float, default=10.0)
    args = p.parse_args(argv)
    # --8<-- [start:solve]
    x0, v0 = 1.0, 0.0
    t = torch.linspace(0.0, args.t_end, 101, dtype=torch.float64)
    y0 = torch.tensor([x0, v0], dtype=torch.float64)  # [x, v]: a 1-D state, so dim=0
    spring = Spring(args.omega, args.zeta)
    field = SecondOrderFunc(spring, dim=0)
    out: dict[str, float] = {}

    ys = neurode.odeint(field, y0, t, rtol=1e-10, atol=1e-12)
    exact = exact_position(t, x0, v0, spring.omega.detach(), args.zeta)
    out["position error"] = (ys[:, 0] - exact).abs().max().item()
    print(f"max |x(t) - exact| on [0, {args.t_end:g}]: {out['position error']:.2e}")
    # --8<-- [end:solve]

    # --8<-- [start:gradient]
    # d x(T) / d omega: backprop, adjoint, closed form
    omega = spring.omega
    reference, = torch.autograd.grad(exact_position(t[-1], x0, v0, omega, args.zeta), omega)
    for name, solve in (("backprop", neurode.odeint), ("adjoint", neurode.odeint_adjoint)):
        ys = solve(field, y0, t, rtol=1e-10, atol=1e-12)
        g, = torch.autograd.grad(ys[-1, 0], omega)
        out[f"d/domega {name}"] = abs(g.item() - reference.item()) / abs(reference.item())
        print(f"dx(T)/dω by {name:8s}: {g.item():+.10f}  (closed form {reference.item():+.10f},"
              f" rel. error {out[f'd/domega {name}']:.1e})")
    # --8<-- [end:gradient]

    # --8<-- [start:energy]
    # energy without damping, over ~30 periods
    free = SecondOrderFunc(Spring(args.omega, 0.0), dim=0)
    tt = torch.linspace(0.0, 30 * 2 * math.pi / args.omega, 300, dtype=torch.float64)
    ys = neurode.odeint(free, y0, tt, method="dopri8", rtol=1e-10, atol=1e-12)
    energy = 0.5 * (ys[:, 1] ** 2 + args.omega**2 * ys[:, 0] ** 2)
    out["energy drift"] = (energy - energy[0]).abs().max().item() / energy[0].item()
    print(f"undamped, 30 periods with dopri8: relative energy drift {out['energy drift']:.1e}")
    # --8<-- [end:energy]
    return out


if __name__ == "__main__":
    main()
