"""Stiff problems: neurode's adaptive Radau IIA(5) against SciPy's Radau and BDF, and dopri5.

Robertson's kinetics to t = 1e5 and Van der Pol with mu = 1000 on [0, 3000], rtol = 1e-6.
Per solver: steps (accepted + rejected), function evaluations, Jacobian evaluations, LU
factorisations, wall time (median of 3) and the worst error at the output times relative to
``atol + rtol·|y|`` against SciPy Radau at rtol = 1e-11. dopri5 runs with a step cap (it needs
stability-bound steps: millions on these spans) and reports how far it got.

    python benchmarks/bench_stiff.py      # writes benchmarks/results/stiff.json
"""

from __future__ import annotations

import functools
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy import integrate

import neurode

F64 = torch.float64
RTOL = 1e-6
DOPRI_CAP = 20_000


def robertson(t, y):
    y1, y2, y3 = y[0], y[1], y[2]
    return torch.stack([-0.04 * y1 + 1e4 * y2 * y3, 0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2**2,
                        3e7 * y2**2])


def robertson_np(t, y):
    y1, y2, y3 = y
    return [-0.04 * y1 + 1e4 * y2 * y3, 0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2**2, 3e7 * y2**2]


MU = 1000.0


def vdp(t, y):
    return torch.stack([y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]])


def vdp_np(t, y):
    return [y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]]


PROBLEMS = {
    "robertson": (robertson, robertson_np, [1.0, 0.0, 0.0],
                  [0, 1e-3, 1e-1, 1, 10, 100, 1e3, 1e4, 1e5], 1e-10),
    "vdp_mu1000": (vdp, vdp_np, [2.0, 0.0], list(np.linspace(0, 3000, 11)), 1e-6),
}


def scipy_solve(name, fnp, y0, ts, rtol, atol):
    """SciPy's solver class stepped by hand, so the steps can be counted."""
    ode = getattr(integrate, name)(fnp, ts[0], np.array(y0), ts[-1], rtol=rtol, atol=atol)
    out = [np.array(y0)]
    i = 1
    steps = 0
    while i < len(ts):
        ode.step()
        steps += 1
        if ode.status == "failed":
            raise RuntimeError(f"scipy {name} failed")
        if ts[i] <= ode.t:
            dense = ode.dense_output()
            while i < len(ts) and ts[i] <= ode.t:
                out.append(dense(ts[i]))
                i += 1
    return np.array(out), {"steps": steps, "nfe": ode.nfev, "n_jac": ode.njev, "n_lu": ode.nlu}


def err_over_tol(ys, ref, atol):
    return float(np.max(np.abs(ys - ref) / (atol + RTOL * np.abs(ref))))


def timed(fn, repeats=3):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def main() -> dict:
    torch.set_num_threads(1)
    results = {}
    for pname, (f, fnp, y0, ts, atol) in PROBLEMS.items():
        ref, _ = scipy_solve("Radau", fnp, y0, ts, 1e-11, atol * 1e-4)
        rows = {}
        for sname in ("Radau", "BDF"):
            (ys, st), sec = timed(functools.partial(scipy_solve, sname, fnp, y0, ts, RTOL, atol))
            rows[f"scipy {sname}"] = {**st, "time_s": sec, "err_over_tol": err_over_tol(ys, ref,
                                                                                        atol)}
        y0_t, ts_t = torch.tensor(y0, dtype=F64), torch.tensor(ts, dtype=F64)
        sol, sec = timed(functools.partial(neurode.solve_ivp, f, y0_t, ts_t, method="radau",
                                           rtol=RTOL, atol=atol))
        st = sol.stats
        rows["neurode radau"] = {"steps": st.n_steps, "nfe": st.nfe, "n_jac": st.n_jac,
                                 "n_lu": st.n_lu, "time_s": sec,
                                 "err_over_tol": err_over_tol(sol.ys.numpy(), ref, atol)}
        t0 = time.perf_counter()
        sol = neurode.solve_ivp(f, y0_t, ts_t, method="dopri5", rtol=RTOL, atol=atol,
                                options={"max_num_steps": DOPRI_CAP}, throw=False)
        reached = float(sol.ts[~torch.isnan(sol.ys.reshape(len(ts), -1)).any(1)][-1])
        rows["neurode dopri5"] = {"steps": sol.stats.n_steps, "nfe": sol.stats.nfe, "n_jac": 0,
                                  "n_lu": 0, "time_s": time.perf_counter() - t0,
                                  "status": sol.status, "last_output_reached": reached}
        results[pname] = rows
    return results


def orders() -> dict:
    """Empirical order of each fixed implicit method: harmonic oscillator on [0, 2], h halved."""
    from neurode.solvers.tableaux import IMPLICIT_TABLEAUX

    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    t = torch.tensor([0.0, 2.0], dtype=F64)
    exact = torch.tensor([np.cos(2.0), -np.sin(2.0)], dtype=F64)
    out = {}
    for name in IMPLICIT_TABLEAUX:
        errs = [float((neurode.odeint(lambda t, y: torch.stack([y[1], -y[0]]), y0, t,
                                      method=name, rtol=1e-13, atol=1e-15,
                                      options={"step_size": h})[-1] - exact).abs().max())
                for h in (0.2, 0.1, 0.05)]
        out[name] = float(np.log2(errs[1] / errs[2]))
    return out


def show(results: dict) -> None:
    print("empirical orders (h 0.1 -> 0.05): " + ", ".join(
        f"{k} {v:.2f}" for k, v in results.pop("orders").items()))
    for pname, rows in results.items():
        print(f"\n{pname} (rtol {RTOL:g})")
        print(f"{'solver':<16}{'steps':>8}{'NFE':>8}{'Jac':>6}{'LU':>6}{'time s':>9}"
              f"{'err/tol':>9}")
        for name, r in rows.items():
            err = f"{r['err_over_tol']:.2f}" if "err_over_tol" in r else \
                f"stopped at cap; last output reached t={r['last_output_reached']:g}"
            print(f"{name:<16}{r['steps']:>8}{r['nfe']:>8}{r['n_jac']:>6}{r['n_lu']:>6}"
                  f"{r['time_s']:>9.3f}  {err}")
        ratio = rows["neurode radau"]["steps"] / min(rows["scipy Radau"]["steps"],
                                                     rows["scipy BDF"]["steps"])
        print(f"steps neurode radau / min(scipy Radau, BDF) = {ratio:.2f}")


if __name__ == "__main__":
    res = main()
    res["orders"] = orders()
    out = Path(__file__).parent / "results" / "stiff.json"
    out.write_text(json.dumps(res, indent=2))
    show(res)
    print(f"\nwrote {out}")
