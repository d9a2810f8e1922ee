"""Public entry points of the solvers: ``odeint`` (torchdiffeq-compatible), ``odeint_dense`` and
``solve_ivp`` (neurode's richer API returning a [`Solution`][neurode.Solution]), and `integrate`,
the one function that runs any registered method on a `Problem`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from neurode.errors import InvalidInputError, SolverError, Status
from neurode.solvers.backends.scipy import run_scipy
from neurode.solvers.loops.adaptive import AdaptiveLoop
from neurode.solvers.loops.auto import run_auto
from neurode.solvers.loops.common import LoopResult, failure, warn_unused_callbacks
from neurode.solvers.loops.fixed import FixedLoop, alf_grid, make_grid
from neurode.solvers.problem import Problem, make_problem
from neurode.solvers.quadrature import Quadrature
from neurode.solvers.solution import DenseOutput, Segment, Solution, Stats
from neurode.solvers.steppers.base import hermite

__all__ = ["EVENT_MAX_STEPS", "find_event", "grid_of", "integrate", "odeint", "odeint_dense",
           "raise_failure", "solve_ivp", "time_grad_start", "with_time_grad"]

#: Steps an event search takes before giving up, unless ``options["max_num_steps"]`` says.
EVENT_MAX_STEPS = 50_000

State = Tensor | tuple[Tensor, ...]
Func = Callable[[Tensor, Any], Any]


def grid_of(pb: Problem) -> list[float]:
    """The fixed grid of ``pb``'s method (internal forward time)."""
    if pb.opts.alf is not None:
        return alf_grid(pb.t_out, pb.opts.alf.step_size)
    g = pb.opts.grid
    explicit = None
    if g.grid_constructor is not None:
        # as torchdiffeq: the constructor sees the user's times (decreasing ones too) and returns
        # grid points in the user's time; a tuple state is seen flattened, as there
        sign = pb.sign
        t_user = pb.t.detach()

        def func_user(tt, y):
            out = pb.field(torch.as_tensor(tt, dtype=pb.time_dtype, device=pb.y0.device),
                           y.reshape(1, -1))
            return out.reshape(y.shape)

        if pb.is_tuple:
            func, y0 = func_user, pb.y0[0]
        else:
            func, y0 = pb.func, pb.layout.to_user(pb.y0)
        grid = torch.as_tensor(g.grid_constructor(func, y0, t_user), dtype=torch.float64)
        explicit = (sign * grid.detach().reshape(-1)).tolist()
    return make_grid(pb.t_out, g.step_size, explicit)


def integrate(pb: Problem, *, record: str | None = None, quad: Quadrature | None = None,
              event_fn=None, per_sample_record: bool = False) -> LoopResult:
    """Run ``pb``'s method and return the `LoopResult` (failures are statuses, not raised).

    ``record``: ``"steps"`` or ``"dense"`` (joint solves); ``quad``: quadratures beside the state
    (Runge–Kutta methods); ``event_fn``: integrate until it crosses zero; ``per_sample_record``:
    the per-sample adjoint's step log.
    """
    spec = pb.method
    loop = spec.loop(pb.opts)
    if quad is not None and (spec.tableau is None or loop == "scipy"
                             or not hasattr(spec.tableau, "fsal")):
        raise InvalidInputError(f"method {spec.name!r} does not integrate quadratures")
    if loop == "scipy":
        return run_scipy(pb, record=record, event_fn=event_fn)
    if loop == "auto":
        return run_auto(pb, record=record, quad=quad, event_fn=event_fn)
    stepper = spec.stepper(pb)
    if loop == "adaptive":
        # an event search runs on [t0, ∞) unless the problem has an end (hybrid segments)
        unbounded = event_fn is not None and len(pb.t_out) == 1
        res = AdaptiveLoop(pb, stepper, record=record, quad=quad, event_fn=event_fn,
                           t_end=math.inf if unbounded else None,
                           per_sample_record=per_sample_record).run()
    else:
        warn_unused_callbacks(pb, rejects=False)
        step = None
        if event_fn is not None and len(pb.t_out) == 1:
            step = pb.opts.alf.step_size if pb.opts.alf is not None else pb.opts.grid.step_size
            if step is None:
                raise InvalidInputError(
                    f"events with the fixed-step method {spec.name!r} need options['step_size']")
            grid = None
        else:
            grid = grid_of(pb)
        g = pb.opts.grid
        res = FixedLoop(pb, stepper, grid, interp=g.interp if g is not None else "linear",
                        perturb=g.perturb if g is not None else False, record=record, quad=quad,
                        event_fn=event_fn, step=step).run()
    res.extra["stepper"] = stepper
    res.extra["loop"] = loop
    return res


def raise_failure(pb: Problem, res: LoopResult) -> None:
    """Raise the named error of a failed solve (no-op on success)."""
    err = failure(pb, res, None if pb.per_sample else pb.t_out[-1])
    if err is not None:
        raise err


def with_time_grad(pb: Problem, i: int, y: Tensor, sign: float = 1.0) -> Tensor:
    """``y + sign·(t_i − stop_grad(t_i))·f(t_i, y)``: the same value, with ``∂y/∂t_i = sign·f``
    (``t_i`` is 0-d, or ``(B,)`` per sample: then one factor per row)."""
    ti = pb.t.to(pb.time_dtype)[..., i]
    if pb.per_sample:
        ti = ti.expand(pb.y0.shape[0])
    with torch.no_grad():
        fi = pb.field(ti.detach(), y.detach())
    shift = sign * (ti - ti.detach()).to(y.real.dtype if y.is_complex() else y.dtype)
    return y + (shift.unsqueeze(-1) if shift.ndim else shift) * fi


def time_grad_start(pb: Problem) -> Problem:
    """``y0 − (t0 − stop_grad(t0))·f(t0, y0)``: backprop through the steps then applies
    ``∂y(t_i)/∂t_0 = −Φ(t_i, t_0) f(t_0, y_0)`` (see `_solve`)."""
    return pb.with_y0(with_time_grad(pb, 0, pb.y0, sign=-1.0))


def _solve(pb: Problem, record: str | None, throw: bool) -> tuple[LoopResult, Tensor]:
    """Integrate and assemble the ``(T, B, N)`` outputs; gradients w.r.t. the times if ``t``
    needs them.

    Steps are chosen from numbers that carry no graph, so autograd alone would not see ``t``.
    When ``t`` requires grad, the exact sensitivities of the continuous solution are attached:
    ``∂y(t_i)/∂t_i = f(t_i, y(t_i))`` and ``∂y(t_i)/∂t_0 = −Φ(t_i, t_0) f(t_0, y_0)`` (joint
    and per sample, ``t`` of shape ``(T,)`` or ``(B, T)``). Costs one evaluation per output
    time, and only when ``t.requires_grad``.
    """
    time_grad = pb.t.requires_grad and torch.is_grad_enabled()
    run_pb = time_grad_start(pb) if time_grad else pb
    res = integrate(run_pb, record=record)
    if throw:
        raise_failure(pb, res)
    out = res.ys
    if time_grad:
        rows = [pb.y0] + [with_time_grad(pb, i, out[i]) for i in range(1, out.shape[0])]
        out = torch.stack(rows)
    return res, out


def odeint(func: Func, y0: State, t: Tensor, *, rtol: float | Tensor = 1e-7,
           atol: float | Tensor = 1e-9, method: str | None = None,
           options: dict[str, Any] | None = None, event_fn: Callable | None = None
           ) -> State | tuple[Tensor, State]:
    """Solve ``dy/dt = func(t, y), y(t[0]) = y0`` and return ``y`` at every time in ``t``.

    A drop-in replacement for ``torchdiffeq.odeint`` (same arguments, methods and options).

    Args:
        func: ``func(t, y)`` with ``t`` a 0-d tensor and ``y`` shaped like ``y0``; returns
            ``dy/dt`` of the same shape, dtype and device.
        y0: initial state, a tensor of any shape (float32/64, complex64/128) or a tuple of them.
        t: 1-D tensor of times, strictly increasing or strictly decreasing; ``t[0]`` is the
            initial time. Per-sample mode (``options={"per_sample": True}``) also takes ``(B, T)``.
        rtol: relative tolerance of adaptive methods (a float, or a tensor broadcastable to
            ``y0``).
        atol: absolute tolerance of adaptive methods (a float, or a tensor broadcastable to
            ``y0``).
        method: one of ``neurode.METHODS`` (default ``"dopri5"``).
        options: method options (see [the options table](../guide/options.md)), e.g.
            ``{"step_size": 0.1}``.
        event_fn: ``event_fn(t, y)``; when given, integrate from ``t[0]`` until it crosses zero
            and return ``(event_t, solution)`` (see [`neurode.odeint_event`][]).

    Returns:
        ``(len(t), *y0.shape)`` tensor (a tuple of such for tuple ``y0``); row 0 is ``y0``.

    Raises:
        InvalidInputError, UnknownMethodError, UnknownOptionError: bad arguments.
        FuncOutputError: ``func`` returned the wrong shape/dtype/device.
        SolverError subclasses: the integration failed (the message says where).
    """
    if event_fn is not None:
        return integrate_event(func, y0, t, event_fn, rtol=rtol, atol=atol, method=method,
                               options=options)
    pb = make_problem(func, y0, t, rtol, atol, method, options)
    _, out = _solve(pb, None, throw=True)
    return pb.layout.trajectory(out)


def integrate_event(func, y0, t, event_fn, *, rtol=1e-7, atol=1e-9, method=None, options=None,
                    callback_suffix: str = ""):
    """Integrate from ``t[0]`` until ``event_fn(t, y)`` is zero; return ``(event_t, solution)``.

    Only ``t[0]`` is used, and ``t[1]`` (if present) for the direction of time, as in torchdiffeq.
    ``solution`` is ``(2, *y0.shape)``: the state at ``t[0]`` and at the event. Every method
    locates events (the loops share the mechanism); fixed-grid methods need ``step_size``.
    """
    if not callable(event_fn):
        raise InvalidInputError("event_fn must be callable as event_fn(t, y) -> tensor")
    t = torch.as_tensor(t)
    if t.ndim != 1 or t.numel() < 1:
        raise InvalidInputError("t must be a 1-D tensor whose first entry is the initial time")
    t_dir = t[:2] if t.numel() >= 2 else torch.stack([t[0], t[0] + 1])
    pb = make_problem(func, y0, t_dir, rtol, atol, method, options,
                      callback_suffix=callback_suffix)
    if pb.per_sample:
        raise InvalidInputError("events are not available in per-sample mode")
    opts = pb.opts
    if "max_num_steps" not in opts.given:
        # the search runs on [t0, ∞): an event that never comes must still end it
        if opts.control is not None:
            opts = replace(opts, control=replace(opts.control, max_num_steps=EVENT_MAX_STEPS))
        elif opts.grid is not None:
            opts = replace(opts, grid=replace(opts.grid, max_num_steps=EVENT_MAX_STEPS))
        elif opts.scipy is not None:
            opts = replace(opts, scipy=replace(opts.scipy, max_num_steps=EVENT_MAX_STEPS))
    pb = replace(pb, t_out=pb.t_out[:1], opts=opts)
    # a gradient w.r.t. t0 (a chain of events: the next starts at this one's time)
    time_grad = pb.t.requires_grad and torch.is_grad_enabled()
    res = integrate(time_grad_start(pb) if time_grad else pb, event_fn=event_fn)
    if res.event is None:
        t_last = float(res.t_final[0])
        h_last = float(res.fail_dt[0]) if res.fail_dt is not None else 0.0
        if not (math.isfinite(t_last) and math.isfinite(h_last)) or abs(t_last) > 1e300:
            raise SolverError(
                f"no event: event_fn(t, y) kept its sign up to t={pb.sign * t_last:.6g}, where "
                "the time itself overflowed; check event_fn, or bound the search with a finite "
                "t[1] and a fixed step", t=pb.sign * t_last)
        err = failure(pb, res, math.inf)
        if err is not None:
            raise err
        raise SolverError(f"no event found before t={pb.sign * t_last:.6g}", t=pb.sign * t_last)
    s_ev, y_ev, _ = res.event
    sol = pb.layout.trajectory(torch.stack([pb.y0, y_ev.reshape(pb.y0.shape)]))
    event_t = torch.tensor(pb.sign * s_ev, dtype=pb.t.dtype, device=pb.t.device)
    return event_t, sol


def find_event(func, y0, t0: float, t1: float, spec, *, rtol, atol, method,
               options) -> tuple[float, int, Any] | None:
    """The first event of ``spec`` (an `EventSpec`) in
    ``[t0, t1]`` (the user's times, either direction), no graph: ``(t*, which, y*)`` with ``y*``
    the located state in the user's structure, or None when none comes before ``t1``.
    Failures raise their named errors."""
    t = torch.tensor([t0, t1], dtype=torch.float64)
    with torch.no_grad():
        pb = make_problem(func, y0, t, rtol, atol, method, options)
        if pb.per_sample:
            raise InvalidInputError("find_event: joint problems only")
        res = integrate(pb, event_fn=spec)
        raise_failure(pb, res)
    if res.event is None:
        return None
    s_ev, y_ev, _ = res.event
    return pb.sign * s_ev, spec.which, pb.layout.to_user(y_ev.reshape(1, -1))


def _stats(pb: Problem, res: LoopResult) -> Stats:
    if pb.per_sample:
        return Stats(nfe=res.nfe, n_steps=res.n_steps, n_accepted=res.n_accepted,
                     n_rejected=res.n_rejected)
    nfe, n_steps = int(res.nfe), int(res.n_steps[0])
    if "segments" in res.extra:
        segments = [Segment(*seg) for seg in res.extra["segments"]]
    else:
        segments = [Segment(pb.method.name, pb.sign * pb.t_out[0],
                            pb.sign * float(res.t_final[0]), nfe, n_steps)]
    return Stats(nfe=nfe, n_steps=n_steps, n_accepted=int(res.n_accepted[0]),
                 n_rejected=int(res.n_rejected[0]), n_jac=res.n_jac, n_lu=res.n_lu,
                 segments=segments)


def _dense(pb: Problem, res: LoopResult) -> DenseOutput:
    rec = res.record
    steppers = res.extra.get("step_steppers")  # method="auto": each step's own stepper
    sign = pb.sign
    adaptive = res.extra["loop"] == "adaptive"

    def interp(i: int, thetas: list[float]) -> list[Tensor]:
        y, y1, d, h = rec.y[i], rec.y1[i], rec.dense[i], rec.h[i]
        stepper = steppers[i] if steppers else res.extra["stepper"]
        inner = [th for th in thetas if th != 1.0]
        vals = []
        if inner:
            if adaptive:
                vals = list(stepper.interpolate(y, y1, d, sign * h, inner).unbind(0))
            else:
                f0, f1 = d
                vals = [hermite(y[0], f0[0], y1[0], f1[0], sign * h, th) for th in inner]
        it = iter(vals)
        return [y1[0] if th == 1.0 else next(it) for th in thetas]

    end = float(res.t_final[0])
    y_end = res.extra["y_final"][0]
    return DenseOutput(rec.t, rec.h, interp, (pb.t_out[0], end), sign,
                       lambda ys: pb.layout.trajectory(ys.unsqueeze(1)), y_end, pb.is_tuple)


def solve_ivp(func: Func, y0: State, t_eval: Tensor, *, method: str = "dopri5",
              rtol: float | Tensor = 1e-7, atol: float | Tensor = 1e-9,
              options: dict[str, Any] | None = None, dense: bool = False,
              throw: bool = True, per_sample: bool = False) -> Solution:
    """Solve an initial value problem and return a [`Solution`][neurode.Solution] with statistics.

    Same arguments as [`odeint`][neurode.odeint] (``t_eval`` plays the role of ``t``), plus
    ``dense``, ``throw`` and ``per_sample``:

    Args:
        func: ``func(t, y)`` as for [`neurode.odeint`][].
        y0: initial state as for [`neurode.odeint`][] (a tensor or a tuple of tensors).
        t_eval: the output times ``(T,)``, strictly monotone, ``t_eval[0]`` the initial time
            (as ``t`` of [`neurode.odeint`][]); ``(B, T)`` in per-sample mode.
        method: one of ``neurode.METHODS`` (default ``"dopri5"``).
        rtol: relative tolerance as for [`neurode.odeint`][] (default ``1e-7``).
        atol: absolute tolerance as for [`neurode.odeint`][] (default ``1e-9``).
        options: method options as for [`neurode.odeint`][].
        dense: keep every step's stages so that ``sol.evaluate(t)`` gives the continuous solution
            anywhere in the span (memory grows with the number of steps).
        throw: if False, a failed integration returns a Solution with ``status < 0``, a
            ``message`` saying where and why, and NaN rows for the times not reached.
        per_sample: give every sample of a batch ``y0`` ``(B, ...)`` its own step sizes (also
            ``options={"per_sample": True}``): ``t_eval`` may then be ``(B, T)``, ``func``
            receives ``t`` as a ``(B,)`` tensor, ``ys`` is ``(T, B, ...)`` and the statistics
            are per sample.

    Returns:
        A [`Solution`][neurode.Solution]: ``ts``, ``ys`` (``(T, *y0.shape)``), ``stats``,
        ``status``/``message`` and, with ``dense=True``, ``dense``.

    Raises:
        InvalidInputError: bad arguments (as for [`neurode.odeint`][]), or ``dense=True`` in
            per-sample mode.
        SolverError: with ``throw=True`` (the default), the integration failed (a subclass
            names why).
    """
    pb = make_problem(func, y0, t_eval, rtol, atol, method, options,
                      per_sample=True if per_sample else None)
    if dense and pb.per_sample:
        raise InvalidInputError("dense=True is not available in per-sample mode; pass the "
                                "times you need in t_eval (interpolated per step)")
    res, out = _solve(pb, "dense" if dense else None, throw=throw)
    err = failure(pb, res, None if pb.per_sample else pb.t_out[-1])
    status, message = 0, Status.SUCCESS.message
    if err is not None:
        status = int(res.status[res.status < 0][0])
        message = str(err)
    return Solution(ts=pb.t, ys=pb.layout.trajectory(out), stats=_stats(pb, res),
                    status=status, message=message,
                    dense=_dense(pb, res) if dense and res.record is not None else None,
                    sample_status=res.status if pb.per_sample else None)


def odeint_dense(func: Func, y0: State, t0: float | Tensor, t1: float | Tensor, *,
                 rtol: float | Tensor = 1e-7,
                 atol: float | Tensor = 1e-9, method: str | None = None,
                 options: dict[str, Any] | None = None) -> DenseOutput:
    """Solve from ``t0`` to ``t1`` and return the dense solution as a callable ``y(t)``.

    As in torchdiffeq's newer releases; works for every method but ``scipy_solver`` and for
    tuple states. The callable accepts a scalar or a 1-D tensor of times in ``[t0, t1]``.

    Args:
        func: ``func(t, y)`` as for [`neurode.odeint`][].
        y0: initial state at ``t0`` as for [`neurode.odeint`][] (a tensor or a tuple of
            tensors).
        t0: initial time (a float or a 0-d tensor).
        t1: final time; ``t1 < t0`` integrates backward in time.
        rtol: relative tolerance as for [`neurode.odeint`][] (default ``1e-7``).
        atol: absolute tolerance as for [`neurode.odeint`][] (default ``1e-9``).
        method: one of ``neurode.METHODS`` but ``scipy_solver`` (default ``"dopri5"``).
        options: method options as for [`neurode.odeint`][]; not ``per_sample``.

    Returns:
        The [`DenseOutput`][neurode.DenseOutput] ``y(t)`` over ``[t0, t1]``.

    Raises:
        InvalidInputError: bad arguments, ``method="scipy_solver"`` or per-sample mode.
        SolverError: the integration failed (a subclass names why).
    """
    t = torch.stack([torch.as_tensor(t0, dtype=torch.float64).reshape(()),
                     torch.as_tensor(t1, dtype=torch.float64).reshape(())])
    sol = solve_ivp(func, y0, t, method="dopri5" if method is None else method, rtol=rtol,
                    atol=atol, options=options, dense=True)
    return sol.dense
