"""``neurode bench``: a quick benchmark of the solver loop (and torchdiffeq, if installed), or
the repository's full benchmark suite.

``run`` times a few solves in this process (seconds). ``run_suite`` runs every ``bench_*.py`` of
a ``benchmarks/`` folder (a clone of the repository has one; the scripts import the peers they
compare with: ``pip install -e ".[bench]" torchode``), each in its own process so that one
script's memory and threads do not colour the next, prints their tables as they come and a
summary at the end. The scripts write their numbers to ``benchmarks/results/*.json``.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

import neurode
from neurode.errors import InvalidInputError

__all__ = ["run", "run_suite"]


def _time(fn, repeats: int) -> float:
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(out)


def run(repeats: int = 5) -> list[dict]:
    """Time a few solves and print a table; returns the rows."""
    try:
        import torchdiffeq
    except ImportError:
        torchdiffeq = None
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 2))

    def field(t, y):
        return mlp(y)

    y0 = torch.randn(256, 2)
    t = torch.linspace(0, 5, 50)
    mu = torch.full((256,), 2.0)

    def vdp(t, y):
        return torch.stack([y[:, 1], mu * (1 - y[:, 0] ** 2) * y[:, 1] - y[:, 0]], 1)

    cases = [
        ("dopri5, MLP, batch 256", lambda m: m.odeint(field, y0, t, rtol=1e-6, atol=1e-6)),
        ("rk4 step 0.01, MLP", lambda m: m.odeint(field, y0, t, method="rk4",
                                                  options={"step_size": 0.01})),
        ("dopri5, VdP μ=2, batch 256", lambda m: m.odeint(vdp, y0, t, rtol=1e-5, atol=1e-5)),
    ]
    rows = []
    print(f"{'case':<34}{'neurode ms':>12}{'torchdiffeq ms':>16}{'ratio':>8}")
    with torch.no_grad():
        for name, fn in cases:
            ours = _time(lambda fn=fn: fn(neurode), repeats)
            theirs = _time(lambda fn=fn: fn(torchdiffeq), repeats) if torchdiffeq else None
            rows.append({"case": name, "neurode_ms": ours, "torchdiffeq_ms": theirs})
            extra = f"{theirs:>16.1f}{ours / theirs:>8.2f}" if theirs else f"{'-':>16}{'-':>8}"
            print(f"{name:<34}{ours:>12.1f}{extra}")
        ps = _time(lambda: neurode.solve_ivp(vdp, y0, t, rtol=1e-5, atol=1e-5,
                                             per_sample=True), repeats)
        rows.append({"case": "dopri5 per-sample, VdP", "neurode_ms": ps, "torchdiffeq_ms": None})
        print(f"{'dopri5 per-sample, VdP μ=2':<34}{ps:>12.1f}{'-':>16}{'-':>8}")
    return rows


def run_suite(folder: Path, only: list[str] | None = None) -> list[dict]:
    """Run ``folder/bench_*.py`` (or those named in ``only``) one process each; print a summary.

    Returns one row per script: its name, wall seconds and exit status.
    """
    folder = Path(folder)
    scripts = sorted(folder.glob("bench_*.py")) if folder.is_dir() else []
    if not scripts:
        raise InvalidInputError(f"neurode bench --suite: no bench_*.py scripts in {folder} "
                                "(pass the benchmarks/ folder of a clone of the repository)")
    if only:
        names = {s.stem.removeprefix("bench_"): s for s in scripts}
        unknown = [n for n in only if n not in names]
        if unknown:
            raise InvalidInputError(f"neurode bench --only: unknown benchmark(s) {unknown}; "
                                    f"{folder} has {sorted(names)}")
        scripts = [names[n] for n in only]
    rows = []
    for script in scripts:
        print(f"\n=== {script.name} ===", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run([sys.executable, str(script)], cwd=folder.parent).returncode
        rows.append({"script": script.name, "seconds": time.perf_counter() - t0,
                     "returncode": rc})
    print(f"\n{'benchmark':<24}{'seconds':>10}  status")
    for r in rows:
        status = "ok" if r["returncode"] == 0 else f"FAILED (exit {r['returncode']})"
        print(f"{r['script']:<24}{r['seconds']:>10.1f}  {status}")
    print(f"results: {folder / 'results'}")
    return rows
