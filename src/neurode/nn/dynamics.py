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

    Args:
        accel: the acceleration, ``accel(t, x, v)`` with ``x`` and ``v`` the two halves of the
            state along ``dim``; returns a tensor shaped like ``x``.
        dim: the dimension of the state that holds ``[x, v]`` (default 1); its size must be
            even, else the call raises [`InvalidInputError`][neurode.InvalidInputError].
    """

    def __init__(self, accel: nn.Module, dim: int = 1):
        super().__init__()
        self.accel = accel
        self.dim = dim

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        """The first-order field ``[v, accel(t, x, v)]`` of the state ``y = [x, v]``.

        Args:
            t: the time, passed through to ``accel`` unchanged (a 0-d tensor, or ``(B,)`` in
                per-sample mode).
            y: the state ``cat([x, v], dim)``, e.g. ``(B, 2n)`` for positions and velocities
                of size ``n`` with ``dim=1``; ``y.shape[dim]`` must be even.

        Returns:
            ``dy/dt = cat([v, accel(t, x, v)], dim)``, shaped like ``y``.

        Raises:
            InvalidInputError: ``y.shape[dim]`` is odd.
        """
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
        noise: ``"gaussian"`` or ``"rademacher"``; ``ε`` is drawn by `resample` and kept
            fixed for a whole solve (the estimator must not change inside one ODE).
        jacobian: compute the Jacobian rate; ``False`` returns zeros for it at no cost (a
            kinetic-only regulariser needs no vector–Jacobian products).

    Both rates are per sample (summed over the non-batch dimensions). Graphs through the
    products are built only where autograd is recording (backprop, or an adjoint's backward
    pass), so a forward solve without grad costs the products and nothing more.
    """

    def __init__(self, func: nn.Module, estimator: str = "hutchinson", noise: str = "gaussian",
                 jacobian: bool = True):
        super().__init__()
        check_estimator(estimator)
        check_noise(noise)
        self.func = func
        self.estimator = estimator
        self.noise = noise
        self.jacobian = jacobian
        self.eps: Tensor | None = None

    def resample(self, like: Tensor) -> None:
        """Draw the Hutchinson noise for the next solve (shape and dtype of ``like``).

        Call it once before each solve (with the initial state), never inside one: ``ε`` must
        stay fixed for the whole solve. Not needed with ``estimator="exact"`` or
        ``jacobian=False``.

        Args:
            like: a tensor shaped like the state ``z`` (usually ``z0``, ``(B, ...)``); ``ε`` is
                drawn with its shape, dtype and device, from the ``noise`` distribution
                (standard normal, or ±1 with equal odds).
        """
        self.eps = draw_noise(self.noise, like)

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor, Tensor]
                ) -> tuple[Tensor, Tensor, Tensor]:
        """The augmented field: ``f(t, z)`` and the two per-sample regulariser rates.

        Args:
            t: the time, passed to ``func`` (a 0-d tensor, or ``(B,)`` in per-sample mode).
            state: ``(z, kinetic, jacobian)``: ``z`` ``(B, ...)`` and the two running integrals,
                ``(B,)`` each (start them at zeros); only ``z`` is read.

        Returns:
            ``(f, kinetic_rate, jacobian_rate)``: ``f = func(t, z)`` shaped like ``z``,
                ``‖f‖²`` ``(B,)`` and ``‖∂f/∂z‖_F²`` ``(B,)`` (exact or Hutchinson's estimate;
                zeros with ``jacobian=False``), the norms summed over the non-batch dimensions.

        Raises:
            InvalidInputError: ``estimator="hutchinson"`` (and ``jacobian=True``) but
                `resample` was not called, or its noise is not shaped like ``f``.
        """
        z = state[0]
        if not self.jacobian:
            f = self.func(t, z)
            kinetic = f.pow(2).flatten(1).sum(1)
            return f, kinetic, torch.zeros_like(kinetic)
        graph = torch.is_grad_enabled()
        with torch.enable_grad():
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            f = self.func(t, z)
            jac = _frobenius(f, z, self.estimator, self.eps, graph)
        if not graph:
            f = f.detach()
        return f, f.pow(2).flatten(1).sum(1), jac


def check_estimator(estimator: str) -> None:
    if estimator not in ("exact", "hutchinson"):
        raise InvalidInputError(f"estimator must be 'exact' or 'hutchinson', got {estimator!r}")


def check_noise(noise: str) -> None:
    if noise not in ("gaussian", "rademacher"):
        raise InvalidInputError(f"noise must be 'gaussian' or 'rademacher', got {noise!r}")


def draw_noise(kind: str, like: Tensor) -> Tensor:
    """Hutchinson probe shaped like ``like``: standard normal, or ±1 with equal odds."""
    if kind == "gaussian":
        return torch.randn_like(like)
    return torch.randint(0, 2, like.shape, device=like.device).to(like.dtype) * 2 - 1


def _frobenius(f: Tensor, z: Tensor, estimator: str, eps: Tensor | None,
               graph: bool) -> Tensor:
    """Per-sample ``‖∂f/∂z‖_F²`` (exactly, or Hutchinson's ``‖εᵀ ∂f/∂z‖²``); differentiable
    when ``graph``."""
    if estimator == "hutchinson":
        if eps is None or eps.shape != f.shape:
            raise InvalidInputError("RegularizedODEFunc: call resample(z0) before the solve "
                                    "(the Hutchinson noise must be fixed for the whole solve)")
        (vjp,) = torch.autograd.grad(f, z, eps, create_graph=graph, retain_graph=True,
                                     allow_unused=True)
        return f.new_zeros(f.shape[0]) if vjp is None else vjp.pow(2).flatten(1).sum(1)
    B = f.shape[0]
    flat = f.reshape(B, -1)
    total = f.new_zeros(B)
    for i in range(flat.shape[1]):  # row i of the Jacobian, for every sample at once
        (row,) = torch.autograd.grad(flat[:, i].sum(), z, create_graph=graph, retain_graph=True,
                                     allow_unused=True)
        if row is not None:  # None: f does not depend on z
            total = total + row.pow(2).flatten(1).sum(1)
    return total
