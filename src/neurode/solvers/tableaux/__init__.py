"""Every tableau neurode ships, by name: [`TABLEAUX`][neurode.TABLEAUX] (explicit) and
[`IMPLICIT_TABLEAUX`][neurode.solvers.IMPLICIT_TABLEAUX]. Adding an explicit method is a tableau
here plus a registry line."""

from neurode.solvers.tableau import ButcherTableau, ImplicitTableau
from neurode.solvers.tableaux._poly import hermite_dense
from neurode.solvers.tableaux.dop853 import DOP853
from neurode.solvers.tableaux.explicit import (
    ADAPTIVE_HEUN,
    BOSH3,
    DOPRI5,
    EULER,
    FEHLBERG2,
    HEUN2,
    HEUN3,
    MIDPOINT,
    RK4,
    RK4_CLASSIC,
    TSIT5,
)
from neurode.solvers.tableaux.implicit import IMPLICIT_TABLEAUX
from neurode.solvers.tableaux.verner import VERN6, VERN7, VERN8, VERN9

__all__ = ["IMPLICIT_TABLEAUX", "TABLEAUX", "ButcherTableau", "ImplicitTableau", "hermite_dense"]

TABLEAUX: dict[str, ButcherTableau] = {
    t.name: t
    for t in (EULER, MIDPOINT, HEUN2, HEUN3, RK4, RK4_CLASSIC, ADAPTIVE_HEUN, FEHLBERG2, BOSH3,
              DOPRI5, TSIT5, DOP853, VERN6, VERN7, VERN8, VERN9)
}
