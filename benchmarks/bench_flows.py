"""Sampling a flow-matching model: neurode's fixed-step solvers vs a hand-written loop.

Users of flow matching sample with plain Euler loops because general ODE libraries are slower;
this measures what neurode costs over such a loop (same field, same steps, same outputs):
MLP 2-256-256-2 with time input, batch 4096 and 512, 20/50/100 steps, Euler and rk4 (hand
loop: the textbook formula), float32, 2 threads, 15 interleaved repeats, medians. Also
torchdiffeq 0.2.5 on the same calls. Writes ``benchmarks/results/flows.json``.
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import neurode
from neurode.nn import ConcatMLP

HERE = Path(__file__).parent


def hand_euler(f, x, n):
    h = 1.0 / n
    for k in range(n):
        x = x + h * f(torch.tensor(k * h), x)
    return x


def hand_rk4(f, x, n):
    h = 1.0 / n
    for k in range(n):
        t = k * h
        k1 = f(torch.tensor(t), x)
        k2 = f(torch.tensor(t + h / 2), x + h / 2 * k1)
        k3 = f(torch.tensor(t + h / 2), x + h / 2 * k2)
        k4 = f(torch.tensor(t + h), x + h * k3)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def main() -> int:
    import torchdiffeq

    torch.set_num_threads(2)
    torch.manual_seed(0)
    f = ConcatMLP(2, 256, layers=3).eval()  # MLP 2-256-256-2 with time input
    t = torch.tensor([0.0, 1.0])
    results = []
    print(f"{'case':<26}{'hand ms':>9}{'neurode ms':>12}{'ratio':>7}{'torchdiffeq ms':>16}"
          f"{'ratio':>7}{'|N-hand|':>10}")
    for batch in (4096, 512):
        x0 = torch.randn(batch, 2)
        for method, hand in (("euler", hand_euler), ("rk4", hand_rk4)):
            for n in (20, 50, 100):
                opts = {"step_size": 1.0 / n}
                fns = {
                    "hand": functools.partial(hand, f, x0, n),
                    "neurode": functools.partial(neurode.odeint, f, x0, t, method=method,
                                                 options=opts),
                    "torchdiffeq": functools.partial(torchdiffeq.odeint, f, x0, t,
                                                     method=method, options=opts),
                }
                with torch.no_grad():
                    for fn in fns.values():
                        fn()
                    times = {k: [] for k in fns}
                    for _ in range(15):
                        for k, fn in fns.items():
                            t0 = time.perf_counter()
                            fn()
                            times[k].append(time.perf_counter() - t0)
                    diff = float((fns["neurode"]()[-1] - fns["hand"]()).abs().max())
                med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
                rec = {"batch": batch, "method": method, "steps": n, **{f"{k}_ms": v
                                                                        for k, v in med.items()},
                       "ratio_neurode_hand": med["neurode"] / med["hand"],
                       "ratio_torchdiffeq_hand": med["torchdiffeq"] / med["hand"],
                       "max_abs_diff_neurode_hand": diff}
                results.append(rec)
                name = f"{method} {n} steps, B={batch}"
                print(f"{name:<26}{med['hand']:>9.2f}{med['neurode']:>12.2f}"
                      f"{rec['ratio_neurode_hand']:>7.2f}{med['torchdiffeq']:>16.2f}"
                      f"{rec['ratio_torchdiffeq_hand']:>7.2f}{diff:>10.1e}")
    out = HERE / "results" / "flows.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
