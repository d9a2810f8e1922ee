"""Exception types raised by neurode.

Every failure raises a subclass of :class:`NeurodeError`, so ``except neurode.NeurodeError``
catches all of them. Input problems also derive from :class:`ValueError` and integration failures
from :class:`RuntimeError`, so code written against the built-in types keeps working.
"""

from __future__ import annotations

__all__ = [
    "FuncOutputError",
    "InvalidInputError",
    "MaxStepsReachedError",
    "NeurodeError",
    "NewtonConvergenceError",
    "NonFiniteStateError",
    "SolverError",
    "StepSizeTooSmallError",
    "UnknownMethodError",
    "UnknownOptionError",
]


class NeurodeError(Exception):
    """Base class of every error neurode raises."""


class InvalidInputError(NeurodeError, ValueError):
    """An argument has the wrong type, shape, dtype or value (the message names which)."""


class UnknownMethodError(InvalidInputError):
    """``method`` names no registered solver; the message lists the valid names."""


class UnknownOptionError(InvalidInputError):
    """``options`` holds a key the method does not understand; the message lists valid ones."""


class FuncOutputError(NeurodeError, ValueError):
    """The vector field returned a value of the wrong type, shape, dtype or device."""


class SolverError(NeurodeError, RuntimeError):
    """The integration could not be completed. ``t`` and ``dt`` say where (time, step size)."""

    def __init__(self, message: str, t: float | None = None, dt: float | None = None):
        super().__init__(message)
        self.t = t
        self.dt = dt


class NonFiniteStateError(SolverError):
    """NaN or inf appeared in the state or in the vector field's value."""


class StepSizeTooSmallError(SolverError):
    """The adaptive step size fell below what the floating-point time can resolve."""


class MaxStepsReachedError(SolverError):
    """``max_num_steps`` steps were taken before the final time was reached."""


class NewtonConvergenceError(SolverError):
    """The Newton iteration of an implicit method did not converge (at time ``t``, step ``dt``)."""
