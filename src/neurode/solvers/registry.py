"""The method registry: a name → what loop runs it, with which tableau and which options.

New methods slot in here: an explicit Runge–Kutta method is a tableau in ``TABLEAUX`` plus a
``register_method`` line; implicit and external solvers register their own ``kind`` with a
runner (see :func:`register_method`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from neurode.errors import UnknownMethodError
from neurode.solvers.tableaux import TABLEAUX, ButcherTableau

__all__ = ["ADAPTIVE_OPTIONS", "FIXED_OPTIONS", "METHODS", "MethodSpec", "get_method",
           "register_method"]

#: Options understood by every adaptive method (torchdiffeq's names plus PID coefficients).
ADAPTIVE_OPTIONS = frozenset({
    "first_step", "safety", "ifactor", "dfactor", "max_num_steps", "dtype", "step_t", "jump_t",
    "norm", "min_step", "max_step", "pcoeff", "icoeff", "dcoeff",
})
#: Options understood by every fixed-grid method.
FIXED_OPTIONS = frozenset({"step_size", "grid_constructor", "perturb", "interp", "dtype"})
ADAMS_OPTIONS = FIXED_OPTIONS | {"max_order", "max_iters", "norm"}


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    ``kind`` selects the loop: ``"adaptive"`` (embedded RK), ``"fixed"`` (RK on a grid),
    ``"adams"``, or a kind with its own ``runner`` (implicit and external solvers).
    """

    name: str
    kind: str
    options: frozenset[str]
    tableau: ButcherTableau | None = None
    order: int | None = None
    params: dict = field(default_factory=dict)
    runner: Callable | None = None


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec, *aliases: str) -> None:
    """Add ``spec`` to the registry under its name and any ``aliases``."""
    for name in (spec.name, *aliases):
        METHODS[name] = spec


def get_method(name: str) -> MethodSpec:
    """The spec for ``name``; :class:`UnknownMethodError` listing valid names otherwise."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(METHODS))
        raise UnknownMethodError(
            f"unknown method {name!r}; valid methods are: {valid}") from None


for _name in ("euler", "midpoint", "heun2", "heun3", "rk4", "rk4_classic"):
    register_method(MethodSpec(_name, "fixed", FIXED_OPTIONS, TABLEAUX[_name],
                               TABLEAUX[_name].order))
for _name in ("adaptive_heun", "fehlberg2", "bosh3", "dopri5", "tsit5", "dopri8"):
    register_method(MethodSpec(_name, "adaptive", ADAPTIVE_OPTIONS, TABLEAUX[_name],
                               TABLEAUX[_name].order))
# Adams–Bashforth above order ~6 has a tiny stability region (torchdiffeq's default of 12 blows
# up on the spiral at h = 0.05), so the explicit method defaults to order 4; the corrector of the
# implicit method keeps high orders stable, so it defaults to torchdiffeq's 12.
register_method(MethodSpec("explicit_adams", "adams", ADAMS_OPTIONS - {"max_iters"},
                           order=4, params={"implicit": False, "max_order": 4}))
register_method(MethodSpec("implicit_adams", "adams", ADAMS_OPTIONS, order=4,
                           params={"implicit": True, "max_order": 12}), "fixed_adams")
