"""Side-by-side timing of neurode and torchdiffeq on CPU, float32.

Usage::

    python benchmarks/bench_solvers.py [--quick] [--out benchmarks/results/solvers.json]

Method
------
Both libraries run in one process on the same problem: the same ``nn.Module`` vector field
(same parameters), the same ``y0``, output times, method, tolerances and options. For each case:

1. **Statistics run** (untimed): each library solves once with a field that counts its
   evaluations (NFE) and, through the ``callback_step`` / ``callback_accept_step`` /
   ``callback_reject_step`` hooks both libraries call, its steps. Outputs (and, for the backprop
   case, parameter gradients) are kept to compare the libraries with each other and with a
   float64 reference (neurode ``dopri8`` at rtol = atol = 1e-12 on a float64 copy of the field).
   The reference is cross-checked against torchdiffeq's float64 ``dopri8`` at the same
   tolerance (skipped with ``--quick``), so it cannot favour neurode.
2. **Warm-up**: ``--warmup`` untimed calls per library (allocator, dispatcher and caches settle).
3. **Timed repeats**, interleaved A B A B: repeat ``r`` runs neurode then torchdiffeq when ``r``
   is even and torchdiffeq then neurode when ``r`` is odd, so that slow drift of the machine
   (frequency scaling, other processes) affects both libraries alike. One sample is the mean
   wall time (``time.perf_counter``) of ``number`` back-to-back calls, ``number`` being chosen
   once per case (same for both libraries) so that a sample lasts at least ``--min-sample``
   seconds. The garbage collector is collected before and disabled during each sample.

Reported per case and library: the **median** sample (plus min and the interquartile range as a
noise indicator), and the **ratio = median(neurode) / median(torchdiffeq)**: < 1 means neurode is
faster. The summary is the geometric mean of the ratios over the cases. Fixed (non-timed)
quantities: NFE, steps (accepted/rejected), max |neurode − torchdiffeq| over all outputs, and
max |library − reference| over all outputs for each library, so that "same or fewer NFE at equal
tolerance" can be judged together with accuracy.

Everything, including raw samples and machine information, is written as JSON to ``--out``.
Other processes on the machine (a test suite running beside the benchmark on a 2-core box) make
samples stall, by seconds when they contend with PyTorch's intra-op threads; medians absorb a
minority of such samples, and the JSON records each case's load averages, per-sample CPU times
and the number of samples above twice the median, so a contaminated run can be recognised.

``benchmarks/profile_overhead.py`` isolates the solvers' own per-step cost on the same cases.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import hashlib
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torchdiffeq
from torch import Tensor, nn

import neurode

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "solvers.json"
SEED = 0
LIBS = ("neurode", "torchdiffeq")
ODEINT = {"neurode": neurode.odeint, "torchdiffeq": torchdiffeq.odeint}
REF_METHOD, REF_TOL = "dopri8", 1e-12

# The vector fields: tanh MLPs with weights ~ N(0, GAIN² / fan_in) and biases ~ N(0, 0.1²).
# PyTorch's default initialisation gives nearly linear, slow dynamics (dopri5 takes ~5 steps over
# [0, 5]); GAIN = 2 makes the tanh layers nonlinear, so dopri5 takes ~30 steps over [0, 5] at
# rtol = atol = 1e-6 and bosh3 ~150 with some rejections: a realistic neural-ODE workload.
GAIN = 2.0
SMALL = (2, 64, 64, 2)
MEDIUM = (64, 256, 64)


# --------------------------------------------------------------------------------------------
# Problems


class Field(nn.Module):
    """``dy/dt = net(y)`` (autonomous); counts its evaluations in ``nfe``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.nfe = 0

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        self.nfe += 1
        return self.net(y)


class StepCountingField(Field):
    """A :class:`Field` that also counts steps through the ``callback_step`` hook.

    Used only in the untimed statistics run, so the hooks cost nothing in the timings.
    """

    def __init__(self, net: nn.Module):
        super().__init__(net)
        self.n_steps = self.n_accepted = self.n_rejected = 0

    def callback_step(self, t0, y0, dt) -> None:
        self.n_steps += 1


class AdaptiveStepCountingField(StepCountingField):
    """Also counts accepted and rejected steps (torchdiffeq's fixed-grid solvers warn about
    these two hooks, hence the separate class)."""

    def callback_accept_step(self, t0, y0, dt) -> None:
        self.n_accepted += 1

    def callback_reject_step(self, t0, y0, dt) -> None:
        self.n_rejected += 1


def make_mlp(sizes: tuple[int, ...], seed: int) -> nn.Sequential:
    """A tanh MLP ``sizes[0] → … → sizes[-1]`` with the GAIN initialisation, seeded locally."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
            lin = nn.Linear(n_in, n_out)
            nn.init.normal_(lin.weight, std=GAIN / math.sqrt(n_in))
            nn.init.normal_(lin.bias, std=0.1)
            layers.append(lin)
            if i < len(sizes) - 2:
                layers.append(nn.Tanh())
        return nn.Sequential(*layers)


def make_y0(sizes: tuple[int, ...], batch: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randn(batch, sizes[0], generator=g)


@dataclass
class Case:
    """One benchmark case; every case is float32 on the CPU."""

    name: str
    description: str
    sizes: tuple[int, ...]
    batch: int
    method: str
    t1: float = 5.0
    n_times: int = 100
    rtol: float = 1e-6
    atol: float = 1e-6
    options: dict = field(default_factory=dict)
    backward: bool = False

    @property
    def adaptive(self) -> bool:
        return "step_size" not in self.options


CASES = [
    Case("dopri5_mlp", "dopri5 fwd, MLP 2-64-64-2, batch 256", SMALL, 256, "dopri5"),
    Case("bosh3_mlp", "bosh3 fwd, MLP 2-64-64-2, batch 256", SMALL, 256, "bosh3"),
    Case("dopri5_medium", "dopri5 fwd, MLP 64-256-64, batch 1024", MEDIUM, 1024, "dopri5"),
    Case("rk4_mlp", "rk4 fwd, step 0.01, MLP 2-64-64-2, batch 256", SMALL, 256, "rk4",
         options={"step_size": 0.01}),
    Case("rk4_mlp_backprop", "rk4 fwd+bwd, step 0.01, MLP 2-64-64-2, batch 256", SMALL, 256,
         "rk4", options={"step_size": 0.01}, backward=True),
]


def build(case: Case) -> tuple[nn.Sequential, Tensor, Tensor]:
    """The case's network, ``y0`` and output times (cases with the same sizes share them)."""
    net = make_mlp(case.sizes, SEED)
    y0 = make_y0(case.sizes, case.batch, SEED)
    t = torch.linspace(0.0, case.t1, case.n_times)
    return net, y0, t


def solve(lib: str, case: Case, func: nn.Module, y0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """One benchmarked call: the solution, and the flat parameter gradient (empty if forward).

    Forward cases run under ``torch.no_grad()``; the backprop case differentiates
    ``mean(ys²)`` with respect to the field's parameters through the solver's operations.
    """
    kwargs = {"rtol": case.rtol, "atol": case.atol, "method": case.method,
              "options": dict(case.options)}
    if not case.backward:
        with torch.no_grad():
            return ODEINT[lib](func, y0, t, **kwargs), torch.empty(0)
    params = list(func.parameters())
    for p in params:
        p.grad = None
    ys = ODEINT[lib](func, y0, t, **kwargs)
    ys.square().mean().backward()
    return ys.detach(), torch.cat([p.grad.reshape(-1) for p in params])


_REF_CACHE: dict[tuple, dict] = {}


def reference(case: Case, crosscheck: bool = True) -> dict:
    """The float64 reference of the case's problem (cached across cases that share it).

    Keys: ``ys`` (neurode dopri8 at rtol = atol = 1e-12 on a float64 copy of the field),
    ``grad`` (gradient of ``mean(ys²)`` through that solve; empty for forward cases) and
    ``crosscheck`` (max |ys − torchdiffeq dopri8 at the same settings|, to show the reference
    does not favour neurode; None unless ``crosscheck``).
    """
    key = (case.sizes, case.batch, case.t1, case.n_times, case.backward)
    if key not in _REF_CACHE:
        net, y0, t = build(case)
        func = Field(copy.deepcopy(net).double())
        y0, t = y0.double(), t.double()
        kwargs = {"rtol": REF_TOL, "atol": REF_TOL, "method": REF_METHOD}
        if case.backward:
            ys = neurode.odeint(func, y0, t, **kwargs)
            ys.square().mean().backward()
            grad = torch.cat([p.grad.reshape(-1) for p in func.parameters()])
            ys = ys.detach()
        else:
            with torch.no_grad():
                ys = neurode.odeint(func, y0, t, **kwargs)
            grad = torch.empty(0)
        other = None
        if crosscheck:
            with torch.no_grad():
                other = max_abs(ys, torchdiffeq.odeint(func, y0, t, **kwargs))
        _REF_CACHE[key] = {"ys": ys, "grad": grad, "crosscheck": other}
    return _REF_CACHE[key]


def max_abs(a: Tensor, b: Tensor) -> float:
    if a.numel() == 0:
        return math.nan
    return float((a.double() - b.double()).abs().max())


# --------------------------------------------------------------------------------------------
# Timing


def time_sample(fn: Callable[[], object], number: int) -> tuple[float, float]:
    """Mean wall time and mean process CPU time (all threads) of ``number`` calls of ``fn``.

    The garbage collector is collected before and disabled during the sample. CPU time is only
    a diagnostic: a sample whose wall time is far above CPU time / threads was stalled.
    """
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        cpu, start = time.process_time(), time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - start) / number, (time.process_time() - cpu) / number
    finally:
        if enabled:
            gc.enable()


def quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def run_case(case: Case, repeats: int, warmup: int, min_sample: float,
             crosscheck: bool = True) -> dict:
    """Statistics run, warm-up, then interleaved timed repeats; returns the case's record."""
    net, y0, t = build(case)
    rec: dict = {"case": {**asdict(case), "adaptive": case.adaptive}, "libs": {},
                 "loadavg_before": _loadavg()}

    # 1. Untimed statistics run, with step-counting hooks.
    outs, grads = {}, {}
    for lib in LIBS:
        cf = (AdaptiveStepCountingField if case.adaptive else StepCountingField)(net)
        outs[lib], grads[lib] = solve(lib, case, cf, y0, t)
        rec["libs"][lib] = {"nfe": cf.nfe, "n_steps": cf.n_steps,
                            "n_accepted": cf.n_accepted if case.adaptive else cf.n_steps,
                            "n_rejected": cf.n_rejected}
    with torch.no_grad():
        sol = neurode.solve_ivp(Field(net), y0, t, method=case.method, rtol=case.rtol,
                                atol=case.atol, options=dict(case.options))
    rec["neurode_reported_stats"] = {k: getattr(sol.stats, k)
                                     for k in ("nfe", "n_steps", "n_accepted", "n_rejected")}
    ref = reference(case, crosscheck)
    ref_ys, ref_grad = ref["ys"], ref["grad"]
    rec["max_abs_diff"] = max_abs(outs["neurode"], outs["torchdiffeq"])
    rec["max_abs_grad_diff"] = max_abs(grads["neurode"], grads["torchdiffeq"])
    for lib in LIBS:
        rec["libs"][lib]["max_abs_err_vs_ref"] = max_abs(outs[lib], ref_ys)
        rec["libs"][lib]["max_abs_grad_err_vs_ref"] = max_abs(grads[lib], ref_grad)
    rec["ref_max_abs"] = float(ref_ys.abs().max())
    rec["ref_crosscheck_max_abs_diff"] = ref["crosscheck"]

    # 2. Warm-up; the last round sizes ``number`` so that the faster library's samples last
    #    ``min_sample`` (the statistics run above already warmed up a little).
    func = Field(net)
    calls = {lib: (lambda lib=lib: solve(lib, case, func, y0, t)) for lib in LIBS}
    last = dict.fromkeys(LIBS, math.inf)
    for w in range(warmup):
        for lib in LIBS if w % 2 == 0 else LIBS[::-1]:
            last[lib] = time_sample(calls[lib], 1)[0]
    number = max(1, math.ceil(min_sample / max(min(last.values()), 1e-6)))

    # 3. Timed repeats, A B A B.
    samples: dict[str, list[float]] = {lib: [] for lib in LIBS}
    cpu: dict[str, list[float]] = {lib: [] for lib in LIBS}
    for r in range(repeats):
        for lib in LIBS if r % 2 == 0 else LIBS[::-1]:
            wall, cpu_s = time_sample(calls[lib], number)
            samples[lib].append(wall)
            cpu[lib].append(cpu_s)
    for lib in LIBS:
        s = samples[lib]
        q1, q3 = quartiles(s)
        med = statistics.median(s)
        rec["libs"][lib].update(median_ms=1e3 * med, min_ms=1e3 * min(s),
                                n_outliers=sum(x > 2 * med for x in s),
                                iqr_ms=1e3 * (q3 - q1), samples_ms=[1e3 * x for x in s],
                                median_cpu_ms=1e3 * statistics.median(cpu[lib]),
                                cpu_samples_ms=[1e3 * x for x in cpu[lib]])
    rec["number"] = number
    rec["repeats"] = repeats
    rec["ratio"] = rec["libs"]["neurode"]["median_ms"] / rec["libs"]["torchdiffeq"]["median_ms"]
    rec["loadavg_after"] = _loadavg()
    return rec


def _loadavg() -> list[float] | None:
    """1/5/15-minute load averages: other processes on the machine distort timings."""
    try:
        return list(os.getloadavg())
    except OSError:
        return None


# --------------------------------------------------------------------------------------------
# Reporting


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _src_digest() -> str:
    """sha256 of neurode's sources as benchmarked (they may differ from the commit)."""
    h = hashlib.sha256()
    src = Path(neurode.__file__).resolve().parent
    for p in sorted(src.rglob("*.py")):
        h.update(str(p.relative_to(src)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def environment() -> dict:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchdiffeq": getattr(torchdiffeq, "__version__", "unknown"),
        "neurode": neurode.__version__,
        "neurode_git_commit": _git("rev-parse", "HEAD"),
        "neurode_src_dirty": bool(_git("status", "--porcelain", "--", "src")),
        "neurode_src_sha256": _src_digest(),
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "os_cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "dtype": "float32",
        "device": "cpu",
    }


def _fmt_err(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.1e}"


def print_table(records: list[dict], geomean: float) -> None:
    head = (f"{'case':<18} {'steps N/T':>11} {'NFE N/T':>11} {'neurode ms':>11} "
            f"{'tdiffeq ms':>11} {'ratio':>6} {'|N-T|':>8} {'errN':>8} {'errT':>8}")
    print(head)
    print("-" * len(head))
    for rec in records:
        n, t = rec["libs"]["neurode"], rec["libs"]["torchdiffeq"]
        steps = f"{n['n_steps']}/{t['n_steps']}"
        nfe = f"{n['nfe']}/{t['nfe']}"
        print(f"{rec['case']['name']:<18} {steps:>11} {nfe:>11} {n['median_ms']:>11.2f} "
              f"{t['median_ms']:>11.2f} {rec['ratio']:>6.3f} {_fmt_err(rec['max_abs_diff']):>8} "
              f"{_fmt_err(n['max_abs_err_vs_ref']):>8} {_fmt_err(t['max_abs_err_vs_ref']):>8}")
        extra = []
        if rec["case"]["adaptive"]:
            extra.append(f"rejected N/T {n['n_rejected']}/{t['n_rejected']}")
        if not math.isnan(rec["max_abs_grad_diff"]):
            extra.append(f"grad |N-T| {_fmt_err(rec['max_abs_grad_diff'])}, grad err N/T "
                         f"{_fmt_err(n['max_abs_grad_err_vs_ref'])}/"
                         f"{_fmt_err(t['max_abs_grad_err_vs_ref'])}")
        extra.append(f"IQR N/T {n['iqr_ms']:.2f}/{t['iqr_ms']:.2f} ms, "
                     f"{rec['repeats']}x{rec['number']} calls")
        if n["n_outliers"] or t["n_outliers"]:
            extra.append(f"samples > 2x median N/T {n['n_outliers']}/{t['n_outliers']}")
        print(f"{'':<18}   " + "; ".join(extra))
    print("-" * len(head))
    print(f"geometric mean of ratios (neurode/torchdiffeq; < 1 = neurode faster): {geomean:.3f}")
    print("steps/NFE from callback hooks and a counting field; |N-T| = max abs difference of the "
          "outputs;\nerrN/errT = max abs error vs float64 neurode dopri8 at rtol=atol=1e-12.")
    checks = [r["ref_crosscheck_max_abs_diff"] for r in records
              if r["ref_crosscheck_max_abs_diff"] is not None]
    if checks:
        print(f"reference cross-check: max |neurode dopri8 - torchdiffeq dopri8| (float64, 1e-12) "
              f"= {max(checks):.1e}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="few repeats, one call per sample, no reference cross-check "
                    "(smoke test, well under a minute)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    ap.add_argument("--repeats", type=int, help="timed samples per library per case "
                    "(default 15, quick 3)")
    ap.add_argument("--warmup", type=int, help="untimed calls per library (default 3, quick 0)")
    ap.add_argument("--min-sample", type=float,
                    help="minimum seconds per sample (default 0.1, quick 0)")
    ap.add_argument("--cases", nargs="+", choices=[c.name for c in CASES],
                    help="run only these cases")
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 15)
    warmup = args.warmup if args.warmup is not None else (0 if args.quick else 3)
    min_sample = args.min_sample if args.min_sample is not None else (0.0 if args.quick else 0.1)

    env = environment()
    print(f"torch {env['torch']}, torchdiffeq {env['torchdiffeq']}, neurode {env['neurode']} "
          f"({(env['neurode_git_commit'] or '?')[:10]}"
          f"{', src modified' if env['neurode_src_dirty'] else ''})")
    print(f"torch.get_num_threads() = {env['torch_num_threads']} (interop "
          f"{env['torch_num_interop_threads']}), os.cpu_count() = {env['os_cpu_count']}, "
          f"{env['cpu_model']}")
    print(f"float32 CPU; {repeats} timed samples per library per case, {warmup} warm-up, "
          f"samples >= {min_sample:g} s, interleaved A B A B\n")

    torch.manual_seed(SEED)
    cases = [c for c in CASES if args.cases is None or c.name in args.cases]
    records = []
    t_start = time.perf_counter()
    for case in cases:
        print(f"  running {case.name}: {case.description} ...", file=sys.stderr, flush=True)
        records.append(run_case(case, repeats, warmup, min_sample, crosscheck=not args.quick))
    elapsed = time.perf_counter() - t_start
    geomean = math.exp(statistics.fmean(math.log(r["ratio"]) for r in records))
    print()
    print_table(records, geomean)
    print(f"\ntotal {elapsed:.1f} s")

    result = {
        "environment": env,
        "settings": {"quick": args.quick, "repeats": repeats, "warmup": warmup,
                     "min_sample_s": min_sample, "seed": SEED, "gain": GAIN,
                     "reference": {"method": REF_METHOD, "rtol": REF_TOL, "atol": REF_TOL,
                                   "dtype": "float64", "library": "neurode"},
                     "ratio": "median_ms(neurode) / median_ms(torchdiffeq); < 1 = neurode faster"},
        "cases": records,
        "geomean_ratio": geomean,
        "elapsed_s": elapsed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
