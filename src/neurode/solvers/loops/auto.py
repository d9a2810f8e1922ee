"""``method="auto"``: the explicit method that fits the tolerance, and Radau while the problem is
stiff.

The solve is a chain of segments, each an ordinary `AdaptiveLoop` run of one method from where the
previous one stopped:

1. the explicit method is chosen by ``rtol`` (`BY_TOLERANCE`: tsit5, then vern8; read off the
   work–precision benchmark, ``benchmarks/bench_work_precision.py``);
2. its accepted steps are watched by Hairer–Shampine's stiffness test
   (`StiffnessTest`); when it fires, the segment ends
   after that step and ``radau`` goes on from its end state;
3. Radau's steps are watched by `NonStiffTest`; when the
   problem is no longer stiff, the explicit method takes over again; and so on.

Each segment starts its method afresh (its initial-step heuristic, its first evaluation), and
the segments' outputs, counts and step records are joined. Gradients by backpropagation flow
through the very steps taken (a segment's start state is the previous segment's last ``y1``);
``odeint_adjoint`` runs ``auto`` forward and, by default, on the backward augmented system.

Per-sample solves are given the explicit method of their tolerance by the front door
(`make_problem`; Radau is a joint-only method), so they run, and
differentiate by the per-sample adjoint, as that method; the checkpointed and reversible
adjoints, which replay one stepper, refuse ``auto`` with a clear error.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from neurode.errors import InvalidInputError
from neurode.solvers.loops.adaptive import AdaptiveLoop
from neurode.solvers.loops.common import LoopResult, StepRecord
from neurode.solvers.loops.stiffness import NonStiffTest, StiffnessTest
from neurode.solvers.problem import Problem
from neurode.solvers.registry import BY_TOLERANCE, explicit_for, get_method

# (BY_TOLERANCE and explicit_for live in the registry, beside the method; re-exported here)
__all__ = ["BY_TOLERANCE", "STIFF_METHOD", "explicit_for", "run_auto"]

STIFF_METHOD = "radau"


def _sub_problem(pb: Problem, name: str, s: float, y, t_out: list[float], steps_left: int,
                 first: bool) -> Problem:
    """``pb`` as a solve of method ``name`` from internal time ``s`` and state ``y``."""
    spec = get_method(name)
    ctl = pb.opts.control
    changes = {"max_num_steps": max(1, steps_left)}
    for key, value in spec.defaults.items():  # radau's own defaults (pure I control)
        if key not in pb.opts.given:
            changes[key] = value
    if not first and "first_step" in pb.opts.given:
        changes["first_step"] = None  # the user's first step is the solve's, not a segment's
    opts = replace(pb.opts, control=replace(ctl, **changes))
    return replace(pb, method=spec, opts=opts, y0=y, t_out=tuple([s, *t_out]))


def run_auto(pb: Problem, *, record: str | None = None, quad=None,
             event_fn=None) -> LoopResult:
    """Solve ``pb`` with ``method="auto"`` (module docstring); the arguments as for
    `neurode.solvers.api.integrate`."""
    if quad is not None:
        raise InvalidInputError("method 'auto' does not integrate quadratures")
    if record in ("steps", "times"):
        raise InvalidInputError(
            "method 'auto' changes method during the solve, which the checkpointed and "
            "reversible adjoints cannot replay; name a method (e.g. method='tsit5' or "
            "'radau'), or use odeint / odeint_adjoint without checkpoints")
    # (per-sample problems never get here: the front door gives them the explicit method)
    explicit = explicit_for(pb.rtol)
    tab = get_method(explicit).tableau
    unbounded = event_fn is not None and len(pb.t_out) == 1  # an event search on [t0, ∞)
    t_end = math.inf if unbounded else pb.t_out[-1]
    max_steps = pb.opts.control.max_num_steps
    s, y = pb.t_out[0], pb.y0
    rows = [pb.y0[0]]
    remaining = list(pb.t_out[1:])
    segments: list[tuple[str, float, float, int, int]] = []
    combined = StepRecord() if record is not None else None
    step_steppers: list = []
    totals = {"nfe": 0, "n_steps": 0, "n_acc": 0, "n_jac": 0, "n_lu": 0, "host_syncs": 0,
              "iterations": 0}
    name = explicit
    while True:
        sub = _sub_problem(pb, name, s, y, remaining, max_steps - totals["n_steps"],
                           first=not segments)
        stepper = sub.method.stepper(sub)
        if name == STIFF_METHOD:
            monitor = NonStiffTest(stepper, tab.stability_boundary)
        else:
            monitor = StiffnessTest(tab)
        loop = AdaptiveLoop(sub, stepper, record=record, event_fn=event_fn,
                            t_end=math.inf if unbounded else None, monitor=monitor)
        res = loop.run()
        totals["nfe"] += int(res.nfe)
        totals["n_steps"] += int(res.n_steps[0])
        totals["n_acc"] += int(res.n_accepted[0])
        totals["n_jac"] += res.n_jac
        totals["n_lu"] += res.n_lu
        totals["host_syncs"] += res.host_syncs
        totals["iterations"] += res.iterations
        emitted = res.extra.get("emitted", 1)
        rows.extend(res.ys[1:emitted, 0].unbind(0))
        s_end = float(res.t_final[0])
        segments.append((name, s, s_end, int(res.nfe), int(res.n_steps[0])))
        if combined is not None and res.record is not None:
            r = res.record
            for k in range(len(r.t)):
                combined.append(r.t[k], r.h[k], r.y[k], r.y1[k], r.dense[k])
                step_steppers.append(stepper)
        switched = loop.switched is not None and int(res.status[0]) == 0 and res.event is None
        if not switched or s_end >= t_end:
            break
        remaining = remaining[emitted - 1:]
        s, y = s_end, res.extra["y_final"]
        name = STIFF_METHOD if name != STIFF_METHOD else explicit
    T = len(pb.t_out)
    if len(rows) < T:  # the times a failed solve did not reach
        rows.extend([torch.full_like(pb.y0[0], math.nan)] * (T - len(rows)))
    ys = torch.stack(rows).unsqueeze(1)
    dev = pb.y0.device

    def i64(v):
        return torch.tensor([v], dtype=torch.int64, device=dev)

    out = LoopResult(ys=ys, status=res.status, t_final=res.t_final, n_steps=i64(totals["n_steps"]),
                     n_accepted=i64(totals["n_acc"]), nfe=totals["nfe"], fail_dt=res.fail_dt,
                     h_next=res.h_next, n_jac=totals["n_jac"], n_lu=totals["n_lu"],
                     host_syncs=totals["host_syncs"], iterations=totals["iterations"],
                     record=combined, event=res.event, newton=res.newton)
    out.extra.update({k: v for k, v in res.extra.items() if k in ("y_final", "carry")})
    out.extra["segments"] = [(n, pb.sign * a, pb.sign * b, nfe, steps)
                             for n, a, b, nfe, steps in segments]
    out.extra["step_steppers"] = step_steppers
    out.extra["stepper"] = stepper
    out.extra["loop"] = "adaptive"
    return out
