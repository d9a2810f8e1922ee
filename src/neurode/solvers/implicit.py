"""Implicit Runge–Kutta methods: fixed-grid (torchdiffeq's names) and adaptive Radau IIA(5).

A method is a tableau (:class:`ImplicitTableau`, data only); one Newton solver serves them all.
The unknowns are the stage derivatives ``K`` (shape ``(s, n)`` for a flat state of ``n``):

    R(K) = K − F(t + c·h, y + h·(A ⊗ I)·K) = 0,        y₁ = y + h·Σ bᵢ Kᵢ

solved by simplified Newton with ``M = I − h·(A ⊗ J)``, ``J = ∂f/∂y`` at the step's start:

* ``jacobian="autodiff"`` (default): ``J`` from ``torch.func.jacrev`` (falls back to finite
  differences for fields that autodiff cannot see through, e.g. the adjoint's augmented field);
* ``jacobian="fd"``: forward differences, ``n`` evaluations;
* ``jacobian="krylov"``: Jacobian-free Newton–Krylov, GMRES on ``M`` with ``J·v`` by directional
  differences, for states too large for a dense ``(s·n)²`` matrix.

Gradients do not unroll the Newton iterations. The converged stages ``K*`` are differentiated by
the implicit function theorem, ``dK*/dp = −(∂R/∂K)⁻¹ ∂R/∂p``: one evaluation of ``R`` with a graph
at ``K*`` and a linear solve with the exact stage Jacobians, arranged so that the value stays
``K*`` (see :func:`_attach_ift`). Backprop through the solve is therefore exact for the discrete
scheme at the cost of ``s`` Jacobians per step, and only when a gradient is wanted.

The adaptive ``radau`` method is Radau IIA of order 5 with the error estimate of Hairer & Wanner
(*Solving ODEs II*, IV.8): ``err = (I − hγ₀J)⁻¹ (γ₀ h f(y₀) + Σ eᵢ Zᵢ)`` with ``Zᵢ = h (A K)ᵢ``,
``1/γ₀ = 3 + 3^{2/3} − 3^{1/3}``, ``e = γ₀·(−13 − 7√6, −13 + 7√6, −1)/3``; the estimate is
refined once through ``f(y₀ + err)`` after a rejection, which keeps it bounded for stiff
components. Steps grow by ``ratio^{-1/4}`` with a safety factor lowered when Newton needed many
iterations; the Jacobian is reused across steps while Newton converges quickly.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from neurode.errors import InvalidInputError, NewtonConvergenceError, NonFiniteStateError
from neurode.solvers.adaptive import (
    AdaptiveConfig,
    DenseRecord,
    LoopResult,
    _fail,
    _fail_max_steps,
    _fail_underflow,
    _finite,
    _fmt,
)
from neurode.solvers.controller import initial_step
from neurode.solvers.fixed import _emit, make_grid
from neurode.solvers.problem import Problem
from neurode.solvers.registry import ADAPTIVE_OPTIONS, FIXED_OPTIONS, MethodSpec, register_method

__all__ = ["IMPLICIT_TABLEAUX", "ImplicitTableau", "NewtonConfig"]

RHS = Callable[[float, Tensor, int], Tensor]
_EPS = 2.220446049250313e-16


@dataclass(frozen=True)
class ImplicitTableau:
    """``A`` (s×s, full), ``b``, ``c`` and the classical order of an implicit RK method."""

    name: str
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    order: int

    @property
    def stages(self) -> int:
        return len(self.b)


_S2, _S3, _S6, _S15 = math.sqrt(2), math.sqrt(3), math.sqrt(6), math.sqrt(15)
_G = 1 - _S2 / 2  # SDIRK2's γ; TR-BDF2's d = γ_TR/2 with γ_TR = 2 − √2 is the same number
_W = _S2 / 4

IMPLICIT_TABLEAUX: dict[str, ImplicitTableau] = {t.name: t for t in (
    ImplicitTableau("implicit_euler", ((1.0,),), (1.0,), (1.0,), 1),
    ImplicitTableau("implicit_midpoint", ((0.5,),), (1.0,), (0.5,), 2),
    ImplicitTableau("trapezoid", ((0.0, 0.0), (0.5, 0.5)), (0.5, 0.5), (0.0, 1.0), 2),
    ImplicitTableau("radauIIA3", ((5 / 12, -1 / 12), (3 / 4, 1 / 4)), (3 / 4, 1 / 4),
                    (1 / 3, 1.0), 3),
    ImplicitTableau("radauIIA5", (
        ((88 - 7 * _S6) / 360, (296 - 169 * _S6) / 1800, (-2 + 3 * _S6) / 225),
        ((296 + 169 * _S6) / 1800, (88 + 7 * _S6) / 360, (-2 - 3 * _S6) / 225),
        ((16 - _S6) / 36, (16 + _S6) / 36, 1 / 9)),
        ((16 - _S6) / 36, (16 + _S6) / 36, 1 / 9), ((4 - _S6) / 10, (4 + _S6) / 10, 1.0), 5),
    ImplicitTableau("gl4", ((1 / 4, 1 / 4 - _S3 / 6), (1 / 4 + _S3 / 6, 1 / 4)), (0.5, 0.5),
                    (0.5 - _S3 / 6, 0.5 + _S3 / 6), 4),
    ImplicitTableau("gl6", (
        (5 / 36, 2 / 9 - _S15 / 15, 5 / 36 - _S15 / 30),
        (5 / 36 + _S15 / 24, 2 / 9, 5 / 36 - _S15 / 24),
        (5 / 36 + _S15 / 30, 2 / 9 + _S15 / 15, 5 / 36)),
        (5 / 18, 4 / 9, 5 / 18), (0.5 - _S15 / 10, 0.5, 0.5 + _S15 / 10), 6),
    ImplicitTableau("sdirk2", ((_G, 0.0), (1 - _G, _G)), (1 - _G, _G), (_G, 1.0), 2),
    ImplicitTableau("trbdf2", ((0.0, 0.0, 0.0), (_G, _G, 0.0), (_W, _W, _G)), (_W, _W, _G),
                    (0.0, 2 * _G, 1.0), 2),
)}

#: Hairer's constants for the Radau IIA(5) error estimate (module docstring).
_MU_REAL = 3 + 3 ** (2 / 3) - 3 ** (1 / 3)
_E_RADAU = ((-13 - 7 * _S6) / 3, (-13 + 7 * _S6) / 3, -1 / 3)


@dataclass
class NewtonConfig:
    """Newton settings: iteration cap, convergence tolerance (in units of the error scale) and
    how the Jacobian is obtained (``"autodiff"``, ``"fd"`` or ``"krylov"``)."""

    max_iters: int = 10
    tol: float = 1e-3
    jacobian: str = "autodiff"
    krylov_dim: int = 30


# --- Jacobians and linear solves -------------------------------------------------------------


class _Jacobian:
    """``J = ∂f/∂y`` at a point, dense (autodiff or forward differences) or as ``J·v``."""

    def __init__(self, f: RHS, mode: str):
        self.f = f
        self.mode = mode
        self.n_jac = 0
        self.nfe = 0

    def dense(self, t: float, y: Tensor, f0: Tensor | None = None) -> Tensor:
        self.n_jac += 1
        flat = y.reshape(-1)
        if self.mode == "autodiff":
            try:
                with torch.enable_grad():
                    jac = torch.func.jacrev(lambda v: self.f(t, v.view_as(y), 0).reshape(-1))(
                        flat.detach())
                return jac.detach().contiguous()
            except (RuntimeError, TypeError):
                self.mode = "fd"  # e.g. a field that calls torch.autograd.grad itself
        if f0 is None:
            with torch.no_grad():
                f0 = self.f(t, y.detach(), 0)
            self.nfe += 1
        return self._fd(t, y, f0)

    def _fd(self, t: float, y: Tensor, f0: Tensor) -> Tensor:
        flat = y.detach().reshape(-1)
        n = flat.numel()
        jac = torch.empty(n, n, dtype=y.dtype, device=y.device)
        eps = math.sqrt(_EPS) if y.dtype in (torch.float64, torch.complex128) else 3e-4
        with torch.no_grad():
            base = f0.detach().reshape(-1)
            steps = eps * torch.clamp(flat.abs(), min=1.0)
            for j in range(n):
                yp = flat.clone()
                yp[j] += steps[j]
                jac[:, j] = (self.f(t, yp.view_as(y), 0).reshape(-1) - base) / steps[j]
        self.nfe += n
        return jac

    def matvec(self, t: float, y: Tensor, f0: Tensor, v: Tensor) -> Tensor:
        """``J·v`` by a directional difference (one evaluation)."""
        vn = float(v.norm())
        if vn == 0.0:
            return torch.zeros_like(v)
        eps = math.sqrt(_EPS) * (1.0 + float(y.norm())) / vn
        self.nfe += 1
        with torch.no_grad():
            return (self.f(t, (y.reshape(-1) + eps * v).view_as(y), 0).reshape(-1)
                    - f0.reshape(-1)) / eps


def _gmres(matvec: Callable[[Tensor], Tensor], rhs: Tensor, tol: float, m: int) -> Tensor:
    """Unrestarted GMRES(m) from zero: ``x`` with ``‖matvec(x) − rhs‖ ≤ tol·‖rhs‖`` (or m steps)."""
    beta = float(rhs.norm())
    if beta == 0.0:
        return torch.zeros_like(rhs)
    dtype = rhs.dtype
    vs = [rhs / beta]
    hmat = torch.zeros(m + 1, m, dtype=dtype)
    k_used = 0
    for k in range(m):
        w = matvec(vs[k])
        for i in range(k + 1):  # modified Gram–Schmidt
            hik = torch.dot(vs[i].conj(), w)
            hmat[i, k] = hik
            w = w - hik * vs[i]
        hk = float(w.norm())
        hmat[k + 1, k] = hk
        k_used = k + 1
        e1 = torch.zeros(k_used + 1, dtype=dtype)
        e1[0] = beta
        y_ls = torch.linalg.lstsq(hmat[:k_used + 1, :k_used], e1.unsqueeze(1)).solution
        res = float((hmat[:k_used + 1, :k_used] @ y_ls - e1.unsqueeze(1)).norm())
        if res <= tol * beta or hk <= 1e-14 * beta:
            break
        vs.append(w / hk)
    basis = torch.stack(vs[:k_used], 1)
    return basis @ y_ls.squeeze(1)


# --- the stage solve -----------------------------------------------------------------------


class _StageSolver:
    """Simplified Newton for the stage derivatives of one tableau."""

    def __init__(self, f: RHS, tab: ImplicitTableau, cfg: NewtonConfig, dtype, device):
        self.f = f
        self.tab = tab
        self.cfg = cfg
        self.a = torch.tensor(tab.a, dtype=torch.float64)
        self.c = tab.c
        self.jac = _Jacobian(f, cfg.jacobian)
        self.dtype, self.device = dtype, device
        self.nfe = 0
        self.n_lu = 0
        self._lu = None  # (h, LU factors) for the dense modes

    def stage_values(self, t: float, y: Tensor, h: float, K: Tensor) -> tuple[Tensor, Tensor]:
        """``Y = y + h A K`` and ``F(t + c h, Y)`` (both ``(s, n)``)."""
        a = self.a.to(dtype=K.dtype, device=K.device)
        Y = y.reshape(1, -1) + h * (a @ K)
        F = torch.stack([self.f(t + ci * h, Y[i].view_as(y), 0).reshape(-1)
                         for i, ci in enumerate(self.c)])
        self.nfe += len(self.c)
        return Y, F

    def factor(self, h: float, J: Tensor) -> None:
        s = self.tab.stages
        n = J.shape[0]
        a = self.a.to(dtype=J.dtype, device=J.device)
        M = torch.eye(s * n, dtype=J.dtype, device=J.device) - h * torch.kron(a, J)
        self._lu = (h, J, torch.linalg.lu_factor(M))
        self.n_lu += 1

    def exact_matrix(self, t: float, y: Tensor, h: float, Y: Tensor) -> Tensor:
        """``∂R/∂K = I − h [a_ij J(t + c_i h, Y_i)]``: the exact Newton matrix at stages ``Y``."""
        s = self.tab.stages
        n = y.numel()
        a = self.a.to(dtype=y.dtype, device=y.device)
        blocks = [self.jac.dense(t + ci * h, Y[i].view_as(y)) for i, ci in enumerate(self.c)]
        M = torch.eye(s * n, dtype=y.dtype, device=y.device)
        for i in range(s):
            for j in range(s):
                M[i * n:(i + 1) * n, j * n:(j + 1) * n] -= h * a[i, j] * blocks[i]
        return M

    def solve(self, t: float, y: Tensor, h: float, f0: Tensor, J: Tensor | None,
              scale: Tensor, exact: bool = False, K0: Tensor | None = None
              ) -> tuple[Tensor | None, int, float]:
        """Newton from ``K0`` (default: ``f0`` per stage).

        Returns ``(K, iterations, rate)``, ``K`` None if Newton failed.

        ``exact=False``: simplified Newton with one Jacobian ``J`` at ``(t, y)`` for all stages
        (one LU per step size). ``exact=True``: full Newton, the stage Jacobians re-evaluated at
        every iterate (a fallback for fixed grids, whose step cannot shrink when the frozen
        Jacobian is a poor model, e.g. a non-autonomous field over a long step).
        """
        s = self.tab.stages
        n = y.numel()
        # Simplified Newton starts from the explicit predictor K = f0; the full-Newton fallback
        # from K = 0 (Y = y), the safe start when h·λ is large and the predictor overshoots.
        if K0 is not None:
            K = K0.clone()
        elif exact:
            K = torch.zeros(s, n, dtype=f0.dtype, device=f0.device)
        else:
            K = f0.reshape(1, -1).expand(s, n).clone()
        krylov = self.cfg.jacobian == "krylov"
        if not krylov and not exact and (self._lu is None or self._lu[0] != h
                                         or self._lu[1] is not J):
            self.factor(h, J)
        a = self.a.to(dtype=y.dtype, device=y.device)
        prev = None
        rate = 0.0
        for it in range(1, self.cfg.max_iters + 1):
            Y, F = self.stage_values(t, y, h, K)
            R = (K - F).reshape(-1)
            if not bool(torch.isfinite(R).all()):
                return None, it, math.inf
            if krylov:
                if exact:  # J(Y_i) applied to (A V)_i, by differences about each stage
                    def mv(v, _a=a, _Y=Y, _F=F):
                        AV = _a @ v.reshape(s, n)
                        JV = torch.stack([self.jac.matvec(t + ci * h, _Y[i].view_as(y), _F[i],
                                                          AV[i])
                                          for i, ci in enumerate(self.c)])
                        return (v.reshape(s, n) - h * JV).reshape(-1)
                else:
                    def mv(v, _a=a):
                        V = v.reshape(s, n)
                        JV = torch.stack([self.jac.matvec(t, y, f0, V[j]) for j in range(s)])
                        return (V - h * (_a @ JV)).reshape(-1)

                dK = -_gmres(mv, R, 1e-3, self.cfg.krylov_dim)
            elif exact:
                M = self.exact_matrix(t, y, h, Y)
                self.n_lu += 1
                dK = -torch.linalg.solve(M, R.unsqueeze(1)).squeeze(1)
            else:
                dK = -torch.linalg.lu_solve(*self._lu[2], R.unsqueeze(1)).squeeze(1)
            K = K + dK.reshape(s, n)
            dnorm = float(((h * dK.reshape(s, n)).abs() / scale.reshape(1, -1)).pow(2).mean()
                          .sqrt())
            if dnorm == 0.0:
                return K, it, 0.0
            if prev is not None:
                rate = dnorm / prev
                if rate >= 1.0:
                    return None, it, rate
                if rate / (1 - rate) * dnorm < self.cfg.tol:
                    return K, it, rate
            elif dnorm < 1e-3 * self.cfg.tol:
                return K, it, 0.0
            prev = dnorm
        return None, self.cfg.max_iters, rate


def _attach_ift(solver: _StageSolver, t: float, y: Tensor, h: float, K: Tensor) -> Tensor:
    """``K`` with the implicit-function-theorem derivative attached (value unchanged).

    ``K̃ = K* − (S − S.detach())`` with ``S = M*⁻¹ R(K*)`` where ``R`` is evaluated with a graph
    (through ``y`` and whatever ``f`` closes over) and ``M* = ∂R/∂K`` at ``K*`` uses the exact
    Jacobian at every stage: ``dK̃/dp = −M*⁻¹ ∂R/∂p``.
    """
    s = solver.tab.stages
    n = y.numel()
    K = K.detach()
    with torch.no_grad():
        Y, _ = solver.stage_values(t, y.detach(), h, K)
    M = solver.exact_matrix(t, y.detach(), h, Y)
    _, F = solver.stage_values(t, y, h, K)
    R = (K - F).reshape(-1)
    S = torch.linalg.solve(M, R.unsqueeze(1)).squeeze(1).reshape(s, n)
    return K - (S - S.detach())


# --- loops ---------------------------------------------------------------------------------


def _newton_config(pb: Problem, adaptive: bool) -> NewtonConfig:
    o = pb.options
    cfg = NewtonConfig(max_iters=int(o.get("max_iters", 7 if adaptive else 10)))
    jac = o.get("jacobian", "autodiff")
    if jac not in ("autodiff", "fd", "krylov"):
        raise InvalidInputError(
            f"options['jacobian'] must be 'autodiff', 'fd' or 'krylov', got {jac!r}")
    cfg.jacobian = jac
    if cfg.max_iters < 1:
        raise InvalidInputError(f"options['max_iters'] must be ≥ 1, got {cfg.max_iters}")
    rtol = float(pb.rtol) if not isinstance(pb.rtol, Tensor) else float(pb.rtol.min())
    # Adaptive: Newton to a fraction of the error tolerance (Hairer). Fixed grid: nothing else
    # bounds the error, so converge to well below the tolerances.
    cfg.tol = max(10 * _EPS / max(rtol, 1e-300), min(0.03, math.sqrt(rtol))) if adaptive \
        else 1e-3
    return cfg


def _scale(y: Tensor, y1: Tensor | None, rtol, atol) -> Tensor:
    """``atol + rtol·max(|y|, |y1|)``, flat and real."""
    mag = y.abs() if y1 is None else torch.maximum(y.abs(), y1.abs())
    return (atol + rtol * mag).reshape(-1)


def _newton_failure(name: str, t: float, h: float, sign: float, iters: int, rate: float):
    msg = (f"{name}: Newton's method did not converge in the step from t={_fmt(t * sign)} with "
           f"dt={h * sign:.3e} ({iters} iterations, contraction rate {rate:.2g}); try a smaller "
           "step_size, options['max_iters'] higher, options['jacobian']='autodiff' (exact), or an "
           "adaptive stiff method ('radau')")
    return NewtonConvergenceError(msg, t=t * sign, dt=h * sign)


def integrate_implicit_fixed(pb: Problem, tab: ImplicitTableau, record_dense: bool = False
                             ) -> LoopResult:
    """Fixed-grid implicit RK over ``make_grid``; outputs as in :func:`integrate_fixed`."""
    from neurode.solvers.api import _grid  # api imports the registry this module fills

    f, y0, t_out = pb.f, pb.y0, pb.t_out
    grid = _grid(pb) if pb.options.get("grid_constructor") is not None else make_grid(
        t_out, pb.options.get("step_size"), None)
    interp = pb.options.get("interp", "linear")
    if interp not in ("linear", "cubic"):
        raise InvalidInputError(f"options['interp'] must be 'linear' or 'cubic', got {interp!r}")
    ncfg = _newton_config(pb, adaptive=False)
    solver = _StageSolver(f, tab, ncfg, y0.dtype, y0.device)
    res = LoopResult(ys=[y0], t_final=t_out[0])
    if record_dense:
        res.dense = DenseRecord()
    if len(t_out) == 1:
        return res
    want_grad = torch.is_grad_enabled() and (y0.requires_grad or _closure_needs_grad(f, t_out[0],
                                                                                      y0))
    b = torch.tensor(tab.b, dtype=torch.float64)
    cb = pb.callbacks
    y = y0
    i_out = 1
    nfe = 0
    for g0, g1 in itertools.pairwise(grid):
        h = g1 - g0
        if cb is not None and cb[0] is not None:
            cb[0](g0, y, h)
        with torch.no_grad():
            f0 = f(g0, y.detach(), 0)
            nfe += 1
            J = None if ncfg.jacobian == "krylov" else solver.jac.dense(g0, y.detach(), f0)
            scale = _scale(y.detach(), None, pb.rtol, pb.atol)
            K, iters, rate = solver.solve(g0, y.detach(), h, f0, J, scale)
            if K is None:  # the frozen Jacobian was a poor model over this step: full Newton
                K, iters, rate = solver.solve(g0, y.detach(), h, f0, J, scale, exact=True)
        if K is None:
            res.error = _newton_failure(tab.name, g0, h, pb.sign, iters, rate)
            res.status, res.message = -4, str(res.error)
            break
        if want_grad:
            K = _attach_ift(solver, g0, y, h, K)
        bb = b.to(dtype=K.dtype, device=K.device)
        y1 = y + h * (bb @ K).view_as(y)
        f1 = None
        f_start = None
        if interp == "cubic" or record_dense:
            f_start = f(g0, y, 0)
            f1 = f(g1, y1, 0)
            nfe += 2
        i_out = _emit(res.ys, t_out, i_out, g0, g1, y, y1, interp, f_start, f1)
        if record_dense:
            res.dense.append(g0, h, y, [f_start, y1, f1])
        if cb is not None and cb[1] is not None:
            cb[1](g0, y, h)
        y = y1
    res.n_steps = res.n_accepted = len(grid) - 1
    res.nfe = nfe + solver.nfe + solver.jac.nfe
    res.n_jac, res.n_lu = solver.jac.n_jac, solver.n_lu
    res.t_final = grid[-1] if res.status == 0 else res.t_final
    return res


def _closure_needs_grad(f: RHS, t: float, y: Tensor) -> bool:
    """Whether ``f``'s output depends on something that requires grad (its parameters)."""
    with torch.enable_grad():
        return f(t, y.detach(), 0).requires_grad


def integrate_radau(pb: Problem, cfg: AdaptiveConfig, record_dense: bool = False) -> LoopResult:
    """Adaptive Radau IIA(5) (module docstring); ``y`` at ``pb.t_out`` from the cubic Hermite
    interpolant of each step (the collocation polynomial's order)."""
    f, y0, t_out = pb.f, pb.y0, pb.t_out
    tab = IMPLICIT_TABLEAUX["radauIIA5"]
    ncfg = _newton_config(pb, adaptive=True)
    solver = _StageSolver(f, tab, ncfg, y0.dtype, y0.device)
    rtol, atol = cfg.rtol, cfg.atol
    res = LoopResult(ys=[y0], t_final=t_out[0])
    if record_dense:
        res.dense = DenseRecord()
    if len(t_out) == 1:
        return res
    t0, t_end = t_out[0], t_out[-1]
    sign = pb.sign
    want_grad = torch.is_grad_enabled() and (y0.requires_grad or _closure_needs_grad(f, t0, y0))
    cb = pb.callbacks
    f0 = f(t0, y0, 0)
    nfe = 1
    if not _finite(y0, f0):
        return _fail(res, -3, NonFiniteStateError, "non-finite value (NaN or inf) in y0 or in "
                     f"func(t, y0) at the initial time t={_fmt(t0 * sign)}", t0 * sign, None)
    if cfg.first_step is None:
        with torch.no_grad():
            h, extra = initial_step(f, t0, y0.detach(), f0.detach(), 4, rtol, atol, cfg.norm)
        nfe += extra
    else:
        h = float(cfg.first_step)
    h = min(cfg.max_step, max(cfg.min_step, h))
    e = torch.tensor(_E_RADAU, dtype=torch.float64)
    a_inv = torch.linalg.inv(solver.a)
    c_nodes = torch.tensor([0.0, *tab.c], dtype=torch.float64)
    prev_Z: Tensor | None = None  # the last accepted step's Y − y, for the next Newton start
    prev_h = 0.0
    err_lu = None  # (h, J, LU of μ/h − J) for the error estimate, reused like the stage LU
    t, y = t0, y0
    J = None
    J_current = False
    n_steps = n_acc = n_rej = 0
    rejected = False
    i_out = 1
    ratio = 0.0
    while t < t_end:
        if n_steps >= cfg.max_num_steps:
            _fail_max_steps(res, cfg.max_num_steps, t, t_end, h, sign)
            break
        hit_end = t + h >= t_end - 4 * _EPS * abs(t_end)
        h_step = t_end - t if hit_end else h
        if h_step <= 8 * _EPS * max(abs(t), 1.0):
            _fail_underflow(res, ratio, t, h_step, sign, "try looser rtol/atol, or check func")
            break
        if cb is not None and cb[0] is not None:
            cb[0](t, y, h_step)
        n_steps += 1
        yd, f0d = y.detach(), f0.detach()
        with torch.no_grad():
            if J is None:
                J = solver.jac.dense(t, yd, f0d) if ncfg.jacobian != "krylov" else None
                J_current = True
            scale0 = _scale(yd, None, rtol, atol)
            K0 = None if prev_Z is None else _extrapolate_stages(prev_Z, prev_h, h_step, c_nodes,
                                                                 a_inv)
            K, iters, rate = solver.solve(t, yd, h_step, f0d, J, scale0, K0=K0)
        if K is None:
            if not J_current and ncfg.jacobian != "krylov":
                J = None  # retry the same step with a fresh Jacobian
                n_steps -= 1
                continue
            n_rej += 1
            rejected = True
            h = 0.5 * h_step
            if h < cfg.min_step:
                res.error = _newton_failure("radau", t, h_step, sign, iters, rate)
                res.status, res.message = -4, str(res.error)
                break
            continue
        with torch.no_grad():
            Z = h_step * (solver.a.to(dtype=K.dtype, device=K.device) @ K)  # (3, n)
            y1d = yd + Z[-1].view_as(yd)
            ZE = (e.to(dtype=K.dtype, device=K.device) @ Z) / h_step
            n = yd.numel()
            if ncfg.jacobian == "krylov":
                def err_solve(r, _t=t, _h=h_step, _y=yd, _f=f0d):
                    def mv(v):
                        return _MU_REAL / _h * v - solver.jac.matvec(_t, _y, _f, v)

                    return _gmres(mv, r, 1e-6, ncfg.krylov_dim)
            else:
                if err_lu is None or err_lu[0] != h_step or err_lu[1] is not J:
                    err_lu = (h_step, J, torch.linalg.lu_factor(
                        _MU_REAL / h_step * torch.eye(n, dtype=J.dtype, device=J.device) - J))
                    solver.n_lu += 1

                def err_solve(r, _lu=err_lu[2]):
                    return torch.linalg.lu_solve(*_lu, r.unsqueeze(1)).squeeze(1)

            err = err_solve(f0d.reshape(-1) + ZE)
            scale = _scale(yd, y1d, rtol, atol)
            ratio = float(cfg.norm((err / scale).view_as(yd)))
            if ratio > 1 and (rejected or n_acc == 0):
                fe = f(t, (yd.reshape(-1) + err).view_as(yd), 0)
                nfe += 1
                err = err_solve(fe.reshape(-1) + ZE)
                ratio = float(cfg.norm((err / scale).view_as(yd)))
        accept = (ratio <= 1.0 or min(h, h_step) <= cfg.min_step) and math.isfinite(ratio)
        safety = cfg.safety * (2 * ncfg.max_iters + 1) / (2 * ncfg.max_iters + iters)
        if accept:
            n_acc += 1
            if want_grad:
                K = _attach_ift(solver, t, y, h_step, K)
                y1 = y + h_step * (torch.tensor(tab.b, dtype=torch.float64).to(
                    dtype=K.dtype, device=K.device) @ K).view_as(y)
            else:
                y1 = y1d
            f1 = f(t + h_step, y1, 0) if want_grad else K[-1].view_as(y)  # c₃ = 1: f(t+h, y₁)
            nfe += 1 if want_grad else 0
            t1 = t_end if hit_end else t + h_step
            i_out = _emit(res.ys, t_out, i_out, t, t1, y, y1, "cubic", f0, f1)
            if record_dense:
                res.dense.append(t, h_step, y, [f0, y1, f1])
            if cb is not None and cb[1] is not None:
                cb[1](t, y, h_step)
            factor = 10.0 if ratio == 0 else min(cfg.ifactor, safety * ratio ** -0.25)
            t, y, f0 = t1, y1, f1
            prev_Z, prev_h = Z, h_step
            rejected = False
            # Keep the Jacobian while Newton contracts fast; refresh it otherwise. With the
            # Jacobian kept, a change of h by less than +20 % (the step was accepted, so any
            # shrink is mild) is not worth new LUs: keep h (Hairer & Wanner's strategy).
            J_current = False
            if rate > 1e-3 and iters > 2:
                J = None
            elif factor < 1.2 and not hit_end:
                factor = 1.0
        else:
            n_rej += 1
            rejected = True
            if cb is not None and cb[2] is not None:
                cb[2](t, y, h_step)
            factor = max(cfg.dfactor, safety * ratio ** -0.25) if math.isfinite(ratio) else 0.5
        h = min(cfg.max_step, max(cfg.min_step, h_step * factor))
    res.n_steps, res.n_accepted, res.n_rejected = n_steps, n_acc, n_rej
    res.nfe = nfe + solver.nfe + solver.jac.nfe
    res.n_jac, res.n_lu = solver.jac.n_jac, solver.n_lu
    res.t_final = t
    res.h_next = h
    return res


def _extrapolate_stages(Z: Tensor, h_old: float, h_new: float, c_nodes: Tensor,
                        a_inv: Tensor) -> Tensor:
    """Newton start for the next step: the previous collocation polynomial extrapolated.

    ``Z`` (``(s, n)``) holds the previous step's ``Y_i − y_n``; the polynomial through
    ``(0, 0)`` and ``(c_i, Z_i)`` (time in units of ``h_old``) is evaluated at the new stage times
    ``1 + c_i h_new/h_old``, shifted by ``Z_s = y_{n+1} − y_n`` and mapped to stage derivatives
    ``K = A⁻¹ Z_new / h_new``.
    """
    nodes = c_nodes.tolist()
    pts = [1.0 + ci * h_new / h_old for ci in nodes[1:]]
    # Lagrange basis of the nodes 1..s (node 0 carries the value 0), at each new point
    L = torch.tensor([[math.prod((p - nodes[m]) / (nodes[j] - nodes[m])
                                 for m in range(len(nodes)) if m != j)
                       for j in range(1, len(nodes))] for p in pts], dtype=torch.float64)
    L = L.to(dtype=Z.dtype, device=Z.device)
    Z_new = L @ Z - Z[-1].unsqueeze(0)
    return (a_inv.to(dtype=Z.dtype, device=Z.device) @ Z_new) / h_new


def _run_fixed(name: str):
    def run(pb: Problem, record_dense: bool) -> LoopResult:
        return integrate_implicit_fixed(pb, IMPLICIT_TABLEAUX[name], record_dense)

    return run


def _run_radau(pb: Problem, record_dense: bool) -> LoopResult:
    from neurode.solvers.api import _adaptive_config

    return integrate_radau(pb, _adaptive_config(pb), record_dense)


_IMPLICIT_FIXED_OPTIONS = (FIXED_OPTIONS - {"perturb"}) | {"max_iters", "jacobian"}
for _name, _tab in IMPLICIT_TABLEAUX.items():
    register_method(MethodSpec(_name, "implicit", _IMPLICIT_FIXED_OPTIONS, order=_tab.order,
                               runner=_run_fixed(_name)))
register_method(MethodSpec("radau", "implicit_adaptive",
                           (ADAPTIVE_OPTIONS - {"step_t", "jump_t"}) | {"max_iters", "jacobian"},
                           order=5, runner=_run_radau))
