"""Numerics: tableaux, the generic Runge–Kutta stepper, step-size control, the integration loops
and the front door (``odeint``, ``odeint_dense``, ``solve_ivp``)."""

import neurode.solvers.alf
import neurode.solvers.implicit
import neurode.solvers.scipy_backend  # noqa: F401  (registers method "scipy_solver")
from neurode.solvers.api import odeint, odeint_dense, solve_ivp
from neurode.solvers.registry import METHODS, MethodSpec, register_method
from neurode.solvers.solution import DenseOutput, Solution, Stats
from neurode.solvers.tableaux import TABLEAUX, ButcherTableau

__all__ = ["METHODS", "TABLEAUX", "ButcherTableau", "DenseOutput", "MethodSpec", "Solution",
           "Stats", "odeint", "odeint_dense", "register_method", "solve_ivp"]
