"""Tolerances, dense output and tuple states, each checked against an exact solution.

    python examples/dense_and_tuples.py

* ``dy/dt = cos(t) y``, ``y(0) = 1`` has the solution ``y = exp(sin t)``. Solved with dopri5
  at rtol = atol from 1e-3 to 1e-12, the error follows the tolerance and the cost grows
  slowly (about 10^(1/5) more evaluations per decade for a 5th-order method).
* The same problem with ``dense=True``: the solve asks only for ``t = [0, 10]``, yet
  ``sol.evaluate`` answers at 1,000 times in between from the steps it took (each step's own
  4th-order interpolant); ``neurode.odeint_dense`` returns the same thing as a callable.
  Output times never cost steps: asking for 1,000 outputs takes the steps that 2 take.
* A tuple state ``(x, v, s)``: position and velocity of a body on a circular orbit around a
  unit mass (``x'' = -x / |x|³``, shapes ``(2,)`` and ``(2,)``) and the action integral
  ``s' = |v|² / 2`` (a scalar) solved as one ODE. On the unit circle ``x = (cos t, sin t)`` and
  ``s = t / 2``.
"""

from __future__ import annotations

import argparse
import math

import torch

import neurode

F64 = torch.float64


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the three parts; return their errors and evaluation counts."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--t-end", type=float, default=10.0)
    args = p.parse_args(argv)
    out: dict[str, float] = {}

    # --8<-- [start:tolerances]
    def growth(t, y):
        return torch.cos(t) * y

    y0 = torch.ones(1, dtype=F64)
    t = torch.linspace(0.0, args.t_end, 51, dtype=F64)
    exact = torch.exp(torch.sin(t))[:, None]
    for tol in (1e-3, 1e-6, 1e-9, 1e-12):
        sol = neurode.solve_ivp(growth, y0, t, rtol=tol, atol=tol)
        err = (sol.ys - exact).abs().max().item()
        out[f"error tol={tol:g}"], out[f"nfe tol={tol:g}"] = err, sol.stats.nfe
        print(f"rtol = atol = {tol:5.0e}: max error {err:.1e}, {sol.stats.n_steps:4d} steps, "
              f"nfe {sol.stats.nfe}")
    # --8<-- [end:tolerances]

    # --8<-- [start:dense]
    span = torch.tensor([0.0, args.t_end], dtype=F64)
    sol = neurode.solve_ivp(growth, y0, span, rtol=1e-8, atol=1e-8, dense=True)
    fine = torch.linspace(0.0, args.t_end, 1000, dtype=F64)
    y_fine = sol.evaluate(fine)                                    # (1000, 1)
    dense_err = (y_fine[:, 0] - torch.exp(torch.sin(fine))).abs().max().item()
    many = neurode.solve_ivp(growth, y0, fine, rtol=1e-8, atol=1e-8)  # 1,000 outputs
    y = neurode.odeint_dense(growth, y0, 0.0, args.t_end, rtol=1e-8, atol=1e-8)
    y_mid = y(torch.tensor(math.pi / 2, dtype=F64))                 # (1,): exp(1) = e
    # --8<-- [end:dense]
    out.update({"dense error": dense_err, "dense steps": sol.stats.n_steps,
                "steps with 1000 outputs": many.stats.n_steps,
                "odeint_dense error": abs(y_mid.item() - math.e),
                "dense vs outputs": (many.ys - y_fine).abs().max().item()})
    print(f"dense output: {sol.stats.n_steps} steps for t = [0, {args.t_end:g}], evaluated at "
          f"1000 times: max error {dense_err:.1e}; asking for the 1000 outputs instead: "
          f"{many.stats.n_steps} steps (difference {out['dense vs outputs']:.0e})")
    print(f"odeint_dense: y(π/2) = {y_mid.item():.10f} (e = {math.e:.10f})")

    # --8<-- [start:tuple]
    def orbit(t, state):
        x, v, _action = state                # shapes (2,), (2,), ()
        r3 = x.norm() ** 3
        return v, -x / r3, 0.5 * (v * v).sum()

    state0 = (torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
              torch.zeros((), dtype=F64))
    t = torch.linspace(0.0, 2 * math.pi, 9, dtype=F64)
    xs, vs, ss = neurode.odeint(orbit, state0, t, rtol=1e-10, atol=1e-10)  # (9, 2), (9, 2), (9,)
    # --8<-- [end:tuple]
    circle = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    out["orbit error"] = (xs - circle).abs().max().item()
    out["action error"] = (ss - t / 2).abs().max().item()
    print(f"tuple state: shapes {tuple(xs.shape)}, {tuple(vs.shape)}, {tuple(ss.shape)}; "
          f"after one orbit x = {[round(c, 8) for c in xs[-1].tolist()]}, max |x - (cos t, "
          f"sin t)| {out['orbit error']:.1e}, max |s - t/2| {out['action error']:.1e}")
    return out


if __name__ == "__main__":
    main()
