"""neurode: neural ordinary differential equations on PyTorch.

``import neurode as torchdiffeq`` runs torchdiffeq code unchanged; [`solve_ivp`][neurode.solve_ivp]
gives a richer [`Solution`][neurode.Solution] with statistics, status and dense output.
"""

from neurode.errors import (
    ExternalSolverError,
    FuncOutputError,
    InvalidInputError,
    MaxStepsReachedError,
    NeurodeError,
    NewtonConvergenceError,
    NonFiniteStateError,
    SolverError,
    Status,
    StepSizeTooSmallError,
    UnknownMethodError,
    UnknownOptionError,
)
from neurode.gradients import (
    Event,
    HybridSolution,
    odeint_adjoint,
    odeint_checkpoint,
    odeint_event,
    odeint_hybrid,
    odeint_jvp,
    odeint_reversible,
)
from neurode.solvers import (
    METHODS,
    TABLEAUX,
    ButcherTableau,
    DenseOutput,
    Solution,
    Stats,
    odeint,
    odeint_dense,
    solve_ivp,
)

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "TABLEAUX",
    "ButcherTableau",
    "DenseOutput",
    "Event",
    "ExternalSolverError",
    "FuncOutputError",
    "HybridSolution",
    "InvalidInputError",
    "MaxStepsReachedError",
    "NeurodeError",
    "NewtonConvergenceError",
    "NonFiniteStateError",
    "Solution",
    "SolverError",
    "Stats",
    "Status",
    "StepSizeTooSmallError",
    "UnknownMethodError",
    "UnknownOptionError",
    "__version__",
    "odeint",
    "odeint_adjoint",
    "odeint_checkpoint",
    "odeint_dense",
    "odeint_event",
    "odeint_hybrid",
    "odeint_jvp",
    "odeint_reversible",
    "solve_ivp",
]
