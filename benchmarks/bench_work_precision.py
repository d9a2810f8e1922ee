"""Work–precision: error against function evaluations and against wall time, every adaptive
explicit method of neurode, ``auto``, SciPy (RK45, DOP853, LSODA) and torchdiffeq (dopri5,
dopri8), float64 on the CPU.

Usage::

    python benchmarks/bench_work_precision.py [--out benchmarks/results/work_precision.json]
                                              [--png benchmarks/results/work_precision.png]
                                              [--quick]

Non-stiff problems: DETEST A1–A5, B1, B3–B5, D1/D3/D5 on [0, 20] (the problems of
``bench_accuracy.py``) and a tanh-MLP neural field (16 states, 64 hidden units, fixed random
weights) on [0, 10]; rtol = atol = 1e-3 … 1e-12; the error is the max over components of
``|y(T) − y_ref| / max(1, |y_ref|)`` against SciPy DOP853 at rtol 1e-13 / atol 1e-15.

Ratios at equal error: a method's point ``(error, NFE)`` is compared with SciPy DOP853's NFE at
the same error, interpolated linearly in log–log on DOP853's error–NFE curve of that problem
(points outside DOP853's range of errors are left out: no extrapolation). The summary is the
geometric mean per problem class (A, B, D, MLP) over the points with tol ≤ 1e-6, and over the
looser ones; ``auto`` is compared the same way with the best explicit neurode method's curve.

Stiff: Van der Pol μ = 1000 on [0, 3000] at rtol = atol 1e-4 / 1e-6 / 1e-8: ``auto`` against
``radau`` (steps, NFE, time) and SciPy's Radau and LSODA.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

import neurode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_accuracy import T_END, _problems  # noqa: E402

F64 = torch.float64
NEURODE = ("dopri5", "tsit5", "dopri8", "vern6", "vern7", "vern8", "vern9", "auto")
SCIPY = ("RK45", "DOP853", "LSODA")
TORCHDIFFEQ = ("dopri5", "dopri8")
TOLS = tuple(10.0 ** -k for k in range(3, 13))
TIGHT = 1e-6


# --- problems ------------------------------------------------------------------------------------

def _mlp_problem():
    """A tanh MLP field dy/dt = W2 tanh(W1 y + b1) + b2, 16 → 64 → 16 (fixed weights)."""
    g = torch.Generator().manual_seed(7)
    W1 = torch.randn(64, 16, generator=g, dtype=F64) / 4
    b1 = torch.randn(64, generator=g, dtype=F64) / 4
    W2 = torch.randn(16, 64, generator=g, dtype=F64) / 8
    b2 = torch.randn(16, generator=g, dtype=F64) / 8
    y0 = torch.randn(16, generator=g, dtype=F64)
    n1, c1, n2, c2 = (x.numpy() for x in (W1, b1, W2, b2))

    def f_torch(t, y):
        return W2 @ torch.tanh(W1 @ y + b1) + b2 - 0.1 * y

    def f_np(t, y):
        return n2 @ np.tanh(n1 @ y + c1) + c2 - 0.1 * y

    return f_torch, f_np, y0.numpy(), 10.0


def problems():
    """name -> (torch field, numpy field, y0 (numpy), T, class)."""
    out = {}
    for name, (f, y0) in _problems().items():
        def ft(t, y, f=f):
            return torch.stack(f(t, list(y.unbind(0))))

        def fn(t, y, f=f):
            return np.array(f(t, list(y)))

        out[name] = (ft, fn, np.array(y0, dtype=float), T_END, name[0])
    ft, fn, y0, T = _mlp_problem()
    out["MLP"] = (ft, fn, y0, T, "MLP")
    return out


def _reference(fn, y0, T):
    from scipy.integrate import solve_ivp

    sol = solve_ivp(fn, (0.0, T), y0, method="DOP853", rtol=1e-13, atol=1e-15)
    assert sol.success, sol.message
    return sol.y[:, -1]


def _err(y, ref) -> float:
    return float(np.max(np.abs(np.asarray(y) - ref) / np.maximum(1.0, np.abs(ref))))


# --- runs --------------------------------------------------------------------------------------

def _counted(ft):
    """``ft`` and a one-element list counting its calls (each library's NFE, measured alike)."""
    count = [0]

    def field(t, y):
        count[0] += 1
        return ft(t, y)

    return field, count


def _run_neurode(ft, y0, T, method, tol):
    field, count = _counted(ft)
    ts = torch.tensor([0.0, T], dtype=F64)
    y0t = torch.tensor(y0, dtype=F64)
    t0 = time.perf_counter()
    sol = neurode.solve_ivp(field, y0t, ts, method=method, rtol=tol, atol=tol,
                            options={"max_num_steps": 10**6})
    wall = time.perf_counter() - t0
    return sol.ys[-1].numpy(), count[0], wall, sol.stats


def _run_torchdiffeq(ft, y0, T, method, tol):
    import torchdiffeq

    field, count = _counted(ft)
    ts = torch.tensor([0.0, T], dtype=F64)
    t0 = time.perf_counter()
    y = torchdiffeq.odeint(field, torch.tensor(y0, dtype=F64), ts, method=method, rtol=tol,
                           atol=tol, options={"max_num_steps": 10**6})[-1]
    return y.numpy(), count[0], time.perf_counter() - t0


def _run_scipy(fn, y0, T, method, tol):
    from scipy.integrate import solve_ivp

    t0 = time.perf_counter()
    sol = solve_ivp(fn, (0.0, T), y0, method=method, rtol=tol, atol=tol)
    wall = time.perf_counter() - t0
    assert sol.success, sol.message
    return sol.y[:, -1], int(sol.nfev), wall


def run(quick: bool) -> dict:
    tols = TOLS[::3] if quick else TOLS
    probs = problems()
    if quick:
        probs = {k: v for k, v in probs.items() if k in ("A3", "B5", "D3", "MLP")}
    cases = []
    for name, (ft, fn, y0, T, cls) in probs.items():
        ref = _reference(fn, y0, T)
        for tol in tols:
            for m in NEURODE:
                y, nfe, wall, stats = _run_neurode(ft, y0, T, m, tol)
                cases.append({"problem": name, "class": cls, "lib": "neurode", "method": m,
                              "tol": tol, "nfe": nfe, "wall": wall, "error": _err(y, ref),
                              "methods_run": sorted({s.method for s in stats.segments})})
            for m in SCIPY:
                y, nfe, wall = _run_scipy(fn, y0, T, m, tol)
                cases.append({"problem": name, "class": cls, "lib": "scipy", "method": m,
                              "tol": tol, "nfe": nfe, "wall": wall, "error": _err(y, ref)})
            for m in TORCHDIFFEQ:
                try:
                    y, nfe, wall = _run_torchdiffeq(ft, y0, T, m, tol)
                except ImportError:
                    continue
                cases.append({"problem": name, "class": cls, "lib": "torchdiffeq", "method": m,
                              "tol": tol, "nfe": nfe, "wall": wall, "error": _err(y, ref)})
        print(f"  {name} done", flush=True)
    return {"cases": cases, "stiff": run_stiff(quick)}


def run_stiff(quick: bool) -> list[dict]:
    from scipy.integrate import solve_ivp

    mu = 1000.0

    def ft(t, y):
        return torch.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])

    def fn(t, y):
        return [y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]]

    T = 3000.0
    y0 = [2.0, 0.0]
    out = []
    for m in ("auto", "radau"):  # warm-up: first-use costs (LAPACK, caches) out of the timings
        neurode.solve_ivp(ft, torch.tensor(y0, dtype=F64), torch.tensor([0.0, 10.0], dtype=F64),
                          method=m, rtol=1e-4, atol=1e-4)
    for tol in ((1e-4, 1e-6) if quick else (1e-4, 1e-6, 1e-8)):
        for m in ("auto", "radau"):
            t0 = time.perf_counter()
            sol = neurode.solve_ivp(ft, torch.tensor(y0, dtype=F64),
                                    torch.tensor([0.0, T], dtype=F64), method=m, rtol=tol,
                                    atol=tol, options={"max_num_steps": 10**6})
            wall = time.perf_counter() - t0
            segs = sol.stats.segments
            out.append({"lib": "neurode", "method": m, "tol": tol, "n_steps": sol.stats.n_steps,
                        "nfe": sol.stats.nfe, "n_jac": sol.stats.n_jac, "wall": wall,
                        "switches": len(segs) - 1,
                        "radau_share": sum(s.t1 - s.t0 for s in segs if s.method == "radau") / T})
        for m in ("Radau", "LSODA"):
            t0 = time.perf_counter()
            sol = solve_ivp(fn, (0.0, T), y0, method=m, rtol=tol, atol=tol)
            out.append({"lib": "scipy", "method": m, "tol": tol, "n_steps": len(sol.t) - 1,
                        "nfe": int(sol.nfev), "n_jac": int(sol.njev),
                        "wall": time.perf_counter() - t0})
    return out


# --- analysis ------------------------------------------------------------------------------------

def _curve(cases, problem, lib, method):
    pts = sorted((c["error"], c["nfe"]) for c in cases
                 if c["problem"] == problem and c["lib"] == lib and c["method"] == method
                 and c["error"] > 0)
    return pts


def _nfe_at(curve, err) -> float | None:
    """NFE of ``curve`` (sorted by error) at ``err``, log–log linear; None outside its range."""
    if len(curve) < 2 or not (curve[0][0] <= err <= curve[-1][0]):
        return None
    le = math.log(err)
    for (e0, n0), (e1, n1) in itertools.pairwise(curve):
        if e0 <= err <= e1:
            if e1 == e0:
                return float(min(n0, n1))
            w = (le - math.log(e0)) / (math.log(e1) - math.log(e0))
            return math.exp((1 - w) * math.log(n0) + w * math.log(n1))
    return None


def _ratios(cases, against):
    """``{(method, class, tight): [ratio, ...]}`` of neurode methods vs ``against(problem)``."""
    out: dict = {}
    for c in cases:
        if c["lib"] != "neurode" or c["error"] <= 0:
            continue
        ref = against(c["problem"], c["method"])
        if ref is None:
            continue
        n_ref = _nfe_at(ref, c["error"])
        if n_ref is None:
            continue
        key = (c["method"], c["class"], c["tol"] <= TIGHT)
        out.setdefault(key, []).append(c["nfe"] / n_ref)
    return out


def _gmean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def summarize(res: dict) -> dict:
    cases = res["cases"]
    classes = sorted({c["class"] for c in cases})
    dop = _ratios(cases, lambda p, m: _curve(cases, p, "scipy", "DOP853"))

    explicit = [m for m in NEURODE if m != "auto"]
    envelopes = {}

    def envelope(p):
        """The lower envelope of every explicit neurode method's curve on problem ``p``: for
        each error, the least NFE any of them needs."""
        if p not in envelopes:
            curves = [_curve(cases, p, "neurode", e) for e in explicit]
            env = []
            for e in sorted({e for cv in curves for e, _ in cv}):
                ns = [n for cv in curves if (n := _nfe_at(cv, e)) is not None]
                if ns:
                    env.append((e, min(ns)))
            envelopes[p] = env
        return envelopes[p]

    auto = _ratios(cases, lambda p, m: envelope(p) if m == "auto" else None)
    summary = {"vs_dop853": {}, "auto_vs_best_explicit": {}}
    for m in NEURODE:
        row = {}
        for cls in classes:
            for tight in (True, False):
                g = _gmean(dop.get((m, cls, tight), []))
                row[f"{cls}{'_tight' if tight else '_loose'}"] = g
        tight_all = [r for (mm, _, t), rs in dop.items() if mm == m and t for r in rs]
        row["ABD_tight"] = _gmean([r for (mm, c, t), rs in dop.items()
                                   if mm == m and t and c in "ABD" for r in rs])
        row["all_tight"] = _gmean(tight_all)
        summary["vs_dop853"][m] = row
    for cls in classes:
        for tight in (True, False):
            summary["auto_vs_best_explicit"][f"{cls}{'_tight' if tight else '_loose'}"] = \
                _gmean(auto.get(("auto", cls, tight), []))
    # the best explicit method at each tolerance: geometric mean over problems of its NFE over
    # the envelope's at equal error (1 = the best there is); `auto`'s choice by tolerance
    by_tol = {}
    for tol in sorted({c["tol"] for c in cases}, reverse=True):
        row = {}
        for m in explicit:
            rs = []
            for c in cases:
                if c["lib"] == "neurode" and c["method"] == m and c["tol"] == tol:
                    n_ref = _nfe_at(envelope(c["problem"]), c["error"])
                    if n_ref is not None:
                        rs.append(c["nfe"] / n_ref)
            if rs:
                row[m] = _gmean(rs)
        by_tol[f"{tol:.0e}"] = row
    summary["by_tolerance"] = by_tol
    return summary


def class_curve(cases: list[dict], cls: str, lib: str, method: str,
                xkey: str = "nfe") -> tuple[np.ndarray, np.ndarray]:
    """One method's work–precision curve over a problem class: per tolerance, the geometric
    means over the class's problems of ``xkey`` ("nfe" or "wall") and of the error."""
    pts = []
    for tol in sorted({c["tol"] for c in cases}, reverse=True):
        cs = [c for c in cases if c["class"] == cls and c["lib"] == lib
              and c["method"] == method and c["tol"] == tol]
        if cs:
            le = np.mean([math.log10(max(c["error"], 1e-16)) for c in cs])
            lw = np.mean([math.log10(max(c[xkey], 1e-6)) for c in cs])
            pts.append((lw, le))
    if not pts:
        return np.array([]), np.array([])
    xs, ys = zip(*pts, strict=True)
    return 10 ** np.array(xs), 10 ** np.array(ys)


def plot(res: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = res["cases"]
    groups = [("A", "DETEST A"), ("B", "DETEST B"), ("D", "DETEST D (orbits)"),
              ("MLP", "tanh-MLP field")]
    styles = {("neurode", m): dict(ls="-", marker="o") for m in NEURODE}
    styles.update({("scipy", m): dict(ls="--", marker="s") for m in SCIPY})
    styles.update({("torchdiffeq", m): dict(ls=":", marker="^") for m in TORCHDIFFEQ})
    fig, axes = plt.subplots(2, 4, figsize=(18, 8.5))
    colors = plt.get_cmap("tab20")
    keys = [k for k in styles if any(c["lib"] == k[0] and c["method"] == k[1] for c in cases)]
    for col, (cls, title) in enumerate(groups):
        for row, xkey in enumerate(("nfe", "wall")):
            ax = axes[row, col]
            for i, (lib, m) in enumerate(keys):
                xs, ys = class_curve(cases, cls, lib, m, xkey)
                if len(xs):
                    ax.plot(xs, ys, color=colors(i % 20), label=f"{lib} {m}", ms=3, lw=1.2,
                            **styles[(lib, m)])
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.grid(True, which="major", alpha=0.3)
            ax.set_title(title if row == 0 else "")
            ax.set_xlabel("function evaluations" if xkey == "nfe" else "wall time [s]")
            if col == 0:
                ax.set_ylabel("error at T (geometric mean over the class)")
    axes[0, 0].legend(fontsize=7, ncol=2)
    fig.suptitle("Work–precision, float64, CPU (neurode " + str(neurode.__version__) + ")")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "work_precision.json")
    ap.add_argument("--png", type=Path, default=HERE / "results" / "work_precision.png")
    ap.add_argument("--quick", action="store_true", help="4 problems, 4 tolerances")
    ap.add_argument("--replot", action="store_true", help="redraw the PNG from --out's JSON")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads(args.out.read_text()), args.png)
        return
    res = run(args.quick)
    res["summary"] = summarize(res)
    res["neurode"] = str(neurode.__version__)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    plot(res, args.png)
    s = res["summary"]
    print("\nNFE at equal error / SciPy DOP853's (geometric means; tight: tol <= 1e-6)")
    cols = [k for k in next(iter(s["vs_dop853"].values()))]
    print(f"{'method':8s} " + " ".join(f"{c:>10s}" for c in cols))
    for m, row in s["vs_dop853"].items():
        print(f"{m:8s} " + " ".join(f"{row[c]:10.3f}" if row[c] else f"{'-':>10s}" for c in cols))
    print("\nauto / best explicit neurode method at equal error:")
    print("  " + ", ".join(f"{k} {v:.3f}" for k, v in s["auto_vs_best_explicit"].items() if v))
    print("\nby tolerance (NFE / the best explicit neurode method's at equal error):")
    for tol, row in s["by_tolerance"].items():
        best = min(row, key=row.get) if row else "-"
        print(f"  {tol}: " + " ".join(f"{m} {v:.2f}" for m, v in row.items()) + f"  best {best}")
    print("\nVan der Pol mu=1000 on [0, 3000]:")
    for r in res["stiff"]:
        extra = (f" switches {r['switches']}, radau over {100 * r['radau_share']:.2f}% of t"
                 if "switches" in r else "")
        print(f"  {r['lib']:8s} {r['method']:6s} tol {r['tol']:.0e}: steps {r['n_steps']:5d} "
              f"nfe {r['nfe']:6d} jac {r['n_jac']:4d} {r['wall']:.2f}s{extra}")
    print(f"\nwrote {args.out} and {args.png}")


if __name__ == "__main__":
    main()
