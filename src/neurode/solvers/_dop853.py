"""Coefficients of Hairer's DOP853: the explicit Runge–Kutta method 8(5,3) of Dormand & Prince
with the 7th-order continuous extension (Hairer, Nørsett & Wanner, *Solving ODEs I*, II.10;
``dop853.f``).

Each coefficient matrix row is a ``{column: value}`` map of its nonzero entries; stage indices
are 0-based. The published 30-digit decimals are written out in full, so each float is the double
nearest to the published value.

Dense stages (16): the 12 stages, ``f(t0 + h, y1)`` (index 12; DOP853 is not FSAL), and three
extra stages (13–15) evaluated only for dense output. Hairer writes the interpolant as

    y(t0 + θh) = y0 + θ(r1 + (1−θ)(r2 + θ(r3 + (1−θ)(r4 + θ(r5 + (1−θ)(r6 + θ r7))))))

with ``r1 = Δy = hΣ b_j k_j``, ``r2 = h k_0 − Δy``, ``r3 = 2Δy − h(k_0 + k_12)`` and
``r4..r7 = h Σ_j d[m][j] k_j``. :func:`_dense_polys` expands this into the per-stage polynomials
``b_j(θ)`` that :class:`~neurode.solvers.tableaux.ButcherTableau` stores.

Error estimates: ``b_error`` is ``b − b̂₅`` (embedded 5th-order weights) and ``b_error_low`` is
``b − b̂₃`` (3rd-order weights on stages 0, 8, 11). Hairer's combined estimate
``err5² / sqrt(err5² + 0.01 err3²)`` behaves like ``O(h⁸)``, so the step-size controller uses the
exponent 1/8, i.e. ``error_order = 7``.
"""

from __future__ import annotations

from fractions import Fraction

from neurode.solvers import tableaux as _tableaux
from neurode.solvers.tableaux import ButcherTableau, _padd, _pmul, _pscale, _rows_from_polys

__all__ = ["DOP853"]

_S = 12  # stages of the method
_F1 = 12  # dense-stage index of f(t0 + h, y1)
_N_DENSE = 16

# Nodes. c1..c4 involve √6: c1 = (12 − 2√6)/135, c2 = (6 − √6)/45, c3 = (6 − √6)/30,
# c4 = (6 + √6)/30.
_C: tuple[float | Fraction, ...] = (
    0,
    5.26001519587677318785587544488e-2,
    7.89002279381515978178381316732e-2,
    1.18350341907227396726757197510e-1,
    2.81649658092772603273242802490e-1,
    Fraction(1, 3),
    Fraction(1, 4),
    Fraction(4, 13),
    Fraction(127, 195),
    Fraction(3, 5),
    Fraction(6, 7),
    1,
)
_EXTRA_C: tuple[Fraction, ...] = (Fraction(1, 10), Fraction(1, 5), Fraction(7, 9))

# Rows 1..11 of the stage matrix (row 0 is empty).
_A: tuple[dict[int, float], ...] = (
    {  # stage 1
        0: 5.26001519587677318785587544488e-2,
    },
    {  # stage 2
        0: 1.97250569845378994544595329183e-2,
        1: 5.91751709536136983633785987549e-2,
    },
    {  # stage 3
        0: 2.95875854768068491816892993775e-2,
        2: 8.87627564304205475450678981324e-2,
    },
    {  # stage 4
        0: 2.41365134159266685502369798665e-1,
        2: -8.84549479328286085344864962717e-1,
        3: 9.24834003261792003115737966543e-1,
    },
    {  # stage 5
        0: 3.7037037037037037037037037037e-2,
        3: 1.70828608729473871279604482173e-1,
        4: 1.25467687566822425016691814123e-1,
    },
    {  # stage 6
        0: 3.7109375e-2,
        3: 1.70252211019544039314978060272e-1,
        4: 6.02165389804559606850219397283e-2,
        5: -1.7578125e-2,
    },
    {  # stage 7
        0: 3.70920001185047927108779319836e-2,
        3: 1.70383925712239993810214054705e-1,
        4: 1.07262030446373284651809199168e-1,
        5: -1.53194377486244017527936158236e-2,
        6: 8.27378916381402288758473766002e-3,
    },
    {  # stage 8
        0: 6.24110958716075717114429577812e-1,
        3: -3.36089262944694129406857109825,
        4: -8.68219346841726006818189891453e-1,
        5: 2.75920996994467083049415600797e1,
        6: 2.01540675504778934086186788979e1,
        7: -4.34898841810699588477366255144e1,
    },
    {  # stage 9
        0: 4.77662536438264365890433908527e-1,
        3: -2.48811461997166764192642586468,
        4: -5.90290826836842996371446475743e-1,
        5: 2.12300514481811942347288949897e1,
        6: 1.52792336328824235832596922938e1,
        7: -3.32882109689848629194453265587e1,
        8: -2.03312017085086261358222928593e-2,
    },
    {  # stage 10
        0: -9.3714243008598732571704021658e-1,
        3: 5.18637242884406370830023853209,
        4: 1.09143734899672957818500254654,
        5: -8.14978701074692612513997267357,
        6: -1.85200656599969598641566180701e1,
        7: 2.27394870993505042818970056734e1,
        8: 2.49360555267965238987089396762,
        9: -3.0467644718982195003823669022,
    },
    {  # stage 11
        0: 2.27331014751653820792359768449,
        3: -1.05344954667372501984066689879e1,
        4: -2.00087205822486249909675718444,
        5: -1.79589318631187989172765950534e1,
        6: 2.79488845294199600508499808837e1,
        7: -2.85899827713502369474065508674,
        8: -8.87285693353062954433549289258,
        9: 1.23605671757943030647266201528e1,
        10: 6.43392746015763530355970484046e-1,
    },
)

# Weights of the 8th-order solution (zero on stages 1–4).
_B: dict[int, float] = {
    0: 5.42937341165687622380535766363e-2,
    5: 4.45031289275240888144113950566,
    6: 1.89151789931450038304281599044,
    7: -5.8012039600105847814672114227,
    8: 3.1116436695781989440891606237e-1,
    9: -1.52160949662516078556178806805e-1,
    10: 2.01365400804030348374776537501e-1,
    11: 4.47106157277725905176885569043e-2,
}

# Extra dense stages; column 12 is f(t0 + h, y1).
_EXTRA_A: tuple[dict[int, float], ...] = (
    {  # dense stage 13
        0: 5.61675022830479523392909219681e-2,
        6: 2.53500210216624811088794765333e-1,
        7: -2.46239037470802489917441475441e-1,
        8: -1.24191423263816360469010140626e-1,
        9: 1.5329179827876569731206322685e-1,
        10: 8.20105229563468988491666602057e-3,
        11: 7.56789766054569976138603589584e-3,
        12: -8.298e-3,
    },
    {  # dense stage 14
        0: 3.18346481635021405060768473261e-2,
        5: 2.83009096723667755288322961402e-2,
        6: 5.35419883074385676223797384372e-2,
        7: -5.49237485713909884646569340306e-2,
        10: -1.08347328697249322858509316994e-4,
        11: 3.82571090835658412954920192323e-4,
        12: -3.40465008687404560802977114492e-4,
        13: 1.41312443674632500278074618366e-1,
    },
    {  # dense stage 15
        0: -4.28896301583791923408573538692e-1,
        5: -4.69762141536116384314449447206,
        6: 7.68342119606259904184240953878,
        7: 4.06898981839711007970213554331,
        8: 3.56727187455281109270669543021e-1,
        12: -1.39902416515901462129418009734e-3,
        13: 2.9475147891527723389556272149,
        14: -9.15095847217987001081870187138,
    },
)

# Hairer's r4..r7 as stage weights, i.e. the coefficients of the dense basis terms.
_D: tuple[dict[int, float], ...] = (
    {  # coefficient of θ^2(1−θ)^2
        0: -8.4289382761090128651353491142,
        5: 5.667149535193777696253178359e-1,
        6: -3.0689499459498916912797304727,
        7: 2.384667656512069828772814968,
        8: 2.1170345824450282767155149946,
        9: -8.713915837779729920678990749e-1,
        10: 2.240437430260788275854177165,
        11: 6.315787787694688181557024929e-1,
        12: -8.89903364513333108206981174e-2,
        13: 1.8148505520854727256656404962e1,
        14: -9.1946323924783554000451984436,
        15: -4.4360363875948939664310572,
    },
    {  # coefficient of θ^3(1−θ)^2
        0: 1.0427508642579134603413151009e1,
        5: 2.4228349177525818288430175319e2,
        6: 1.6520045171727028198505394887e2,
        7: -3.7454675472269020279518312152e2,
        8: -2.2113666853125306036270938578e1,
        9: 7.7334326684722638389603898808,
        10: -3.0674084731089398182061213626e1,
        11: -9.3321305264302278729567221706,
        12: 1.5697238121770843886131091075e1,
        13: -3.1139403219565177677282850411e1,
        14: -9.3529243588444783865713862664,
        15: 3.581684148639408375246589854e1,
    },
    {  # coefficient of θ^3(1−θ)^3
        0: 1.9985053242002433820987653617e1,
        5: -3.8703730874935176555105901742e2,
        6: -1.8917813819516756882830838328e2,
        7: 5.2780815920542364900561016686e2,
        8: -1.1573902539959630126141871134e1,
        9: 6.8812326946963000169666922661,
        10: -1.000605096691083840318386098,
        11: 7.777137798053443209286926574e-1,
        12: -2.7782057523535084065932004339,
        13: -6.0196695231264120758267380846e1,
        14: 8.4320405506677161018159903784e1,
        15: 1.199229113618278932803513003e1,
    },
    {  # coefficient of θ^4(1−θ)^3
        0: -2.5693933462703749003312586129e1,
        5: -1.5418974869023643374053993627e2,
        6: -2.3152937917604549567536039109e2,
        7: 3.576391179106141237828534991e2,
        8: 9.3405324183624310003907691704e1,
        9: -3.7458323136451633156875139351e1,
        10: 1.0409964950896230045147246184e2,
        11: 2.9840293426660503123344363579e1,
        12: -4.3533456590011143754432175058e1,
        13: 9.63245539591882829483949506e1,
        14: -3.9177261675615439165231486172e1,
        15: -1.4972683625798562581422125276e2,
    },
)

# b − b̂₅: the 5th-order error estimate (zero on f(t0 + h, y1)).
_E5: dict[int, float] = {
    0: 1.312004499419488073250102996e-2,
    5: -1.225156446376204440720569753,
    6: -4.957589496572501915214079952e-1,
    7: 1.664377182454986536961530415,
    8: -3.50328848749973681688648729e-1,
    9: 3.341791187130174790297318841e-1,
    10: 8.192320648511571246570742613e-2,
    11: -2.235530786388629525884427845e-2,
}

# b̂₃: weights of the embedded 3rd-order solution.
_B3: dict[int, float] = {
    0: 2.44094488188976377952755905512e-1,
    8: 7.33846688281611857341361741547e-1,
    11: 2.20588235294117647058823529412e-2,
}


def _full_row(row: dict[int, float], n: int) -> list[float]:
    """The sparse ``row`` as a list of length ``n``."""
    return [row.get(j, 0.0) for j in range(n)]


def _dense_polys() -> list[list[Fraction]]:
    """Expand Hairer's nested form into ``b_j(θ)`` for each of the 16 dense stages.

    Exact rational arithmetic on the (binary) coefficient values; rounded once at the end.
    """
    # Basis θ, θ(1−θ), θ²(1−θ), θ²(1−θ)², θ³(1−θ)², θ³(1−θ)³, θ⁴(1−θ)³.
    basis = [[0, 1]]
    for k in range(6):
        basis.append(_pmul(basis[-1], [1, -1] if k % 2 == 0 else [0, 1]))
    b = [Fraction(x) for x in _full_row(_B, _N_DENSE)]
    polys = []
    for j in range(_N_DENSE):
        at_k0 = 1 if j == 0 else 0
        at_f1 = 1 if j == _F1 else 0
        weights = [b[j], at_k0 - b[j], 2 * b[j] - at_k0 - at_f1]
        weights += [Fraction(d.get(j, 0.0)) for d in _D]
        p = [Fraction(0)]
        for w, q in zip(weights, basis, strict=True):
            p = _padd(p, _pscale(q, w))
        polys.append(p)
    return polys


def _floats(xs) -> tuple[float, ...]:
    return tuple(float(x) for x in xs)


DOP853 = ButcherTableau(
    name="dopri8",
    order=8,
    c=_floats(_C),
    a=((), *(_floats(_full_row(row, i)) for i, row in enumerate(_A, start=1))),
    b=_floats(_full_row(_B, _S)),
    b_error=_floats(_full_row(_E5, _S + 1)),
    error_order=7,
    fsal=False,
    dense=tuple(_floats(r) for r in _rows_from_polys(_dense_polys())),
    dense_order=7,
    extra_c=_floats(_EXTRA_C),
    extra_a=tuple(_floats(_full_row(row, i)) for i, row in enumerate(_EXTRA_A, start=_S + 1)),
    b_error_low=_floats(
        Fraction(bj) - Fraction(_B3.get(j, 0.0)) for j, bj in enumerate(_full_row(_B, _S + 1))
    ),
)

# If this module is imported before ``tableaux``, the registry's own lazy import of DOP853 ran
# while this module was half-initialised and was skipped; register the method here instead.
_tableaux.TABLEAUX.setdefault(DOP853.name, DOP853)
