"""``neurode train spiral`` (and ``cnf``) as a user runs it: wall time on an idle machine and
with a CPU-bound process on every core beside it, with ``--threads auto`` (one thread for these
small tensors) and with PyTorch's default pool (``--threads <cores>``).

Usage::

    python benchmarks/bench_cli.py [--steps 150] [--cnf-steps 4000]
                                   [--out benchmarks/results/cli.json]

Each case is a fresh ``python -m neurode train spiral`` process (import and data included);
the load is ``os.cpu_count()`` processes spinning in pure Python. A case that passes
``--timeout`` seconds is reported as at least that long.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _spin() -> None:
    while True:
        pass


def _train(task: list[str], steps: int, threads: str, timeout: float) -> tuple[float, bool]:
    with tempfile.TemporaryDirectory() as runs:
        t0 = time.perf_counter()
        try:
            subprocess.run([sys.executable, "-m", "neurode", "train", *task, "--steps",
                            str(steps), "--no-progress", "--runs-dir", runs, "--threads",
                            threads], check=True, capture_output=True, timeout=timeout)
            return time.perf_counter() - t0, True
        except subprocess.TimeoutExpired:
            return timeout, False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=150, help="spiral training steps")
    ap.add_argument("--cnf-steps", type=int, default=4000, help="cnf (flow matching) steps")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "cli.json")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    tasks = {"spiral": (["spiral"], args.steps), "cnf": (["cnf", "--data", "moons"],
                                                         args.cnf_steps)}
    cases: dict = {}
    for load in (False, True):
        procs = []
        if load:
            procs = [mp.Process(target=_spin, daemon=True) for _ in range(cores)]
            for p in procs:
                p.start()
            time.sleep(1.0)
        try:
            for name, (task, steps) in tasks.items():
                for threads in ("auto", str(cores)):
                    wall, done = _train(task, steps, threads, args.timeout)
                    key = f"{name}, {'loaded' if load else 'idle'}, --threads {threads}"
                    cases[key] = {"seconds": wall, "finished": done}
                    print(f"{key:36s} {wall:8.1f} s{'' if done else ' (timed out)'}",
                          flush=True)
        finally:
            for p in procs:
                p.terminate()
    ratios = {}
    for name in tasks:
        for threads in ("auto", str(cores)):
            r = (cases[f"{name}, loaded, --threads {threads}"]["seconds"]
                 / cases[f"{name}, idle, --threads {threads}"]["seconds"])
            ratios[f"{name}, --threads {threads}"] = r
            print(f"{name:7s} loaded/idle with --threads {threads:4s}: {r:.2f}x")
    out = {"steps": {k: v[1] for k, v in tasks.items()}, "cores": cores, "cases": cases,
           "loaded_over_idle": ratios}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
