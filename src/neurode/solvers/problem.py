"""The front door: validate and normalise a user's problem once, so the loops see the simple case.

After :func:`make_problem` the state is one tensor (tuples are flattened and concatenated), time
runs forward as Python floats (decreasing ``t`` is handled by ``s = −t``, ``f̃(s, y) = −f(−s, y)``),
options are checked against the method and the vector field is wrapped to take host floats.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from neurode.errors import FuncOutputError, InvalidInputError, UnknownOptionError
from neurode.solvers.controller import make_mixed_norm, rms_norm
from neurode.solvers.registry import MethodSpec, get_method

__all__ = ["Problem", "make_problem"]

State = Tensor | tuple[Tensor, ...]


@dataclass
class Problem:
    """A normalised initial value problem (see module docstring)."""

    f: Callable[[float, Tensor, int], Tensor]
    y0: Tensor
    t: Tensor
    t_out: list[float]
    sign: float
    shapes: list[torch.Size] | None
    method: MethodSpec
    options: dict[str, Any]
    rtol: float | Tensor
    atol: float | Tensor
    norm: Callable[[Tensor], Tensor]
    callbacks: tuple | None
    time_dtype: torch.dtype
    user_func: Callable

    @property
    def is_tuple(self) -> bool:
        return self.shapes is not None

    def unflatten(self, ys: Tensor) -> State:
        """``(T, N)`` flat trajectory → the user's structure ``(T, *y0.shape)`` (or a tuple)."""
        if self.shapes is None:
            return ys
        lead = ys.shape[:-1]
        sizes = [math.prod(s) for s in self.shapes]
        return tuple(p.reshape(*lead, *s)
                     for p, s in zip(torch.split(ys, sizes, dim=-1), self.shapes, strict=True))

    def user_state(self, y: Tensor) -> State:
        return self.unflatten(y) if self.shapes is not None else y

    def time_tensor(self, s: float) -> Tensor:
        """Internal forward time ``s`` as the user's time tensor."""
        return torch.scalar_tensor(self.sign * s, dtype=self.time_dtype, device=self.y0.device)


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"Tensor(shape={tuple(x.shape)}, dtype={x.dtype}, device={x.device})"
    return type(x).__name__


def _check_state(y0) -> tuple[Tensor, list[torch.Size] | None]:
    if isinstance(y0, Tensor):
        tensors, shapes = [y0], None
    elif isinstance(y0, (tuple, list)):
        if len(y0) == 0:
            raise InvalidInputError("y0 is an empty tuple; give at least one tensor")
        if not all(isinstance(x, Tensor) for x in y0):
            raise InvalidInputError(
                "y0 must be a Tensor or a tuple of Tensors; got a tuple containing "
                + ", ".join(_describe(x) for x in y0))
        tensors, shapes = list(y0), [x.shape for x in y0]
    else:
        raise InvalidInputError(f"y0 must be a Tensor or a tuple of Tensors, got {_describe(y0)}")
    for i, x in enumerate(tensors):
        name = "y0" if shapes is None else f"y0[{i}]"
        if not (x.is_floating_point() or x.is_complex()):
            raise InvalidInputError(
                f"{name} must be floating point or complex (float32/float64/complex64/complex128),"
                f" got dtype {x.dtype}; convert it, e.g. y0.float()")
    if shapes is not None:
        dtypes = {x.dtype for x in tensors}
        devices = {x.device for x in tensors}
        if len(dtypes) > 1:
            raise InvalidInputError(f"all tensors of the tuple y0 must share a dtype, got {dtypes}")
        if len(devices) > 1:
            raise InvalidInputError(
                f"all tensors of the tuple y0 must be on one device, got {devices}")
        return torch.cat([x.reshape(-1) for x in tensors]), shapes
    return y0, None


def _check_times(t, y0: Tensor) -> tuple[Tensor, list[float]]:
    if not isinstance(t, Tensor):
        try:
            t = torch.as_tensor(t, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as e:
            raise InvalidInputError(f"t must be a 1-D tensor of times, got {type(t).__name__}") \
                from e
    if t.ndim != 1:
        raise InvalidInputError(f"t must be 1-D (a sequence of times), got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise InvalidInputError("t is empty; give at least the initial time")
    if t.is_complex():
        raise InvalidInputError(f"t must be real, got dtype {t.dtype}")
    if not t.is_floating_point():
        t = t.to(y0.real.dtype if y0.is_complex() else y0.dtype)
    try:
        vals = t.detach().double().cpu().tolist()
    except RuntimeError as e:  # a tensor without storage: batched by torch.func.vmap
        raise InvalidInputError(
            "t has no concrete values (batched by torch.func.vmap?): the solver chooses its steps "
            "from the times, so only y0 may be batched; vmap over y0 with t shared") from e
    if not all(math.isfinite(v) for v in vals):
        raise InvalidInputError("t contains NaN or inf")
    return t, vals


def _monotone_sign(vals: Sequence[float], name: str = "t") -> float:
    if len(vals) < 2:
        return 1.0
    d = [b - a for a, b in itertools.pairwise(vals)]
    if all(x > 0 for x in d):
        return 1.0
    if all(x < 0 for x in d):
        return -1.0
    bad = next(i for i, x in enumerate(d) if (x <= 0) != (d[0] <= 0) or x == 0)
    what = "repeated" if d[bad] == 0 else "not monotone"
    raise InvalidInputError(
        f"{name} must be strictly increasing or strictly decreasing; {name}[{bad}]={vals[bad]} "
        f"and {name}[{bad + 1}]={vals[bad + 1]} are {what}")


def _check_tol(tol, name: str, y0: Tensor, shapes) -> float | Tensor:
    if isinstance(tol, (tuple, list)):
        if shapes is None or len(tol) != len(shapes):
            raise InvalidInputError(
                f"{name} given as a sequence must match the tuple y0 component by component")
        parts = []
        for x, s in zip(tol, shapes, strict=True):
            parts.append(torch.as_tensor(x, dtype=y0.real.dtype, device=y0.device)
                         .expand(s).reshape(-1))
        tol = torch.cat(parts)
    if isinstance(tol, Tensor):
        if tol.numel() == 1:
            tol = float(tol)
        else:
            tol = tol.to(device=y0.device, dtype=y0.real.dtype)
            if shapes is not None and tol.shape != y0.shape:
                raise InvalidInputError(
                    f"{name} for a tuple y0 must be a number or a sequence with one entry per "
                    f"component; a tensor of shape {tuple(tol.shape)} does not match")
            if shapes is None:
                try:
                    torch.broadcast_shapes(tol.shape, y0.shape)
                except RuntimeError as e:
                    raise InvalidInputError(
                        f"{name} of shape {tuple(tol.shape)} does not broadcast against y0 of "
                        f"shape {tuple(y0.shape)}") from e
            if bool((tol < 0).any()):
                raise InvalidInputError(f"{name} must be non-negative")
            return tol
    try:
        tol = float(tol)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"{name} must be a number or a tensor, got {type(tol).__name__}") \
            from e
    if not tol >= 0:
        raise InvalidInputError(f"{name} must be a non-negative number, got {tol}")
    return tol


def _wrap_func(func, y0: Tensor, shapes, sign: float, time_dtype: torch.dtype):
    device = y0.device
    sizes = None if shapes is None else [math.prod(s) for s in shapes]
    checked = False

    def check(out):
        nonlocal checked
        if shapes is None:
            if not isinstance(out, Tensor):
                raise FuncOutputError(f"func must return a Tensor like y0, got {_describe(out)}")
            got = [out]
            want = [(y0.shape, "")]
        else:
            if not isinstance(out, (tuple, list)) or len(out) != len(shapes) or \
                    not all(isinstance(o, Tensor) for o in out):
                raise FuncOutputError(
                    f"func must return a tuple of {len(shapes)} Tensors matching y0, got "
                    f"{_describe(out)}" + (f" of length {len(out)}"
                                           if isinstance(out, (tuple, list)) else ""))
            got = list(out)
            want = [(s, f"[{i}]") for i, s in enumerate(shapes)]
        for o, (shape, idx) in zip(got, want, strict=True):
            if o.shape != shape:
                raise FuncOutputError(
                    f"func returned shape {tuple(o.shape)} for y0{idx} of shape {tuple(shape)}; "
                    "dy/dt must have the shape of y")
            if o.dtype != y0.dtype:
                raise FuncOutputError(
                    f"func returned dtype {o.dtype} for y0{idx} of dtype {y0.dtype}; "
                    "dy/dt must have the dtype of y")
            if o.device != device:
                raise FuncOutputError(
                    f"func returned a tensor on {o.device} for y0{idx} on {device}")
        checked = True

    def f(s: float, y: Tensor, perturb: int = 0) -> Tensor:
        tt = torch.scalar_tensor(sign * s, dtype=time_dtype, device=device)
        if perturb:
            tt = torch.nextafter(tt, tt + sign * perturb)
        if shapes is None:
            out = func(tt, y)
            if not checked:
                check(out)
        else:
            ys = tuple(p.view(sh) for p, sh in zip(torch.split(y, sizes), shapes, strict=True))
            out = func(tt, ys)
            if not checked:
                check(out)
            out = torch.cat([o.reshape(-1) for o in out])
        return out if sign > 0 else -out

    return f


def _callbacks(func, suffix: str, pb_state, sign, time_dtype, device):
    names = ("callback_step", "callback_accept_step", "callback_reject_step")
    cbs = [getattr(func, n + suffix, None) for n in names]
    if all(c is None for c in cbs):
        return None

    def wrap(cb):
        if cb is None:
            return None

        def call(s, y, h):
            tt = torch.scalar_tensor(sign * s, dtype=time_dtype, device=device)
            dt = torch.scalar_tensor(sign * h, dtype=time_dtype, device=device)
            cb(tt, pb_state(y), dt)

        return call

    return tuple(wrap(c) for c in cbs)


def make_problem(func, y0, t, rtol, atol, method: str | None, options: dict | None,
                 *, callback_suffix: str = "") -> Problem:
    """Validate every argument and build the normalised :class:`Problem`."""
    if not callable(func):
        raise InvalidInputError(f"func must be callable as func(t, y), got {type(func).__name__}")
    if options is not None and method is None:
        raise InvalidInputError("options were given without a method; name the method too")
    spec = get_method("dopri5" if method is None else method)
    if options is None:
        options = {}
    elif not isinstance(options, dict):
        raise InvalidInputError(f"options must be a dict, got {type(options).__name__}")
    unknown = sorted(set(options) - spec.options)
    if unknown:
        raise UnknownOptionError(
            f"method {spec.name!r} does not take option(s) {', '.join(map(repr, unknown))}; "
            f"valid options are: {', '.join(sorted(spec.options))}")
    y0_flat, shapes = _check_state(y0)
    t, vals = _check_times(t, y0_flat)
    sign = _monotone_sign(vals)
    time_dtype = y0_flat.real.dtype if y0_flat.is_complex() else y0_flat.dtype
    rtol = _check_tol(rtol, "rtol", y0_flat, shapes)
    atol = _check_tol(atol, "atol", y0_flat, shapes)
    user_norm = options.get("norm")
    if user_norm is None:
        norm = rms_norm if shapes is None else make_mixed_norm([math.prod(s) for s in shapes])
    elif not callable(user_norm):
        raise InvalidInputError("options['norm'] must be callable as norm(tensor) -> scalar")
    elif shapes is None:
        norm = user_norm
    else:
        sizes = [math.prod(s) for s in shapes]

        def norm(x, _n=user_norm, _sizes=sizes, _shapes=shapes):
            return _n(tuple(p.view(s) for p, s in zip(torch.split(x, _sizes), _shapes,
                                                       strict=True)))
    f = _wrap_func(func, y0_flat, shapes, sign, time_dtype)
    pb = Problem(f=f, y0=y0_flat, t=t, t_out=[sign * v for v in vals], sign=sign, shapes=shapes,
                 method=spec, options=dict(options), rtol=rtol, atol=atol, norm=norm,
                 callbacks=None, time_dtype=time_dtype, user_func=func)
    pb.callbacks = _callbacks(func, callback_suffix, pb.user_state, sign, time_dtype,
                              y0_flat.device)
    return pb
