"""The asynchronous leapfrog integrator (ALF) of MALI (Zhuang et al., ICLR 2021).

ALF integrates the augmented state ``(z, v)`` with ``v ≈ f(t, z)`` (``v_0 = f(t_0, z_0)``). One
step of size ``h`` from ``(t, z, v)`` (Algorithm 1 of the paper, with damping ``η``):

    z_½ = z + v·h/2,    u = f(t + h/2, z_½),    v₁ = v + 2η(u − v),    z₁ = z_½ + v₁·h/2

which for ``η = 1`` (the default, undamped) is ``v₁ = 2u − v``. The step is an explicit bijection
of ``(z, v)`` with the algebraic inverse

    z_½ = z₁ − v₁·h/2,  u = f(t + h/2, z_½),    v = (v₁ − 2ηu)/(1 − 2η),  z = z_½ − v·h/2

(``v = 2u − v₁`` for ``η = 1``), at one evaluation of ``f`` either way. This is what lets
:func:`neurode.gradients.reversible.odeint_reversible` rebuild the trajectory backwards from the
final state alone. ``η`` must lie in ``(½, 1]``: ``η = ½`` forgets ``v`` and has no inverse, and
below it ``v`` becomes an ever slower running average of ``f`` (``η → 0`` freezes it).

Accuracy. With ``v = f(z)`` the step is the explicit midpoint rule ``z₁ = z + h·f(t + h/2,
z + h/2·f(z))``, hence second order for ``η = 1``; ``v₁ = 2u − v`` extrapolates ``f`` to
``t + h`` with an ``O(h²)`` error that alternates in sign from step to step (the leapfrog
parasitic mode) rather than accumulating. For ``η < 1``, ``z₁ = z + h((1 − η)v + ηu)`` is only
first order. The linearised step on ``z' = λz`` has determinant ``1 − 2η``: for ``η = 1`` it
preserves volume (one eigenvalue ≈ ``e^{λh}``, the other ≈ ``−e^{−λh}``), so on strongly
dissipative problems the parasitic mode grows like ``e^{|λ|t}``; that is what damping is for. The
price is paid by the inverse, which amplifies rounding by ``1/|1 − 2η|`` per step, so exact
reconstruction (and the reversible gradient) degrades as ``η`` leaves 1.

Error control. The local error estimate is the difference between the ALF step and the explicit
Euler step from the same state, ``z₁ − (z + h·v) = (h/2)(v₁ − v) = ηh(u − v)``: the usual embedded
estimate of the lower-order member of a 1(2) pair (as in ``adaptive_heun`` and ``fehlberg2``, and
as MALI does, which uses half of it), free because ``u`` and ``v`` are at hand. It behaves like
``(h²/2)·z''``, so the controller uses the exponent ``1/2`` (``PIDController(k=2)``) and the
propagated (second-order) solution is usually well within the tolerance; for ``η < 1`` it bounds
the damped step's own first-order error ``(1 − η)(h²/2)·z''``. The ratio is
``norm(err / (atol + rtol·max(|z|, |z₁|)))`` as for the Runge–Kutta methods. Because it uses the
carried slope ``v = f(z) + δ``, the estimate also contains ``−ηh·δ``, the parasitic component of
``v``: the controller thereby keeps the parasitic mode in check too (shrinking the steps where it
grows, on dissipative fields), at the price of some extra rejections where its alternating sign
adds to the estimate. On strongly dissipative problems over long horizons the undamped method then
needs ever smaller steps; ``eta < 1`` (forward use) or another method is the remedy.

Steps land exactly on every output time (and on ``step_t``): ALF has no continuous extension of
its own and, more importantly, the reversible gradient reconstructs the states at the output times
by inverting steps, which only works if those states are step endpoints. ``options={"step_size":
h}`` gives fixed steps instead: each interval between consecutive output times is divided into
``ceil(length / h)`` equal steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from neurode.errors import (
    InvalidInputError,
    NonFiniteStateError,
)
from neurode.solvers.adaptive import (
    AdaptiveConfig,
    DenseRecord,
    LoopResult,
    _fail,
    _fail_max_steps,
    _fail_underflow,
    _finite,
    _fmt,
    _start,
)
from neurode.solvers.controller import error_ratio
from neurode.solvers.problem import Problem
from neurode.solvers.registry import ADAPTIVE_OPTIONS, MethodSpec, register_method

__all__ = ["ALF_OPTIONS", "ALFConfig", "ALFResult", "alf_config", "alf_integrate", "alf_inverse",
           "alf_step"]

RHS = Callable[[float, Tensor, int], Tensor]

_EPS = 2.220446049250313e-16

#: Options of method ``"alf"``: the adaptive ones (no ``jump_t``: resetting ``v`` at a jump would
#: break reversibility), plus ``eta`` (damping) and ``step_size`` (fixed steps).
ALF_OPTIONS = (ADAPTIVE_OPTIONS - {"jump_t"}) | {"eta", "step_size"}

#: Order of the local error estimate ``h·η(u − v)`` (``q + 1`` with ``q = 1``).
_CONTROLLER_ORDER = 2


@dataclass
class ALFConfig(AdaptiveConfig):
    """:class:`AdaptiveConfig` plus the damping ``eta`` and an optional fixed ``step_size``."""

    eta: float = 1.0
    step_size: float | None = None


@dataclass
class ALFResult(LoopResult):
    """:class:`LoopResult` plus what the reversible gradient needs.

    ``v_final`` is ``v`` at the last step's end (None if no step was taken); ``step_t`` and
    ``step_h`` are the start time and size of every accepted step (internal forward time);
    ``out_steps[i]`` is the number of accepted steps taken when output ``i`` was reached.
    """

    v_final: Tensor | None = None
    step_t: list[float] = field(default_factory=list)
    step_h: list[float] = field(default_factory=list)
    out_steps: list[int] = field(default_factory=list)


def alf_step(f: RHS, t: float, h: float, z: Tensor, v: Tensor,
             eta: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """One ALF step from ``(t, z, v)``: returns ``(z₁, v₁, u)``, ``u = f(t + h/2, z_½)``.

    The forward solve and the reversible gradient's recomputation both call this, so that the
    recomputed step is the same floating-point computation as the forward one.
    """
    hh = 0.5 * h
    z_half = z + hh * v
    u = f(t + hh, z_half, 0)
    v1 = 2 * u - v if eta == 1.0 else v + (2 * eta) * (u - v)
    z1 = z_half + hh * v1
    return z1, v1, u


def alf_inverse(f: RHS, t: float, h: float, z1: Tensor, v1: Tensor,
                eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """Invert :func:`alf_step`: ``(z, v)`` at ``t`` from ``(z₁, v₁)`` at ``t + h`` (one f call)."""
    hh = 0.5 * h
    z_half = z1 - hh * v1
    u = f(t + hh, z_half, 0)
    v = 2 * u - v1 if eta == 1.0 else (v1 - (2 * eta) * u) / (1 - 2 * eta)
    z = z_half - hh * v
    return z, v


def alf_config(pb: Problem) -> ALFConfig:
    """Read and validate ``pb.options`` for method ``"alf"``."""
    from neurode.solvers.api import _adaptive_config  # api imports the registry this fills

    base = _adaptive_config(pb)
    cfg = ALFConfig(**{k: getattr(base, k) for k in AdaptiveConfig.__dataclass_fields__})
    o = pb.options
    if o.get("eta") is not None:
        try:
            cfg.eta = float(o["eta"])
        except (TypeError, ValueError) as e:
            raise InvalidInputError(
                f"options['eta'] must be a number in (0.5, 1], got {o['eta']!r}") from e
        if not 0.5 < cfg.eta <= 1:
            raise InvalidInputError(
                f"options['eta'] (damping) must be in (0.5, 1], got {cfg.eta}: at 0.5 the step "
                "forgets v and cannot be inverted, below it v lags f ever more")
    if o.get("step_size") is not None:
        try:
            cfg.step_size = float(o["step_size"])
        except (TypeError, ValueError) as e:
            raise InvalidInputError(
                f"options['step_size'] must be a positive number, got {o['step_size']!r}") from e
        if not (cfg.step_size > 0 and math.isfinite(cfg.step_size)):
            raise InvalidInputError(
                f"options['step_size'] must be a positive number, got {cfg.step_size}")
        clash = sorted(k for k in ("first_step", "min_step", "max_step") if o.get(k) is not None)
        if clash:
            raise InvalidInputError(
                f"options: step_size (fixed steps) cannot be combined with {', '.join(clash)} "
                "(adaptive steps); give one or the other")
    return cfg


def alf_integrate(f: RHS, z0: Tensor, t_out: list[float], cfg: ALFConfig, *,
                  callbacks=None, record_dense: bool = False,
                  time_sign: float = 1.0) -> ALFResult:
    """Integrate ``z' = f(s, z)`` with ALF from ``t_out[0]`` to ``t_out[-1]`` (increasing floats).

    ``f(s, z, perturb)`` is the internal vector field. Steps land on every output time, so the
    outputs are step endpoints (no interpolation). Runs with or without a graph: under autograd
    the result is differentiable by ordinary backprop (step sizes held fixed). Failures are stored
    in the result (``status < 0``, ``error``), as in :func:`integrate_adaptive`.
    """
    t0, t_end = t_out[0], t_out[-1]
    res = ALFResult(ys=[z0], t_final=t0, out_steps=[0])
    if record_dense:
        res.dense = DenseRecord()
    n_out = len(t_out)
    if n_out == 1:
        return res
    cb_step = cb_accept = cb_reject = None
    if callbacks is not None:
        cb_step, cb_accept, cb_reject = callbacks
    eta = cfg.eta
    norm, rtol, atol = cfg.norm, cfg.rtol, cfg.atol

    v0 = f(t0, z0, 0)
    nfe = 1
    if not _finite(z0, v0):
        return _fail(res, -3, NonFiniteStateError, "non-finite value (NaN or inf) in y0 or in "
                     f"func(t, y0) at the initial time t={_fmt(t0 * time_sign)}",
                     t0 * time_sign, None)

    # Times the steps must land on: every output time, step_t, the end.
    stops = sorted({float(x) for x in cfg.step_t if t0 < x < t_end} | set(t_out[1:]))
    outs = set(t_out[1:])
    fixed = cfg.step_size is not None
    if fixed:
        h = 0.0
        ctrl = None
    else:
        h, extra, ctrl = _start(f, t0, z0, v0, _CONTROLLER_ORDER, cfg)
        nfe += extra

    t, z, v = t0, z0, v0
    with torch.no_grad():
        z_abs = z.abs()
    ys = res.ys
    si = 0
    n_steps = n_acc = n_rej = 0
    max_steps = cfg.max_num_steps
    ratio = 0.0
    # Fixed steps: each stop-to-stop interval in equal steps of at most step_size.
    seg_start, seg_n, seg_k = t0, 0, 0

    while si < len(stops):
        if n_steps >= max_steps:
            _fail_max_steps(res, max_steps, t, t_end, cfg.step_size if fixed else h, time_sign)
            break
        stop = stops[si]
        if fixed:
            if seg_k == 0:
                seg_start = t
                seg_n = max(1, math.ceil((stop - t) / cfg.step_size - 1e-9))
            hit_stop = seg_k == seg_n - 1
            t1_fixed = stop if hit_stop else seg_start + (seg_k + 1) * (stop - seg_start) / seg_n
            h_step = t1_fixed - t
        else:
            hit_stop = t + h >= stop - 4 * _EPS * abs(stop)
            h_step = stop - t if hit_stop else h
            if h_step <= 8 * _EPS * max(abs(t), 1.0):
                _fail_underflow(res, ratio, t, h_step, time_sign,
                                "or too dissipative for ALF: try a damped step, options['eta'] "
                                "< 1, or looser rtol/atol")
                break
        if cb_step is not None:
            cb_step(t, z, h_step)

        z1, v1, _u = alf_step(f, t, h_step, z, v, eta)
        nfe += 1
        n_steps += 1
        if fixed:
            accept = True
        else:
            with torch.no_grad():
                # z₁ − (z + h·v): the ALF step minus the Euler step (module docstring).
                err = (0.5 * h_step) * (v1 - v)
                ratio_t, z1_abs = error_ratio(err, None, z_abs, z1, rtol, atol, norm)
            ratio = float(ratio_t)  # the one host synchronisation of the step
            accept = ratio <= 1.0 or (min(h, h_step) <= cfg.min_step and math.isfinite(ratio))

        if accept:
            n_acc += 1
            t1 = stop if hit_stop else t + h_step
            res.step_t.append(t)
            res.step_h.append(h_step)
            if record_dense:
                res.dense.append(t, h_step, z, [v, z1, v1])
            if cb_accept is not None:
                cb_accept(t, z, h_step)
            if hit_stop:
                si += 1
                if stop in outs:
                    ys.append(z1)
                    res.out_steps.append(n_acc)
            if fixed:
                seg_k = 0 if hit_stop else seg_k + 1
                z1_abs = None
            t, z, v, z_abs = t1, z1, v1, z1_abs
        else:
            n_rej += 1
            if cb_reject is not None:
                cb_reject(t, z, h_step)
        if not fixed:
            h_next = ctrl.propose(h_step, ratio, accept)
            if hit_stop and accept:
                # A step cut short to land on a stop says little about the next step's size.
                h_next = max(h_next, min(h, cfg.max_step))
            h = h_next

    res.n_steps, res.n_accepted, res.n_rejected, res.nfe = n_steps, n_acc, n_rej, nfe
    res.t_final = t
    res.h_next = None if fixed else h
    res.v_final = v
    return res


def _run(pb: Problem, record_dense: bool) -> ALFResult:
    """The registry's runner: ``pb`` → :class:`ALFResult` (a :class:`LoopResult`)."""
    return alf_integrate(pb.f, pb.y0, pb.t_out, alf_config(pb), callbacks=pb.callbacks,
                         record_dense=record_dense, time_sign=pb.sign)


register_method(MethodSpec("alf", "alf", ALF_OPTIONS, order=2, runner=_run))
