"""Making the solve Functions composable with ``torch.func.vmap`` (and ``grad`` over it).

The solves choose their steps on the host, so their forward and backward passes cannot be traced
by ``vmap``. Instead each Function gets a ``vmap`` rule that solves the batch one sample at a time
(each sample with the steps its unbatched call would take), and its backward pass goes through
`_Backward`, a Function with the same kind of rule, so that ``vmap(grad(loss))``
(per-sample gradients) works as well as ``grad(vmap(...))``.

Only ``y0`` may be batched: the vector field reads its parameters itself, so batched parameters
or batched times could not reach it. A backward function here is
``bwd(spec, t, ys, params, grad_ys, needs) -> (grad_y0, grad_t, [grad_p, ...])`` with None for
what is not needed.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from neurode.errors import InvalidInputError

Backward = Callable[..., tuple[Tensor | None, Tensor | None, list[Tensor | None]]]


@contextlib.contextmanager
def differentiable_params(func, names: list[str] | None, params: Sequence[Tensor],
                          needs: Sequence[bool]) -> Iterator[list[Tensor]]:
    """Yield the wanted parameters as tensors that ``func`` reads and autograd can differentiate.

    Normally these are ``params`` themselves. Inside ``torch.func`` transforms (or after a
    ``functional_call`` returned) the backward pass sees unwrapped copies that do not require
    grad and that ``func`` no longer reads: then fresh leaves with their values are swapped into
    the module for the duration.
    """
    wanted = [p for p, w in zip(params, needs[3:3 + len(params)], strict=True) if w]
    if all(p.requires_grad for p in wanted):
        yield wanted
        return
    if names is None:
        raise InvalidInputError(
            "gradients w.r.t. the parameters inside torch.func transforms need func to be an "
            "nn.Module owning the adjoint parameters (e.g. via torch.func.functional_call)")
    wanted_names = [n for n, w in zip(names, needs[3:3 + len(params)], strict=True) if w]
    leaves = [p.detach().requires_grad_(True) for p in wanted]
    with torch.nn.utils.stateless._reparametrize_module(func, dict(zip(wanted_names, leaves,
                                                                       strict=True))):
        yield leaves


def with_params(backward: Callable) -> Backward:
    """Adapt ``backward(spec, t, ys, params, grad_ys, needs, active) -> (g_y0, g_t, *g_params)``,
    which differentiates through ``func`` w.r.t. ``active``, to the `Backward` form, with
    ``active`` from `differentiable_params` (the spec must carry ``param_names``)."""

    def run(spec, t, ys, params, grad_ys, needs):
        with differentiable_params(spec.pb.func, spec.param_names, params,
                                   needs) as active:
            grad_y0, grad_t, *grad_p = backward(spec, t, ys, params, grad_ys, needs, active)
        return grad_y0, grad_t, grad_p

    return run


def _refuse_batched(what: str) -> None:
    raise InvalidInputError(
        f"torch.func.vmap over an adjoint/checkpointed/reversible solve batched {what}; only y0 "
        "may be batched (t and the adjoint parameters must be shared by the batch, since func "
        "reads its parameters itself)")


def solve_function(name: str, doc: str, forward: Callable[..., Tensor],
                   backward: Backward) -> type[torch.autograd.Function]:
    """Build the autograd Function ``ys = forward(spec, y0, t, *params)`` of a solve.

    ``forward`` solves without a graph; ``backward(spec, t, ys, params, grad_ys, needs)`` is the
    method's backward pass. The Function saves ``t``, the outputs and the parameters, runs the
    backward through `run_backward` and has the per-sample ``vmap`` rule of
    `vmap_solve`: the parts the adjoint, checkpointed and reversible solves share.
    """

    def setup_context(ctx, inputs, output):
        spec, _y0, t, *params = inputs
        ctx.spec = spec
        ctx.save_for_backward(t, output, *params)

    @torch.autograd.function.once_differentiable
    def bwd(ctx, grad_ys: Tensor):
        t, ys, *params = ctx.saved_tensors
        grad_y0, grad_t, grad_p = run_backward(backward, ctx.spec, t, ys, params, grad_ys,
                                               ctx.needs_input_grad)
        return None, grad_y0, grad_t, *grad_p

    def vmap(info, in_dims, spec, y0: Tensor, t: Tensor, *params: Tensor):
        return vmap_solve(cls, info, in_dims, spec, y0, t, params)

    cls = type(name, (torch.autograd.Function,), {
        "__doc__": doc, "forward": staticmethod(forward),
        "setup_context": staticmethod(setup_context), "backward": staticmethod(bwd),
        "vmap": staticmethod(vmap)})
    return cls


def vmap_solve(fn, info, in_dims, spec, y0: Tensor, t: Tensor, params: Sequence[Tensor]):
    """The ``vmap`` rule of a solve Function ``fn.apply(spec, y0, t, *params)``."""
    _, y_dim, t_dim, *p_dims = in_dims
    if t_dim is not None:
        _refuse_batched("t")
    if any(d is not None for d in p_dims):
        _refuse_batched("a parameter")
    if y_dim is None:
        return fn.apply(spec, y0, t, *params), None
    outs = []
    specs = []
    for y0_b in y0.movedim(y_dim, 0).unbind(0):
        # Per-sample forward records (steps, checkpoints, statistics); the problem is shared.
        spec_b = copy.copy(spec)
        spec_b.pb = copy.copy(spec.pb)
        specs.append(spec_b)
        outs.append(fn.apply(spec_b, y0_b, t, *params))
    # vmap(grad(...)) runs the backward on the outer spec: it finds the samples' records here.
    spec.batch_specs = specs
    return torch.stack(outs, 0), 0


def in_transform() -> bool:
    """True inside a ``torch.func`` transform (vmap, grad, jvp, ...)."""
    return torch._C._functorch.peek_interpreter_stack() is not None


def run_backward(bwd: Backward, spec, t: Tensor, ys: Tensor, params: Sequence[Tensor],
                 grad_ys: Tensor, needs: Sequence[bool]):
    """Call ``bwd`` directly, or through `_Backward` inside ``torch.func`` transforms."""
    if not in_transform():
        return bwd(spec, t, ys, params, grad_ys, needs)
    n_p = len(params)
    outs = _Backward.apply(bwd, spec, tuple(needs), n_p, t, ys, grad_ys, *params)
    grad_y0, grad_t, *grad_p = outs
    return ((grad_y0 if needs[1] else None), (grad_t if needs[2] else None),
            [g if needs[3 + j] else None for j, g in enumerate(grad_p)])


def _zeros_for_none(bwd: Backward, spec, needs, t, ys, params, grad_ys):
    grad_y0, grad_t, grad_p = bwd(spec, t, ys, params, grad_ys, needs)
    return (torch.zeros_like(ys[0]) if grad_y0 is None else grad_y0,
            torch.zeros_like(t) if grad_t is None else grad_t,
            *(torch.zeros_like(p) if g is None else g for p, g in zip(params, grad_p,
                                                                      strict=True)))


class _Backward(torch.autograd.Function):
    """A backward pass as a Function (not itself differentiable) with a per-sample vmap rule."""

    @staticmethod
    def forward(bwd, spec, needs, n_p, t, ys, grad_ys, *params):
        return _zeros_for_none(bwd, spec, needs, t, ys, params, grad_ys)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("the adjoint/checkpointed/reversible backward pass is not itself "
                           "differentiable (no double backward); use neurode.odeint for that")

    @staticmethod
    def vmap(info, in_dims, bwd, spec, needs, n_p, t, ys, grad_ys, *params):
        *_, t_dim, ys_dim, g_dim = in_dims[:7]
        if t_dim is not None:
            _refuse_batched("t")
        if any(d is not None for d in in_dims[7:]):
            _refuse_batched("a parameter")
        n = info.batch_size

        def sample(x, d, b):
            return x if d is None else x.movedim(d, 0)[b]

        specs = getattr(spec, "batch_specs", None)
        if specs is None or len(specs) != n:
            specs = [spec] * n
        per = [_Backward.apply(bwd, specs[b], needs, n_p, t, sample(ys, ys_dim, b),
                               sample(grad_ys, g_dim, b), *params) for b in range(n)]
        outs = tuple(torch.stack(col, 0) for col in zip(*per, strict=True))
        return outs, (0,) * len(outs)
