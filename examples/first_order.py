"""Solve first-order ODEs and check them against their exact solutions.

    python examples/first_order.py

Three problems, from the simplest up:

* ``dz/dt = t``, ``z(0) = 0``: the solution is ``z = t²/2``. Any method of order ≥ 2 is exact
  at its steps here, because the field depends on ``t`` alone and is a polynomial of degree 1.
  Between the steps of a fixed grid, outputs are interpolated: linearly by default (as in
  torchdiffeq; error ``h²/8·|z''|``), or with ``options={"interp": "cubic"}`` by cubic Hermite
  interpolation, which is exact for this quadratic.
* ``dz/dt = -k z`` for a batch of rates ``k`` (shape ``(3,)``): ``z = z0 exp(-k t)``. One call
  solves the whole batch; the tolerance sets the error.
* the same decay integrated *backwards* from ``t = 2`` to ``t = 0`` (a decreasing ``t``).

The script prints the maximum error of each against the exact solution, with the number of
function evaluations, for a fixed-grid method (rk4) and an adaptive one (dopri5).
"""

from __future__ import annotations

import torch

import neurode


def main() -> dict[str, float]:
    """Run the three problems; return their maximum errors (keyed by problem and method)."""
    dt = torch.float64
    t = torch.linspace(0.0, 2.0, 11, dtype=dt)
    errors: dict[str, float] = {}

    # --8<-- [start:polynomial]
    # 1. dz/dt = t: z(t) = t^2 / 2
    for label, method, options in (("rk4", "rk4", {"step_size": 0.25}),
                                   ("rk4 cubic", "rk4", {"step_size": 0.25, "interp": "cubic"}),
                                   ("dopri5", "dopri5", None)):
        sol = neurode.solve_ivp(lambda t, z: t * torch.ones_like(z), torch.zeros(1, dtype=dt),
                                t, method=method, options=options)
        err = (sol.ys[:, 0] - t**2 / 2).abs().max().item()
        errors[f"dz/dt=t {label}"] = err
        print(f"dz/dt = t          {label:9s} max error {err:.2e}   nfe {sol.stats.nfe}")
    # --8<-- [end:polynomial]

    # --8<-- [start:decay]
    # 2. a batch of decays dz/dt = -k z: z(t) = z0 exp(-k t)
    k = torch.tensor([0.5, 1.0, 3.0], dtype=dt)
    z0 = torch.tensor([1.0, 2.0, -1.0], dtype=dt)
    exact = z0 * torch.exp(-k * t[:, None])  # (T, 3)
    for method, options in (("rk4", {"step_size": 0.05}), ("dopri5", None)):
        sol = neurode.solve_ivp(lambda t, z: -k * z, z0, t, method=method, rtol=1e-8, atol=1e-10,
                                options=options)
        err = (sol.ys - exact).abs().max().item()
        errors[f"decay {method}"] = err
        print(f"dz/dt = -k z       {method:9s} max error {err:.2e}   nfe {sol.stats.nfe}")
    # --8<-- [end:decay]

    # --8<-- [start:backwards]
    # 3. backwards in time: start from the exact z(2) and recover z(0)
    t_back = t.flip(0)
    z2 = z0 * torch.exp(-2.0 * k)
    zs = neurode.odeint(lambda t, z: -k * z, z2, t_back, rtol=1e-8, atol=1e-10)
    err = (zs - exact.flip(0)).abs().max().item()
    errors["decay backwards dopri5"] = err
    print(f"backwards 2 -> 0   dopri5    max error {err:.2e}   z(0) = {zs[-1].tolist()}")
    # --8<-- [end:backwards]
    return errors


if __name__ == "__main__":
    main()
