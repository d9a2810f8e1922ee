"""Per-step solver overhead of neurode and torchdiffeq, with the vector field's cost removed.

Usage::

    python benchmarks/profile_overhead.py [--cases dopri5_mlp rk4_mlp] [--repeats 15]
                                          [--out benchmarks/results/overhead.json]

Method: the field of a :mod:`bench_solvers` case is run once per library while recording its
outputs; a *replay* field then returns those outputs, in call order, without computing anything.
The solver takes exactly the same steps on exactly the same numbers (checked: the replayed
solution equals the real one bit for bit), so the time of a replayed solve is the solver's own
cost: Python bookkeeping, tensor ops on the state (stage combinations, error norm,
interpolation), host synchronisations, plus one module call per evaluation. Reported:

* replayed solve time (median of interleaved A B A B repeats) per step and per evaluation;
* the field's own cost (real solve minus replayed solve) for scale;
* aten ops per step issued by the solver (a ``TorchDispatchMode`` counts them during a replayed
  solve; the replay field issues none), with the most frequent ops;
* the top Python functions by own time (``cProfile``) of a replayed solve.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pstats
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_solvers as bench

DEFAULT_OUT = bench.REPO / "benchmarks" / "results" / "overhead.json"


class Recorder(nn.Module):
    """Evaluates ``net`` and keeps every output, in call order."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.outputs: list[Tensor] = []

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        out = self.net(y)
        self.outputs.append(out)
        return out


class Replay(nn.Module):
    """Returns recorded outputs in order, ignoring ``t`` and ``y`` (no tensor op at all).

    ``rewind()`` before each solve; ``used()`` is the number of outputs returned since.
    (No attribute is assigned per call: ``nn.Module.__setattr__`` is slow.)
    """

    def __init__(self, outputs: list[Tensor]):
        super().__init__()
        self.outputs = outputs
        self.rewind()

    def rewind(self) -> None:
        self._it = iter(self.outputs)
        self._count = iter(range(1, len(self.outputs) + 2))

    def used(self) -> int:
        return next(self._count) - 1

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        next(self._count)
        return next(self._it)


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched while active."""

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


def median_time(fn, repeats: int) -> float:
    gc.collect()
    gc.disable()
    try:
        xs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            xs.append(time.perf_counter() - t0)
        return statistics.median(xs)
    finally:
        gc.enable()


def profile_case(case: bench.Case, repeats: int, top: int) -> dict:
    net, y0, t = bench.build(case)
    kwargs = {"rtol": case.rtol, "atol": case.atol, "method": case.method}
    rec: dict = {"case": case.name, "description": case.description, "libs": {}}
    replays, solves, reals = {}, {}, {}
    for lib in bench.LIBS:
        odeint = bench.ODEINT[lib]
        counter = bench.AdaptiveStepCountingField(net) if case.adaptive \
            else bench.StepCountingField(net)
        with torch.no_grad():
            odeint(counter, y0, t, options=dict(case.options), **kwargs)
        recorder = Recorder(net)
        with torch.no_grad():
            ys = odeint(recorder, y0, t, options=dict(case.options), **kwargs)
        replay = Replay(recorder.outputs)

        def solve(f=replay, odeint=odeint):
            f.rewind()
            with torch.no_grad():
                return odeint(f, y0, t, options=dict(case.options), **kwargs)

        def real(odeint=odeint):
            with torch.no_grad():
                return odeint(bench.Field(net), y0, t, options=dict(case.options), **kwargs)

        for _ in range(3):  # replay is faithful (same steps, same numbers), and repeatable
            if not torch.equal(solve(), ys) or replay.used() != len(recorder.outputs):
                raise RuntimeError(f"{lib}: replayed solve differs from the real one")
        replays[lib], solves[lib], reals[lib] = replay, solve, real
        rec["libs"][lib] = {"nfe": counter.nfe, "n_steps": counter.n_steps}

    # Interleaved timing of replayed and real solves.
    times: dict[str, dict[str, list[float]]] = {lib: {"replay": [], "real": []}
                                                 for lib in bench.LIBS}
    for r in range(repeats):
        for lib in bench.LIBS if r % 2 == 0 else bench.LIBS[::-1]:
            times[lib]["replay"].append(median_time(solves[lib], 3))
            times[lib]["real"].append(median_time(reals[lib], 1))
    # Cost of the module call itself (counted in the replayed time).
    call, tt = Replay([y0] * 10_000), torch.zeros(())

    def calls():
        call.rewind()
        for _ in range(10_000):
            call(tt, y0)

    module_call = median_time(calls, 5) / 10_000

    for lib in bench.LIBS:
        d = rec["libs"][lib]
        replay_s = statistics.median(times[lib]["replay"])
        real_s = statistics.median(times[lib]["real"])
        d.update(replay_ms=1e3 * replay_s, real_ms=1e3 * real_s,
                 field_ms=1e3 * (real_s - replay_s),
                 overhead_us_per_step=1e6 * replay_s / d["n_steps"],
                 overhead_us_per_step_excl_module_call=1e6 * (replay_s - d["nfe"] * module_call)
                 / d["n_steps"],
                 overhead_us_per_eval=1e6 * replay_s / d["nfe"])
        with OpCounter() as oc:
            solves[lib]()
        n_ops = sum(oc.ops.values())
        d.update(aten_ops=n_ops, aten_ops_per_step=n_ops / d["n_steps"],
                 top_aten_ops=oc.ops.most_common(top))
        prof = cProfile.Profile()
        prof.enable()
        solves[lib]()
        prof.disable()
        st = pstats.Stats(prof)
        d["python_calls_per_step"] = st.total_calls / d["n_steps"]
        rows = []
        for (fname, line, func), (cc, nc, tt_, ct, _) in st.stats.items():
            rows.append({"function": f"{Path(fname).name}:{line}({func})", "ncalls": nc,
                         "primitive_calls": cc, "tottime_ms": 1e3 * tt_, "cumtime_ms": 1e3 * ct})
        rows.sort(key=lambda r: r["tottime_ms"], reverse=True)
        d["cprofile_top_tottime"] = rows[:top]
        d["cprofile_total_ms"] = 1e3 * st.total_tt
        # Own time of built-ins (torch ops, C methods; file "~") vs Python-level code.
        d["cprofile_builtin_ms"] = 1e3 * sum(v[2] for k, v in st.stats.items() if k[0] == "~")
    rec["module_call_us"] = 1e6 * module_call
    return rec


def report(rec: dict) -> str:
    out = io.StringIO()
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(f"== {rec['case']}: {rec['description']}")
    p(f"   (module call alone: {rec['module_call_us']:.2f} us per evaluation)")
    for lib, d in rec["libs"].items():
        p(f"-- {lib}: {d['n_steps']} steps, {d['nfe']} evaluations")
        p(f"   real solve {d['real_ms']:.2f} ms = field {d['field_ms']:.2f} ms + solver "
          f"{d['replay_ms']:.2f} ms")
        p(f"   solver: {d['overhead_us_per_step']:.1f} us/step "
          f"({d['overhead_us_per_step_excl_module_call']:.1f} excluding module calls), "
          f"{d['overhead_us_per_eval']:.1f} us/evaluation")
        p(f"   aten ops: {d['aten_ops']} total, {d['aten_ops_per_step']:.1f}/step; top: "
          + ", ".join(f"{k} {v}" for k, v in d["top_aten_ops"]))
        p(f"   python calls: {d['python_calls_per_step']:.0f}/step; cProfile (inflates Python "
          f"code): total {d['cprofile_total_ms']:.1f} ms, built-ins (torch ops) "
          f"{d['cprofile_builtin_ms']:.1f} ms; top own time:")
        for r in d["cprofile_top_tottime"]:
            p(f"     {r['tottime_ms']:8.2f} ms {r['ncalls']:7d}x  {r['function']}")
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    names = [c.name for c in bench.CASES if not c.backward]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", choices=names, default=["dopri5_mlp", "rk4_mlp"])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--top", type=int, default=12, help="rows of op / function tables")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    records = []
    for case in bench.CASES:
        if case.name in args.cases:
            rec = profile_case(case, args.repeats, args.top)
            records.append(rec)
            print(report(rec))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": bench.environment(), "cases": records},
                                   indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
