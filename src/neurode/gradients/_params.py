"""The parameters a gradient method differentiates: resolved, named and swapped in one place."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from neurode.errors import InvalidInputError

__all__ = ["SwapParams", "needs_grad", "param_names", "resolve_params", "vjp_grad"]


def resolve_params(func, adjoint_params) -> tuple[Tensor, ...]:
    """``adjoint_params`` as a tuple of tensors (default: ``func.parameters()``)."""
    if adjoint_params is None:
        if not isinstance(func, nn.Module):
            raise InvalidInputError(
                "func must be an nn.Module for odeint_adjoint to find its parameters; otherwise "
                "pass adjoint_params=(tensors func depends on,) (or () for none)")
        return tuple(func.parameters())
    params = tuple(adjoint_params)
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise InvalidInputError(f"adjoint_params[{i}] must be a Tensor, got {type(p).__name__}")
    return params


def param_names(func, params: Sequence[Tensor]) -> list[str] | None:
    """Names of ``params`` among ``func``'s parameters, if func is a Module that owns them all.

    Taken when the solve is called: inside ``torch.func.functional_call`` the module's
    parameters are then the tensors passed in, which is how the backward pass can swap the saved
    values back in after the call has returned.
    """
    if not isinstance(func, nn.Module):
        return None
    by_id = {id(p): name for name, p in func.named_parameters(remove_duplicate=False)}
    names = [by_id.get(id(p)) for p in params]
    return None if any(n is None for n in names) else names


def needs_grad(y0: Tensor, t: Tensor, params: Sequence[Tensor]) -> bool:
    """Whether anything a solve's gradient method differentiates requires grad."""
    return torch.is_grad_enabled() and (y0.requires_grad or t.requires_grad
                                        or any(p.requires_grad for p in params))


class SwapParams:
    """Temporarily replace named parameters of a module (functional evaluation)."""

    def __init__(self, module: nn.Module, names: list[str], values):
        self.module, self.names, self.values = module, names, values

    def __enter__(self):
        self.ctx = torch.nn.utils.stateless._reparametrize_module(
            self.module, dict(zip(self.names, self.values, strict=True)))
        self.ctx.__enter__()

    def __exit__(self, *exc):
        return self.ctx.__exit__(*exc)


def vjp_grad(outputs, inputs, grad_outputs) -> tuple[Tensor | None, ...]:
    """``torch.autograd.grad(outputs, inputs, grad_outputs, allow_unused=True)`` that also
    holds when some or all outputs do not depend on anything that requires grad (a field of
    ``t`` alone, a constant component): those contribute nothing, and the inputs get ``None``.

    The graph is retained: a parameter may reach ``func``'s output through a graph built
    outside ``func`` (torchcde's interpolation coefficients: ``diff(coeffs)`` made once), which
    every VJP of the backward pass walks again; the local graph is freed with its outputs.
    """
    outs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    gos = [grad_outputs] if isinstance(grad_outputs, Tensor) else list(grad_outputs)
    keep = [i for i, o in enumerate(outs) if o.requires_grad]
    if not keep:
        return (None,) * len(inputs)
    return torch.autograd.grad([outs[i] for i in keep], inputs, [gos[i] for i in keep],
                               allow_unused=True, retain_graph=True)
