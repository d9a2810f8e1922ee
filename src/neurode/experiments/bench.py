"""``neurode bench``: a quick benchmark of the solver loop (and torchdiffeq, if installed).

For the full, recorded benchmarks run the scripts in the repository's ``benchmarks/`` folder.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

import neurode

__all__ = ["run"]


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
