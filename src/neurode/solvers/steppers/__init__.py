"""Steppers: one method family each, one interface (see `neurode.solvers.steppers.base`)."""

from neurode.solvers.steppers.adams import Adams
from neurode.solvers.steppers.alf import ALF
from neurode.solvers.steppers.base import StepOut
from neurode.solvers.steppers.erk import ExplicitRK
from neurode.solvers.steppers.irk import ImplicitRK, Radau

__all__ = ["ALF", "Adams", "ExplicitRK", "ImplicitRK", "Radau", "StepOut"]
