"""Butcher tableaux as data: explicit ([`ButcherTableau`][neurode.ButcherTableau]) and implicit
(`ImplicitTableau`).

A Runge–Kutta method is one of these plus a name in the registry; the steppers
(`neurode.solvers.steppers`) run any of them. Dense output is stored as polynomials
``b_j(θ) = Σ_p dense[j][p] θ^(p+1)`` so that ``y(t0 + θh) = y0 + h Σ_j b_j(θ) k_j`` for
``θ ∈ [0, 1]``; the dense stages ``k_j`` are the method's stages, then ``f(t0+h, y1)`` when the
method is not FSAL, then any extra stages that only dense output needs (``extra_a``/``extra_c``).

Order convention (one for the whole library): ``error_order`` is the order ``p̂`` of the local
error estimate, ``err = O(h^p̂)``; a controller scales steps by ``ratio^(−1/p̂)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from neurode.errors import InvalidInputError

__all__ = ["ButcherTableau", "ImplicitTableau"]


@dataclass(frozen=True, eq=False)
class ButcherTableau:
    """An explicit Runge–Kutta method.

    Attributes:
        name: registry name.
        order: order of the propagated solution ``y1 = y0 + h Σ b_j k_j``.
        c: nodes, length ``S``.
        a: strictly lower-triangular matrix as rows; row ``i`` has ``i`` entries.
        b: weights, length ``S``.
        b_error: weights of the local error estimate ``b - b̂`` (length ``S``, or ``S + 1`` when
            the estimate also uses ``f(t0+h, y1)``); ``None`` for fixed-step methods.
        embedded_order: order of the embedded solution ``b̂`` (for DOP853's blended estimator,
            the order it behaves like).
        fsal: the last stage is ``f(t0+h, y1)`` (first same as last), so it is reused.
        dense: dense-output polynomial coefficients (see module docstring), or ``None``.
        dense_order: order of the dense output.
        extra_c: nodes of the extra stages used only by dense output (empty for most methods).
        extra_a: coefficient rows of those extra stages, one per entry of ``extra_c``; each row
            ranges over the dense stages that precede it.
        b_error_low: a second, lower-order error estimate combined with ``b_error`` as in
            Hairer's DOP853 (``err5² / sqrt(err5² + 0.01 err3²)``); ``None`` for other methods.
        _meta: internal cache of derived quantities (the stability boundary); not part of the
            tableau's data and left out of its ``repr``.

    Raises:
        InvalidInputError: the arrays are inconsistent: ``a`` not strictly lower triangular
            with ``S`` rows, ``b`` not of length ``S``, ``b_error`` without ``embedded_order``, or
            ``extra_a`` and ``extra_c`` of different lengths.
    """

    name: str
    order: int
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_error: tuple[float, ...] | None = None
    embedded_order: int | None = None
    fsal: bool = False
    dense: tuple[tuple[float, ...], ...] | None = None
    dense_order: int | None = None
    extra_c: tuple[float, ...] = ()
    extra_a: tuple[tuple[float, ...], ...] = ()
    b_error_low: tuple[float, ...] | None = None
    _meta: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        S = len(self.c)
        if len(self.a) != S or any(len(row) != i for i, row in enumerate(self.a)):
            raise InvalidInputError(f"tableau {self.name}: a must be strictly lower triangular, "
                                    f"row i holding i entries, for {S} stages")
        if len(self.b) != S:
            raise InvalidInputError(
                f"tableau {self.name}: b has {len(self.b)} entries for {S} stages")
        if self.b_error is not None and self.embedded_order is None:
            raise InvalidInputError(f"tableau {self.name}: an error estimate needs embedded_order")
        if len(self.extra_a) != len(self.extra_c):
            raise InvalidInputError(f"tableau {self.name}: extra_a and extra_c differ in length")

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        return self.b_error is not None

    @property
    def error_uses_f1(self) -> bool:
        """Whether the error estimate needs ``f(t0+h, y1)`` beyond the method's stages."""
        S = self.stages
        return any(len(e) > S and any(x != 0.0 for x in e[S:])
                   for e in (self.b_error, self.b_error_low) if e is not None)

    @property
    def error_order(self) -> int | None:
        """Order ``p̂ = min(order, embedded_order) + 1`` of the local error estimate."""
        if self.embedded_order is None:
            return None
        return min(self.order, self.embedded_order) + 1

    @property
    def n_dense(self) -> int:
        """Number of dense stages: the stages, ``f(t0+h, y1)`` unless FSAL, the extra stages."""
        return self.stages + (0 if self.fsal else 1) + len(self.extra_c)

    def stability(self, z: complex) -> complex:
        """The stability function ``R(z) = 1 + z bᵀ(I − zA)⁻¹𝟙``: ``y1 = R(hλ) y0`` on
        ``y' = λy``.

        Computed by forward substitution (``A`` being strictly lower triangular), so the cost
        is ``O(S²)`` and no matrix is inverted. The method is absolutely stable at ``z``
        when ``|R(z)| ≤ 1``; see `stability_boundary`.

        Args:
            z: the point ``z = hλ`` of the complex plane (step size times eigenvalue); a Python
                ``complex``, or a ``float`` for the real axis.

        Returns:
            ``R(z)``: a ``complex`` (a ``float`` when ``z`` is real), the growth factor of one
                step on ``y' = λy``; ``R(0) = 1``.
        """
        g: list[complex] = []
        for row in self.a:
            g.append(1 + z * sum(a * gj for a, gj in zip(row, g, strict=False)))
        return 1 + z * sum(b * gj for b, gj in zip(self.b, g, strict=True))

    @property
    def stability_boundary(self) -> float:
        """``β``: the stability interval on the negative real axis is ``[−β, 0]``
        (``|R(−x)| ≤ 1`` for ``0 ≤ x ≤ β``); 3.31 for dopri5. The stiffness test compares
        ``h|λ|`` with it. Found by a scan then bisection, once per tableau."""
        if "beta" not in self._meta:
            x, dx = 0.0, 0.01
            while abs(self.stability(-(x + dx))) <= 1.0 + 1e-12 and x < 100.0:
                x += dx
            lo, hi = x, x + dx
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if abs(self.stability(-mid)) <= 1.0 + 1e-12 else (lo, mid)
            self._meta["beta"] = lo
        return self._meta["beta"]

    @property
    def stiffness_pair(self) -> tuple[int, int, tuple[float, ...]]:
        """``(i, j, d)`` for Hairer–Shampine's stiffness test: dense stage ``j`` is
        ``f(t0+h, y1)`` and stage ``i`` another stage at the node nearest 1 (at 1 when the
        method has one), and ``Y_j − Y_i = h Σ_m d_m k_m``; then
        ``h‖k_j − k_i‖ / ‖Y_j − Y_i‖ = ‖k_j − k_i‖ / ‖Σ_m d_m k_m‖`` estimates ``h|λ|`` for the
        dominant eigenvalue ``λ`` of the Jacobian along the step."""
        S = self.stages
        j = S - 1 if self.fsal else S
        cands = [m for m in range(1, S) if m != j]
        i = max(cands, key=lambda m: (self.c[m], m))
        b = list(self.b)
        ai = list(self.a[i]) + [0.0] * (S - len(self.a[i]))
        d = tuple(bm - am for bm, am in zip(b, ai, strict=True))
        return i, j, d


@dataclass(frozen=True)
class ImplicitTableau:
    """``A`` (s×s, full), ``b``, ``c`` and the classical order of an implicit RK method."""

    name: str
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    order: int

    def __post_init__(self):
        s = len(self.b)
        if len(self.c) != s or len(self.a) != s or any(len(r) != s for r in self.a):
            raise InvalidInputError(
                f"implicit tableau {self.name}: A must be {s}×{s} with len(b) = len(c) = {s}")

    @property
    def stages(self) -> int:
        return len(self.b)
