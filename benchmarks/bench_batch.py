"""Batches: neurode (joint and per-sample, eager and compiled) vs torchdiffeq and torchode.

One command, one process, interleaved A B A B, medians:

1. torchode's setup: 256 Van der Pol oscillators, μ = 2, y0 ~ U(−2, 2)², t ∈ [0, 10] with 200
   output times, dopri5, rtol = atol = 1e-5, float32. Wall time, function-evaluation count and
   loop time = wall − (evaluations × the median cost of one evaluation of the batch).
2. A heterogeneous batch: μ log-uniform in [0.1, 50], otherwise as 1: steps per sample and wall
   time, joint vs per-sample, and each sample's error against SciPy (LSODA, rtol 1e-10) divided
   by the tolerance ``atol + rtol·|y|``.
3. The MLP cases of the solver-core benchmark (``bench_solvers.py``), unless ``--skip-mlp``.

Writes ``benchmarks/results/batch.json``. ``python benchmarks/bench_batch.py [--quick]``.
A CUDA section runs when a GPU is present (same cases, device timings with synchronisation).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import neurode

HERE = Path(__file__).parent
RTOL = ATOL = 1e-5
B, T_END, N_OUT = 256, 10.0, 200


def vdp_field(mu):
    """Van der Pol with per-sample ``mu`` ``(B,)``; works for scalar or ``(B,)`` ``t``."""
    def f(t, y):
        x, v = y[:, 0], y[:, 1]
        return torch.stack([v, mu * (1 - x * x) * v - x], 1)

    return f


class Counted:
    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, t, y):
        self.calls += 1
        return self.f(t, y)


def solvers(f, y0, t, device):
    """name -> zero-argument callable returning (ys (T, B, 2), per-sample steps (B,) or int)."""
    import torchdiffeq
    import torchode as to

    t_b = t.unsqueeze(0).expand(y0.shape[0], -1)
    term = to.ODETerm(f)
    tode = to.AutoDiffAdjoint(to.Dopri5(term=term),
                              to.IntegralController(atol=ATOL, rtol=RTOL, term=term))
    # torch.compile(solver) as in torchode's README compiles only forward(), which solve() does
    # not go through: compile the solve method itself
    tode_c = torch.compile(tode.solve)

    def run_tode(solve):
        sol = solve(to.InitialValueProblem(y0=y0, t_eval=t_b))
        return sol.ys.transpose(0, 1), sol.stats["n_steps"]

    def ps(compile_):
        def run():
            sol = neurode.solve_ivp(f, y0, t, rtol=RTOL, atol=ATOL, per_sample=True,
                                    options={"compile": compile_})
            return sol.ys, sol.stats.n_steps
        return run

    def joint(decisions="auto"):
        sol = neurode.solve_ivp(f, y0, t, rtol=RTOL, atol=ATOL, options={"decisions": decisions})
        return sol.ys, sol.stats.n_steps

    def tdq():
        steps = []

        class F(torch.nn.Module):
            def forward(self, tt, y):
                return f(tt, y)

            def callback_accept_step(self, tt, y, dt):
                steps.append(1)

            def callback_reject_step(self, tt, y, dt):
                steps.append(0)

        ys = torchdiffeq.odeint(F(), y0, t, rtol=RTOL, atol=ATOL, method="dopri5")
        return ys, len(steps)

    return {"torchdiffeq": tdq, "torchode": lambda: run_tode(tode.solve),
            "torchode compiled": lambda: run_tode(tode_c), "neurode joint": joint,
            "neurode joint, device decisions": lambda: joint("device"),
            "neurode per-sample": ps(False), "neurode per-sample compiled": ps(True)}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_interleaved(fns: dict, repeats: int, device) -> dict:
    for fn in fns.values():  # warm-up (compilation happens here)
        fn()
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def field_cost(f, y0, t, device, n=2000) -> float:
    """Median seconds of one evaluation of the batch (eager)."""
    tt = t[3]
    for _ in range(50):
        f(tt, y0)
    samples = []
    for _ in range(10):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n // 10):
            f(tt, y0)
        sync(device)
        samples.append((time.perf_counter() - t0) / (n // 10))
    return statistics.median(samples)


def call_counts(f, y0, t) -> dict:
    """Evaluations of the batch per solve (eager runs; compiled ones make the same calls)."""
    out = {}
    for name in ("torchdiffeq", "torchode", "neurode joint", "neurode per-sample"):
        c = Counted(f)
        fn = solvers(c, y0, t, y0.device)[name]
        fn()
        out[name] = c.calls
    out["torchode compiled"] = out["torchode"]
    out["neurode joint, device decisions"] = out["neurode joint"]
    out["neurode per-sample compiled"] = out["neurode per-sample"]
    return out


def case_vdp(mu, y0, t, repeats, device) -> dict:
    f = vdp_field(mu)
    fns = solvers(f, y0, t, device)
    wall = timed_interleaved(fns, repeats, device)
    calls = call_counts(f, y0, t)
    cost = field_cost(f, y0, t, device)
    rows = {}
    for k, w in wall.items():
        _, steps = fns[k]()
        steps_t = torch.as_tensor(steps, dtype=torch.float64)
        loop = w - calls[k] * cost
        rows[k] = {"wall_ms": 1e3 * w, "calls": calls[k], "field_ms": 1e3 * calls[k] * cost,
                   "loop_ms": 1e3 * loop, "steps_mean": float(steps_t.mean()),
                   "steps_max": float(steps_t.max())}
    base = rows["torchdiffeq"]
    for r in rows.values():
        r["wall_ratio_vs_torchdiffeq"] = r["wall_ms"] / base["wall_ms"]
        r["loop_ratio_vs_torchdiffeq"] = r["loop_ms"] / base["loop_ms"]
    # the loop's cost per iteration (a per-sample loop iterates as often as its slowest sample
    # steps), and the eager per-sample loop's against each joint one
    for k in rows:
        if k.startswith("neurode"):
            rows[k]["loop_us_per_iteration"] = 1e3 * rows[k]["loop_ms"] / rows[k]["steps_max"]
    per_it = {k: rows[k]["loop_us_per_iteration"] for k in rows if k.startswith("neurode")}
    ratios = {j: per_it["neurode per-sample"] / per_it[j]
              for j in ("neurode joint", "neurode joint, device decisions")}
    return {"field_call_us": 1e6 * cost, "rows": rows,
            "per_sample_over_joint_per_iteration": ratios}


def scipy_errors(mu, y0, t, ys) -> np.ndarray:
    """Per-sample max over outputs of |y − ref| / (atol + rtol·|ref|)."""
    from scipy import integrate

    ts = t.double().cpu().numpy()
    out = []
    for b in range(y0.shape[0]):
        m = float(mu[b])
        ref = integrate.solve_ivp(lambda s, y, m=m: [y[1], m * (1 - y[0] ** 2) * y[1] - y[0]],
                                  (ts[0], ts[-1]), y0[b].double().cpu().numpy(), method="LSODA",
                                  rtol=1e-10, atol=1e-10, t_eval=ts).y.T
        err = np.abs(ys[:, b].double().cpu().numpy() - ref) / (ATOL + RTOL * np.abs(ref))
        out.append(err.max())
    return np.array(out)


def case_heterogeneous(y0, t, repeats, device) -> dict:
    g = torch.Generator().manual_seed(1)
    mu = torch.exp(torch.empty(B).uniform_(math.log(0.1), math.log(50.0), generator=g)).to(device)
    f = vdp_field(mu)
    fns = solvers(f, y0, t, device)
    keep = ("neurode joint", "neurode per-sample", "neurode per-sample compiled", "torchdiffeq",
            "torchode")
    fns = {k: fns[k] for k in keep}
    wall = timed_interleaved(fns, repeats, device)
    rows = {}
    for k in keep:
        ys, steps = fns[k]()
        steps_t = torch.as_tensor(steps, dtype=torch.float64)
        errs = scipy_errors(mu, y0, t, ys)
        rows[k] = {"wall_ms": 1e3 * wall[k], "steps_per_sample_mean": float(steps_t.mean()),
                   "err_over_tol_max": float(errs.max()),
                   "err_over_tol_median": float(np.median(errs)),
                   "samples_err_over_tol_le_1": int((errs <= 1).sum()),
                   "samples_err_over_tol_le_10": int((errs <= 10).sum())}
    # SciPy's own Dormand–Prince at the same tolerances, one sample at a time: what err/tol a
    # per-sample dopri5 reaches on these problems (local error control bounds the local error)
    from scipy import integrate

    ts = t.double().cpu().numpy()
    ys_sp, steps_sp = [], []
    t0 = time.perf_counter()
    for b in range(B):
        m = float(mu[b])
        sol = integrate.solve_ivp(lambda s, y, m=m: [y[1], m * (1 - y[0] ** 2) * y[1] - y[0]],
                                  (ts[0], ts[-1]), y0[b].double().cpu().numpy(), method="RK45",
                                  rtol=RTOL, atol=ATOL, t_eval=ts)
        ys_sp.append(sol.y.T)
        steps_sp.append(sol.nfev / 6)  # RK45: 6 evaluations per step (FSAL)
    wall_sp = time.perf_counter() - t0
    errs = scipy_errors(mu, y0, t, torch.tensor(np.stack(ys_sp, 1)))
    rows["scipy RK45 (per sample, loop)"] = {
        "wall_ms": 1e3 * wall_sp, "steps_per_sample_mean": float(np.mean(steps_sp)),
        "err_over_tol_max": float(errs.max()), "err_over_tol_median": float(np.median(errs)),
        "samples_err_over_tol_le_1": int((errs <= 1).sum()),
        "samples_err_over_tol_le_10": int((errs <= 10).sum())}
    rows["steps_ratio_joint_over_per_sample"] = (
        rows["neurode joint"]["steps_per_sample_mean"]
        / rows["neurode per-sample"]["steps_per_sample_mean"])
    return {"mu_range": [0.1, 50.0], "rows": rows}


def show_vdp(title, res):
    print(f"\n{title} (one field evaluation of the batch: {res['field_call_us']:.1f} µs)")
    print(f"{'solver':<30}{'wall ms':>9}{'ratio':>7}{'calls':>7}{'loop ms':>9}{'loop ratio':>11}"
          f"{'steps mean/max':>16}")
    for k, r in res["rows"].items():
        print(f"{k:<30}{r['wall_ms']:>9.1f}{r['wall_ratio_vs_torchdiffeq']:>7.2f}"
              f"{r['calls']:>7}{r['loop_ms']:>9.1f}{r['loop_ratio_vs_torchdiffeq']:>11.2f}"
              f"{r['steps_mean']:>9.1f}/{r['steps_max']:<6.0f}")
    for j, q in res["per_sample_over_joint_per_iteration"].items():
        print(f"eager per-sample loop per iteration / {j} loop per step: {q:.2f}")


def show_het(res):
    print("\nheterogeneous VdP, μ log-uniform in [0.1, 50]")
    print(f"{'solver':<30}{'wall ms':>9}{'steps/sample':>14}{'err/tol max':>13}"
          f"{'median':>8}{'≤1':>6}{'≤10':>6}")
    for k, r in res["rows"].items():
        if not isinstance(r, dict):
            continue
        print(f"{k:<30}{r['wall_ms']:>9.1f}{r['steps_per_sample_mean']:>14.1f}"
              f"{r['err_over_tol_max']:>13.2f}{r['err_over_tol_median']:>8.2f}"
              f"{r['samples_err_over_tol_le_1']:>6}{r['samples_err_over_tol_le_10']:>6}")
    print(f"steps per sample, joint / per-sample: "
          f"{res['rows']['steps_ratio_joint_over_per_sample']:.2f}")


def run_device(device, repeats) -> dict:
    g = torch.Generator().manual_seed(0)
    y0 = (torch.rand(B, 2, generator=g) * 4 - 2).to(device)
    t = torch.linspace(0, T_END, N_OUT, device=device)
    out = {"vdp_mu2": case_vdp(torch.full((B,), 2.0, device=device), y0, t, repeats, device)}
    show_vdp(f"VdP μ = 2, {B} samples, {N_OUT} outputs on [0, {T_END:g}] ({device.type})",
             out["vdp_mu2"])
    out["heterogeneous"] = case_heterogeneous(y0, t, repeats, device)
    show_het(out["heterogeneous"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 repeats, no MLP cases")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--skip-mlp", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "batch.json")
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 9)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; rtol = atol = {RTOL:g}, "
          f"dopri5, float32, {repeats} interleaved repeats (medians)")
    result = {"cpu": run_device(torch.device("cpu"), repeats)}
    if torch.cuda.is_available():
        result["cuda"] = run_device(torch.device("cuda"), repeats)
    if not (args.quick or args.skip_mlp):
        sys.path.insert(0, str(HERE))
        import bench_solvers

        print("\nMLP cases of the solver-core benchmark (bench_solvers.py):")
        bench_solvers.main([])
        result["mlp"] = json.loads((HERE / "results" / "solvers.json").read_text())[
            "geomean_ratio"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
