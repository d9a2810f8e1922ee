"""Stiff problems: why an explicit method crawls, and what the implicit ones do instead.

    python examples/stiff.py [--problem both] [--rtol 1e-6] [--cap 20000]

Two classic stiff problems, in float64:

* Robertson's chemical kinetics (three species, rate constants 0.04, 1e4 and 3e7) to t = 1e5;
* Van der Pol's oscillator ``x'' = mu (1 - x²) x' - x`` with mu = 1000 on [0, 3000].

The script first shows *why* they are hard for ``dopri5``: over a short span it records every
accepted step ``h`` and the largest eigenvalue ``|λ|`` of the Jacobian there, and finds
``h |λ|`` pinned at dopri5's stability boundary (about 3.3, computed from its Butcher tableau),
whatever the tolerance: the step count barely changes from rtol 1e-3 to 1e-9.

It then solves each problem over its whole span with ``dopri5`` (capped at ``--cap`` steps;
it cannot finish), the adaptive implicit ``radau`` and ``method="auto"`` (explicit while the
problem is not stiff, Radau while it is), and prints steps, function evaluations, Jacobian
evaluations, LU factorisations, wall time and the error against a tight reference (SciPy's
Radau at rtol 1e-10; ``pip install scipy``), as ``max |y - ref| / (atol + rtol |ref|)``.
"""

from __future__ import annotations

import argparse
import time

import torch

import neurode

F64 = torch.float64


# --8<-- [start:problems]
def robertson(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Robertson's kinetics: A -> B (0.04), B + C -> A + C (1e4), B + B -> C + B (3e7)."""
    a, b, c = y[0], y[1], y[2]
    return torch.stack([-0.04 * a + 1e4 * b * c,
                        0.04 * a - 1e4 * b * c - 3e7 * b**2,
                        3e7 * b**2])


class VanDerPol:
    """``x'' = mu (1 - x²) x' - x`` as the system ``[x, v]' = [v, mu (1 - x²) v - x]``."""

    def __init__(self, mu: float):
        self.mu = mu

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, v = y[0], y[1]
        return torch.stack([v, self.mu * (1 - x**2) * v - x])
# --8<-- [end:problems]


def problems(mu: float, t_end: float) -> dict[str, tuple]:
    """name -> (field, the same field in NumPy for the reference, y0, output times, atol)."""
    def robertson_np(t, y):
        a, b, c = y
        return [-0.04 * a + 1e4 * b * c, 0.04 * a - 1e4 * b * c - 3e7 * b**2, 3e7 * b**2]

    def vdp_np(t, y):
        return [y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]]

    t_rob = torch.cat([torch.zeros(1, dtype=F64), torch.logspace(-3, 5, 9, dtype=F64)])
    return {
        "robertson": (robertson, robertson_np, torch.tensor([1.0, 0.0, 0.0], dtype=F64), t_rob,
                      1e-10),
        "vdp": (VanDerPol(mu), vdp_np, torch.tensor([2.0, 0.0], dtype=F64),
                torch.linspace(0.0, t_end, 11, dtype=F64), 1e-6),
    }


def reference(func_np, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """SciPy's Radau at rtol 1e-10: an independent solution to measure errors against."""
    from scipy.integrate import solve_ivp as scipy_solve_ivp

    out = scipy_solve_ivp(func_np, (float(t[0]), float(t[-1])), y0.numpy(), method="Radau",
                          t_eval=t.numpy(), rtol=1e-10, atol=1e-14)
    return torch.tensor(out.y.T, dtype=F64)


# --8<-- [start:boundary]
def stability_boundary(method: str = "dopri5") -> float:
    """Where the stability region of an explicit RK method meets the negative real axis.

    One step of ``y' = λy`` multiplies ``y`` by ``R(z)``, ``z = hλ``; the step is stable while
    ``|R(z)| <= 1``. R is computed from the Butcher tableau (stages ``Y_i = 1 + z Σ a_ij Y_j``,
    ``R = 1 + z Σ b_i Y_i``) and the boundary found by bisection.
    """
    tab = neurode.TABLEAUX[method]

    def growth(z: float) -> float:
        stages: list[float] = []
        for row in tab.a:
            stages.append(1.0 + z * sum(a * s for a, s in zip(row, stages, strict=False)))
        return abs(1.0 + z * sum(b * s for b, s in zip(tab.b, stages, strict=True)))

    lo, hi = 0.1, 10.0  # |R(-0.1)| < 1 and |R(-10)| > 1 for the methods used here
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if growth(-mid) <= 1.0 else (lo, mid)
    return lo
# --8<-- [end:boundary]


# --8<-- [start:stability]
class StepRecorder:
    """Wraps a field and records each accepted step (neurode calls ``callback_accept_step``)."""

    def __init__(self, func):
        self.func = func
        self.h: list[float] = []
        self.y: list[torch.Tensor] = []

    def __call__(self, t, y):
        return self.func(t, y)

    def callback_accept_step(self, t, y, dt):
        self.h.append(abs(float(dt)))
        self.y.append(y.detach().clone())


def h_times_lambda(func, y0: torch.Tensor, t_end: float, rtol: float, atol: float):
    """Solve with dopri5 on [0, t_end]; return (steps, median of h |λ_max| over the second half)."""
    rec = StepRecorder(func)
    sol = neurode.solve_ivp(rec, y0, torch.tensor([0.0, t_end], dtype=F64), method="dopri5",
                            rtol=rtol, atol=atol)
    t0 = torch.tensor(0.0, dtype=F64)
    jac = torch.func.vmap(torch.func.jacrev(lambda y: func(t0, y)))(torch.stack(rec.y))
    lam = torch.linalg.eigvals(jac).abs().amax(dim=1)  # (steps,) spectral radius
    ratio = torch.tensor(rec.h, dtype=F64) * lam
    return sol.stats.n_steps, ratio[len(ratio) // 2:].median().item()
# --8<-- [end:stability]


# --8<-- [start:compare]
def run(method: str, func, y0, t, rtol: float, atol: float, cap: int, ref: torch.Tensor):
    """One solve; its statistics, wall time, how far it got and its error over tolerance."""
    start = time.perf_counter()
    sol = neurode.solve_ivp(func, y0, t, method=method, rtol=rtol, atol=atol,
                            options={"max_num_steps": cap}, throw=False)
    seconds = time.perf_counter() - start
    done = torch.isfinite(sol.ys).all(dim=1)  # rows after a failure are NaN
    done[0] = False  # the initial state is no test
    err = ((sol.ys[done] - ref[done]).abs() / (atol + rtol * ref[done].abs())).max().item() \
        if done.any() else float("nan")
    return {"steps": sol.stats.n_steps, "nfe": sol.stats.nfe, "n_jac": sol.stats.n_jac,
            "n_lu": sol.stats.n_lu, "seconds": seconds, "err/tol": err,
            "t reached": sol.stats.segments[-1].t1, "status": sol.status,
            "segments": sol.stats.segments}
# --8<-- [end:compare]


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the analysis and the comparison; return the measured numbers."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--problem", choices=["robertson", "vdp", "both"], default="both")
    p.add_argument("--rtol", type=float, default=1e-6)
    p.add_argument("--cap", type=int, default=20_000, help="dopri5's step cap (max_num_steps)")
    p.add_argument("--mu", type=float, default=1000.0, help="Van der Pol's stiffness parameter")
    p.add_argument("--t-end", type=float, default=3000.0, help="Van der Pol's time span")
    p.add_argument("--span", type=float, default=5.0,
                   help="span of the h|λ| analysis (and of the tolerance sweep)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    out: dict[str, float] = {}

    boundary = stability_boundary("dopri5")
    out["dopri5 boundary"] = boundary
    print(f"dopri5 is stable for h|λ| <= {boundary:.4f} on the negative real axis")
    # the first torch.func.jacrev of a process imports part of torch (seconds): not timed below
    neurode.odeint(lambda t, y: -y, torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0],
                   dtype=F64), method="radau")

    names = ["robertson", "vdp"] if args.problem == "both" else [args.problem]
    for name in names:
        func, func_np, y0, t, atol = problems(args.mu, args.t_end)[name]
        print(f"\n== {name}: dopri5 on [0, {args.span:g}], step size against the Jacobian")
        for rtol in (1e-3, 1e-6, 1e-9):
            steps, ratio = h_times_lambda(func, y0, args.span, rtol, atol * rtol / args.rtol)
            out[f"{name} dopri5 steps rtol={rtol:g}"] = steps
            out[f"{name} h|lambda| rtol={rtol:g}"] = ratio
            print(f"rtol {rtol:7.0e}: {steps:5d} steps, median h|λ_max| = {ratio:.4f}")

        ref = reference(func_np, y0, t)
        print(f"== {name} on [{float(t[0]):g}, {float(t[-1]):g}], rtol {args.rtol:g}, "
              f"atol {atol:g}")
        print(f"{'method':8s} {'steps':>7s} {'NFE':>8s} {'Jacobians':>9s} {'LUs':>5s} "
              f"{'time s':>7s} {'err/tol':>8s}")
        for method in ("dopri5", "radau", "auto"):
            r = run(method, func, y0, t, args.rtol, atol, args.cap, ref)
            for k in ("steps", "nfe", "n_jac", "n_lu", "seconds", "err/tol", "t reached"):
                out[f"{name} {method} {k}"] = float(r[k])
            note = "" if r["status"] == 0 else f"  stopped by the cap at t = {r['t reached']:.4g}"
            print(f"{method:8s} {r['steps']:7d} {r['nfe']:8d} {r['n_jac']:9d} {r['n_lu']:5d} "
                  f"{r['seconds']:7.3f} {r['err/tol']:8.3f}{note}")
            if method == "auto":
                used = {}
                for seg in r["segments"]:
                    used[seg.method] = used.get(seg.method, 0) + seg.n_steps
                out[f"{name} auto switches"] = len(r["segments"]) - 1
                print(f"auto: {len(r['segments'])} segments, steps by method {used}; first: "
                      + ", ".join(f"{s.method} [{s.t0:.4g}, {s.t1:.4g}]"
                                  for s in r["segments"][:4]))
    return out


if __name__ == "__main__":
    main()
