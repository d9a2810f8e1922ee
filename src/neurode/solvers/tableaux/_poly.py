"""Polynomial helpers for dense-output coefficients (lists indexed by the power of θ)."""

from __future__ import annotations

from fractions import Fraction

__all__ = ["fl", "hermite_dense", "padd", "pmul", "pscale", "rows_from_polys"]

Number = float | Fraction


def fl(xs) -> tuple[float, ...]:
    """The numbers ``xs`` as a tuple of floats (each the double nearest to its exact value)."""
    return tuple(float(x) for x in xs)


def padd(p, q):
    n = max(len(p), len(q))
    return [(p[i] if i < len(p) else 0) + (q[i] if i < len(q) else 0) for i in range(n)]


def pscale(p, s):
    return [s * x for x in p]


def pmul(p, q):
    out = [0] * (len(p) + len(q) - 1)
    for i, x in enumerate(p):
        for j, y in enumerate(q):
            out[i + j] += x * y
    return out


def rows_from_polys(polys: list[list[Number]]) -> list[list[Number]]:
    """Drop the constant term (always 0) and pad: rows of θ^1..θ^P coefficients."""
    P = max(len(p) for p in polys) - 1
    rows = []
    for p in polys:
        assert p[0] == 0, "dense-output polynomials vanish at θ = 0"
        rows.append(list(p[1:]) + [0] * (P - (len(p) - 1)))
    return rows


def hermite_dense(b: tuple[float, ...], fsal: bool) -> tuple[tuple[float, ...], ...]:
    """Cubic Hermite dense output through ``y0, f0, y1, f1`` written as stage weights ``b_j(θ)``.

    ``y(θ) = y0 + h[(3θ²−2θ³) Σ b_j k_j + (θ−2θ²+θ³) k_1 + (θ³−θ²) f1]``, where ``f1`` is the last
    stage for FSAL methods and an extra dense stage otherwise. Third-order accurate.
    """
    S = len(b)
    n = S if fsal else S + 1
    polys = []
    for j in range(n):
        bj = b[j] if j < S else 0.0
        p = pscale([0, 0, 3, -2], bj)
        if j == 0:
            p = padd(p, [0, 1, -2, 1])
        if j == n - 1:
            p = padd(p, [0, 0, -1, 1])
        polys.append(p)
    return tuple(fl(r) for r in rows_from_polys(polys))
