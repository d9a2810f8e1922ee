"""The one generic explicit Runge–Kutta stepper, driven by a :class:`ButcherTableau`.

Coefficients are turned into lists of non-zero ``(stage, coefficient)`` pairs once, when the
stepper is built; a step then only multiplies Python floats by ``h`` and issues in-place
``add_`` calls, so no Python object is rebuilt per step beyond the list of stage values.
In-place accumulation into a fresh tensor is autograd-safe: ``add`` saves no inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache

import torch
from torch import Tensor

from neurode.solvers.tableaux import ButcherTableau

__all__ = ["RKStepper", "combine", "get_stepper"]

# Internal vector field: f(t, y, perturb) with t a Python float in forward time and perturb in
# {-1, 0, +1} (evaluate just before / at / just after t, for discontinuities).
RHS = Callable[[float, Tensor, int], Tensor]


def _nonzero(row: Sequence[float]) -> tuple[tuple[int, float], ...]:
    return tuple((j, float(x)) for j, x in enumerate(row) if x != 0.0)


def combine(base: Tensor | None, ks: Sequence[Tensor], coeffs, h: float) -> Tensor:
    """``base + h Σ_j c_j ks[j]`` over the non-zero ``(j, c_j)`` pairs (``base`` may be None)."""
    it = iter(coeffs)
    first = next(it, None)
    if first is None:
        return base if base is not None else torch.zeros_like(ks[0])
    j, a = first
    out = ks[j] * (h * a) if base is None else torch.add(base, ks[j], alpha=h * a)
    for j, a in it:
        out.add_(ks[j], alpha=h * a)
    return out


class RKStepper:
    """Takes steps of one explicit Runge–Kutta method.

    ``step`` returns the stage values (``ks``), the proposed solution ``y1`` and, for FSAL
    methods, ``f(t+h, y1)``. The error estimate and dense output are separate calls, so the loop
    pays only for what it uses.
    """

    def __init__(self, tableau: ButcherTableau):
        tab = tableau
        self.tableau = tab
        self.order = tab.order
        self.c = tab.c
        self.stages = tab.stages
        self.fsal = tab.fsal
        self.a_rows = tuple(_nonzero(row) for row in tab.a)
        self.b = _nonzero(tab.b)
        self.b_error = None if tab.b_error is None else _nonzero(tab.b_error)
        self.b_error_low = None if tab.b_error_low is None else _nonzero(tab.b_error_low)
        self.error_uses_f1 = tab.error_uses_f1
        self.extra_c = tab.extra_c
        self.extra_a = tuple(_nonzero(row) for row in tab.extra_a)
        # Dense stages: the stages, then f1 unless FSAL, then the extra stages.
        self.n_dense_base = tab.stages if tab.fsal else tab.stages + 1
        if tab.dense is None:
            self.dense = None
        else:
            self.dense = tuple(
                (j, tuple(float(x) for x in row)) for j, row in enumerate(tab.dense)
                if any(x != 0.0 for x in row)
            )
        # The last stage whose node is 1 is evaluated "just before" t+h when perturbing.
        self._c_is_one = tuple(ci == 1.0 for ci in tab.c)

    def step(self, f: RHS, t: float, y: Tensor, h: float, k0: Tensor,
             perturb: bool = False) -> tuple[list[Tensor], Tensor]:
        """Evaluate the stages from ``t`` with step ``h``; ``k0 = f(t, y)`` is given (reused).

        Returns ``(ks, y1)``. For FSAL methods ``ks[-1] == f(t+h, y1)``.
        """
        ks = [k0]
        c = self.c
        a_rows = self.a_rows
        yi = y
        for i in range(1, self.stages):
            yi = combine(y, ks, a_rows[i], h)
            p = -1 if (perturb and self._c_is_one[i]) else 0
            ks.append(f(t + c[i] * h, yi, p))
        y1 = yi if self.fsal else combine(y, ks, self.b, h)
        return ks, y1

    def error(self, ks: Sequence[Tensor], h: float) -> tuple[Tensor, Tensor | None]:
        """Local error estimate ``h Σ (b_j − b̂_j) k_j`` (``ks`` includes f1 if the method uses it).

        The second value is a lower-order estimate for methods that blend two (DOP853), else None.
        """
        err = combine(None, ks, self.b_error, h)
        if self.b_error_low is None:
            return err, None
        return err, combine(None, ks, self.b_error_low, h)

    def extra_stages(self, f: RHS, t: float, y: Tensor, h: float, dense_ks: list[Tensor]) -> None:
        """Append the extra stages that dense output needs (DOP853) to ``dense_ks`` in place."""
        for ci, row in zip(self.extra_c, self.extra_a, strict=True):
            dense_ks.append(f(t + ci * h, combine(y, dense_ks, row, h), 0))

    def dense_weights(self, theta: float) -> list[tuple[int, float]]:
        """Weights ``b_j(θ)`` of the dense output, as non-zero ``(stage, weight)`` pairs."""
        out = []
        for j, row in self.dense:
            w = 0.0
            for coef in reversed(row):  # Horner in θ, then one extra factor θ
                w = w * theta + coef
            out.append((j, w * theta))
        return out

    def interpolate(self, y: Tensor, dense_ks: Sequence[Tensor], h: float, theta: float) -> Tensor:
        """``y(t + θh)`` from the continuous extension of the step."""
        return combine(y, dense_ks, self.dense_weights(theta), h)

    def interpolate_many(self, y: Tensor, dense_ks: Sequence[Tensor], h: float,
                         thetas: Sequence[float]) -> list[Tensor]:
        """``y(t + θ_i h)`` for several ``θ_i`` at once: one ``(m, S)·(S, N)`` matrix product."""
        n = len(dense_ks)
        rows = []
        for th in thetas:
            row = [0.0] * n
            for j, w in self.dense_weights(th):
                row[j] = w
            rows.append(row)
        W = torch.tensor(rows, dtype=y.dtype, device=y.device)
        K = torch.stack([k.reshape(-1) for k in dense_ks])
        out = torch.addmm(y.reshape(1, -1), W, K, alpha=h)
        return list(out.view(len(thetas), *y.shape).unbind(0))


@cache
def get_stepper(tableau: ButcherTableau) -> RKStepper:
    """The (cached) stepper for a tableau."""
    return RKStepper(tableau)
