"""Exception types raised by neurode, and the status codes of a solve.

Every failure raises a subclass of [`NeurodeError`][neurode.NeurodeError], so
``except neurode.NeurodeError`` catches all of them. Input problems also derive from
`ValueError` and integration failures from `RuntimeError`, so code written against the built-in
types keeps working.

[`Status`][neurode.Status] is the one list of outcomes: each member has its code
(``Solution.status``), its message and the exception class a failure raises.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "ExternalSolverError",
    "FuncOutputError",
    "InvalidInputError",
    "MaxStepsReachedError",
    "NeurodeError",
    "NewtonConvergenceError",
    "NonFiniteStateError",
    "SolverError",
    "Status",
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
    """The integration could not be completed. ``t`` and ``dt`` say where (time, step size).

    Args:
        message: what went wrong, in words (also ``str(err)``).
        t: the time (in the user's time) at which the solve failed, or None when unknown;
            kept as the attribute ``err.t``.
        dt: the step size being tried there, signed as the user's time runs, or None; kept
            as the attribute ``err.dt``.
    """

    def __init__(self, message: str, t: float | None = None, dt: float | None = None):
        super().__init__(message)
        self.t = t
        self.dt = dt


class NonFiniteStateError(SolverError):
    """NaN or inf appeared in the state or in the vector field's value."""


class StepSizeTooSmallError(SolverError):
    """The adaptive step size fell below what the floating-point time can resolve."""


class MaxStepsReachedError(SolverError, AssertionError):
    """``max_num_steps`` steps were taken before the final time was reached.

    Also an ``AssertionError`` whose message starts with ``max_num_steps``, as torchdiffeq's
    (code that catches that, e.g. to count a failed solve, keeps working)."""


class NewtonConvergenceError(SolverError):
    """The Newton iteration of an implicit method did not converge (at time ``t``, step ``dt``)."""


class ExternalSolverError(SolverError):
    """An external backend (SciPy) reported a failure; the message carries its own words."""


class Status(IntEnum):
    """Outcome of a solve: ``Solution.status`` (negative codes are failures).

    ``Status(code).message`` is the outcome in words and ``Status(code).error`` the exception
    class a failure raises (None for the two successes).
    """

    SUCCESS = 0
    EVENT = 1
    MAX_STEPS = -1
    STEP_SIZE_TOO_SMALL = -2
    NON_FINITE = -3
    NEWTON_FAILED = -4
    EXTERNAL_FAILED = -5

    @property
    def message(self) -> str:
        return _MESSAGES[self]

    @property
    def error(self) -> type[SolverError] | None:
        return _ERRORS[self]


_MESSAGES = {
    Status.SUCCESS: "success",
    Status.EVENT: "terminated by event",
    Status.MAX_STEPS: "max_num_steps reached",
    Status.STEP_SIZE_TOO_SMALL: "step size underflow",
    Status.NON_FINITE: "non-finite state",
    Status.NEWTON_FAILED: "Newton iteration did not converge",
    Status.EXTERNAL_FAILED: "external solver failed",
}
_ERRORS: dict[Status, type[SolverError] | None] = {
    Status.SUCCESS: None,
    Status.EVENT: None,
    Status.MAX_STEPS: MaxStepsReachedError,
    Status.STEP_SIZE_TOO_SMALL: StepSizeTooSmallError,
    Status.NON_FINITE: NonFiniteStateError,
    Status.NEWTON_FAILED: NewtonConvergenceError,
    Status.EXTERNAL_FAILED: ExternalSolverError,
}
