"""Numerics: tableaux, steppers, step-size control, the two integration loops and the front door
(``odeint``, ``odeint_dense``, ``solve_ivp``)."""

from neurode.solvers.api import odeint, odeint_dense, solve_ivp
from neurode.solvers.registry import METHODS, MethodSpec, register_method
from neurode.solvers.solution import DenseOutput, Solution, Stats
from neurode.solvers.tableaux import IMPLICIT_TABLEAUX, TABLEAUX, ButcherTableau

__all__ = ["IMPLICIT_TABLEAUX", "METHODS", "TABLEAUX", "ButcherTableau", "DenseOutput",
           "MethodSpec", "Solution", "Stats", "odeint", "odeint_dense", "register_method",
           "solve_ivp"]
