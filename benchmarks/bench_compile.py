"""A compiled joint dopri5 solve against the eager ones (CPU, float32, the small MLP case).

Usage::

    python benchmarks/bench_compile.py [--repeats 15] [--out benchmarks/results/compile.json]

The case is ``bench_solvers``' ``dopri5_mlp`` (MLP 2-64-64-2, batch 256, 100 output times on
[0, 5], rtol = atol = 1e-6, forward under ``no_grad``). Three variants of the same joint solve:

- ``eager host``: the default on a CPU (``decisions="auto"`` → step control in Python floats);
- ``eager device``: ``decisions="device"`` (step control as tensors, one host read per
  ``sync_every`` steps), the same code path that ``compile`` compiles;
- ``compiled``: ``options={"compile": True}`` (each attempted step through ``torch.compile``).

Samples are interleaved (A B C A B C ...) after warm-up (the compiled variant's first call,
which compiles, is timed separately and reported as ``compile_s``); medians are reported with
the ratios against ``eager host``. All three must agree with each other to the tolerance.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

import torch
from bench_solvers import CASES, Field, build

import neurode

HERE = Path(__file__).resolve().parent
VARIANTS = {
    "eager host": {},
    "eager device": {"decisions": "device"},
    "compiled": {"compile": True},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "compile.json")
    args = ap.parse_args()
    case = next(c for c in CASES if c.name == "dopri5_mlp")
    net, y0, t = build(case)
    func = Field(net)

    def run(opts: dict) -> torch.Tensor:
        with torch.no_grad():
            return neurode.odeint(func, y0, t, rtol=case.rtol, atol=case.atol,
                                  method=case.method, options=dict(opts))

    t0 = time.perf_counter()
    ref = run(VARIANTS["compiled"])
    compile_s = time.perf_counter() - t0
    outs = {name: run(opts) for name, opts in VARIANTS.items()}
    for name, ys in outs.items():
        diff = float((ys - ref).abs().max())
        assert diff < 1e-4, f"{name} differs from compiled by {diff}"
    for _ in range(3):
        for opts in VARIANTS.values():
            run(opts)
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, opts in VARIANTS.items():
            gc.collect()
            gc.disable()
            s = time.perf_counter()
            run(opts)
            samples[name].append(time.perf_counter() - s)
            gc.enable()
    med = {name: statistics.median(v) * 1e3 for name, v in samples.items()}
    res = {"case": case.description, "torch": torch.__version__,
           "threads": torch.get_num_threads(), "compile_s": compile_s,
           "median_ms": med,
           "ratio_to_eager_host": {n: m / med["eager host"] for n, m in med.items()},
           "compiled_over_eager_device": med["compiled"] / med["eager device"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(f"{case.description}; first compiled call (compiles) {compile_s:.1f} s")
    for name, m in med.items():
        print(f"  {name:13s} {m:8.2f} ms   ratio to eager host {m / med['eager host']:.3f}")
    print(f"  compiled / eager device = {res['compiled_over_eager_device']:.3f}")


if __name__ == "__main__":
    main()
