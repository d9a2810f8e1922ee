"""Step-size control over tensors: the PID controller and the initial-step heuristic.

The controller's arithmetic runs on a scalar back end (`neurode.solvers.scalars`): ``(B,)``
tensors that are never read on the host (``B = 1`` for a joint solve), so the adaptive loop can
queue many steps without a synchronisation, or one row of floats on the host. The initial step
works on ``(B,)`` tensors.

One order convention for every adaptive method: a stepper's ``error_order`` ``p̂`` is the order of
its local error estimate (``err = O(h^p̂)``), and steps scale like ``ratio^(−1/p̂)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["ControllerState", "PIDController", "initial_step"]

_F64 = torch.float64


class ControllerState(NamedTuple):
    """Per-row memory of the controller: ``history``, the safety factor times the history term
    ``ε_{n−1}^β₂ ε_{n−2}^β₃`` of the last accepted ratios; ``prev``, the last accepted ratio (for
    the derivative term); ``cap``, the bound on the next accepted step's growth (``ifactor``, or
    1 right after a rejection)."""

    history: Tensor
    prev: Tensor
    cap: Tensor


class PIDController:
    """PID step-size controller (Söderlind 2003; Hairer & Wanner II.4 for the PI special case).

    ``h_new = h · safety · ε_n^(−(p+i+d)/k) · ε_{n−1}^((p+2d)/k) · ε_{n−2}^(−d/k)`` on acceptance,
    clipped to ``[dfactor, ifactor]`` (to ``[dfactor, 1]`` right after a rejection), with ``ε`` the
    error ratio and ``k`` the stepper's ``error_order``. A rejected step shrinks by the integral
    term alone, ``safety · ε^(−1/k)`` clipped to ``[dfactor, 0.9]``, or by ``dfactor`` when the
    ratio is not finite. The result is clipped to ``[min_step, max_step]``. ``i = 1, p = d = 0`` is
    the classic integral controller. The arithmetic runs on a scalar back end
    (`neurode.solvers.scalars`): ``(B,)`` tensors, or one row of floats on the host.
    """

    def __init__(self, error_order: int, *, safety: float = 0.9, ifactor: float = 10.0,
                 dfactor: float = 0.2, pcoeff: float = 0.1, icoeff: float = 1.0,
                 dcoeff: float = 0.0, min_step: float = 0.0, max_step: float = math.inf):
        k = float(error_order)
        self.error_order = error_order
        self.safety, self.ifactor, self.dfactor = safety, ifactor, dfactor
        self.min_step, self.max_step = min_step, max_step
        self.e1 = -(pcoeff + icoeff + dcoeff) / k
        self.e2 = (pcoeff + 2 * dcoeff) / k
        self.e3 = -dcoeff / k
        self.e_reject = -1.0 / k
        self.use_history = pcoeff != 0.0 or dcoeff != 0.0
        self.use_prev2 = dcoeff != 0.0

    def init_state(self, S, batch: int) -> ControllerState:
        """The memory of a fresh start (``S`` a scalar back end)."""
        if S.host:
            return ControllerState(history=self.safety, prev=1.0, cap=self.ifactor)
        ones = torch.ones(batch, dtype=S.rdtype, device=S.device)
        return ControllerState(history=ones * self.safety, prev=ones, cap=ones * self.ifactor)

    def _constants(self, S) -> tuple:
        """The numbers of `update` in the back end's form (made once per back end)."""
        r, t = S.r, S.t
        return (r(1.0), r(1e-10), r(1e-4), r(self.safety), r(self.safety), r(self.e1),
                r(self.e_reject), r(self.dfactor), r(0.9), r(self.ifactor), r(1.2), r(0.5),
                t(self.min_step), t(self.max_step))

    def update(self, S, ratio, dt, h, state: ControllerState, done, landing, *,
               safety: float | None = None, hold=None, failed=None):
        """Accept/reject each row and propose its next step (``S`` the scalar back end).

        Args:
            ratio: the error ratios of the attempted steps (NaN/inf reject).
            dt: the sizes of the attempted steps (0 for rows that are done).
            h: the step sizes that were planned (``dt`` is smaller when a step was cut short to
                land on a stop).
            state: the rows' `ControllerState`.
            done: rows no longer integrating: never accepted, ``h`` and ``state`` kept.
            landing: the step was cut to land on a stop. An accepted landing step keeps at least
                the planned ``h`` for the next: its size says little about the next one.
            safety: a safety factor for this step replacing the configured one (implicit
                methods lower it when Newton needed many iterations).
            hold: keep ``h`` unchanged on acceptance when the proposed growth is below 20 %
                (implicit methods, to reuse their factorisations; Hairer & Wanner IV.8).
            failed: rows whose stage solve failed (Newton): the step is halved.

        Returns:
            ``(accept, h_next, state)``.
        """
        (one, tiny, floor, k_sf, k_safety, k_e1, k_erej, k_dfac, k_09, k_ifac, k_12, k_half,
         k_min, k_max) = S.pack("controller", self._constants)
        where = S.where
        ok = ratio <= one
        if self.min_step > 0:
            # A step pinned at min_step is accepted whatever its error (it cannot shrink), but
            # never a non-finite one. h, not dt: dt = t_new − t may round to just above min_step.
            ok = (ok | (S.minimum(h, dt) <= k_min)) & S.finite(ratio)
        accept = ok & S.not_(done)
        rc = S.maximum(ratio, tiny)
        # One power for both branches: accepted rows use the full PID exponent and history
        # (which carries the safety factor), rejected rows the integral exponent alone.
        sf = k_sf if safety is None else S.r(safety)
        if self.use_history:
            hist = state.history if safety is None else state.history * (safety / self.safety)
            mult = where(accept, hist, sf)
        else:
            mult = sf
        fac = S.pow(rc, where(accept, k_e1, k_erej)) * mult
        fac = S.nan_to(S.clamp(fac, k_dfac, where(accept, state.cap, k_09)), self.dfactor)
        if hold is not None:
            fac = where(accept & hold & (fac < k_12) & S.not_(landing), one, fac)
        if failed is not None:
            fac = where(failed, k_half, fac)
        h_new = dt * S.to_time(fac, dt)
        if self.min_step > 0 or self.max_step < math.inf:
            h_new = S.clamp(h_new, k_min, k_max)
        # keep at least the planned h after an accepted landing step, and all of it when done
        # (dt = 0 there); h ≤ max_step already
        h_new = where((accept & landing) | done, S.maximum(h_new, h), h_new)
        history, prev = state.history, state.prev
        if self.use_history:
            rp = S.maximum(rc, floor)
            new_hist = S.pow(rp, self.e2) * k_safety
            if self.use_prev2:
                new_hist = new_hist * S.pow(state.prev, self.e3)
                prev = where(accept, rp, prev)
            history = where(accept, new_hist, history)
        # the next accepted step may not grow right after a rejection (rows that are done keep
        # theirs: they may go on after a jump)
        cap = where(accept, k_ifac, where(done, state.cap, one))
        return accept, h_new, ControllerState(history=history, prev=prev, cap=cap)


def _heuristic_constants(S) -> tuple:
    w = S.w
    return (w(1.0), w(1e-5), w(1e-6), w(0.01), w(1e-300), w(1e-15), w(1e-3), w(100.0))


def initial_step(S, f_eval, t0, y0: Tensor, f0: Tensor, error_order: int, rtol, atol,
                 norm, span=None):
    """Hairer, Nørsett & Wanner, *Solving ODEs I*, II.4: a first step per row, on the scalar
    back end ``S`` — ``t0``, ``span`` and the result are ``(B,)`` float64 tensors, or host
    floats (the heuristic's three norms are then read on the host).

    Costs one evaluation ``f_eval(t0, h0, y0 + h0·f0)`` beyond ``f0``.
    The heuristic's absolute fallbacks (10⁻⁶ when the state or its derivative is tiny) are
    scaled by ``max(1, |t0|)`` and the result is kept above 100 ulp of ``t0``, so that a problem
    posed far from ``t = 0`` (``t0 = 10¹²``) does not start below the resolution of its time.
    ``span`` (optional) bounds the first step by the length of the interval.
    """
    one, c_tiny, c_abs, c_frac, c_pos, c_flat, c_shrink, c_grow = S.pack(
        "initial_step", _heuristic_constants)
    where, maximum, minimum = S.where, S.maximum, S.minimum
    with torch.no_grad():
        tscale = maximum(S.abs(t0), one)
        rd = y0.real.dtype if y0.is_complex() else y0.dtype
        state_dtype = y0.dtype
        if rd in (torch.float16, torch.bfloat16):  # their range cannot hold 1/tolerance
            y0, f0 = y0.to(torch.float32), f0.to(torch.float32)
            rd = torch.float32
        scale = (y0.abs() * rtol).add_(atol)
        d0 = S.wide(norm(y0 / scale))
        d1 = S.wide(norm(f0 / scale))
        tiny = (d0 < c_tiny) | (d1 < c_tiny)
        h0 = where(tiny, c_abs * tscale, c_frac * d0 / maximum(d1, c_pos))
        if span is not None:
            h0 = minimum(h0, maximum(span, c_pos))
        h0r = h0 if S.host else h0.to(rd).view(-1, *([1] * (y0.ndim - 1)))
        f1 = f_eval(t0, h0, (y0 + h0r * f0).to(state_dtype)).to(f0.dtype)
        d2 = S.wide(norm((f1 - f0) / scale)) / h0
        m = maximum(d1, d2)
        h1 = where(m <= c_flat, maximum(c_abs * tscale, h0 * c_shrink),
                   S.pow(c_frac / maximum(m, c_pos), 1.0 / error_order))
        h = minimum(c_grow * h0, h1)
        return maximum(h, S.w(100 * torch.finfo(torch.float64).eps) * tscale)
