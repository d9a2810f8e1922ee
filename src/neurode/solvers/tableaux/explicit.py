"""Butcher tableaux of the explicit Runge–Kutta methods, as plain data.

Coefficients are from the original papers: Dormand & Prince (1980) for dopri5 with
Shampine's/Hairer's dense output (Hairer, Nørsett & Wanner, *Solving ODEs I*, II.6), Tsitouras
(2011) for tsit5, Bogacki & Shampine (1989) for bosh3, Fehlberg (1969) for fehlberg2. DOP853 is in
`neurode.solvers.tableaux.dop853`. See `neurode.solvers.tableau` for the layout.
"""

from __future__ import annotations

from fractions import Fraction as F  # noqa: N817

from neurode.solvers.tableau import ButcherTableau
from neurode.solvers.tableaux._poly import (
    fl,
    hermite_dense,
    padd,
    pmul,
    pscale,
    rows_from_polys,
)

__all__ = ["ADAPTIVE_HEUN", "BOSH3", "DOPRI5", "EULER", "FEHLBERG2", "HEUN2", "HEUN3",
           "MIDPOINT", "RK4", "RK4_CLASSIC", "TSIT5"]


def _tableau(name, order, c, a, b, b_hat=None, embedded_order=None, fsal=False, dense=None,
             dense_order=None, **kw) -> ButcherTableau:
    b_error = None
    if b_hat is not None:
        b_error = fl(bi - bh for bi, bh in zip(b, b_hat, strict=True))
    return ButcherTableau(
        name=name, order=order, c=fl(c), a=tuple(fl(row) for row in a), b=fl(b),
        b_error=b_error, embedded_order=embedded_order, fsal=fsal,
        dense=None if dense is None else tuple(fl(r) for r in dense),
        dense_order=dense_order, **kw,
    )


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
    b_hat=[1, 0, 0], embedded_order=1, fsal=True, dense=hermite_dense(fl(_AH_B), True),
    dense_order=2,
)

# Runge–Kutta–Fehlberg 1(2), propagating the second-order solution.
_F2_B = [F(1, 512), F(255, 256), F(1, 512)]
FEHLBERG2 = _tableau(
    "fehlberg2", 2, c=[0, F(1, 2), 1], a=[[], [F(1, 2)], [F(1, 256), F(255, 256)]], b=_F2_B,
    b_hat=[F(1, 256), F(255, 256), 0], embedded_order=1, fsal=False,
    dense=hermite_dense(fl(_F2_B), False), dense_order=2,
)

# Bogacki–Shampine 3(2).
_BS_B = [F(2, 9), F(1, 3), F(4, 9), 0]
BOSH3 = _tableau(
    "bosh3", 3, c=[0, F(1, 2), F(3, 4), 1],
    a=[[], [F(1, 2)], [0, F(3, 4)], [F(2, 9), F(1, 3), F(4, 9)]], b=_BS_B,
    b_hat=[F(7, 24), F(1, 4), F(1, 3), F(1, 8)], embedded_order=2, fsal=True,
    dense=hermite_dense(fl(_BS_B), True), dense_order=3,
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
        p = pscale([0, 1], _DP_B[j])                                   # θ b_j
        p = padd(p, pscale([0, 1, -1], d1 - _DP_B[j]))                # θ(1−θ)(δ1 − b_j)
        p = padd(p, pscale([0, 0, 1, -1], 2 * _DP_B[j] - d1 - d7))    # θ²(1−θ)(2b_j − δ1 − δ7)
        p = padd(p, pscale(pmul([0, 0, 1], [1, -2, 1]), _DP_D[j]))   # θ²(1−θ)² d_j
        polys.append(p)
    return rows_from_polys(polys)


DOPRI5 = _tableau("dopri5", 5, c=[0, F(1, 5), F(3, 10), F(4, 5), F(8, 9), 1, 1], a=_DP_A,
                  b=_DP_B, b_hat=_DP_BHAT, embedded_order=4, fsal=True, dense=_dopri5_dense(),
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
        return pscale(pmul([0, 0, 1], pmul([-r1, 1], [-r2, 1])), s)

    polys = [
        pscale(pmul(pmul([0, 1], [-1.3299890189751412, 1]),
                      [0.7139816917074209, -1.4364028541716351, 1]), -1.0530884977290216),
        pscale(pmul([0, 0, 1], [1.2949852507374631, -2.1966568338249754, 1]), 0.1017),
        pscale(pmul([0, 0, 1], [1.57803468208092486, -2.38535645472061657, 1]),
                2.490627285651252793),
        quad_roots(-16.54810288924490272, 1.21712927295533244, 0.61620406037800089),
        quad_roots(47.37952196281928122, 1.203071208372362603, 0.658047292653547382),
        quad_roots(-34.87065786149660974, 1.2, 0.666666666666666667),
        quad_roots(2.5, 1.0, 0.6),
    ]
    return rows_from_polys(polys)


TSIT5 = ButcherTableau(
    name="tsit5", order=5, c=fl(_TS_C), a=tuple(fl(r) for r in _TS_A), b=fl(_TS_B),
    b_error=fl(_TS_BTILDE), embedded_order=4, fsal=True,
    dense=tuple(fl(r) for r in _tsit5_dense()), dense_order=4,
)
