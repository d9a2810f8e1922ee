"""Butcher tableaux of the explicit Runge–Kutta methods, as plain data.

A method is a :class:`ButcherTableau` plus a name in :data:`TABLEAUX`; one generic stepper
(:mod:`neurode.solvers.rk`) runs all of them. Coefficients are from the original papers:
Dormand & Prince (1980) for dopri5 with Shampine's/Hairer's dense output (Hairer, Nørsett &
Wanner, *Solving ODEs I*, II.6), Tsitouras (2011) for tsit5, Bogacki & Shampine (1989) for bosh3,
Fehlberg (1969) for fehlberg2, Hairer's DOP853 for dopri8.

Dense output is stored as polynomials ``b_j(θ) = Σ_p dense[j][p] θ^(p+1)`` so that
``y(t0 + θh) = y0 + h Σ_j b_j(θ) k_j`` for ``θ ∈ [0, 1]``. The dense stages ``k_j`` are the method's
stages, then ``f(t0+h, y1)`` when the method is not FSAL, then any extra stages that only dense
output needs (``extra_a``/``extra_c``; DOP853 has three).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction as F  # noqa: N817

__all__ = ["TABLEAUX", "ButcherTableau", "hermite_dense"]

Number = float | F


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
        error_order: order of the embedded solution ``b̂`` (for DOP853's blended estimator, the
            order it behaves like); the step-size controller uses ``min(order, error_order) + 1``
            as the order of the error estimate.
        fsal: the last stage is ``f(t0+h, y1)`` (first same as last), so it is reused.
        dense: dense-output polynomial coefficients (see module docstring), or ``None``.
        dense_order: order of the dense output.
        extra_c, extra_a: extra stages used only by dense output; ``extra_a`` rows range over the
            dense stages that precede them.
        b_error_low: a second, lower-order error estimate combined with ``b_error`` as in
            Hairer's DOP853 (``err5² / sqrt(err5² + 0.01 err3²)``); ``None`` for other methods.
    """

    name: str
    order: int
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_error: tuple[float, ...] | None = None
    error_order: int | None = None
    fsal: bool = False
    dense: tuple[tuple[float, ...], ...] | None = None
    dense_order: int | None = None
    extra_c: tuple[float, ...] = ()
    extra_a: tuple[tuple[float, ...], ...] = ()
    b_error_low: tuple[float, ...] | None = None
    _meta: dict = field(default_factory=dict, repr=False)

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
    def controller_order(self) -> int:
        """Order ``q + 1`` of the local error estimate, for the step-size exponent ``1/(q+1)``."""
        q = self.order if self.error_order is None else min(self.order, self.error_order)
        return q + 1


def _fl(xs) -> tuple[float, ...]:
    return tuple(float(x) for x in xs)


def _tableau(name, order, c, a, b, b_hat=None, error_order=None, fsal=False, dense=None,
             dense_order=None, **kw) -> ButcherTableau:
    b_error = None
    if b_hat is not None:
        b_error = _fl(bi - bh for bi, bh in zip(b, b_hat, strict=True))
    tab = ButcherTableau(
        name=name, order=order, c=_fl(c), a=tuple(_fl(row) for row in a), b=_fl(b),
        b_error=b_error, error_order=error_order, fsal=fsal,
        dense=None if dense is None else tuple(_fl(r) for r in dense),
        dense_order=dense_order, **kw,
    )
    return tab


# --- polynomial helpers (coefficient lists, index p = power of θ) ---------------------------

def _padd(p, q):
    n = max(len(p), len(q))
    return [(p[i] if i < len(p) else 0) + (q[i] if i < len(q) else 0) for i in range(n)]


def _pscale(p, s):
    return [s * x for x in p]


def _pmul(p, q):
    out = [0] * (len(p) + len(q) - 1)
    for i, x in enumerate(p):
        for j, y in enumerate(q):
            out[i + j] += x * y
    return out


def _rows_from_polys(polys: list[list[Number]]) -> list[list[Number]]:
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
        p = _pscale([0, 0, 3, -2], bj)
        if j == 0:
            p = _padd(p, [0, 1, -2, 1])
        if j == n - 1:
            p = _padd(p, [0, 0, -1, 1])
        polys.append(p)
    return tuple(_fl(r) for r in _rows_from_polys(polys))


# --- fixed-step methods ----------------------------------------------------------------------

EULER = _tableau("euler", 1, c=[0], a=[[]], b=[1])
MIDPOINT = _tableau("midpoint", 2, c=[0, F(1, 2)], a=[[], [F(1, 2)]], b=[0, 1])
HEUN2 = _tableau("heun2", 2, c=[0, 1], a=[[], [1]], b=[F(1, 2), F(1, 2)])
HEUN3 = _tableau("heun3", 3, c=[0, F(1, 3), F(2, 3)], a=[[], [F(1, 3)], [0, F(2, 3)]],
                 b=[F(1, 4), 0, F(3, 4)])
# Kutta's 3/8 rule (torchdiffeq's "rk4").
RK4 = _tableau("rk4", 4, c=[0, F(1, 3), F(2, 3), 1],
               a=[[], [F(1, 3)], [F(-1, 3), 1], [1, -1, 1]],
               b=[F(1, 8), F(3, 8), F(3, 8), F(1, 8)])
RK4_CLASSIC = _tableau("rk4_classic", 4, c=[0, F(1, 2), F(1, 2), 1],
                       a=[[], [F(1, 2)], [0, F(1, 2)], [0, 0, 1]],
                       b=[F(1, 6), F(1, 3), F(1, 3), F(1, 6)])

# --- adaptive methods --------------------------------------------------------------------------

# Heun–Euler 2(1), FSAL form.
_AH_B = [F(1, 2), F(1, 2), 0]
ADAPTIVE_HEUN = _tableau(
    "adaptive_heun", 2, c=[0, 1, 1], a=[[], [1], [F(1, 2), F(1, 2)]], b=_AH_B,
    b_hat=[1, 0, 0], error_order=1, fsal=True, dense=hermite_dense(_fl(_AH_B), True),
    dense_order=2,
)

# Runge–Kutta–Fehlberg 1(2), propagating the second-order solution.
_F2_B = [F(1, 512), F(255, 256), F(1, 512)]
FEHLBERG2 = _tableau(
    "fehlberg2", 2, c=[0, F(1, 2), 1], a=[[], [F(1, 2)], [F(1, 256), F(255, 256)]], b=_F2_B,
    b_hat=[F(1, 256), F(255, 256), 0], error_order=1, fsal=False,
    dense=hermite_dense(_fl(_F2_B), False), dense_order=2,
)

# Bogacki–Shampine 3(2).
_BS_B = [F(2, 9), F(1, 3), F(4, 9), 0]
BOSH3 = _tableau(
    "bosh3", 3, c=[0, F(1, 2), F(3, 4), 1],
    a=[[], [F(1, 2)], [0, F(3, 4)], [F(2, 9), F(1, 3), F(4, 9)]], b=_BS_B,
    b_hat=[F(7, 24), F(1, 4), F(1, 3), F(1, 8)], error_order=2, fsal=True,
    dense=hermite_dense(_fl(_BS_B), True), dense_order=3,
)

# Dormand–Prince 5(4).
_DP_A = [
    [],
    [F(1, 5)],
    [F(3, 40), F(9, 40)],
    [F(44, 45), F(-56, 15), F(32, 9)],
    [F(19372, 6561), F(-25360, 2187), F(64448, 6561), F(-212, 729)],
    [F(9017, 3168), F(-355, 33), F(46732, 5247), F(49, 176), F(-5103, 18656)],
    [F(35, 384), 0, F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84)],
]
_DP_B = [*_DP_A[-1], 0]
_DP_BHAT = [F(5179, 57600), 0, F(7571, 16695), F(393, 640), F(-92097, 339200), F(187, 2100),
            F(1, 40)]
# Hairer's continuous extension of order 4 (dopri5.f, CONTD5):
# y(θ) = y0 + θ r2 + θ(1−θ) r3 + θ²(1−θ) r4 + θ²(1−θ)² r5 with r2 = hΣb k, r3 = h k1 − r2,
# r4 = r2 − h k7 − r3 = h(2Σb k − k1 − k7), r5 = h Σ d k.
_DP_D = [F(-12715105075, 11282082432), 0, F(87487479700, 32700410799),
         F(-10690763975, 1880347072), F(701980252875, 199316789632),
         F(-1453857185, 822651844), F(69997945, 29380423)]


def _dopri5_dense():
    polys = []
    for j in range(7):
        d1 = 1 if j == 0 else 0
        d7 = 1 if j == 6 else 0
        p = _pscale([0, 1], _DP_B[j])                                   # θ b_j
        p = _padd(p, _pscale([0, 1, -1], d1 - _DP_B[j]))                # θ(1−θ)(δ1 − b_j)
        p = _padd(p, _pscale([0, 0, 1, -1], 2 * _DP_B[j] - d1 - d7))    # θ²(1−θ)(2b_j − δ1 − δ7)
        p = _padd(p, _pscale(_pmul([0, 0, 1], [1, -2, 1]), _DP_D[j]))   # θ²(1−θ)² d_j
        polys.append(p)
    return _rows_from_polys(polys)


DOPRI5 = _tableau("dopri5", 5, c=[0, F(1, 5), F(3, 10), F(4, 5), F(8, 9), 1, 1], a=_DP_A,
                  b=_DP_B, b_hat=_DP_BHAT, error_order=4, fsal=True, dense=_dopri5_dense(),
                  dense_order=4)

# Tsitouras 5(4) (Tsitouras 2011, Table 1 and the interpolant b_j(θ) of its appendix).
_TS_C = [0, 0.161, 0.327, 0.9, 0.9800255409045097, 1, 1]
_TS_A = [
    [],
    [0.161],
    [-0.008480655492356989, 0.335480655492357],
    [2.897153057105493, -6.359448489975075, 4.3622954328695815],
    [5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525],
    [5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401,
     -0.028269050394068383],
    [0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081,
     2.324710524099774],
]
_TS_B = [*_TS_A[-1], 0.0]
_TS_BTILDE = [-0.00178001105222577714, -0.0008164344596567469, 0.007880878010261995,
              -0.1447110071732629, 0.5823571654525552, -0.45808210592918697,
              0.015151515151515152]


def _tsit5_dense():
    def quad_roots(s, r1, r2):  # s θ² (θ − r1)(θ − r2)
        return _pscale(_pmul([0, 0, 1], _pmul([-r1, 1], [-r2, 1])), s)

    polys = [
        _pscale(_pmul(_pmul([0, 1], [-1.3299890189751412, 1]),
                      [0.7139816917074209, -1.4364028541716351, 1]), -1.0530884977290216),
        _pscale(_pmul([0, 0, 1], [1.2949852507374631, -2.1966568338249754, 1]), 0.1017),
        _pscale(_pmul([0, 0, 1], [1.57803468208092486, -2.38535645472061657, 1]),
                2.490627285651252793),
        quad_roots(-16.54810288924490272, 1.21712927295533244, 0.61620406037800089),
        quad_roots(47.37952196281928122, 1.203071208372362603, 0.658047292653547382),
        quad_roots(-34.87065786149660974, 1.2, 0.666666666666666667),
        quad_roots(2.5, 1.0, 0.6),
    ]
    return _rows_from_polys(polys)


TSIT5 = ButcherTableau(
    name="tsit5", order=5, c=_fl(_TS_C), a=tuple(_fl(r) for r in _TS_A), b=_fl(_TS_B),
    b_error=_fl(_TS_BTILDE), error_order=4, fsal=True,
    dense=tuple(_fl(r) for r in _tsit5_dense()), dense_order=4,
)


TABLEAUX: dict[str, ButcherTableau] = {
    t.name: t
    for t in (EULER, MIDPOINT, HEUN2, HEUN3, RK4, RK4_CLASSIC, ADAPTIVE_HEUN, FEHLBERG2, BOSH3,
              DOPRI5, TSIT5)
}

# DOP853's large coefficient table lives in its own module; it needs the helpers above.
from neurode.solvers._dop853 import DOP853  # noqa: E402

TABLEAUX[DOP853.name] = DOP853
