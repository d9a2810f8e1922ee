"""The stage solve of implicit Runge–Kutta methods: Jacobians, simplified Newton, GMRES, and the
implicit-function-theorem gradient of the converged stages.

The unknowns are the stage derivatives ``K`` (``(s, n)`` for a joint state of ``n``):

    R(K) = K − F(t + c·h, y + h·(A ⊗ I)·K) = 0

solved by simplified Newton with ``M = I − h·(A ⊗ J)``, ``J = ∂f/∂y`` at the step's start:
``"autodiff"`` (``torch.func.jacrev``, falling back to differences for fields autodiff cannot see
through), ``"fd"`` (forward differences) or ``"krylov"`` (Jacobian-free Newton–Krylov, GMRES with
``J·v`` by directional differences). Newton's convergence test reads the host every iteration,
so implicit steppers synchronise inside each step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["Jacobian", "NewtonFailedError", "StageSolver", "attach_ift", "gmres"]

_EPS = 2.220446049250313e-16


class NewtonFailedError(Exception):
    """Newton did not converge in a step (internal: the loops turn it into a status)."""

    def __init__(self, iters: int, rate: float):
        super().__init__(f"Newton did not converge ({iters} iterations, rate {rate:.2g})")
        self.iters, self.rate = iters, rate


class Jacobian:
    """``J = ∂f/∂y`` of a field at a point, dense (autodiff or differences) or as ``J·v``.

    ``f(tu, y_flat) -> flat`` is the field on flat ``(n,)`` states at user time ``tu``.
    """

    def __init__(self, f: Callable[[Tensor, Tensor], Tensor], mode: str):
        self.f = f
        self.mode = mode
        self.n_jac = 0
        self.nfe = 0

    def dense(self, tu: Tensor, y: Tensor, f0: Tensor | None = None) -> Tensor:
        self.n_jac += 1
        if self.mode == "autodiff":
            try:
                with torch.enable_grad():
                    jac = torch.func.jacrev(lambda v: self.f(tu, v))(y.detach())
                return jac.detach().contiguous()
            except (RuntimeError, TypeError):
                self.mode = "fd"  # e.g. a field that calls torch.autograd.grad itself
        if f0 is None:
            with torch.no_grad():
                f0 = self.f(tu, y.detach())
            self.nfe += 1
        return self._fd(tu, y, f0)

    def _fd(self, tu: Tensor, y: Tensor, f0: Tensor) -> Tensor:
        flat = y.detach()
        n = flat.numel()
        jac = torch.empty(n, n, dtype=y.dtype, device=y.device)
        eps = math.sqrt(_EPS) if y.dtype in (torch.float64, torch.complex128) else 3e-4
        with torch.no_grad():
            base = f0.detach()
            steps = eps * torch.clamp(flat.abs(), min=1.0)
            for j in range(n):
                yp = flat.clone()
                yp[j] += steps[j]
                jac[:, j] = (self.f(tu, yp) - base) / steps[j]
        self.nfe += n
        return jac

    def matvec(self, tu: Tensor, y: Tensor, f0: Tensor, v: Tensor) -> Tensor:
        """``J·v`` by a directional difference (one evaluation)."""
        vn = float(v.norm())
        if vn == 0.0:
            return torch.zeros_like(v)
        eps = math.sqrt(_EPS) * (1.0 + float(y.norm())) / vn
        self.nfe += 1
        with torch.no_grad():
            return (self.f(tu, y + eps * v) - f0) / eps


def gmres(matvec: Callable[[Tensor], Tensor], rhs: Tensor, tol: float, m: int) -> Tensor:
    """Unrestarted GMRES(m) from zero: ``x`` with ``‖matvec(x) − rhs‖ ≤ tol·‖rhs‖`` (or m steps)."""
    beta = float(rhs.norm())
    if beta == 0.0:
        return torch.zeros_like(rhs)
    dtype = rhs.dtype
    vs = [rhs / beta]
    hmat = torch.zeros(m + 1, m, dtype=dtype, device=rhs.device)
    k_used = 0
    y_ls = None
    for k in range(m):
        w = matvec(vs[k])
        for i in range(k + 1):  # modified Gram–Schmidt
            hik = torch.dot(vs[i].conj(), w)
            hmat[i, k] = hik
            w = w - hik * vs[i]
        hk = float(w.norm())
        hmat[k + 1, k] = hk
        k_used = k + 1
        e1 = torch.zeros(k_used + 1, dtype=dtype, device=rhs.device)
        e1[0] = beta
        y_ls = torch.linalg.lstsq(hmat[:k_used + 1, :k_used], e1.unsqueeze(1)).solution
        res = float((hmat[:k_used + 1, :k_used] @ y_ls - e1.unsqueeze(1)).norm())
        if res <= tol * beta or hk <= 1e-14 * beta:
            break
        vs.append(w / hk)
    basis = torch.stack(vs[:k_used], 1)
    return basis @ y_ls.squeeze(1)


class StageSolver:
    """Simplified Newton for the stage derivatives of one implicit tableau.

    ``f(tu, y_flat) -> flat`` is the field; stage times are given per call as user-time tensors
    (so that perturbed, one-sided evaluations are possible).
    """

    def __init__(self, f: Callable[[Tensor, Tensor], Tensor], a: tuple, max_iters: int,
                 tol: float, jacobian: str, krylov_dim: int = 30):
        self.f = f
        self.a64 = torch.tensor(a, dtype=torch.float64)
        self.s = len(a)
        self.max_iters, self.tol = max_iters, tol
        self.krylov = jacobian == "krylov"
        self.krylov_dim = krylov_dim
        self.jac = Jacobian(f, jacobian)
        self.nfe = 0
        self.n_lu = 0
        self._lu = None  # (h, J, LU factors) for the dense modes

    def amat(self, like: Tensor) -> Tensor:
        return self.a64.to(dtype=like.dtype, device=like.device)

    def stage_values(self, tus: list[Tensor], y: Tensor, h: float, K: Tensor
                     ) -> tuple[Tensor, Tensor]:
        """``Y = y + h A K`` and ``F(t + c h, Y)`` (both ``(s, n)``)."""
        Y = y.unsqueeze(0) + h * (self.amat(K) @ K)
        F = torch.stack([self.f(tus[i], Y[i]) for i in range(self.s)])
        self.nfe += self.s
        return Y, F

    def factor(self, h: float, J: Tensor) -> None:
        n = J.shape[0]
        M = torch.eye(self.s * n, dtype=J.dtype, device=J.device) - h * torch.kron(self.amat(J),
                                                                                   J)
        self._lu = (h, J, torch.linalg.lu_factor(M))
        self.n_lu += 1

    def exact_matrix(self, tus: list[Tensor], y: Tensor, h: float, Y: Tensor) -> Tensor:
        """``∂R/∂K = I − h [a_ij J(t + c_i h, Y_i)]``: the exact Newton matrix at stages ``Y``."""
        s, n = self.s, y.numel()
        a = self.amat(y)
        blocks = [self.jac.dense(tus[i], Y[i]) for i in range(s)]
        M = torch.eye(s * n, dtype=y.dtype, device=y.device)
        for i in range(s):
            for j in range(s):
                M[i * n:(i + 1) * n, j * n:(j + 1) * n] -= h * a[i, j] * blocks[i]
        return M

    def solve(self, tus: list[Tensor], t0u: Tensor, y: Tensor, h: float, f0: Tensor,
              J: Tensor | None, scale: Tensor, exact: bool = False,
              K0: Tensor | None = None) -> tuple[Tensor, int, float]:
        """Newton from ``K0`` (default: ``f0`` per stage); ``(K, iterations, rate)``.

        Raises `NewtonFailedError`. ``exact=False``: simplified Newton with one Jacobian
        ``J`` at ``(t0, y)`` for all stages (one LU per step size). ``exact=True``: full Newton,
        the stage Jacobians re-evaluated at every iterate (the fallback of fixed grids, whose
        step cannot shrink when the frozen Jacobian is a poor model).
        """
        s, n = self.s, y.numel()
        if K0 is not None:
            K = K0.clone()
        elif exact:  # from K = 0 (Y = y): the safe start when h·λ is large
            K = torch.zeros(s, n, dtype=f0.dtype, device=f0.device)
        else:
            K = f0.unsqueeze(0).expand(s, n).clone()
        if not self.krylov and not exact and (self._lu is None or self._lu[0] != h
                                              or self._lu[1] is not J):
            self.factor(h, J)
        a = self.amat(y)
        prev = None
        rate = 0.0
        for it in range(1, self.max_iters + 1):
            Y, F = self.stage_values(tus, y, h, K)
            R = (K - F).reshape(-1)
            if not bool(torch.isfinite(R).all()):
                raise NewtonFailedError(it, math.inf)
            if self.krylov:
                if exact:
                    def mv(v, _a=a, _Y=Y, _F=F):
                        AV = _a @ v.reshape(s, n)
                        JV = torch.stack([self.jac.matvec(tus[i], _Y[i], _F[i], AV[i])
                                          for i in range(s)])
                        return (v.reshape(s, n) - h * JV).reshape(-1)
                else:
                    def mv(v, _a=a):
                        V = v.reshape(s, n)
                        JV = torch.stack([self.jac.matvec(t0u, y, f0, V[j]) for j in range(s)])
                        return (V - h * (_a @ JV)).reshape(-1)

                dK = -gmres(mv, R, 1e-3, self.krylov_dim)
            elif exact:
                M = self.exact_matrix(tus, y, h, Y)
                self.n_lu += 1
                dK = -torch.linalg.solve(M, R.unsqueeze(1)).squeeze(1)
            else:
                dK = -torch.linalg.lu_solve(*self._lu[2], R.unsqueeze(1)).squeeze(1)
            K = K + dK.reshape(s, n)
            dnorm = float(((h * dK.reshape(s, n)).abs() / scale.unsqueeze(0)).pow(2).mean()
                          .sqrt())
            if dnorm == 0.0:
                return K, it, 0.0
            if prev is not None:
                rate = dnorm / prev
                if rate >= 1.0:
                    raise NewtonFailedError(it, rate)
                if rate / (1 - rate) * dnorm < self.tol:
                    return K, it, rate
            elif dnorm < 1e-3 * self.tol:
                return K, it, 0.0
            prev = dnorm
        raise NewtonFailedError(self.max_iters, rate)


def attach_ift(solver: StageSolver, tus: list[Tensor], y: Tensor, h: float, K: Tensor) -> Tensor:
    """``K`` with the implicit-function-theorem derivative attached (value unchanged).

    ``K̃ = K* − (S − S.detach())`` with ``S = M*⁻¹ R(K*)`` where ``R`` is evaluated with a graph
    (through ``y`` and whatever ``f`` closes over) and ``M* = ∂R/∂K`` at ``K*`` uses the exact
    Jacobian at every stage: ``dK̃/dp = −M*⁻¹ ∂R/∂p``.
    """
    s, n = solver.s, y.numel()
    K = K.detach()
    with torch.no_grad():
        Y, _ = solver.stage_values(tus, y.detach(), h, K)
    M = solver.exact_matrix(tus, y.detach(), h, Y)
    _, F = solver.stage_values(tus, y, h, K)
    R = (K - F).reshape(-1)
    S = torch.linalg.solve(M, R.unsqueeze(1)).squeeze(1).reshape(s, n)
    return K - (S - S.detach())
