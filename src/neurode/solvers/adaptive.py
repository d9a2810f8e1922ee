"""The adaptive-step loop for embedded explicit Runge–Kutta methods.

Output times are answered from each accepted step's continuous extension (never by shortening
steps to hit them). Time and step size live on the host as Python floats; the only host
synchronisation per step is reading the error ratio that decides accept/reject.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from neurode.errors import (
    InvalidInputError,
    MaxStepsReachedError,
    NonFiniteStateError,
    StepSizeTooSmallError,
)
from neurode.solvers.controller import PIDController, error_ratio, initial_step
from neurode.solvers.quadrature import Quadrature
from neurode.solvers.rk import RHS, RKStepper

__all__ = ["AdaptiveConfig", "DenseRecord", "integrate_adaptive"]

_EPS = 2.220446049250313e-16
_CHUNK = 256  # states per storage chunk of a step record


@dataclass
class AdaptiveConfig:
    """Options of the adaptive loop (see :func:`neurode.solve_ivp` for their meaning)."""

    rtol: float | Tensor = 1e-7
    atol: float | Tensor = 1e-9
    norm: Callable[[Tensor], Tensor] | None = None
    first_step: float | None = None
    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    pcoeff: float = 0.1
    icoeff: float = 1.0
    dcoeff: float = 0.0
    max_num_steps: int = 2**31 - 1
    step_t: tuple[float, ...] = ()
    jump_t: tuple[float, ...] = ()
    min_step: float = 0.0
    max_step: float = math.inf


def _floats(x, sign: float, name: str) -> tuple[float, ...]:
    if x is None:
        return ()
    vals = torch.as_tensor(x, dtype=torch.float64).reshape(-1).tolist()
    if not all(math.isfinite(v) for v in vals):
        raise InvalidInputError(f"options[{name!r}] contains NaN or inf")
    return tuple(sign * v for v in vals)


def config_from_options(o: dict[str, Any], rtol: float | Tensor, atol: float | Tensor, *,
                        norm: Callable[[Tensor], Tensor] | None = None,
                        sign: float = 1.0) -> AdaptiveConfig:
    """The adaptive loop's settings from a user's ``options`` dict, each checked once here
    (the joint and the per-sample loops share them). ``sign`` maps ``step_t``/``jump_t`` to
    internal (forward) time."""
    cfg = AdaptiveConfig(rtol=rtol, atol=atol, norm=norm)
    for key in ("safety", "ifactor", "dfactor", "pcoeff", "icoeff", "dcoeff"):
        if key in o:
            setattr(cfg, key, float(o[key]))
    if o.get("first_step") is not None:
        cfg.first_step = abs(float(o["first_step"]))
        if cfg.first_step == 0:
            raise InvalidInputError("options['first_step'] must be non-zero")
    if o.get("max_num_steps") is not None:
        cfg.max_num_steps = int(o["max_num_steps"])
    if o.get("min_step") is not None:
        cfg.min_step = abs(float(o["min_step"]))
    if o.get("max_step") is not None:
        cfg.max_step = abs(float(o["max_step"]))
    if cfg.min_step > cfg.max_step:
        raise InvalidInputError(f"options: min_step={cfg.min_step} exceeds max_step={cfg.max_step}")
    if not 0 < cfg.safety <= 1:
        raise InvalidInputError(f"options['safety'] must be in (0, 1], got {cfg.safety}")
    if not cfg.ifactor >= 1:
        raise InvalidInputError(f"options['ifactor'] must be ≥ 1, got {cfg.ifactor}")
    if not 0 < cfg.dfactor <= 1:
        raise InvalidInputError(f"options['dfactor'] must be in (0, 1], got {cfg.dfactor}")
    cfg.step_t = _floats(o.get("step_t"), sign, "step_t")
    cfg.jump_t = _floats(o.get("jump_t"), sign, "jump_t")
    return cfg


@dataclass
class DenseRecord:
    """Per accepted step: start time, step size, start state and dense stages (for evaluate)."""

    t: list[float] = field(default_factory=list)
    h: list[float] = field(default_factory=list)
    y: list[Tensor] = field(default_factory=list)
    ks: list[list[Tensor] | None] = field(default_factory=list)
    _chunk: Tensor | None = field(default=None, repr=False)
    _used: int = 0

    def append(self, t: float, h: float, y: Tensor, ks: list[Tensor] | None) -> None:
        if ks is None and not y.requires_grad:
            # States only (checkpoints): pack them into large chunks. Thousands of separately
            # allocated small tensors that outlive the temporaries around them fragment the heap
            # (measured: 4x the stored bytes at 10,000 steps).
            if self._chunk is None or self._used == self._chunk.shape[0]:
                self._chunk = torch.empty((_CHUNK, *y.shape), dtype=y.dtype, device=y.device)
                self._used = 0
            slot = self._chunk[self._used]
            slot.copy_(y)
            self._used += 1
            y = slot
        self.t.append(t)
        self.h.append(h)
        self.y.append(y)
        self.ks.append(ks)


@dataclass
class LoopResult:
    ys: list[Tensor]
    n_steps: int = 0
    n_accepted: int = 0
    n_rejected: int = 0
    n_jac: int = 0
    n_lu: int = 0
    nfe: int = 0
    status: int = 0
    message: str = "success"
    t_final: float = 0.0
    error: Exception | None = None
    dense: DenseRecord | None = None
    event_step: tuple | None = None
    h_next: float | None = None  # the controller's proposal for the step after the last one


def integrate_adaptive(f: RHS, y0: Tensor, t_out: list[float], stepper: RKStepper,
                       cfg: AdaptiveConfig, *, callbacks=None, record_dense: bool = False,
                       record_steps: bool = False, event=None,
                       time_sign: float = 1.0, quad: Quadrature | None = None) -> LoopResult:
    """Integrate from ``t_out[0]`` to ``t_out[-1]`` (increasing floats); ``y`` at ``t_out``.

    ``f(t, y, perturb)`` is the internal vector field. Failures are stored in the result
    (``status < 0``, ``error``) rather than raised, so that callers may inspect partial output.
    ``event`` (optional) is called as ``event(t0, y0, t1, y1, interp)`` after each accepted step and
    returns a time at which to stop, or None. ``record_dense`` keeps every accepted step's start
    and dense stages (for dense output); ``record_steps`` only the start ``(t, h, y)`` (for
    checkpointed gradients). ``quad`` (optional) integrates quadratures beside the state
    (:mod:`neurode.solvers.quadrature`).
    """
    norm = cfg.norm
    rtol, atol = cfg.rtol, cfg.atol
    t0 = t_out[0]
    t_end = t_out[-1]
    res = LoopResult(ys=[y0], t_final=t0)
    if record_dense or record_steps:
        res.dense = DenseRecord()
    n_out = len(t_out)
    if n_out == 1:
        return res

    cb_step = cb_accept = cb_reject = None
    if callbacks is not None:
        cb_step, cb_accept, cb_reject = callbacks

    # Times the steps must land on: step_t, jump_t (then f is re-evaluated just after), the end.
    jumps = {float(x) for x in cfg.jump_t if t0 < x < t_end}
    stops = sorted({float(x) for x in cfg.step_t if t0 < x < t_end} | jumps | {t_end})
    si = 0

    k0 = f(t0, y0, 1 if t0 in jumps else 0)
    nfe = 1
    if not _finite(y0, k0):
        return _fail(res, -3, NonFiniteStateError, "non-finite value (NaN or inf) in y0 or in "
                     f"func(t, y0) at the initial time t={_fmt(t0 * time_sign)}",
                     t0 * time_sign, None)
    h, extra, ctrl = _start(f, t0, y0, k0, stepper.tableau.controller_order, cfg)
    nfe += extra

    fsal = stepper.fsal
    need_f1_for_error = stepper.error_uses_f1
    has_extra = bool(stepper.extra_c)
    t, y = t0, y0
    with torch.no_grad():
        y_abs = y.abs()
    i_out = 1
    ys = res.ys
    n_steps = n_acc = n_rej = 0
    max_steps = cfg.max_num_steps
    ratio = 0.0

    while i_out < n_out:
        if n_steps >= max_steps:
            _fail_max_steps(res, max_steps, t, t_end, h, time_sign)
            break
        stop = stops[si]
        hit_stop = t + h >= stop - 4 * _EPS * abs(stop)
        h_step = stop - t if hit_stop else h
        if h_step <= 8 * _EPS * max(abs(t), 1.0):
            _fail_underflow(res, ratio, t, h_step, time_sign)
            break
        if cb_step is not None:
            cb_step(t, y, h_step)

        # A step that ends on a jump evaluates its c = 1 stages just before the jump.
        at_jump = hit_stop and stop in jumps
        ks, y1 = stepper.step(f, t, y, h_step, k0, perturb=at_jump)
        nfe += stepper.stages - 1
        f1 = ks[-1] if fsal else None
        if need_f1_for_error:
            f1 = f(t + h_step, y1, -1 if at_jump else 0)
            nfe += 1
        with torch.no_grad():
            err, err_low = stepper.error(ks if f1 is None or fsal else [*ks, f1], h_step)
            ratio_t, y1_abs = error_ratio(err, err_low, y_abs, y1, rtol, atol, norm)
            if quad is not None:
                ratio_t = quad.ratio(ks if f1 is None or fsal else [*ks, f1], h_step, ratio_t)
        ratio = float(ratio_t)  # the one host synchronisation of the step
        n_steps += 1
        accept = ratio <= 1.0 or (min(h, h_step) <= cfg.min_step and math.isfinite(ratio))


        if accept:
            n_acc += 1
            t1 = stop if hit_stop else t + h_step
            if quad is not None:
                quad.accept(ks, h_step)
            if f1 is None:
                f1 = f(t1, y1, -1 if at_jump else 0)
                nfe += 1
            dense_ks = None
            if (i_out < n_out and t_out[i_out] <= t1) or record_dense or event is not None:
                dense_ks = ks if fsal else [*ks, f1]
                if has_extra:
                    dense_ks = list(dense_ks)
                    stepper.extra_stages(f, t, y, h_step, dense_ks)
                    nfe += len(stepper.extra_c)
            if event is not None:
                t_ev = event(t, y, t1, y1, dense_ks, h_step)
                if t_ev is not None:
                    res.t_final = t_ev
                    res.n_steps, res.n_accepted, res.n_rejected, res.nfe = (
                        n_steps, n_acc, n_rej, nfe)
                    res.event_step = (t, y, h_step, dense_ks)
                    return res
            if i_out < n_out and t_out[i_out] <= t1:
                j = bisect.bisect_right(t_out, t1, i_out)
                thetas = [(to - t) / h_step for to in t_out[i_out:j]]
                exact_end = t_out[j - 1] == t1
                if exact_end:
                    thetas.pop()
                if len(thetas) == 1:
                    ys.append(stepper.interpolate(y, dense_ks, h_step, thetas[0]))
                elif thetas:
                    ys.extend(stepper.interpolate_many(y, dense_ks, h_step, thetas))
                if exact_end:
                    ys.append(y1)
                i_out = j
            if record_dense or record_steps:
                res.dense.append(t, h_step, y, dense_ks if record_dense else None)
            if cb_accept is not None:
                cb_accept(t, y, h_step)
            if hit_stop:
                si += 1
                if t1 in jumps:
                    f1 = f(t1, y1, 1)
                    nfe += 1
            t, y, k0, y_abs = t1, y1, f1, y1_abs
        else:
            n_rej += 1
            if cb_reject is not None:
                cb_reject(t, y, h_step)
            if not math.isfinite(ratio) and min(h, h_step) <= cfg.min_step:
                # min_step forbids the smaller steps that could get past NaN/inf: give up
                _fail_underflow(res, ratio, t, h_step, time_sign)
                break
        h_next = ctrl.propose(h_step, ratio, accept)
        if hit_stop and accept:
            # A step cut short to land on a stop says little about the next step's size.
            h_next = max(h_next, min(h, cfg.max_step))
        h = h_next

    res.n_steps, res.n_accepted, res.n_rejected, res.nfe = n_steps, n_acc, n_rej, nfe
    res.t_final = t
    res.h_next = h
    return res


def _fail(res: LoopResult, status: int, exc_type, message: str, t: float, dt: float | None):
    res.status, res.message = status, message
    res.error = exc_type(message, t=t, dt=dt)
    return res


def _start(f: RHS, t0: float, y0: Tensor, k0: Tensor, order: int, cfg: AdaptiveConfig
           ) -> tuple[float, int, PIDController]:
    """First step size (given, or Hairer's heuristic), its extra evaluations, the controller."""
    extra = 0
    if cfg.first_step is None:
        h, extra = initial_step(f, t0, y0, k0, order - 1, cfg.rtol, cfg.atol, cfg.norm)
    else:
        h = float(cfg.first_step)
    h = min(cfg.max_step, max(cfg.min_step, h))
    ctrl = PIDController(order, safety=cfg.safety, ifactor=cfg.ifactor, dfactor=cfg.dfactor,
                         pcoeff=cfg.pcoeff, icoeff=cfg.icoeff, dcoeff=cfg.dcoeff,
                         min_step=cfg.min_step, max_step=cfg.max_step)
    return h, extra, ctrl


def _fail_max_steps(res: LoopResult, max_steps: int, t: float, t_end: float, h: float,
                    sign: float) -> None:
    _fail(res, -1, MaxStepsReachedError,
          f"max_num_steps={max_steps} reached at t={_fmt(t * sign)} before "
          f"t={_fmt(t_end * sign)}; raise options['max_num_steps'], loosen rtol/atol, or check "
          "for stiffness", t * sign, h * sign)


def _fail_underflow(res: LoopResult, ratio: float, t: float, h: float, sign: float,
                    hint: str = "try a stiff method, or looser rtol/atol") -> None:
    """The step size fell below rounding: through NaN/inf (``ratio`` not finite) or accuracy."""
    if not math.isfinite(ratio):  # steps kept failing on NaN/inf, not on accuracy
        _fail(res, -3, NonFiniteStateError,
              "func returned a non-finite value (NaN or inf) for every step from "
              f"t={_fmt(t * sign)}, however small", t * sign, h * sign)
    else:
        _fail(res, -2, StepSizeTooSmallError,
              f"step size underflow: dt={h:.3e} at t={_fmt(t * sign)}; the problem may be stiff "
              f"or singular there ({hint})", t * sign, h * sign)


def _finite(y: Tensor, k: Tensor) -> bool:
    with torch.no_grad():
        return bool(torch.isfinite(y).all()) and bool(torch.isfinite(k).all())


def _fmt(t: float) -> str:
    return f"{t:.6g}"
