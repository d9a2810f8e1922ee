"""The asynchronous leapfrog stepper (ALF) of MALI (Zhuang et al., ICLR 2021).

ALF integrates the augmented state ``(z, v)`` with ``v ≈ f(t, z)`` (``v_0 = f(t_0, z_0)``). One
step of size ``h`` from ``(t, z, v)`` (Algorithm 1 of the paper, with damping ``η``):

    z_½ = z + v·h/2,    u = f(t + h/2, z_½),    v₁ = v + 2η(u − v),    z₁ = z_½ + v₁·h/2

which for ``η = 1`` (the default, undamped) is ``v₁ = 2u − v``. The step is an explicit bijection
of ``(z, v)`` with the algebraic inverse

    z_½ = z₁ − v₁·h/2,  u = f(t + h/2, z_½),    v = (v₁ − 2ηu)/(1 − 2η),  z = z_½ − v·h/2

(``v = 2u − v₁`` for ``η = 1``), at one evaluation of ``f`` either way. This is what lets
[`neurode.odeint_reversible`][] rebuild the trajectory backwards from the final state alone.
``η`` must lie in ``(½, 1]``: ``η = ½`` forgets ``v`` and has no inverse.

Accuracy. With ``v = f(z)`` the step is the explicit midpoint rule, second order for ``η = 1``;
``v₁ = 2u − v`` extrapolates ``f`` to ``t + h`` with an ``O(h²)`` error that alternates in sign
from step to step (the leapfrog parasitic mode). For ``η < 1`` the step is first order. The
linearised step has determinant ``1 − 2η``: for ``η = 1`` it preserves volume, so on strongly
dissipative problems the parasitic mode grows; damping counters it, at the price of the
inverse amplifying rounding by ``1/|1 − 2η|`` per step.

Error estimate: the ALF step minus the explicit Euler step from the same state,
``z₁ − (z + h·v) = ηh(u − v)``, the embedded estimate of a 1(2) pair (``error_order = 2``). It also
contains the parasitic component of ``v``, so the controller keeps that mode in check too.

Dense output: cubic Hermite through ``(z, v)`` and ``(z₁, v₁)``. Steps land on every output time
(``lands_on_outputs``): the reversible gradient reconstructs the outputs by inverting steps.
"""

from __future__ import annotations

import torch
from torch import Tensor

from neurode.solvers.steppers.base import (
    HermiteDense,
    StageTimes,
    StepOut,
    hermite_rows,
    nudge,
)

__all__ = ["ALF"]


class ALF(HermiteDense):
    """ALF steps on ``(B, N)`` states; the carry is ``v`` (module docstring)."""

    kind = "alf"
    order = 2
    error_order = 2
    lands_on_outputs = True
    syncs = False
    evals_per_step = 1
    n_extra = 0

    def __init__(self, eta: float = 1.0, *, batch: int, n: int, dtype: torch.dtype, device,
                 sign: float, time_dtype: torch.dtype, per_sample: bool):
        self.eta = eta
        self.B, self.N = batch, n
        self.dtype, self.device = dtype, device
        self.rdtype = dtype.to_real() if dtype.is_complex else dtype
        self.sign = sign
        self.times = StageTimes((0.0, 0.5), sign, time_dtype, device, per_sample)

    def new_buffer(self):
        return None

    def signed(self, ds):
        hs = ds if self.sign > 0 else -ds
        if not isinstance(hs, Tensor):
            return hs
        return hs.to(self.rdtype) if hs.dtype != self.rdtype else hs

    def _half(self, ds):
        hh = self.signed(ds) * 0.5
        return hh if not isinstance(hh, Tensor) else hh.view(-1, 1)

    def start(self, field, s, z: Tensor, after: bool = False) -> Tensor:
        """``v_0 = f(s, z)``."""
        t0 = self.times.at(s)
        return field(nudge(t0, self.sign, +1) if after else t0, z)

    def _v1(self, u: Tensor, v: Tensor) -> Tensor:
        if self.eta == 1.0:
            return u.mul(2.0).sub_(v)
        return torch.add(v, u - v, alpha=2 * self.eta)

    def step(self, field, s: Tensor, ds: Tensor, z: Tensor, v: Tensor, buf=None, *,
             error: bool = True, want_f1: bool = True, before=None, after: bool = False
             ) -> StepOut:
        """One ALF step; ``dense`` is ``(v, v₁)`` for the Hermite interpolant, ``carry`` ``v₁``."""
        tus = self.times(s, ds)
        hh = self._half(ds)
        if isinstance(hh, Tensor):
            z_half = torch.addcmul(z, hh, v)
            u = field(tus[1], z_half)
            v1 = self._v1(u, v)
            z1 = torch.addcmul(z_half, hh, v1)
        else:
            z_half = torch.add(z, v, alpha=hh)
            u = field(tus[1], z_half)
            v1 = self._v1(u, v)
            z1 = torch.add(z_half, v1, alpha=hh)
        err = None
        if error:
            with torch.no_grad():
                err = hh * (v1 - v)
        return StepOut(z1, err, None, (v, v1), v1, [u])

    def inverse(self, field, s: Tensor, ds: Tensor, z1: Tensor, v1: Tensor
                ) -> tuple[Tensor, Tensor]:
        """``(z, v)`` at ``s`` from ``(z₁, v₁)`` at ``s + ds`` (one evaluation)."""
        tus = self.times(s, ds)
        hh = self._half(ds)
        z_half = z1 - hh * v1
        u = field(tus[1], z_half)
        eta = self.eta
        v = 2 * u - v1 if eta == 1.0 else (v1 - (2 * eta) * u) / (1 - 2 * eta)
        return z_half - hh * v, v

    def commit(self, v: Tensor, out: StepOut, accept) -> Tensor:
        if isinstance(accept, bool):
            return out.carry if accept else v
        return torch.where(accept.view(-1, 1), out.carry, v)


    def interpolate_rows(self, y: Tensor, y1: Tensor, dense, hs: Tensor, theta: Tensor) -> Tensor:
        v, v1 = dense
        return hermite_rows(y, v, y1, v1, hs, theta)
