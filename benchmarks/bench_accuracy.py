"""Accuracy per function evaluation on DETEST-style non-stiff problems (float64, CPU).

Usage::

    python benchmarks/bench_accuracy.py [--out benchmarks/results/accuracy.json]
                                        [--compare OLD.json]

Problems: Hull, Enright, Fellen & Sedgwick's DETEST classes A (scalar), B (small systems)
and D (two-body orbits, eccentricity 0.1 / 0.5 / 0.9), each on [0, 20]. For every adaptive
explicit method and rtol = atol from 1e-3 to 1e-10 (1e-7 for the second-order pairs): the NFE
and the error at t = 20 (max norm, relative to max(1, |y_ref|)) against a SciPy DOP853
reference at rtol = 1e-13, atol = 1e-15 (an independent solver, so the reference cannot
favour neurode). The summary per method is the mean over problems and tolerances of
log10(error) and of log10(NFE): a change to the stepping core that keeps both keeps accuracy
per NFE. ``--compare`` prints the differences against a file written by another version (run
it with ``PYTHONPATH=<old>/src``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

import neurode

HERE = Path(__file__).resolve().parent
# method -> tolerances (the second-order pairs stop at 1e-7: tighter needs ~10^6 steps)
METHODS = {m: tuple(10.0 ** -k for k in range(3, last + 1)) for m, last in
           (("dopri5", 10), ("tsit5", 10), ("dopri8", 10), ("bosh3", 9),
            ("adaptive_heun", 7), ("fehlberg2", 7))}
T_END = 20.0


def _orbit(e: float):
    y0 = [1 - e, 0.0, 0.0, math.sqrt((1 + e) / (1 - e))]

    def f(t, y):
        r3 = (y[0] ** 2 + y[1] ** 2) ** 1.5
        return [y[2], y[3], -y[0] / r3, -y[1] / r3]

    return f, y0


def _problems():
    """name -> (f(t, y: list) -> list, y0); written once for both torch and SciPy."""
    probs = {
        "A1": (lambda t, y: [-y[0]], [1.0]),
        "A2": (lambda t, y: [-0.5 * y[0] ** 3], [1.0]),
        "A3": (lambda t, y: [y[0] * _cos(t)], [1.0]),
        "A4": (lambda t, y: [0.25 * y[0] * (1 - y[0] / 20)], [1.0]),
        "A5": (lambda t, y: [(y[0] - t) / (y[0] + t)], [4.0]),
        "B1": (lambda t, y: [2 * (y[0] - y[0] * y[1]), -(y[1] - y[0] * y[1])], [1.0, 3.0]),
        "B3": (lambda t, y: [-y[0], y[0] - y[1] ** 2, y[1] ** 2], [1.0, 0.0, 0.0]),
        "B4": (lambda t, y: _b4(y), [3.0, 0.0, 0.0]),
        "B5": (lambda t, y: [y[1] * y[2], -y[0] * y[2], -0.51 * y[0] * y[1]], [0.0, 1.0, 1.0]),
    }
    for name, e in (("D1", 0.1), ("D3", 0.5), ("D5", 0.9)):
        probs[name] = _orbit(e)
    return probs


def _cos(t):
    return torch.cos(t) if isinstance(t, torch.Tensor) else math.cos(t)


def _b4(y):
    r = (y[0] ** 2 + y[1] ** 2) ** 0.5
    return [-y[1] - y[0] * y[2] / r, y[0] - y[1] * y[2] / r, y[0] / r]


def _reference(f, y0) -> list[float]:
    from scipy.integrate import solve_ivp

    sol = solve_ivp(f, (0.0, T_END), y0, method="DOP853", rtol=1e-13, atol=1e-15)
    assert sol.success, sol.message
    return [float(v) for v in sol.y[:, -1]]


def run() -> dict:
    out: dict = {"neurode": getattr(neurode, "__version__", "?"), "cases": []}
    for name, (f, y0) in _problems().items():
        ref = _reference(f, y0)
        count = [0]

        def field(t, y, f=f, count=count):
            count[0] += 1
            return torch.stack(f(t, list(y.unbind(0))))

        y0_t = torch.tensor(y0, dtype=torch.float64)
        ts = torch.tensor([0.0, T_END], dtype=torch.float64)
        for method in METHODS:
            for tol in METHODS[method]:
                count[0] = 0
                y1 = neurode.odeint(field, y0_t, ts, rtol=tol, atol=tol, method=method,
                                    options={"max_num_steps": 10**6})[-1]
                err = max(abs(float(a) - b) / max(1.0, abs(b))
                          for a, b in zip(y1, ref, strict=True))
                out["cases"].append({"problem": name, "method": method, "tol": tol,
                                     "nfe": count[0], "error": err})
    out["summary"] = _summary(out["cases"])
    return out


def _summary(cases: list[dict]) -> dict:
    res = {}
    for m in METHODS:
        rows = [c for c in cases if c["method"] == m]
        res[m] = {"mean_log10_error": sum(math.log10(max(c["error"], 1e-17)) for c in rows)
                  / len(rows),
                  "mean_log10_nfe": sum(math.log10(c["nfe"]) for c in rows) / len(rows),
                  "total_nfe": sum(c["nfe"] for c in rows)}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "accuracy.json")
    ap.add_argument("--compare", type=Path, help="a file another version wrote")
    args = ap.parse_args()
    res = run()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    old = json.loads(args.compare.read_text())["summary"] if args.compare else None
    print(f"{'method':14s} {'mean log10 err':>15s} {'mean log10 NFE':>15s} {'total NFE':>10s}")
    for m, s in res["summary"].items():
        line = (f"{m:14s} {s['mean_log10_error']:15.3f} {s['mean_log10_nfe']:15.3f} "
                f"{s['total_nfe']:10d}")
        if old and m in old:
            o = old[m]
            line += (f"   vs other: Δerr {s['mean_log10_error'] - o['mean_log10_error']:+.3f}"
                     f" ΔNFE {s['mean_log10_nfe'] - o['mean_log10_nfe']:+.3f}"
                     f" (total {o['total_nfe']})")
        print(line)


if __name__ == "__main__":
    main()
