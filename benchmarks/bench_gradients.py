"""Memory and cost of neurode's gradient methods; neurode's adjoint against torchdiffeq's.

Usage::

    python benchmarks/bench_gradients.py [--quick] [--out benchmarks/results/gradients.json]

Three parts, all float32 on CPU:

(a) **Peak memory vs number of steps.** One forward + backward (``loss = mean(ys²)``) of a tanh
    MLP field (state: batch 256 × dim 32; 32 → 128 → 32, 8,352 parameters) over ``t = [0, ½, 1]``
    with fixed steps (``step_size = 1 / steps``), through

    * ``backprop``: ``neurode.odeint``, method ``rk4`` (autograd through the solver);
    * ``adjoint``: ``neurode.odeint_adjoint``, ``rk4`` (backward solve on the same grid);
    * ``checkpoint``: ``neurode.odeint_checkpoint``, ``rk4`` (ACA: keeps one state per step);
    * ``reversible``: ``neurode.gradients.reversible.odeint_reversible`` (MALI), method ``alf``
      with the same number of steps, if that module is importable (ALF takes one evaluation per
      step against rk4's four, so its time is not comparable with the others', its memory is).

    Each (method, steps) runs in a **fresh subprocess** (this script with ``--worker``): imports,
    model, inputs and an untimed 2-step warm-up of the same method first; then the peak-RSS
    high-water mark is reset (``/proc/self/clear_refs`` ← 5), the baseline is the current RSS,
    and the reported memory is ``VmHWM − baseline`` after the forward + backward, i.e. the peak
    extra resident memory the gradient computation needed. (Where ``clear_refs`` is unavailable
    the worker falls back to ``ru_maxrss − ru_maxrss after setup``, which can under-read because
    setup's own peak is not reset; the JSON says which was used.) The ratio is to the same
    method's 100-step value. Backprop keeps every step's graph (~1 MB per rk4 step here), so it
    is **skipped** wherever its memory predicted linearly from the largest measured step count
    exceeds ``--mem-cap-mb`` (default 3,000 MB: the machine is shared); the prediction is
    reported instead. The forward-only peak and the size of the states the checkpointed adjoint
    stores (steps × 32 KB) are printed too. (The checkpoints are copied into 4 MB blocks; kept
    as 10,000 separate 32 KB allocations they once fragmented glibc's heap to 4× their size.)
    ``--mmap-threshold 16384`` (``MALLOC_MMAP_THRESHOLD_`` in the workers) separates such
    allocator effects from what a method keeps.

(b) **Backward pass of the adjoint: neurode vs torchdiffeq.** The same kind of field with weights
    scaled by 2 (so the dynamics are nonlinear and dopri5 takes tens of steps), ``t =
    linspace(0, 5, 6)``, ``loss = mean(ys²)`` over all outputs, dopri5 at rtol = atol = 1e-6 for
    the forward and the backward solve. Per sample: an untimed forward, then the timed
    ``torch.autograd.grad(loss, params + [y0])``. Samples are interleaved A B A B (order swapped
    every repeat); reported: median, min and IQR (ms), the ratio of medians
    (neurode / torchdiffeq; < 1 = neurode faster), the NFE of the forward and of the backward
    (a counting field: every evaluation of the user's function, including those inside the
    vector–Jacobian products), and the relative difference between the two libraries' gradients
    and of each to backprop through ``neurode.odeint`` in float64 at rtol = atol = 1e-10.

(c) **Seminorm.** Backward NFE (and median time) with ``adjoint_options={"norm": "seminorm"}``
    against the default norm, for both libraries, and the relative change of the gradient it
    causes, on (b)'s problem ("wide") and on "small" (state 16 × 2, MLP 2 → 64 → 64 → 2, 4,482
    parameters, weights × 1.5), where the parameter adjoints dominate the default error norm;
    (b)'s table is printed for both problems.

Timings default to ``torch.set_num_threads(1)`` (``--threads``): the machine is a 2-core box
shared with other jobs, and one intra-op thread per process keeps samples from stalling on
contention. Load averages before and after each part are recorded in the JSON.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchdiffeq
from torch import Tensor, nn

import neurode

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "gradients.json"
SEED = 0
BATCH, DIM, HIDDEN = 256, 32, 128
MEM_METHODS = ("backprop", "adjoint", "checkpoint", "reversible")


# --------------------------------------------------------------------------------------------
# Problem


class Field(nn.Module):
    """``dy/dt = MLP(y)`` (tanh, autonomous); counts its evaluations in ``nfe``.

    ``sizes`` = (dim, hidden, ..., dim); weights and biases of PyTorch's default initialisation
    are multiplied by ``gain``.
    """

    def __init__(self, gain: float = 1.0, dtype: torch.dtype = torch.float32,
                 sizes: tuple[int, ...] = (DIM, HIDDEN, DIM)):
        super().__init__()
        torch.manual_seed(SEED)
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), nn.Tanh()]
        self.net = nn.Sequential(*layers[:-1])
        self.net.to(dtype)
        with torch.no_grad():
            for p in self.net.parameters():
                p.mul_(gain)
        self.nfe = 0

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        self.nfe += 1
        return self.net(y)


def make_y0(dtype: torch.dtype = torch.float32, batch: int = BATCH, dim: int = DIM) -> Tensor:
    g = torch.Generator().manual_seed(SEED + 1)
    return torch.randn(batch, dim, generator=g).to(dtype)


def reversible_available() -> bool:
    try:
        from neurode.gradients.reversible import odeint_reversible  # noqa: F401
    except ImportError:
        return False
    return True


def _loadavg() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except OSError:
        return None


# --------------------------------------------------------------------------------------------
# (a) memory: worker (runs in a fresh subprocess)


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return _proc_status_kb("VmHWM") is not None


def _solve(method: str, f: Field, y0: Tensor, steps: int) -> tuple[Tensor, list[Tensor]]:
    t = torch.tensor([0.0, 0.5, 1.0])
    h = 1.0 / steps
    y0 = y0.clone().requires_grad_()
    if method == "backprop":
        ys = neurode.odeint(f, y0, t, method="rk4", options={"step_size": h})
    elif method == "adjoint":
        ys = neurode.odeint_adjoint(f, y0, t, method="rk4", options={"step_size": h})
    elif method == "checkpoint":
        ys = neurode.odeint_checkpoint(f, y0, t, method="rk4", options={"step_size": h})
    elif method == "reversible":
        from neurode.gradients.reversible import odeint_reversible

        ys = odeint_reversible(f, y0, t, method="alf", options={"step_size": h})
    else:
        raise ValueError(method)
    return (ys**2).mean(), [y0, *f.parameters()]


def worker(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    method, steps = spec["method"], spec["steps"]
    f = Field()
    y0 = make_y0()
    loss, inputs = _solve(method, f, y0, 2)  # warm-up: code paths, allocator, kernels
    torch.autograd.grad(loss, inputs)
    del loss, inputs
    gc.collect()
    have_hwm = _reset_peak()

    def peak_kb() -> int:
        if have_hwm:
            return _proc_status_kb("VmHWM")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    base_kb = _proc_status_kb("VmRSS") if have_hwm else peak_kb()
    f.nfe = 0
    t0 = time.perf_counter()
    loss, inputs = _solve(method, f, y0, steps)
    t1 = time.perf_counter()
    fwd_kb, nfe_fwd = peak_kb(), f.nfe
    grads = torch.autograd.grad(loss, inputs)
    t2 = time.perf_counter()
    end_kb = peak_kb()
    return {
        "method": method, "steps": steps, "peak_extra_mb": (end_kb - base_kb) / 1024,
        "forward_peak_extra_mb": (fwd_kb - base_kb) / 1024, "baseline_rss_mb": base_kb / 1024,
        "measure": "VmHWM-VmRSS (clear_refs reset)" if have_hwm else "ru_maxrss delta",
        "forward_s": t1 - t0, "backward_s": t2 - t1, "wall_s": t2 - t0,
        "nfe_forward": nfe_fwd, "nfe_backward": f.nfe - nfe_fwd, "loss": float(loss),
        "grad_norm": float(torch.cat([g.reshape(-1) for g in grads]).double().norm()),
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
    }


def run_worker(method: str, steps: int, threads: int, mmap_threshold: int | None) -> dict:
    spec = json.dumps({"method": method, "steps": steps, "threads": threads})
    env = dict(os.environ)
    if mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", spec],
                          capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        return {"method": method, "steps": steps, "error": proc.stderr.strip()[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_part(step_counts: list[int], threads: int, cap_mb: float,
                mmap_threshold: int | None) -> dict:
    methods = [m for m in MEM_METHODS if m != "reversible" or reversible_available()]
    results: dict[str, dict[int, dict]] = {m: {} for m in methods}
    load_before = _loadavg()
    for m in methods:
        for steps in step_counts:
            measured = [s for s in results[m] if "peak_extra_mb" in results[m][s]]
            if measured:
                s_max = max(measured)
                pred = results[m][s_max]["peak_extra_mb"] * steps / s_max
                if pred > cap_mb:
                    results[m][steps] = {"method": m, "steps": steps, "skipped": True,
                                         "predicted_mb": pred,
                                         "reason": f"predicted {pred:.0f} MB > cap {cap_mb:.0f} "
                                                   f"MB (linear from {s_max} steps)"}
                    print(f"  (a) {m:>10} {steps:>6} steps: skipped, predicted {pred:.0f} MB",
                          file=sys.stderr, flush=True)
                    continue
            print(f"  (a) {m:>10} {steps:>6} steps ...", file=sys.stderr, flush=True)
            results[m][steps] = run_worker(m, steps, threads, mmap_threshold)
    for m in methods:
        base = results[m].get(step_counts[0], {}).get("peak_extra_mb")
        for r in results[m].values():
            val = r.get("peak_extra_mb", r.get("predicted_mb"))
            r["ratio_to_first"] = val / base if (val is not None and base) else None
    state_mb = BATCH * DIM * 4 / 2**20
    return {"methods": methods, "step_counts": step_counts, "cap_mb": cap_mb,
            "malloc_mmap_threshold": mmap_threshold,
            "checkpoint_state_storage_mb": {s: s * state_mb for s in step_counts},
            "results": {m: [results[m][s] for s in step_counts] for m in methods},
            "loadavg_before": load_before, "loadavg_after": _loadavg(),
            "not_included": None if "reversible" in methods else
            "neurode.gradients.reversible not importable"}


def print_memory(mem: dict) -> None:
    counts = mem["step_counts"]
    print("(a) peak extra RSS of one forward+backward, MB (ratio to 100 steps); "
          f"state {BATCH}x{DIM}, MLP {DIM}-{HIDDEN}-{DIM}, float32, rk4 (reversible: alf)")
    head = f"{'method':<12}" + "".join(f"{f'{s} steps':>22}" for s in counts) + \
        f"{'time s @max':>13}"
    print(head)
    print("-" * len(head))
    for m in mem["methods"]:
        cells = []
        last_time = "-"
        for r in mem["results"][m]:
            if "error" in r:
                cells.append(f"{'error':>22}")
            elif r.get("skipped"):
                cell = f"skip (~{r['predicted_mb']:.0f}, {r['ratio_to_first']:.0f}x)"
                cells.append(f"{cell:>22}")
            else:
                ratio = r["ratio_to_first"]
                cell = f"{r['peak_extra_mb']:.1f} ({ratio:.2f}x)"
                cells.append(f"{cell:>22}")
                last_time = f"{r['wall_s']:.1f}"
        print(f"{m:<12}" + "".join(cells) + f"{last_time:>13}")
    print("-" * len(head))
    for m in mem["methods"]:
        for r in mem["results"][m]:
            if "error" in r:
                print(f"  {m} {r['steps']} steps failed: {r['error'][-300:]}")
            elif r.get("skipped"):
                print(f"  {m} {r['steps']} steps: {r['reason']}")
    print("  time s @max = wall seconds of forward+backward at the largest measured step count")
    print("  forward-only peak extra MB: " + "; ".join(
        f"{m} " + "/".join(f"{r['forward_peak_extra_mb']:.1f}" for r in mem["results"][m]
                           if "forward_peak_extra_mb" in r) for m in mem["methods"]))
    totals = []
    for m in mem["methods"]:
        tot = [r["baseline_rss_mb"] + r["peak_extra_mb"] for r in mem["results"][m]
               if "peak_extra_mb" in r]
        if len(tot) >= 2:
            totals.append(f"{m} " + "/".join(f"{x:.0f}" for x in tot)
                          + f" ({tot[-1] / tot[0]:.2f}x)")
    print("  peak total RSS, MB (baseline + extra; ratio largest/smallest measured): "
          + "; ".join(totals))
    print("  checkpoint's stored states alone (steps x state bytes): " + ", ".join(
        f"{s}: {v:.1f} MB" for s, v in mem["checkpoint_state_storage_mb"].items()))
    if mem["malloc_mmap_threshold"] is not None:
        print(f"  workers ran with MALLOC_MMAP_THRESHOLD_={mem['malloc_mmap_threshold']}")


# --------------------------------------------------------------------------------------------
# (b), (c): adjoint backward pass, neurode vs torchdiffeq, with and without the seminorm

ADJOINT = {"neurode": neurode.odeint_adjoint, "torchdiffeq": torchdiffeq.odeint_adjoint}
T_B = torch.linspace(0, 5, 6)
TOL_B = 1e-6
#: (b) runs on "wide"; (c) on both. "small" has a small state and a deeper MLP, so the parameter
#: adjoints (4,482 of them against 32 state entries) are what the default norm is dominated by.
PROBLEMS = {
    "wide": {"batch": BATCH, "sizes": (DIM, HIDDEN, DIM), "gain": 2.0},
    "small": {"batch": 16, "sizes": (2, 64, 64, 2), "gain": 1.5},
}


def _adjoint_call(lib: str, f: Field, y0: Tensor, seminorm: bool):
    y0 = y0.clone().requires_grad_()
    f.nfe = 0
    ys = ADJOINT[lib](f, y0, T_B.to(y0.dtype), rtol=TOL_B, atol=TOL_B, method="dopri5",
                      adjoint_params=tuple(f.parameters()),
                      adjoint_options={"norm": "seminorm"} if seminorm else None)
    nfe_fwd = f.nfe
    loss = (ys**2).mean()
    return loss, [y0, *f.parameters()], nfe_fwd


def backward_sample(lib: str, f: Field, y0: Tensor, seminorm: bool) -> dict:
    loss, inputs, nfe_fwd = _adjoint_call(lib, f, y0, seminorm)
    f.nfe = 0
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        grads = torch.autograd.grad(loss, inputs)
        wall = time.perf_counter() - t0
    finally:
        if enabled:
            gc.enable()
    flat = torch.cat([g.reshape(-1) for g in grads]).double()
    return {"ms": wall * 1e3, "nfe_forward": nfe_fwd, "nfe_backward": f.nfe, "grad": flat}


def _setup(problem: dict, dtype: torch.dtype) -> tuple[Field, Tensor]:
    f = Field(problem["gain"], dtype, problem["sizes"])
    return f, make_y0(dtype, problem["batch"], problem["sizes"][0])


def reference_gradient(problem: dict) -> Tensor:
    f, y0 = _setup(problem, torch.float64)
    y0.requires_grad_()
    ys = neurode.odeint(f, y0, T_B.double(), rtol=1e-10, atol=1e-10, method="dopri5")
    grads = torch.autograd.grad((ys**2).mean(), [y0, *f.parameters()])
    return torch.cat([g.reshape(-1) for g in grads])


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _first(x):
    return x[0] if isinstance(x, list) else x


def adjoint_part(name: str, repeats: int, warmup: int) -> dict:
    problem = PROBLEMS[name]
    f, y0 = _setup(problem, torch.float32)
    ref = reference_gradient(problem)
    configs = [(lib, semi) for semi in (False, True) for lib in ADJOINT]
    load_before = _loadavg()
    samples: dict[tuple[str, bool], list[dict]] = {c: [] for c in configs}
    for c in configs:
        for _ in range(warmup):
            backward_sample(c[0], f, y0, c[1])
    for r in range(repeats):
        for semi in (False, True):
            libs = list(ADJOINT) if r % 2 == 0 else list(ADJOINT)[::-1]
            for lib in libs:
                samples[(lib, semi)].append(backward_sample(lib, f, y0, semi))
    out: dict[str, dict] = {}
    grads: dict[str, Tensor] = {}
    for (lib, semi), ss in samples.items():
        key = f"{lib}{'+seminorm' if semi else ''}"
        ms = [s["ms"] for s in ss]
        q = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else [ms[0]] * 3
        nfe_b = sorted({s["nfe_backward"] for s in ss})
        nfe_f = sorted({s["nfe_forward"] for s in ss})
        grads[key] = ss[0]["grad"]
        out[key] = {
            "library": lib, "seminorm": semi, "median_ms": statistics.median(ms),
            "min_ms": min(ms), "iqr_ms": q[2] - q[0], "samples_ms": ms,
            "n_outliers": sum(x > 2 * statistics.median(ms) for x in ms),
            "nfe_forward": nfe_f[0] if len(nfe_f) == 1 else nfe_f,
            "nfe_backward": nfe_b[0] if len(nfe_b) == 1 else nfe_b,
            "ms_per_backward_nfe": statistics.median(ms) / max(ss[0]["nfe_backward"], 1),
            "grad_rel_err_vs_float64_backprop": _rel(ss[0]["grad"], ref),
        }
    comp = {}
    for suffix in ("", "+seminorm"):
        n, t = out["neurode" + suffix], out["torchdiffeq" + suffix]
        tag = suffix.replace("+", "_")
        comp["ratio" + tag] = n["median_ms"] / t["median_ms"]
        comp["grad_rel_diff_neurode_vs_torchdiffeq" + tag] = \
            _rel(grads["neurode" + suffix], grads["torchdiffeq" + suffix])
    semi = {}
    for lib in ADJOINT:
        full, sn = out[lib], out[lib + "+seminorm"]
        semi[lib] = {"nfe_backward": full["nfe_backward"],
                     "nfe_backward_seminorm": sn["nfe_backward"],
                     "saving": 1 - _first(sn["nfe_backward"]) / _first(full["nfe_backward"]),
                     "median_ms": full["median_ms"], "median_ms_seminorm": sn["median_ms"],
                     "grad_rel_change": _rel(grads[lib + "+seminorm"], grads[lib])}
    n_params = sum(p.numel() for p in f.parameters())
    return {"problem": {"name": name, "state": [problem["batch"], problem["sizes"][0]],
                        "mlp": list(problem["sizes"]), "params": n_params,
                        "gain": problem["gain"], "t": T_B.tolist(), "method": "dopri5",
                        "rtol": TOL_B, "atol": TOL_B, "dtype": "float32",
                        "loss": "mean(ys**2)"},
            "repeats": repeats, "warmup": warmup, "configs": out, "comparison": comp,
            "seminorm": semi, "loadavg_before": load_before, "loadavg_after": _loadavg()}


def print_adjoint(res: dict) -> None:
    p = res["problem"]
    print(f"\n(b) backward pass of odeint_adjoint, problem {p['name']!r}: dopri5 "
          f"rtol=atol={p['rtol']:g}, state {p['state'][0]}x{p['state'][1]}, MLP "
          f"{'-'.join(map(str, p['mlp']))} ({p['params']} params, gain {p['gain']:g}), "
          f"{len(p['t'])} outputs, float32; {res['repeats']} samples, interleaved")
    head = (f"{'config':<24} {'median ms':>10} {'min ms':>9} {'IQR ms':>8} {'NFE fwd':>8} "
            f"{'NFE bwd':>8} {'ms/NFE':>7} {'grad err':>9}")
    print(head)
    print("-" * len(head))
    for name, c in res["configs"].items():
        print(f"{name:<24} {c['median_ms']:>10.1f} {c['min_ms']:>9.1f} {c['iqr_ms']:>8.1f} "
              f"{c['nfe_forward']!s:>8} {c['nfe_backward']!s:>8} "
              f"{c['ms_per_backward_nfe']:>7.3f} {c['grad_rel_err_vs_float64_backprop']:>9.1e}")
    print("-" * len(head))
    comp = res["comparison"]
    print(f"ratio of medians neurode/torchdiffeq: {comp['ratio']:.3f} (default norm), "
          f"{comp['ratio_seminorm']:.3f} (seminorm); < 1 = neurode faster")
    diff = comp["grad_rel_diff_neurode_vs_torchdiffeq"]
    print(f"grad rel. diff neurode vs torchdiffeq: {diff:.1e}; grad err = rel. error vs float64 "
          "backprop through neurode.odeint at rtol=atol=1e-10")
    print(f"(c) seminorm on {p['name']!r}: backward NFE default -> seminorm (saving), median ms, "
          "gradient change")
    for lib, s in res["seminorm"].items():
        print(f"  {lib:<12} NFE {s['nfe_backward']!s:>5} -> {s['nfe_backward_seminorm']!s:<5} "
              f"({100 * s['saving']:.0f}% fewer)   {s['median_ms']:.1f} -> "
              f"{s['median_ms_seminorm']:.1f} ms   grad rel. change {s['grad_rel_change']:.1e}")


# --------------------------------------------------------------------------------------------


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def environment(threads: int) -> dict:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0], "torch": torch.__version__,
        "torchdiffeq": getattr(torchdiffeq, "__version__", "unknown"),
        "neurode": neurode.__version__, "neurode_git_commit": _git("rev-parse", "HEAD"),
        "neurode_src_dirty": bool(_git("status", "--porcelain", "--", "src")),
        "torch_num_threads": threads, "os_cpu_count": os.cpu_count(),
        "platform": platform.platform(), "dtype": "float32", "device": "cpu",
        "reversible_available": reversible_available(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="100 and 400 steps only, 3 timed samples (under a minute)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    ap.add_argument("--repeats", type=int, help="timed samples per config (default 11, quick 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--mem-cap-mb", type=float, default=3000.0,
                    help="skip a memory run predicted to need more than this (default 3000)")
    ap.add_argument("--mmap-threshold", type=int,
                    help="set MALLOC_MMAP_THRESHOLD_ (bytes) in the memory workers (diagnostic: "
                    "separates glibc heap fragmentation from what the method keeps)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 11)
    warmup = 1
    step_counts = [100, 400] if args.quick else [100, 1000, 10000]
    env = environment(args.threads)
    print(f"torch {env['torch']}, torchdiffeq {env['torchdiffeq']}, neurode {env['neurode']} "
          f"({(env['neurode_git_commit'] or '?')[:10]}"
          f"{', src modified' if env['neurode_src_dirty'] else ''}); "
          f"{args.threads} torch thread(s), {env['os_cpu_count']} CPUs; reversible "
          f"{'included' if env['reversible_available'] else 'not importable, left out'}\n")
    t_start = time.perf_counter()
    mem = memory_part(step_counts, args.threads, args.mem_cap_mb, args.mmap_threshold)
    print_memory(mem)
    adj = {}
    for name in PROBLEMS:
        print(f"  running (b)/(c) on {name!r} ...", file=sys.stderr, flush=True)
        adj[name] = adjoint_part(name, repeats, warmup)
        print_adjoint(adj[name])
    elapsed = time.perf_counter() - t_start
    print(f"\ntotal {elapsed:.1f} s")
    result = {"environment": env,
              "settings": {"quick": args.quick, "repeats": repeats, "warmup": warmup,
                           "seed": SEED, "mem_cap_mb": args.mem_cap_mb,
                           "ratio": "median_ms(neurode) / median_ms(torchdiffeq); < 1 = neurode "
                                    "faster"},
              "memory": mem, "adjoint_backward": adj, "elapsed_s": elapsed}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
