"""Stiffness tests on accepted steps, for ``method="auto"`` (`neurode.solvers.loops.auto`).

Both tests watch ``h|λ|``, the step times the dominant eigenvalue of the Jacobian along the
solution, against the stability boundary ``β`` of the explicit method (its stability interval
is ``[−β, 0]``, [`stability_boundary`][neurode.ButcherTableau.stability_boundary]):

* `StiffnessTest` (explicit steps; Hairer & Wanner, *Solving ODEs II*, IV.2, as in
  DOPRI5's ``nstiff``): ``h|λ| ≈ h‖f(Y_j) − f(Y_i)‖ / ‖Y_j − Y_i‖`` from two stages at the same
  node, free of evaluations. A step-size controller held back by stability keeps ``h|λ|`` at
  ``β``; an accuracy-limited one stays below it. The problem is called stiff after
  ``n_stiff = 15`` tested steps with ``h|λ| > 0.98 β`` with no run of ``n_clear = 6`` steps
  below it in between (every 8th accepted step is tested until one looks stiff, then every one).
* `NonStiffTest` (Radau steps): ``|λ|`` from a few power iterations on the Jacobian the
  implicit stepper already holds; the problem is non-stiff again after ``n_stiff`` consecutive
  accepted steps with ``h|λ| < β / 2`` (the explicit method would be stable at half its
  boundary at the implicit method's own steps; the margin keeps the switch from chattering).

``observe(accepted)`` takes a window's accepted steps ``(prev, out, s0, ds)`` and returns the
index of the step after which to switch, or None; it reads the host once per window.
"""

from __future__ import annotations

import torch
from torch import Tensor

from neurode.solvers.tableau import ButcherTableau

__all__ = ["NonStiffTest", "StiffnessTest"]

N_STIFF = 15
N_CLEAR = 6


class StiffnessTest:
    """Hairer–Shampine's test on an explicit Runge–Kutta method's stages (module docstring).

    As in DOPRI5, the test is not run on every step while nothing is suspected: every
    ``every``-th accepted step is tested, and every step once one has looked stiff, so a
    non-stiff solve pays for the estimate (a few vector operations and a host read) on one step
    in ``every``.
    """

    def __init__(self, tableau: ButcherTableau, n_stiff: int = N_STIFF, n_clear: int = N_CLEAR,
                 every: int = 8):
        self.i, self.j, d = tableau.stiffness_pair
        self.d = [(m, w) for m, w in enumerate(d) if w != 0.0]
        self.beta = tableau.stability_boundary
        self.n_stiff, self.n_clear, self.every = n_stiff, n_clear, every
        self.stiff = self.clear = 0
        self.n_seen = 0  # accepted steps observed

    def _hlam(self, stages) -> Tensor:
        ki, kj = stages.slot(self.i), stages.slot(self.j)
        num = torch.linalg.vector_norm(kj - ki)
        it = iter(self.d)
        m, w = next(it)
        dy = stages.slot(m) * w
        for m, w in it:
            dy = dy.add(stages.slot(m), alpha=w)
        den = torch.linalg.vector_norm(dy)
        return num / den.clamp_min(torch.finfo(den.dtype).tiny)

    def estimates(self, accepted) -> list[float]:
        """``h|λ|`` of each accepted step (one host read)."""
        if not accepted:
            return []
        with torch.no_grad():
            vals = torch.stack([self._hlam(out.dense).real.to(torch.float64)
                                for _, out, _, _ in accepted])
        return vals.tolist()

    def observe(self, accepted) -> int | None:
        first = self.n_seen
        self.n_seen += len(accepted)
        ks = [k for k in range(len(accepted))
              if self.stiff > 0 or (first + k) % self.every == 0]
        for k, hl in zip(ks, self.estimates([accepted[k] for k in ks]), strict=True):
            if hl > 0.98 * self.beta:
                self.clear = 0
                self.stiff += 1
                if self.stiff >= self.n_stiff:
                    return k
            else:
                self.clear += 1
                if self.clear >= self.n_clear:
                    self.stiff = 0
        return None


def spectral_radius(J: Tensor, iters: int = 12) -> float:
    """``|λ|`` of the dominant eigenvalue of the square matrix ``J`` by power iteration from a
    fixed start (the largest of the last three Rayleigh-free growth factors, which also bounds a
    complex pair's modulus well)."""
    n = J.shape[0]
    g = torch.Generator(device="cpu").manual_seed(12345)
    v = torch.randn(n, generator=g, dtype=torch.float64).to(dtype=J.dtype, device=J.device)
    v = v / torch.linalg.vector_norm(v)
    growth = []
    for _ in range(iters):
        w = J @ v
        nw = torch.linalg.vector_norm(w)
        growth.append(nw)
        v = w / nw.clamp_min(torch.finfo(nw.real.dtype).tiny)
    return float(torch.stack(growth[-3:]).real.max())


class NonStiffTest:
    """Is the problem non-stiff again, on Radau's accepted steps (module docstring)?

    ``stepper`` is the `Radau` stepper (its Jacobian
    ``J``, refreshed as Newton needs, is read after each window); ``beta`` the stability
    boundary of the explicit method to switch back to. Without a dense Jacobian (Krylov Newton)
    the test never fires.
    """

    def __init__(self, stepper, beta: float, n_stiff: int = N_STIFF):
        self.stepper = stepper
        self.beta = beta
        self.n_stiff = n_stiff
        self.count = 0
        self.rho: float | None = None
        self._J = None

    def observe(self, accepted) -> int | None:
        J = getattr(self.stepper, "J", None)
        if J is not None and J is not self._J:
            self._J = J
            with torch.no_grad():
                self.rho = spectral_radius(J)
        if self.rho is None:
            return None
        for k, hl in enumerate(ds * self.rho for _, _, _, ds in accepted):
            if hl < 0.5 * self.beta:
                self.count += 1
                if self.count >= self.n_stiff:
                    return k
            else:
                self.count = 0
        return None
