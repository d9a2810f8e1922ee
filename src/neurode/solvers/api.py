"""Public entry points of the solvers: ``odeint`` (torchdiffeq-compatible), ``odeint_dense`` and
``solve_ivp`` (neurode's richer API returning a :class:`Solution`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from neurode.errors import (
    InvalidInputError,
    NonFiniteStateError,
)
from neurode.solvers.adaptive import (
    AdaptiveConfig,
    LoopResult,
    config_from_options,
    integrate_adaptive,
)
from neurode.solvers.fixed import integrate_adams, integrate_fixed, make_grid
from neurode.solvers.problem import Problem, make_problem
from neurode.solvers.rk import get_stepper
from neurode.solvers.solution import DenseOutput, Solution, Stats

__all__ = ["odeint", "odeint_dense", "solve_ivp"]

State = Tensor | tuple[Tensor, ...]
Func = Callable[[Tensor, Any], Any]


def _adaptive_config(pb: Problem) -> AdaptiveConfig:
    return config_from_options(pb.options, pb.rtol, pb.atol, norm=pb.norm, sign=pb.sign)


def _grid(pb: Problem) -> list[float]:
    o = pb.options
    gc = o.get("grid_constructor")
    step_size = o.get("step_size")
    if gc is not None and step_size is not None:
        raise InvalidInputError("options: give step_size or grid_constructor, not both")
    grid = None
    if gc is not None:
        t_int = torch.tensor(pb.t_out, dtype=torch.float64)

        def func_int(tt, y):
            return pb.f(float(tt), y, 0)

        g = gc(func_int, pb.y0, t_int)
        grid = torch.as_tensor(g, dtype=torch.float64).reshape(-1).tolist()
    return make_grid(pb.t_out, None if step_size is None else float(step_size), grid)


def _integrate(pb: Problem, record_dense: bool = False, quad=None) -> LoopResult:
    """Run ``pb``'s method. ``quad`` (a :class:`~neurode.solvers.quadrature.Quadrature`) is
    supported by the Runge–Kutta loops only (``kind`` ``"adaptive"`` or ``"fixed"``)."""
    spec = pb.method
    o = pb.options
    if quad is not None and spec.kind not in ("adaptive", "fixed"):
        raise InvalidInputError(f"method {spec.name!r} does not integrate quadratures")
    if spec.kind == "adaptive":
        return integrate_adaptive(pb.f, pb.y0, pb.t_out, get_stepper(spec.tableau),
                                  _adaptive_config(pb), callbacks=pb.callbacks,
                                  record_dense=record_dense, time_sign=pb.sign, quad=quad)
    interp = o.get("interp", "linear")
    if interp not in ("linear", "cubic"):
        raise InvalidInputError(f"options['interp'] must be 'linear' or 'cubic', got {interp!r}")
    grid = _grid(pb)
    if spec.kind == "fixed":
        return integrate_fixed(pb.f, pb.y0, pb.t_out, grid, get_stepper(spec.tableau),
                               interp=interp, perturb=bool(o.get("perturb", False)),
                               callbacks=pb.callbacks, record_dense=record_dense, quad=quad)
    if spec.kind == "adams":
        max_order = int(o.get("max_order", spec.params["max_order"]))
        return integrate_adams(pb.f, pb.y0, pb.t_out, grid, max_order=max_order,
                               implicit=spec.params["implicit"],
                               max_iters=int(o.get("max_iters", 4)), rtol=pb.rtol, atol=pb.atol,
                               norm=pb.norm, interp=interp, callbacks=pb.callbacks,
                               record_dense=record_dense)
    return spec.runner(pb, record_dense)


def _nonfinite_fixed(pb: Problem, ys: Tensor) -> NonFiniteStateError | None:
    """After a fixed-grid solve: one host sync to see whether any output is non-finite.

    Only on failure is the solve repeated (without graph) to find the grid step where the first
    non-finite value appeared, so the error names that step rather than the next output time.
    """
    with torch.no_grad():
        if bool(torch.isfinite(ys.sum())):  # one reduction; exact row check only on failure
            return None
        bad = ~torch.isfinite(ys.reshape(ys.shape[0], -1)).all(dim=1)
        if not bool(bad.any()):
            return None
        i = int(bad.nonzero()[0, 0])
        t_a, t_b = pb.sign * pb.t_out[max(i - 1, 0)], pb.sign * pb.t_out[i]
        rec = _integrate(pb, record_dense=True).dense
        for t0, h, y0, data in zip(rec.t, rec.h, rec.y, rec.ks, strict=True):
            if not all(bool(torch.isfinite(x).all()) for x in (y0, *data) if x is not None):
                t_a, t_b = pb.sign * t0, pb.sign * (t0 + h)
                break
    return NonFiniteStateError(
        f"non-finite value (NaN or inf) appeared in the step from t={t_a:.6g} to t={t_b:.6g}; "
        "reduce the step size or check func", t=t_a, dt=t_b - t_a)


def _assemble(pb: Problem, res: LoopResult, throw: bool) -> Tensor:
    n = len(pb.t_out)
    if res.status < 0 and throw:
        raise res.error
    ys = res.ys
    if len(ys) < n:  # failed solve inspected by the caller: pad with NaN
        pad = torch.full_like(pb.y0, math.nan)
        ys = ys + [pad] * (n - len(ys))
    out = torch.stack(ys)
    if pb.method.kind != "adaptive" and res.status >= 0:
        # The adaptive loop sees NaN/inf through its error ratio; fixed grids check once here.
        err = _nonfinite_fixed(pb, out)
        if err is not None:
            if throw:
                raise err
            res.status, res.message, res.error = -3, str(err), err
    return out


def _solve(pb: Problem, record_dense: bool, throw: bool) -> tuple[LoopResult, Tensor]:
    """Integrate and assemble ``(T, N)`` outputs; gradients w.r.t. the times if ``t`` needs them.

    Steps are chosen on host floats, so autograd alone would not see ``t``. When ``t`` requires
    grad, the exact sensitivities of the continuous solution are attached instead:
    ``∂y(t_i)/∂t_i = f(t_i, y(t_i))`` and ``∂y(t_i)/∂t_0 = −Φ(t_i, t_0) f(t_0, y_0)``, the latter by
    starting from ``y0 − (t0 − stop_grad(t0))·f(t0, y0)`` so backprop through the steps applies
    ``Φ``. Costs one evaluation per output time, and only when ``t.requires_grad``.
    """
    time_grad = pb.t.requires_grad and torch.is_grad_enabled()
    y0 = pb.y0
    if time_grad:
        t = pb.t.to(pb.time_dtype)
        with torch.no_grad():
            f0 = pb.sign * pb.f(pb.t_out[0], y0, 0)
        pb.y0 = y0 - (t[0] - t[0].detach()) * f0
    res = _integrate(pb, record_dense)
    out = _assemble(pb, res, throw)
    if time_grad:
        pb.y0 = y0
        rows = [y0]
        for i in range(1, out.shape[0]):
            with torch.no_grad():
                fi = pb.sign * pb.f(pb.t_out[i], out[i], 0)
            rows.append(out[i] + (t[i] - t[i].detach()) * fi)
        out = torch.stack(rows)
    return res, out


def odeint(func: Func, y0: State, t: Tensor, *, rtol: float | Tensor = 1e-7,
           atol: float | Tensor = 1e-9, method: str | None = None,
           options: dict[str, Any] | None = None, event_fn: Callable | None = None):
    """Solve ``dy/dt = func(t, y), y(t[0]) = y0`` and return ``y`` at every time in ``t``.

    A drop-in replacement for ``torchdiffeq.odeint`` (same arguments, methods and options).

    Args:
        func: ``func(t, y)`` with ``t`` a 0-d tensor and ``y`` shaped like ``y0``; returns
            ``dy/dt`` of the same shape, dtype and device.
        y0: initial state, a tensor of any shape (float32/64, complex64/128) or a tuple of them.
        t: 1-D tensor of times, strictly increasing or strictly decreasing; ``t[0]`` is the
            initial time.
        rtol, atol: relative and absolute tolerance of adaptive methods (floats, or tensors
            broadcastable to ``y0``).
        method: one of ``neurode.METHODS`` (default ``"dopri5"``).
        options: method options (see the README's table), e.g. ``{"step_size": 0.1}``.
        event_fn: ``event_fn(t, y)``; when given, integrate from ``t[0]`` until it crosses zero
            and return ``(event_t, solution)`` (see :func:`neurode.odeint_event`).

    Returns:
        ``(len(t), *y0.shape)`` tensor (a tuple of such for tuple ``y0``); row 0 is ``y0``.

    Raises:
        InvalidInputError, UnknownMethodError, UnknownOptionError: bad arguments.
        FuncOutputError: ``func`` returned the wrong shape/dtype/device.
        SolverError subclasses: the integration failed (the message says where).
    """
    if event_fn is not None:
        from neurode.solvers.events import integrate_event

        return integrate_event(func, y0, t, event_fn, rtol=rtol, atol=atol, method=method,
                               options=options)
    if options is not None and "per_sample" in options:
        if options["per_sample"]:
            return _per_sample(func, y0, t, method, rtol, atol, options, throw=True).ys
        options = {k: v for k, v in options.items() if k != "per_sample"}
    pb = make_problem(func, y0, t, rtol, atol, method, options)
    _, out = _solve(pb, record_dense=False, throw=True)
    return pb.unflatten(out.reshape(out.shape[0], -1)) if pb.is_tuple else out


def _per_sample(func, y0, t, method, rtol, atol, options, throw: bool) -> Solution:
    """Per-sample stepping (:mod:`neurode.solvers.batched`) behind the public functions."""
    from neurode.solvers.batched import integrate_per_sample

    r = integrate_per_sample(func, y0, t, method="dopri5" if method is None else method,
                             rtol=rtol, atol=atol, options=options)
    stats = Stats(nfe=r.nfe, n_steps=r.n_steps, n_accepted=r.n_accepted,
                  n_rejected=r.n_rejected)
    status, message = 0, "success"
    failure = r.failure(options)
    if failure is not None:
        if throw:
            raise failure[1]
        status, message = failure[0], str(failure[1])
    return Solution(ts=t, ys=r.ys, stats=stats, status=status, message=message,
                    sample_status=r.status)


def solve_ivp(func: Func, y0: State, t_eval: Tensor, *, method: str = "dopri5",
              rtol: float | Tensor = 1e-7, atol: float | Tensor = 1e-9,
              options: dict[str, Any] | None = None, dense: bool = False,
              throw: bool = True, per_sample: bool = False) -> Solution:
    """Solve an initial value problem and return a :class:`Solution` with statistics.

    Same arguments as :func:`odeint` (``t_eval`` plays the role of ``t``), plus:

    Args:
        dense: keep every step's stages so that ``sol.evaluate(t)`` gives the continuous solution
            anywhere in the span (memory grows with the number of steps).
        throw: if False, a failed integration returns a Solution with ``status < 0``, a
            ``message`` saying where and why, and NaN rows for the times not reached.
        per_sample: give every sample of a batch ``y0`` ``(B, ...)`` its own step sizes (also
            ``options={"per_sample": True}``): ``t_eval`` may then be ``(B, T)``, ``func``
            receives ``t`` as a ``(B,)`` tensor, ``ys`` is ``(T, B, ...)`` and the statistics
            are per sample (see :mod:`neurode.solvers.batched`).
    """
    if per_sample or (options is not None and options.get("per_sample", False)):
        if dense:
            raise InvalidInputError("dense=True is not available in per-sample mode; pass the "
                                    "times you need in t_eval (interpolated per step)")
        return _per_sample(func, y0, t_eval, method, rtol, atol,
                           {**(options or {}), "per_sample": True}, throw)
    if options is not None and "per_sample" in options:
        options = {k: v for k, v in options.items() if k != "per_sample"}
    pb = make_problem(func, y0, t_eval, rtol, atol, method, options)
    res, out = _solve(pb, record_dense=dense, throw=throw)
    ys = pb.unflatten(out.reshape(out.shape[0], -1)) if pb.is_tuple else out
    stats = Stats(nfe=res.nfe, n_steps=res.n_steps, n_accepted=res.n_accepted,
                  n_rejected=res.n_rejected, n_jac=res.n_jac, n_lu=res.n_lu)
    dense_out = None
    if dense:
        stepper = get_stepper(pb.method.tableau) if pb.method.kind == "adaptive" else None
        dense_out = DenseOutput(res.dense, stepper, pb.t_out[0], res.t_final, pb.sign,
                                pb.unflatten if pb.is_tuple else (lambda x: x), res.ys[-1])
    return Solution(ts=pb.t, ys=ys, stats=stats, status=res.status, message=res.message,
                    dense=dense_out)


def odeint_dense(func: Func, y0: State, t0, t1, *, rtol: float | Tensor = 1e-7,
                 atol: float | Tensor = 1e-9, method: str | None = None,
                 options: dict[str, Any] | None = None) -> DenseOutput:
    """Solve from ``t0`` to ``t1`` and return the dense solution as a callable ``y(t)``.

    As in torchdiffeq's newer releases; works for every method (not only dopri5) and for tuple
    states. The callable accepts a scalar or a 1-D tensor of times in ``[t0, t1]``.
    """
    t = torch.stack([torch.as_tensor(t0, dtype=torch.float64).reshape(()),
                     torch.as_tensor(t1, dtype=torch.float64).reshape(())])
    sol = solve_ivp(func, y0, t, method="dopri5" if method is None else method, rtol=rtol,
                    atol=atol, options=options, dense=True)
    return sol.dense
