"""The first look: one ODE solved with torchdiffeq's call and with neurode's richer one.

    python examples/quickstart.py

The linear spiral dz/dt = A z has the exact solution z(t) = exp(At) z0; the script prints the
error of both solves against it and the solver's statistics. The README's and the home page's
code is this file's ``quickstart`` section (a test keeps the README's copy equal to it).
"""

# --8<-- [start:quickstart]
import torch

import neurode

A = torch.tensor([[-0.1, -1.0], [1.0, -0.1]], dtype=torch.float64)
z0 = torch.tensor([0.6, 0.3], dtype=torch.float64)
t = torch.linspace(0.0, 25.0, 100, dtype=torch.float64)


def f(t, z):                                  # func(t, y) -> dy/dt, any shape and batch
    return z @ A.T


zs = neurode.odeint(f, z0, t)                 # torchdiffeq's call: (100, 2), dopri5

sol = neurode.solve_ivp(f, z0, t, method="tsit5", rtol=1e-8, atol=1e-10, dense=True)
print(sol.stats)                              # evaluations, accepted and rejected steps
z_mid = sol.evaluate(torch.tensor(12.345))    # dense output between the steps taken
# --8<-- [end:quickstart]


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Errors of the solves above against exp(At) z0, and the evaluations they took."""
    exact = torch.linalg.matrix_exp(t[:, None, None] * A) @ z0
    mid = torch.linalg.matrix_exp(12.345 * A) @ z0
    res = {"odeint error": float((zs - exact).abs().max()),
           "solve_ivp error": float((sol.ys - exact).abs().max()),
           "dense output error": float((z_mid - mid).abs().max()),
           "nfe": float(sol.stats.nfe)}
    for k, v in res.items():
        print(f"{k:20s} {v:.3g}")
    return res


if __name__ == "__main__":
    main()
