"""Dynamics wrappers: second-order systems and the training-speed regularisers of RNODE.

``SecondOrderFunc`` turns an acceleration ``a(t, x, v)`` into a first-order field over the
concatenated state ``[x, v]``. ``RegularizedODEFunc`` integrates, beside ``z``, each sample's
kinetic energy ``∫‖f‖² dt`` and Jacobian Frobenius norm ``∫‖∂f/∂z‖_F² dt`` (Finlay et al. 2020),
over the tuple state ``(z, kinetic (B,), jacobian (B,))``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from neurode.errors import InvalidInputError

__all__ = ["RegularizedODEFunc", "SecondOrderFunc"]


class SecondOrderFunc(nn.Module):
    """``x'' = accel(t, x, v)`` as ``d[x, v]/dt = [v, accel(t, x, v)]``.

    The state is ``cat([x, v], dim)`` (``dim`` = 1, the feature/channel dimension, by default);
    ``accel`` is called as ``accel(t, x, v)``.
    """

    def __init__(self, accel: nn.Module, dim: int = 1):
        super().__init__()
        self.accel = accel
        self.dim = dim

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        if y.shape[self.dim] % 2:
            raise InvalidInputError(f"SecondOrderFunc: the state's dim {self.dim} holds [x, v] "
                                    f"and must have even size, got {y.shape[self.dim]}")
        x, v = y.chunk(2, self.dim)
        return torch.cat([v, self.accel(t, x, v)], self.dim)


class RegularizedODEFunc(nn.Module):
    """``f`` plus the rates of its regularisers: ``(z, _, _) ↦ (f, ‖f‖², ‖∂f/∂z‖_F²)``.

    Args:
        func: the vector field ``func(t, z)``, ``z`` of shape ``(B, ...)``.
        estimator: ``"exact"`` (one vector–Jacobian product per state dimension) or
            ``"hutchinson"`` (one product with a noise vector ``ε``: ``‖εᵀ ∂f/∂z‖²`` is an
            unbiased estimate of ``‖∂f/∂z‖_F²`` when ``E[εεᵀ] = I``).
        noise: ``"gaussian"`` or ``"rademacher"``; ``ε`` is drawn by :meth:`resample` and kept
            fixed for a whole solve (the estimator must not change inside one ODE).

    Both rates are per sample (summed over the non-batch dimensions).
    """

    def __init__(self, func: nn.Module, estimator: str = "hutchinson", noise: str = "gaussian"):
        super().__init__()
        if estimator not in ("exact", "hutchinson"):
            raise InvalidInputError(f"estimator must be 'exact' or 'hutchinson', got "
                                    f"{estimator!r}")
        if noise not in ("gaussian", "rademacher"):
            raise InvalidInputError(f"noise must be 'gaussian' or 'rademacher', got {noise!r}")
        self.func = func
        self.estimator = estimator
        self.noise = noise
        self.eps: Tensor | None = None

    def resample(self, like: Tensor) -> None:
        """Draw the Hutchinson noise for the next solve (shape and dtype of ``like``)."""
        self.eps = _noise(self.noise, like)

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor, Tensor]):
        z = state[0]
        with torch.enable_grad():
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            f = self.func(t, z)
            kinetic = f.pow(2).flatten(1).sum(1)
            jac = _frobenius(f, z, self.estimator, self.eps)
        return f, kinetic, jac


def _noise(kind: str, like: Tensor) -> Tensor:
    if kind == "gaussian":
        return torch.randn_like(like)
    return torch.randint(0, 2, like.shape, device=like.device).to(like.dtype) * 2 - 1


def _frobenius(f: Tensor, z: Tensor, estimator: str, eps: Tensor | None) -> Tensor:
    """Per-sample ``‖∂f/∂z‖_F²`` (exactly, or Hutchinson's ``‖εᵀ ∂f/∂z‖²``), with a graph."""
    if estimator == "hutchinson":
        if eps is None or eps.shape != f.shape:
            raise InvalidInputError("RegularizedODEFunc: call resample(z0) before the solve "
                                    "(the Hutchinson noise must be fixed for the whole solve)")
        (vjp,) = torch.autograd.grad(f, z, eps, create_graph=True)
        return vjp.pow(2).flatten(1).sum(1)
    B = f.shape[0]
    flat = f.reshape(B, -1)
    total = f.new_zeros(B)
    for i in range(flat.shape[1]):  # row i of the Jacobian, for every sample at once
        (row,) = torch.autograd.grad(flat[:, i].sum(), z, create_graph=True)
        total = total + row.pow(2).flatten(1).sum(1)
    return total
