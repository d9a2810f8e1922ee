"""Draw the documentation's benchmark figures from the committed results in benchmarks/results/.

    python benchmarks/plot_results.py [--results benchmarks/results] [--out docs/figures]

Reads only JSON (no solver runs; seconds) and writes four PNGs, one per benchmark page figure:

* ``bench_work_precision.png`` — error at the final time against function evaluations for every
  adaptive method in ``work_precision.json`` (neurode's explicit methods and ``auto``,
  torchdiffeq's dopri5/dopri8, SciPy's RK45/DOP853/LSODA), one panel per problem class;
  each point is one tolerance, geometric means over the class's problems.
* ``bench_accuracy.png`` — the same for neurode's low-order adaptive pairs (bosh3,
  adaptive_heun, fehlberg2) beside dopri5, tsit5 and dopri8 (``accuracy.json``, tolerances
  1e-3 … 1e-10: the second-order pairs would need millions of steps below that).
* ``bench_gradient_memory.png`` — peak extra resident memory of one forward + backward against
  the number of rk4 steps for the four gradient methods (``gradients.json``, part (a)); a
  skipped backprop run is drawn hollow at its predicted value, and the states the checkpointed
  adjoint stores (steps × state bytes) as a dashed line.
* ``bench_loop_overhead.png`` — the solver's own cost per step, without the vector field:
  left, the replayed-field profile of ``overhead.json`` (dopri5 and rk4, neurode vs
  torchdiffeq); right, loop time per iteration of the Van der Pol batch of ``batch.json``
  (torchdiffeq, torchode, and neurode joint / per-sample, eager and compiled).

Every figure's title names its source file and the environment recorded in it, so a figure can
be traced to the run that produced its numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

RESULTS = HERE / "results"
FIGURES = HERE.parent / "docs" / "figures"

# one colour per method, the same in every panel; line style by library
COLORS = {
    "dopri5": "#1f77b4", "tsit5": "#17becf", "dopri8": "#d62728", "vern6": "#9467bd",
    "vern7": "#8c564b", "vern8": "#2ca02c", "vern9": "#bcbd22", "auto": "#000000",
    "RK45": "#1f77b4", "DOP853": "#d62728", "LSODA": "#7f7f7f",
}
LIB_STYLE = {"neurode": dict(ls="-", marker="o"), "torchdiffeq": dict(ls=":", marker="^"),
             "scipy": dict(ls="--", marker="s")}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _env_line(env: dict | None) -> str:
    if not env:
        return ""
    parts = [f"torch {env.get('torch', '?')}"]
    if env.get("torchdiffeq"):
        parts.append(f"torchdiffeq {env['torchdiffeq']}")
    if env.get("os_cpu_count"):
        parts.append(f"{env['os_cpu_count']} CPUs")
    if env.get("date"):
        parts.append(env["date"][:10])
    return ", ".join(parts)


def _save(fig, out: Path, name: str) -> Path:
    import matplotlib.pyplot as plt

    path = out / name
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _class_panels(axes, cases: list[dict], groups: list[tuple[str, str]], keys, style) -> None:
    """One log–log work–precision panel per problem class: ``style(lib, method)`` gives each
    curve's plot keywords."""
    from bench_work_precision import class_curve
    from matplotlib.ticker import NullFormatter

    for ax, (cls, title) in zip(axes, groups, strict=True):
        for lib, m in keys:
            xs, ys = class_curve(cases, cls, lib, m, "nfe")
            if len(xs):
                ax.plot(xs, ys, ms=3.5, **style(lib, m))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="major", alpha=0.3)
        ax.set_title(title)
        ax.set_xlabel("function evaluations (fewer is better)")


def _keys(cases: list[dict]) -> list[tuple[str, str]]:
    """The ``(lib, method)`` pairs of ``cases``, in order of appearance."""
    return list(dict.fromkeys((c["lib"], c["method"]) for c in cases))


def work_precision(results: Path, out: Path) -> Path:
    """Error against NFE per problem class, every adaptive method of the three libraries."""
    plt = _plt()
    cases = json.loads((results / "work_precision.json").read_text())["cases"]
    groups = [("A", "DETEST A (scalar)"), ("B", "DETEST B (small systems)"),
              ("D", "DETEST D (orbits)"), ("MLP", "16-state tanh-MLP field")]
    fig, axes = plt.subplots(2, 2, figsize=(11, 10), sharey=True)
    axes = axes.ravel()
    _class_panels(axes, cases, groups, _keys(cases), lambda lib, m: dict(
        color=COLORS.get(m, "#444444"), label=f"{lib} {m}",
        lw=1.5 if lib == "neurode" else 1.2, **LIB_STYLE[lib]))
    for ax in axes[::2]:
        ax.set_ylabel("error at the final time (lower is better)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=9, frameon=False)
    fig.suptitle("Work–precision, float64, rtol = atol = 1e-3 … 1e-12 — work_precision.json\n"
                 "solid: neurode, dotted: torchdiffeq 0.2.5, dashed: SciPy")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return _save(fig, out, "bench_work_precision.png")


def low_order_accuracy(results: Path, out: Path) -> Path:
    """Error against NFE for neurode's low-order adaptive pairs next to dopri5/tsit5/dopri8."""
    plt = _plt()
    res = json.loads((results / "accuracy.json").read_text())
    # accuracy.json names problems only (A1 …); the class is the letter
    cases = [dict(c, lib="neurode", **{"class": c["problem"][0]}) for c in res["cases"]]
    colors = dict(COLORS, bosh3="#e377c2", adaptive_heun="#ff7f0e", fehlberg2="#7f7f7f")
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.8), sharey=True)
    _class_panels(axes, cases, [("A", "DETEST A"), ("B", "DETEST B"), ("D", "DETEST D")],
                  _keys(cases), lambda lib, m: dict(color=colors.get(m, "#444444"),
                                                    marker="o", lw=1.5, label=m))
    axes[0].set_ylabel("error at the final time (lower is better)")
    axes[0].legend(fontsize=8.5)
    fig.suptitle("neurode's low-order adaptive pairs beside dopri5, tsit5 and dopri8, "
                 "rtol = atol = 1e-3 … 1e-10, float64 — accuracy.json", fontsize=11)
    fig.tight_layout()
    return _save(fig, out, "bench_accuracy.png")


def gradient_memory(results: Path, out: Path) -> Path:
    """Peak extra RSS against steps for backprop, adjoint, checkpoint and reversible."""
    plt = _plt()
    res = json.loads((results / "gradients.json").read_text())
    mem = res["memory"]
    styles = {"backprop": ("#d62728", "o", "backprop through the solver (odeint)"),
              "adjoint": ("#1f77b4", "s", "adjoint (odeint_adjoint)"),
              "checkpoint": ("#ff7f0e", "D", "checkpointed adjoint (odeint_checkpoint)"),
              "reversible": ("#2ca02c", "^", "reversible ALF (odeint_reversible)")}
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for method in mem["methods"]:
        color, marker, label = styles[method]
        rows = mem["results"][method]
        done = [(r["steps"], r["peak_extra_mb"]) for r in rows if "peak_extra_mb" in r]
        skipped = [(r["steps"], r["predicted_mb"]) for r in rows if r.get("skipped")]
        if done:
            xs, ys = zip(*done, strict=True)
            ax.plot(xs, ys, color=color, marker=marker, lw=1.8, label=label)
        for s, p in skipped:
            ax.plot([done[-1][0], s], [done[-1][1], p], color=color, ls=":", lw=1.2)
            ax.plot([s], [p], color=color, marker=marker, mfc="white", ls="none")
            ax.annotate(f"skipped: {p:,.0f} MB predicted", (s, p), fontsize=8,
                        xytext=(-8, -2), textcoords="offset points", ha="right", va="top")
    stored = mem.get("checkpoint_state_storage_mb") or {}
    if stored:
        xs = sorted(int(k) for k in stored)
        ax.plot(xs, [stored[str(x)] for x in xs], color="#ff7f0e", ls="--", lw=1,
                label="the checkpoints' stored states (steps × 32 KB)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rk4 steps on [0, 1] (state 256×32, MLP 32-128-32, float32)")
    ax.set_ylabel("peak extra memory of forward + backward [MB]")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("Gradient memory against steps — gradients.json\n" + _env_line(
        res.get("environment")), fontsize=10)
    fig.tight_layout()
    return _save(fig, out, "bench_gradient_memory.png")


def loop_overhead(results: Path, out: Path) -> Path:
    """The solver loop's cost per step beyond the vector field, neurode against its peers."""
    plt = _plt()
    ovh = json.loads((results / "overhead.json").read_text())
    batch = json.loads((results / "batch.json").read_text())
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.6),
                                      gridspec_kw={"width_ratios": [1, 1.6]})
    libs = ("neurode", "torchdiffeq")
    colors = {"neurode": "#2ca02c", "torchdiffeq": "#7f7f7f"}
    names = []
    for i, case in enumerate(ovh["cases"]):
        names.append(case["description"].split(",")[0])
        for j, lib in enumerate(libs):
            us = case["libs"][lib]["overhead_us_per_step"]
            left.bar(i + (j - 0.5) * 0.38, us, width=0.36, color=colors[lib],
                     label=lib if i == 0 else None)
            left.text(i + (j - 0.5) * 0.38, us, f"{us:.0f}", ha="center", va="bottom",
                      fontsize=8)
    left.set_xticks(range(len(names)), names)
    left.set_ylabel("loop cost per step [µs] (field replayed)")
    left.set_title("Replayed field, batch 256 — overhead.json", fontsize=10)
    left.legend(fontsize=8)
    left.grid(True, axis="y", alpha=0.3)

    rows = batch["cpu"]["vdp_mu2"]["rows"]
    labels, values, cols = [], [], []
    for name, r in rows.items():
        # every solver iterates until its slowest sample is done: per iteration = per max step
        labels.append(name)
        values.append(1000.0 * r["loop_ms"] / r["steps_max"])
        cols.append("#2ca02c" if name.startswith("neurode") else "#7f7f7f")
    y = range(len(labels))
    right.barh(list(y), values, color=cols)
    for k, v in zip(y, values, strict=True):
        right.text(v, k, f" {v:.0f}", va="center", fontsize=8)
    right.set_yticks(list(y), labels)
    right.invert_yaxis()
    right.set_xlabel("loop time per iteration [µs] (wall − evaluations × one evaluation)")
    right.set_title("256 Van der Pol oscillators, dopri5, rtol 1e-5 — batch.json", fontsize=10)
    right.grid(True, axis="x", alpha=0.3)
    fig.suptitle("Solver overhead per step, lower is better (" + _env_line(
        ovh.get("environment")) + ")", fontsize=11)
    fig.tight_layout()
    return _save(fig, out, "bench_loop_overhead.png")


def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder of the JSON results")
    ap.add_argument("--out", type=Path, default=FIGURES, help="folder the PNGs are written to")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    paths = [work_precision(args.results, args.out), low_order_accuracy(args.results, args.out),
             gradient_memory(args.results, args.out), loop_overhead(args.results, args.out)]
    for p in paths:
        print(f"wrote {p}")
    return paths


if __name__ == "__main__":
    main()
