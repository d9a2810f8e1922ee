"""Continuous normalizing flows (FFJORD) and flow matching.

A CNF moves base samples ``z(0) ~ N(0, I)`` along ``dz/dt = f(t, z)`` to data ``x = z(t1)``;
the density follows the instantaneous change of variables ``d log p(z(t))/dt = −tr(∂f/∂z)``.
``log_prob(x)`` integrates ``[z, c]`` backwards from ``x`` at ``t1`` to ``0`` with ``c' = tr``,
so ``log p(x) = log N(z(0)) + c(0)``. The trace is exact (one vector–Jacobian product per
dimension, for small ``D``) or Hutchinson's ``εᵀ(∂f/∂z)ε`` (one product; ``ε`` Gaussian or
Rademacher, drawn once per solve so the ODE stays an ODE).

Flow matching (Lipman et al. 2023) trains the same field without solving: regress ``f(t, x_t)``
on the conditional optimal-transport velocity ``u_t = x1 − (1 − σ_min) x0`` along
``x_t = (1 − (1 − σ_min) t) x0 + t x1``; then sample or evaluate ``log_prob`` with any solver.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from neurode.errors import InvalidInputError
from neurode.nn.block import GRADIENTS, solve
from neurode.nn.dynamics import check_noise, draw_noise

__all__ = ["CNF", "flow_matching_loss"]


class _Dynamics(nn.Module):
    """``(z, c) ↦ (f(t, z), tr ∂f/∂z)``; made per solve, with that solve's Hutchinson probe."""

    def __init__(self, func: nn.Module, trace: str, eps: Tensor | None):
        super().__init__()
        self.func, self.trace, self.eps = func, trace, eps

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor]):
        z = state[0]
        # a graph through the trace only where autograd records: backprop, or the backward
        # pass of the adjoint / checkpointing (their forward solves run without grad)
        graph = torch.is_grad_enabled()
        with torch.enable_grad():
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            f = self.func(t, z)
            if self.trace == "hutchinson":
                (vjp,) = torch.autograd.grad(f, z, self.eps, create_graph=graph)
                tr = (vjp * self.eps).sum(1)
            else:
                tr = f.new_zeros(f.shape[0])
                for i in range(z.shape[1]):
                    (row,) = torch.autograd.grad(f[:, i].sum(), z, create_graph=graph,
                                                 retain_graph=True)
                    tr = tr + row[:, i]
        if not graph:
            f, tr = f.detach(), tr.detach()
        return f, tr


class CNF(nn.Module):
    """A continuous normalizing flow with field ``func(t, z)``, ``z`` of shape ``(B, dim)``.

    Args:
        func: the vector field (an ``nn.Module``; ``t`` arrives as a 0-d tensor).
        dim: data dimension ``D``.
        t1: length of the flow.
        trace: ``"exact"`` (D products; the default for D ≤ 8 via ``"auto"``) or
            ``"hutchinson"``.
        noise: Hutchinson noise, ``"gaussian"`` or ``"rademacher"``.
        method: the solver (default ``"dopri5"``).
        rtol: its relative tolerance.
        atol: its absolute tolerance.
        options: its options (as for [`neurode.odeint`][]).
        gradient: the gradient method, one of [`GRADIENTS`][neurode.nn.GRADIENTS]
            (``"adjoint"`` by default: O(1) memory).
    """

    def __init__(self, func: nn.Module, dim: int, *, t1: float = 1.0, trace: str = "auto",
                 noise: str = "rademacher", method: str = "dopri5", rtol: float = 1e-5,
                 atol: float = 1e-5, options: dict[str, Any] | None = None,
                 gradient: str = "adjoint"):
        super().__init__()
        if trace == "auto":
            trace = "exact" if dim <= 8 else "hutchinson"
        if trace not in ("exact", "hutchinson"):
            raise InvalidInputError(f"trace must be 'auto', 'exact' or 'hutchinson', got "
                                    f"{trace!r}")
        check_noise(noise)
        if gradient not in GRADIENTS or gradient == "reversible":
            raise InvalidInputError("gradient must be 'backprop', 'adjoint' or 'checkpoint' for "
                                    f"a CNF, got {gradient!r}")
        self.func = func
        self.dim = dim
        self.t1 = float(t1)
        self.trace, self.noise = trace, noise
        self.method, self.rtol, self.atol, self.options = method, rtol, atol, options
        self.gradient = gradient

    def base_log_prob(self, z: Tensor) -> Tensor:
        """``log N(z; 0, I)`` per sample: the log-density of the standard normal base.

        Args:
            z: points of the base space, ``(B, dim)``.

        Returns:
            ``(B,)`` log-densities in nats, ``−(‖z‖² + dim·log 2π) / 2``.
        """
        return -0.5 * (z.pow(2).sum(1) + self.dim * math.log(2 * math.pi))

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(z(0), c(0))``: the base point of ``x`` and ``−∫₀^{t1} tr(∂f/∂z) dt``.

        Integrates ``[z, c]`` backwards from ``z(t1) = x``, ``c(t1) = 0`` to ``t = 0`` with the
        configured solver, trace estimator and gradient method (one Hutchinson probe per
        call). Differentiable w.r.t. ``x`` and ``func``'s parameters.

        Args:
            x: data points, ``(B, dim)``; the times are made in its dtype and on its device.

        Returns:
            ``(z0, c0)``: ``z0`` ``(B, dim)``, the points of the base space that the flow maps
                to ``x``, and ``c0`` ``(B,)``, the log-density change in nats, so that
                ``log p(x) = base_log_prob(z0) + c0``.

        Raises:
            InvalidInputError: ``x`` is not of shape ``(B, dim)``.
        """
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise InvalidInputError(f"x must be (B, {self.dim}), got {tuple(x.shape)}")
        # one probe per solve, held by this solve's dynamics only: a later pass (an evaluation
        # before this one's backward) cannot change what the backward recomputes
        eps = draw_noise(self.noise, x) if self.trace == "hutchinson" else None
        dyn = _Dynamics(self.func, self.trace, eps)
        t = torch.tensor([self.t1, 0.0], dtype=x.dtype, device=x.device)
        zs, cs = solve(dyn, (x, x.new_zeros(x.shape[0])), t, gradient=self.gradient,
                       method=self.method, rtol=self.rtol, atol=self.atol, options=self.options)
        return zs[-1], cs[-1]

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` per sample, by the instantaneous change of variables.

        ``base_log_prob(z0) + c0`` with ``(z0, c0) = inverse(x)``; with ``trace="hutchinson"``
        it is an unbiased estimate (random, one probe per call). Train by minimising
        ``-log_prob(x).mean()``.

        Args:
            x: data points, ``(B, dim)``.

        Returns:
            ``(B,)`` log-densities in nats, differentiable w.r.t. ``func``'s parameters.

        Raises:
            InvalidInputError: ``x`` is not of shape ``(B, dim)``.
        """
        z0, c0 = self.inverse(x)
        return self.base_log_prob(z0) + c0

    def forward(self, x: Tensor) -> Tensor:
        """The same as `log_prob`: ``cnf(x)`` is ``log p(x)`` per sample.

        Args:
            x: data points, ``(B, dim)``.

        Returns:
            ``(B,)`` log-densities in nats.

        Raises:
            InvalidInputError: ``x`` is not of shape ``(B, dim)``.
        """
        return self.log_prob(x)

    def sample(self, n: int, *, z0: Tensor | None = None, method: str | None = None,
               options: dict[str, Any] | None = None) -> Tensor:
        """``n`` samples ``(n, dim)``: base draws pushed through the flow (no trace needed).

        Solves ``dz/dt = func(t, z)`` forward from ``0`` to ``t1`` by backprop (the constructor's
        ``gradient`` is not used), so the result carries a graph when grad is enabled: wrap
        the call in ``torch.no_grad()`` to sample only.

        Args:
            n: number of samples; ignored when ``z0`` is given.
            z0: the base points to push, ``(N, dim)`` (default: ``n`` fresh draws from
                ``N(0, I)`` in the dtype and on the device of ``func``'s first parameter,
                float32 on the default device for a field without parameters).
            method: the solver, overriding the constructor's (default None: that one), e.g.
                ``method="euler", options={"step_size": 0.05}`` for a fixed-step sampler. The
                constructor's ``rtol``/``atol`` are kept.
            options: solver options, replacing (not merged with) the constructor's (default
                None: those).

        Returns:
            ``x = z(t1)``, ``(n, dim)`` (``(N, dim)`` for a given ``z0``), in ``z0``'s dtype.
        """
        p = next(self.func.parameters(), None)
        if z0 is None:
            z0 = torch.randn(n, self.dim, dtype=p.dtype if p is not None else torch.float32,
                             device=p.device if p is not None else None)
        t = torch.tensor([0.0, self.t1], dtype=z0.dtype, device=z0.device)
        return solve(self.func, z0, t, gradient="backprop",
                     method=self.method if method is None else method, rtol=self.rtol,
                     atol=self.atol, options=self.options if options is None else options)[-1]


def flow_matching_loss(func: nn.Module, x1: Tensor, *, sigma_min: float = 1e-4,
                       x0: Tensor | None = None, t: Tensor | None = None) -> Tensor:
    """Conditional flow-matching loss with optimal-transport paths (Lipman et al. 2023).

    ``E_{t, x0, x1} ‖func(t, x_t) − (x1 − (1 − σ_min) x0)‖²`` with ``t ~ U(0, 1)`` per sample (the
    field receives ``t`` of shape ``(B,)``), ``x0 ~ N(0, I)``, ``x_t = (1 − (1 − σ_min) t) x0 +
    t x1``. Mean over the batch of the squared error summed over dimensions.

    Args:
        func: the vector field ``func(t, x)`` being trained, called once with ``t`` of shape
            ``(B,)`` and ``x`` shaped like ``x1``.
        x1: a batch of data samples ``(B, ...)`` (the flow's end at ``t = 1``).
        sigma_min: the width ``σ_min`` of the conditional path at ``t = 1`` (default
            ``1e-4``).
        x0: base samples shaped like ``x1`` (default: fresh draws from ``N(0, I)``).
        t: times ``(B,)`` in ``[0, 1]``, one per sample (default: fresh ``U(0, 1)`` draws in
            ``x1``'s dtype and device).

    Returns:
        The loss, a 0-d tensor (differentiable w.r.t. ``func``'s parameters).
    """
    if x0 is None:
        x0 = torch.randn_like(x1)
    if t is None:
        t = torch.rand(x1.shape[0], dtype=x1.dtype, device=x1.device)
    tt = t.view(-1, *([1] * (x1.ndim - 1)))
    xt = (1 - (1 - sigma_min) * tt) * x0 + tt * x1
    target = x1 - (1 - sigma_min) * x0
    return (func(t, xt) - target).pow(2).flatten(1).sum(1).mean()
