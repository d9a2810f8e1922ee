"""Step-size control: error norms, the PID controller and the initial step heuristic.

All decisions are made on Python floats: the loop asks the host for one number per step (the
error ratio), which the accept/reject decision needs anyway, and everything else follows on
the host without touching the device again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["PIDController", "error_ratio", "initial_step", "make_mixed_norm", "rms_norm"]

Norm = Callable[[Tensor], Tensor]


def rms_norm(x: Tensor) -> Tensor:
    """Root mean square ``sqrt(mean(|x|²))`` (Hairer's norm), as a 0-d real tensor."""
    n = x.numel()
    if n == 0:
        return torch.zeros((), dtype=x.real.dtype, device=x.device)
    return torch.linalg.vector_norm(x) * (1.0 / math.sqrt(n))


def make_mixed_norm(sizes: Sequence[int]) -> Norm:
    """Norm of a flattened tuple state: the maximum of the per-component RMS norms.

    This is torchdiffeq's default for tuple states: no component can hide its error behind a
    larger one.
    """
    sizes = list(sizes)

    def mixed_norm(x: Tensor) -> Tensor:
        parts = torch.split(x, sizes)
        return torch.stack([rms_norm(p) for p in parts]).max()

    return mixed_norm


def error_ratio(err: Tensor, err_low: Tensor | None, y0_abs: Tensor, y1: Tensor,
                rtol, atol, norm: Norm) -> tuple[Tensor, Tensor]:
    """``norm(err / (atol + rtol·max(|y0|, |y1|)))``; ≤ 1 means the step is accepted.

    Returns the ratio (0-d tensor) and ``|y1|`` (reused as ``|y0|`` of the next step).
    With a second, lower-order estimate (DOP853) the two are blended as in Hairer's dop853.f:
    ``r5² / sqrt(r5² + 0.01 r3²)``, an estimate that behaves like the method's own order.
    """
    y1_abs = y1.abs()
    scale = torch.maximum(y0_abs, y1_abs).mul_(rtol).add_(atol)
    r = norm(err.div_(scale))
    if err_low is not None:
        r3 = norm(err_low.div_(scale))
        d = torch.sqrt(r * r + 0.01 * r3 * r3)
        r = torch.where(d > 0, r * r / d, d)
    return r, y1_abs


class PIDController:
    """PID step-size controller (Söderlind 2003; Hairer & Wanner II.4 for the PI special case).

    ``h_new = h · safety · ε_n^(−(p+i+d)/k) · ε_{n−1}^((p+2d)/k) · ε_{n−2}^(−d/k)``, clipped to
    ``[dfactor, ifactor]``, with ``ε`` the error ratio and ``k`` the order of the error estimate.
    ``i = 1, p = d = 0`` is the classic integral (elementary) controller. After a rejection the
    next step may not grow, and a rejected step shrinks by the integral term alone.
    """

    def __init__(self, k: int, *, safety: float = 0.9, ifactor: float = 10.0,
                 dfactor: float = 0.2, pcoeff: float = 0.1, icoeff: float = 1.0,
                 dcoeff: float = 0.0, min_step: float = 0.0, max_step: float = math.inf):
        self.k = k
        self.safety = safety
        self.ifactor = ifactor
        self.dfactor = dfactor
        self.min_step = min_step
        self.max_step = max_step
        self.e1 = -(pcoeff + icoeff + dcoeff) / k
        self.e2 = (pcoeff + 2 * dcoeff) / k
        self.e3 = -dcoeff / k
        self.use_history = pcoeff != 0.0 or dcoeff != 0.0
        self.prev1 = 1.0
        self.prev2 = 1.0
        self.rejected_last = False

    def propose(self, h: float, ratio: float, accepted: bool) -> float:
        """The next step size after a step of size ``h`` with error ratio ``ratio`` (> 0 floats)."""
        if accepted:
            if ratio == 0.0:
                factor = self.ifactor
            else:
                r = max(ratio, 1e-10)
                factor = self.safety * r ** self.e1
                if self.use_history:
                    factor *= self.prev1 ** self.e2 * self.prev2 ** self.e3
                factor = min(self.ifactor, max(self.dfactor, factor))
            if self.rejected_last:
                factor = min(factor, 1.0)
            self.prev2 = self.prev1
            self.prev1 = max(ratio, 1e-4)
            self.rejected_last = False
        else:
            if math.isfinite(ratio):
                factor = max(self.dfactor, min(0.9, self.safety * ratio ** (-1.0 / self.k)))
            else:
                factor = self.dfactor
            self.rejected_last = True
        return min(self.max_step, max(self.min_step, h * factor))


def initial_step(f: Callable[[float, Tensor, int], Tensor], t0: float, y0: Tensor, f0: Tensor,
                 order: int, rtol, atol, norm: Norm) -> tuple[float, int]:
    """Hairer, Nørsett & Wanner, *Solving ODEs I*, II.4: a first step from two evaluations.

    Returns ``(h0, nfe)``; costs one evaluation beyond ``f0``.
    """
    with torch.no_grad():
        scale = atol + y0.abs() * rtol
        d0 = float(norm(y0 / scale))
        d1 = float(norm(f0 / scale))
        h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
        y1 = y0 + h0 * f0
        f1 = f(t0 + h0, y1, 0)
        d2 = float(norm((f1 - f0) / scale)) / h0
    m = max(d1, d2)
    h1 = max(1e-6, h0 * 1e-3) if m <= 1e-15 else (0.01 / m) ** (1.0 / (order + 1))
    return min(100 * h0, h1), 1
