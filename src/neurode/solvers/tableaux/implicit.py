"""Implicit Runge–Kutta tableaux (data only) and the constants of Radau IIA(5)'s error estimate.

Radau IIA, Gauss–Legendre, SDIRK2 and TR-BDF2 from Hairer & Wanner, *Solving ODEs II*, IV.5 and
IV.6; TR-BDF2 in its RK form (Hosea & Shampine 1996). The error estimate of the adaptive
``radau`` method (Hairer & Wanner IV.8): ``err = (I − hγ₀J)⁻¹ (γ₀ h f(y₀) + Σ eᵢ Zᵢ)`` with
``1/γ₀ = 3 + 3^{2/3} − 3^{1/3}`` (`RADAU_MU`) and ``e`` (`RADAU_E`) scaled by ``γ₀``.
"""

from __future__ import annotations

import math

from neurode.solvers.tableau import ImplicitTableau

__all__ = ["IMPLICIT_TABLEAUX", "RADAU_E", "RADAU_MU"]

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

#: ``1/γ₀`` of Radau IIA(5)'s error estimate.
RADAU_MU = 3 + 3 ** (2 / 3) - 3 ** (1 / 3)
#: The estimate's stage weights (times ``γ₀``).
RADAU_E = ((-13 - 7 * _S6) / 3, (-13 + 7 * _S6) / 3, -1 / 3)
