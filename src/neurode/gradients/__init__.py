"""Gradients of ODE solutions: the adjoint method, checkpointed and reversible adjoints,
differentiable events and hybrid solves (events with resets), forward-mode sensitivities.
Depends on `neurode.solvers` only."""

from neurode.gradients.adjoint import odeint_adjoint
from neurode.gradients.checkpoint import odeint_checkpoint
from neurode.gradients.events import odeint_event
from neurode.gradients.forward import odeint_jvp
from neurode.gradients.hybrid import Event, HybridSolution, odeint_hybrid
from neurode.gradients.reversible import odeint_reversible

__all__ = ["Event", "HybridSolution", "odeint_adjoint", "odeint_checkpoint", "odeint_event",
           "odeint_hybrid", "odeint_jvp", "odeint_reversible"]
