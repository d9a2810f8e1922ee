"""Forward-mode sensitivities: the directional derivative of an ODE solution in one forward solve.

For ``dz/dt = f(t, z; θ)``, ``z(t_0) = z_0``, the derivative of the solution along a direction
``(Δz_0, Δθ)`` is ``w(t) = ∂z(t)/∂z_0 · Δz_0 + ∂z(t)/∂θ · Δθ``, which solves the tangent
(variational) equation

    dw/dt = ∂f/∂z · w + ∂f/∂θ · Δθ,      w(t_0) = Δz_0.

``(z, w)`` is integrated as one tuple state through [`neurode.odeint`][], so the adaptive error
control covers ``w`` too (``options={"norm": "seminorm"}`` leaves it out), and ``f`` and the
tangent right-hand side come from a single ``torch.func.jvp`` per evaluation. The cost is one
forward solve per direction, each evaluation about twice the arithmetic of ``f`` (plus
``torch.func``'s per-call overhead, which dominates for small models on the CPU); nothing is kept
per step, so under ``torch.no_grad()`` memory does not grow with the number of steps. With grad
enabled the solve is recorded as usual and the tangents can be backpropagated (e.g. for
Hessian-vector products).

Exactness. Runge–Kutta methods commute with linearisation: the RK solution of the tangent equation
on a given step sequence is exactly the derivative of the RK solution of ``f`` on that step sequence
(and the dense-output interpolants are linear in the stages, so output times between steps are
covered too). Hence, on a fixed grid, [`odeint_jvp`][neurode.odeint_jvp] equals forward-mode
differentiation through [`neurode.odeint`][] to rounding; with adaptive methods it equals it to
rounding under ``"seminorm"`` (same steps), and to O(tol) under the default norm (``w`` then takes
part in choosing the steps).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from neurode.errors import FuncOutputError, InvalidInputError
from neurode.solvers.api import odeint
from neurode.solvers.norms import rms_norm
from neurode.solvers.problem import check_state

__all__ = ["odeint_jvp"]

State = Tensor | tuple[Tensor, ...]

_CALLBACKS = ("callback_step", "callback_accept_step", "callback_reject_step")


def _shape(x: Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def _check_tangent(name: str, v, ref: Tensor, ref_name: str) -> Tensor:
    """``v`` must be a tensor of ``ref``'s shape, dtype and device (``None`` → zeros)."""
    if v is None:
        return torch.zeros_like(ref)
    if not isinstance(v, Tensor):
        raise InvalidInputError(
            f"{name} must be a Tensor of shape {_shape(ref)} (the shape of {ref_name}), got "
            f"{type(v).__name__}")
    if v.shape != ref.shape:
        raise InvalidInputError(
            f"{name} has shape {_shape(v)}; expected {_shape(ref)}, the shape of {ref_name}")
    if v.dtype != ref.dtype:
        raise InvalidInputError(
            f"{name} has dtype {v.dtype}; expected {ref.dtype}, the dtype of {ref_name}")
    if v.device != ref.device:
        raise InvalidInputError(
            f"{name} is on {v.device}; expected {ref.device}, the device of {ref_name}")
    return v


def _tangent_state(y0: State, tangent_y0, is_tuple: bool) -> tuple[Tensor, ...]:
    if not is_tuple:
        return (_check_tangent("tangent_y0", tangent_y0, y0, "y0"),)
    if tangent_y0 is None:
        return tuple(torch.zeros_like(x) for x in y0)
    if not isinstance(tangent_y0, (tuple, list)) or len(tangent_y0) != len(y0):
        got = (f"a {type(tangent_y0).__name__} of length {len(tangent_y0)}"
               if isinstance(tangent_y0, (tuple, list)) else type(tangent_y0).__name__)
        raise InvalidInputError(
            f"tangent_y0 must be a tuple of {len(y0)} Tensors matching the tuple y0 (shapes "
            f"{[_shape(x) for x in y0]}), got {got}")
    return tuple(_check_tangent(f"tangent_y0[{i}]", v, x, f"y0[{i}]")
                 for i, (v, x) in enumerate(zip(tangent_y0, y0, strict=True)))


def _module_names(func: nn.Module, params: Sequence[Tensor]) -> list[str]:
    """Each tensor's name among ``func``'s parameters and buffers (for ``functional_call``)."""
    by_id: dict[int, str] = {}
    for name, b in func.named_buffers(remove_duplicate=False):
        by_id.setdefault(id(b), name)
    for name, p in func.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), name)
    names = []
    for i, p in enumerate(params):
        name = by_id.get(id(p))
        if name is None:
            raise InvalidInputError(
                f"params[{i}] (shape {_shape(p)}) is not a parameter or buffer of func; "
                "tangent_params can only move tensors that func owns, because func is evaluated "
                "functionally with them replaced")
        names.append(name)
    return names


def _resolve_params(func, params, tangent_params) -> tuple[list[Tensor], list[str], list[Tensor]]:
    """The parameters that move (a non-None tangent), their names in ``func`` and tangents."""
    if tangent_params is None:
        if params is not None:
            _check_params(params)
        return [], [], []
    if not isinstance(func, nn.Module):
        raise InvalidInputError(
            "tangent_params needs func to be an nn.Module (it is evaluated functionally with its "
            f"parameters replaced), got {type(func).__name__}; for a plain function only "
            "tangent_y0 is supported: make the parameters the attributes of an nn.Module, or "
            "append them to the state with zero derivative")
    params = tuple(func.parameters()) if params is None else _check_params(params)
    if isinstance(tangent_params, Tensor) or not isinstance(tangent_params, Sequence):
        raise InvalidInputError(
            f"tangent_params must be a sequence of {len(params)} Tensors (or None) matching "
            f"params, got {type(tangent_params).__name__}")
    if len(tangent_params) != len(params):
        raise InvalidInputError(
            f"tangent_params has {len(tangent_params)} entries but params has {len(params)} "
            f"(shapes {[_shape(p) for p in params]}); give one tangent (or None) per parameter")
    seen: set[int] = set()
    for i, p in enumerate(params):
        if id(p) in seen:
            raise InvalidInputError(f"params[{i}] appears more than once in params")
        seen.add(id(p))
    moving = [i for i, v in enumerate(tangent_params) if v is not None]
    tangents = [_check_tangent(f"tangent_params[{i}]", tangent_params[i], params[i],
                               f"params[{i}]") for i in moving]
    active = [params[i] for i in moving]
    return active, _module_names(func, active), tangents


def _check_params(params) -> tuple[Tensor, ...]:
    if isinstance(params, Tensor) or not isinstance(params, Sequence):
        raise InvalidInputError(
            f"params must be a sequence of Tensors, got {type(params).__name__}")
    params = tuple(params)
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise InvalidInputError(f"params[{i}] must be a Tensor, got {type(p).__name__}")
    return params


def _doubled_tol(tol, name: str, y0: State, is_tuple: bool, n_flat: int):
    """A tolerance for ``y0`` → the same tolerance for ``(z, w)`` (the tangent gets z's)."""
    if isinstance(tol, (tuple, list)):
        if not is_tuple or len(tol) != len(y0):
            raise InvalidInputError(
                f"{name} given as a sequence must match the tuple y0 component by component")
        return (*tol, *tol)
    if isinstance(tol, Tensor) and tol.numel() > 1:
        if is_tuple:
            if tol.numel() != n_flat:
                raise InvalidInputError(
                    f"{name} as a tensor for a tuple y0 must have one entry per state element "
                    f"({n_flat}), got {tol.numel()}; or give a sequence, one per component")
            flat = tol.reshape(-1)
            return torch.cat([flat, flat])
        try:
            torch.broadcast_shapes(tol.shape, y0.shape)
        except RuntimeError as e:
            raise InvalidInputError(
                f"{name} of shape {_shape(tol)} does not broadcast against y0 of shape "
                f"{_shape(y0)}") from e
        return (tol, tol)
    return tol


def _default_norm(is_tuple: bool) -> Callable:
    """neurode's default norm of one state shaped like ``y0``."""
    if is_tuple:
        return lambda s: torch.stack([rms_norm(x) for x in s]).max()
    return rms_norm


def odeint_jvp(func: Callable, y0: State, t: Tensor, *, tangent_y0: State | None = None,
               tangent_params: Sequence[Tensor | None] | None = None,
               params: Sequence[Tensor] | None = None, rtol: float | Tensor = 1e-7,
               atol: float | Tensor = 1e-9, method: str | None = None,
               options: dict[str, Any] | None = None) -> tuple[State, State]:
    """Solve ``dy/dt = func(t, y)`` and its tangent equation; return the solution and its JVP.

    The tangent is the directional derivative of the solution at every output time along
    ``(tangent_y0, tangent_params)``: ``Σ ∂y(t_i)/∂y0 · tangent_y0 + ∂y(t_i)/∂θ_j · Δθ_j``. It is
    what ``torch.func.jvp`` of [`neurode.odeint`][] computes, obtained by integrating the
    tangent ODE ``dw/dt = ∂f/∂y·w + ∂f/∂θ·Δθ`` with the state in one solve (see the module
    docstring for when the two agree to rounding).

    Args:
        func: ``func(t, y)`` as for [`neurode.odeint`][]. Must be an ``nn.Module`` when
            ``tangent_params`` is given; it is then evaluated with ``torch.func.functional_call``.
        y0: initial state, a tensor of shape ``S`` or a tuple of tensors of shapes ``S_k``.
        t: 1-D tensor of ``T`` output times, strictly increasing or decreasing.
        tangent_y0: direction ``Δy0``, shaped (and typed) exactly like ``y0`` (a tuple for tuple
            ``y0``); ``None`` for zero.
        tangent_params: directions ``Δθ_j``, one per entry of ``params``, each shaped like it, or
            ``None`` for zero (a parameter without a tangent is held fixed at no cost).
        params: the tensors ``θ_j`` that ``tangent_params`` refers to; each must be a parameter
            or buffer of ``func`` (default: ``tuple(func.parameters())``).
        rtol: relative tolerance as for [`neurode.odeint`][]; the tangent gets the state's.
        atol: absolute tolerance as for [`neurode.odeint`][]; the tangent gets the state's.
        method: a method of ``neurode.METHODS`` (default ``"dopri5"``).
        options: method options as for [`neurode.odeint`][], plus ``"norm"`` given as
            ``"seminorm"`` to leave the tangent out of the step-size control (steps are then the
            ones [`neurode.odeint`][] takes, and the tangent is the exact derivative of that
            discrete solution). A callable ``norm`` receives states shaped like ``y0`` and is
            applied to the state and to the tangent, the larger value controlling the step.
            Callbacks of ``func`` (``callback_step``, ...) are called with the state only.

    Returns:
        ``(ys, tangents)``: ``ys`` as [`neurode.odeint`][] returns it, ``(T, *S)`` (a tuple of
        ``(T, *S_k)`` for tuple ``y0``), and ``tangents`` of the same structure and shapes;
        ``tangents[0]`` is ``tangent_y0``.

    Raises:
        InvalidInputError: a tangent of the wrong shape, dtype, device or structure (the message
            names the argument and the expected shape), ``tangent_params`` with a non-Module
            ``func``, ``params`` not owned by ``func``; and everything [`neurode.odeint`][]
            raises.
        FuncOutputError: ``func`` returned the wrong structure, shape, dtype or device.

    Example::

        ys, dys = odeint_jvp(model, y0, t, tangent_y0=v)          # ∂y(t)/∂y0 · v
        ys, dys = odeint_jvp(model, y0, t, tangent_params=[dW, None])
    """
    if not callable(func):
        raise InvalidInputError(f"func must be callable as func(t, y), got {type(func).__name__}")
    tensors, is_tuple = check_state(y0, per_sample=False)
    zs = tuple(y0) if is_tuple else (y0,)
    k = len(zs)
    ws = _tangent_state(y0, tangent_y0, is_tuple)
    active, names, dparams = _resolve_params(func, params, tangent_params)
    n_flat = sum(x.numel() for x in tensors)

    def user_state(parts: Sequence[Tensor]) -> State:
        return tuple(parts) if is_tuple else parts[0]

    checked = False

    def check(out) -> tuple[Tensor, ...]:
        nonlocal checked
        if is_tuple:
            if not isinstance(out, (tuple, list)) or len(out) != k or \
                    not all(isinstance(o, Tensor) for o in out):
                raise FuncOutputError(
                    f"func must return a tuple of {k} Tensors matching y0, got "
                    f"{type(out).__name__}")
            outs = tuple(out)
        else:
            if not isinstance(out, Tensor):
                raise FuncOutputError(
                    f"func must return a Tensor like y0, got {type(out).__name__}")
            outs = (out,)
        if not checked:
            for i, (o, z) in enumerate(zip(outs, zs, strict=True)):
                idx = f"[{i}]" if is_tuple else ""
                if o.shape != z.shape or o.dtype != z.dtype or o.device != z.device:
                    raise FuncOutputError(
                        f"func returned shape {_shape(o)}, dtype {o.dtype} on {o.device} for "
                        f"y0{idx} of shape {_shape(z)}, dtype {z.dtype} on {z.device}; dy/dt "
                        "must match y")
            checked = True
        return outs

    def aug_func(tt: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        z, w = state[:k], state[k:]
        if active:
            def fn(*args):
                ps = dict(zip(names, args[k:], strict=True))
                return torch.func.functional_call(func, ps, (tt, user_state(args[:k])))

            out, dout = torch.func.jvp(fn, (*z, *active), (*w, *dparams))
        else:
            def fn(*args):
                return func(tt, user_state(args))

            out, dout = torch.func.jvp(fn, z, w)
        return (*check(out), *check(dout))

    for cb_name in _CALLBACKS:
        cb = getattr(func, cb_name, None)
        if cb is not None:
            def call(tt, state, dt, _cb=cb):
                return _cb(tt, user_state(state[:k]), dt)

            setattr(aug_func, cb_name, call)

    opts = None if options is None else dict(options)
    if opts is not None:
        if opts.get("norm") is not None:
            user_norm = opts["norm"]
            if isinstance(user_norm, str) and user_norm == "seminorm":
                base = _default_norm(is_tuple)

                def norm(s):
                    return base(user_state(s[:k]))
            elif callable(user_norm):
                def norm(s, _n=user_norm):
                    return torch.maximum(torch.as_tensor(_n(user_state(s[:k]))),
                                         torch.as_tensor(_n(user_state(s[k:]))))
            else:
                raise InvalidInputError(
                    "options['norm'] must be callable as norm(state) -> scalar, or 'seminorm'")
            opts["norm"] = norm
        gc = opts.get("grid_constructor")
        if gc is not None:
            def grid_constructor(func_int, y_flat, t_int, _gc=gc):
                # neurode hands a grid constructor the state as odeint would (y0's shape for a
                # tensor, flat for a tuple) and a vector field on it: show it the state only.
                zero = torch.zeros(n_flat, dtype=y_flat.dtype, device=y_flat.device)

                def f_state(tt, y):
                    dy = func_int(tt, torch.cat([y.reshape(-1), zero]))[:n_flat]
                    return dy if is_tuple else dy.view(zs[0].shape)

                z0 = y_flat[:n_flat]
                return _gc(f_state, z0 if is_tuple else z0.view(zs[0].shape), t_int)

            opts["grid_constructor"] = grid_constructor

    out = odeint(aug_func, (*zs, *ws), t, rtol=_doubled_tol(rtol, "rtol", y0, is_tuple, n_flat),
                 atol=_doubled_tol(atol, "atol", y0, is_tuple, n_flat), method=method,
                 options=opts)
    return user_state(out[:k]), user_state(out[k:])
