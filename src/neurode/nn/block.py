"""``ODEBlock``: a layer that returns the solution of ``dz/dt = f(t, z)`` from its input.

The gradient method is a constructor argument: ``"backprop"`` (through the solver),
``"adjoint"`` (O(1) memory), ``"checkpoint"`` (ACA: backprop-exact, O(steps·state)) or
``"reversible"`` (MALI/ALF, O(1) memory and exact for its discretisation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from neurode.errors import InvalidInputError
from neurode.gradients import odeint_adjoint, odeint_checkpoint, odeint_reversible
from neurode.nn.dynamics import RegularizedODEFunc, check_estimator, check_noise
from neurode.solvers import odeint

__all__ = ["GRADIENTS", "ODEBlock", "solve"]

GRADIENTS = ("backprop", "adjoint", "checkpoint", "reversible")


def solve(func: nn.Module, y0: Tensor | tuple[Tensor, ...], t: Tensor, *, gradient: str = "adjoint",
          method: str | None = None, rtol: float = 1e-3, atol: float = 1e-3,
          options: dict[str, Any] | None = None) -> Tensor | tuple[Tensor, ...]:
    """``odeint`` with the gradient method named by ``gradient`` (one of
    [`GRADIENTS`][neurode.nn.GRADIENTS]).

    Args:
        func: the vector field ``func(t, y)``, an ``nn.Module``: every gradient method but
            ``"backprop"`` differentiates w.r.t. ``func.parameters()``.
        y0: initial state as for [`neurode.odeint`][] (a tensor or a tuple of tensors).
        t: output times as for [`neurode.odeint`][]; ``t[0]`` is the initial time.
        gradient: ``"backprop"`` ([`neurode.odeint`][]), ``"adjoint"``
            ([`neurode.odeint_adjoint`][], the default), ``"checkpoint"``
            ([`neurode.odeint_checkpoint`][]) or ``"reversible"``
            ([`neurode.odeint_reversible`][]).
        method: the solver (default ``"dopri5"``; ``"alf"`` with ``gradient="reversible"``,
            the only method it supports).
        rtol: relative tolerance of adaptive methods (default ``1e-3``, looser than
            [`neurode.odeint`][]'s, as suits training).
        atol: absolute tolerance of adaptive methods (default ``1e-3``).
        options: solver options as for [`neurode.odeint`][].

    Returns:
        As [`neurode.odeint`][]: ``y`` at every time in ``t``, ``(len(t), *y0.shape)``.

    Raises:
        InvalidInputError: ``gradient`` is not one of
            [`GRADIENTS`][neurode.nn.GRADIENTS], or a bad argument of the solver called.
    """
    if gradient == "backprop":
        return odeint(func, y0, t, rtol=rtol, atol=atol, method=method, options=options)
    if gradient == "adjoint":
        return odeint_adjoint(func, y0, t, rtol=rtol, atol=atol, method=method, options=options,
                              adjoint_params=tuple(func.parameters()))
    if gradient == "checkpoint":
        return odeint_checkpoint(func, y0, t, rtol=rtol, atol=atol, method=method,
                                 options=options, adjoint_params=tuple(func.parameters()))
    if gradient == "reversible":
        return odeint_reversible(func, y0, t, rtol=rtol, atol=atol,
                                 method="alf" if method is None else method, options=options,
                                 adjoint_params=tuple(func.parameters()))
    raise InvalidInputError(f"gradient must be one of {', '.join(GRADIENTS)}, got {gradient!r}")


class _Counting(nn.Module):
    """Wraps ``func`` to count its evaluations (its parameters stay ``func``'s)."""

    def __init__(self, func: nn.Module):
        super().__init__()
        self.func = func
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return self.func(t, y)


class ODEBlock(nn.Module):
    """Drop-in layer ``x ↦ z(t1)`` with ``z(t0) = x`` and ``dz/dt = func(t, z)``.

    Args:
        func: the vector field, an ``nn.Module`` ``func(t, z)`` (its parameters are trained).
        t: integration times; ``(t0, t1)`` by default ``(0, 1)``. With more than two times and
            ``return_trajectory=True`` the layer returns ``z`` at all of them, ``(T, *x.shape)``.
        method: the solver (default dopri5; alf with ``gradient="reversible"``, the one method
            it inverts).
        rtol: relative tolerance of adaptive methods.
        atol: absolute tolerance of adaptive methods.
        options: solver options (as for [`neurode.odeint`][]).
        gradient: ``"backprop" | "adjoint" | "checkpoint" | "reversible"``.
        augment_dim: Dupont et al.'s augmented neural ODE: this many zero channels (dim 1) are
            appended to ``x`` before solving, and kept in the output.
        return_trajectory: return every time in ``t`` instead of the last.
        kinetic_weight: weight of RNODE's kinetic-energy term (Finlay et al. 2020): the
            per-sample integral of ``‖f‖²`` is solved alongside ``z`` and ``regularization``
            holds the weighted batch mean after each forward pass, to be added to the loss.
        jacobian_weight: weight of RNODE's Jacobian term, the integral of ``‖∂f/∂z‖_F²``
            (solved and reported like the kinetic term).
        estimator: the Frobenius-norm estimator, ``"hutchinson"`` or ``"exact"`` (small states).
        noise: the probe distribution of the Hutchinson estimator, ``"gaussian"`` or
            ``"rademacher"``.

    After a forward pass, `nfe_forward` is the number of evaluations it took, and after
    the backward pass `nfe_backward` (evaluations since the end of the forward pass).
    """

    def __init__(self, func: nn.Module, t: Sequence[float] | Tensor = (0.0, 1.0), *,
                 method: str | None = None, rtol: float = 1e-3, atol: float = 1e-3,
                 gradient: str = "adjoint",
                 options: dict[str, Any] | None = None, augment_dim: int = 0,
                 return_trajectory: bool = False, kinetic_weight: float = 0.0,
                 jacobian_weight: float = 0.0, estimator: str = "hutchinson",
                 noise: str = "gaussian"):
        super().__init__()
        if gradient not in GRADIENTS:
            raise InvalidInputError(
                f"gradient must be one of {', '.join(GRADIENTS)}, got {gradient!r}")
        if augment_dim < 0:
            raise InvalidInputError(f"augment_dim must be ≥ 0, got {augment_dim}")
        check_estimator(estimator)
        check_noise(noise)
        self.func = _Counting(func)
        # Python floats: the tensor is made in the input's dtype at each call, so float64
        # inputs get float64 times (a float32 buffer would put t1 = 0.1 off by 1.5e-9)
        self.times = tuple(float(v) for v in torch.as_tensor(t, dtype=torch.float64).flatten())
        if len(self.times) < 2:
            raise InvalidInputError("t needs at least two times (t0, t1)")
        if method is None:
            method = "alf" if gradient == "reversible" else "dopri5"
        self.method, self.rtol, self.atol = method, rtol, atol
        self.gradient = gradient
        self.options = options
        self.augment_dim = augment_dim
        self.return_trajectory = return_trajectory
        self._nfe_after_forward = 0
        self.nfe_forward = 0
        self.kinetic_weight, self.jacobian_weight = float(kinetic_weight), float(jacobian_weight)
        self.estimator, self.noise = estimator, noise
        self.regularization: Tensor | None = None

    @property
    def nfe_backward(self) -> int:
        """Evaluations since the end of the last forward pass (the backward pass's, once it ran)."""
        return self.func.nfe - self._nfe_after_forward

    def forward(self, x: Tensor) -> Tensor:
        """Solve from ``z(t0) = x`` (zero-padded with ``augment_dim`` channels) to ``t1``.

        The times are made in ``x``'s (real) dtype and on its device. Sets `nfe_forward` and,
        with a non-zero ``kinetic_weight`` or ``jacobian_weight``, ``regularization`` (a 0-d
        tensor: the weighted batch mean of the integrated regularisers, to add to the loss;
        otherwise it keeps its previous value, ``None`` at first).

        Args:
            x: the initial state, ``(B, C, ...)`` (e.g. ``(B, D)`` features or
                ``(B, C, H, W)`` feature maps): whatever ``func(t, z)`` accepts. With
                ``augment_dim > 0`` it needs a batch and a channel dimension (the zeros go on
                dim 1); the regularisers need a leading batch dimension.

        Returns:
            ``z(t1)``, ``(B, C + augment_dim, ...)``; with ``return_trajectory=True``, ``z`` at
                every time of ``t``, ``(T, B, C + augment_dim, ...)``.

        Raises:
            InvalidInputError: a bad argument of the solver (see [`neurode.odeint`][]).
            SolverError: the integration failed (a subclass names why).
        """
        if self.augment_dim:
            pad = x.new_zeros(x.shape[0], self.augment_dim, *x.shape[2:])
            x = torch.cat([x, pad], 1)
        start = self.func.nfe
        real = x.real.dtype if x.is_complex() else x.dtype
        t = torch.tensor(self.times, dtype=real if real.is_floating_point else None,
                         device=x.device)
        if not (self.kinetic_weight or self.jacobian_weight):
            zs = solve(self.func, x, t, gradient=self.gradient, method=self.method,
                       rtol=self.rtol, atol=self.atol, options=self.options)
        else:
            # built per call, noise included, so that a pass in between (an evaluation under
            # no_grad) cannot change what this pass's backward recomputes
            reg = RegularizedODEFunc(self.func, self.estimator, self.noise,
                                     jacobian=self.jacobian_weight != 0)
            reg.resample(x)
            zero = x.new_zeros(x.shape[0])
            zs, kin, jac = solve(reg, (x, zero, zero.clone()), t, gradient=self.gradient,
                                 method=self.method, rtol=self.rtol, atol=self.atol,
                                 options=self.options)
            self.regularization = (self.kinetic_weight * kin[-1]
                                   + self.jacobian_weight * jac[-1]).mean()
        self._nfe_after_forward = self.func.nfe
        self.nfe_forward = self.func.nfe - start
        return zs if self.return_trajectory else zs[-1]
