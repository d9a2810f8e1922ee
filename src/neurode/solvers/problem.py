"""The front door: validate and normalise a user's problem once, so the loops see the simple case.

`make_problem` checks ``func``, ``y0``, ``t``, the tolerances and the options and returns a
frozen `Problem`:

* the state as a ``(B, N)`` tensor (`Layout`): ``B = 1`` for a joint solve, the batch for a
  per-sample one; tuple states are flattened and concatenated along ``N``;
* time as internal forward floats ``s = sign·t`` (``sign = −1`` for decreasing ``t``); steppers
  combine stages with the signed step, so the user's field is evaluated as it is;
* the options parsed into typed configs (`neurode.solvers.options`), time-valued ones mapped
  to internal time;
* the `Field` that calls ``func`` in the user's structure and checks its first output.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from neurode.errors import FuncOutputError, InvalidInputError
from neurode.solvers.norms import RowNorm, make_row_norm
from neurode.solvers.options import Options, parse_options
from neurode.solvers.registry import MethodSpec, explicit_for, get_method

__all__ = ["Callbacks", "Field", "Layout", "Problem", "make_problem"]

State = Tensor | tuple[Tensor, ...]


def describe(x) -> str:
    if isinstance(x, Tensor):
        return f"Tensor(shape={tuple(x.shape)}, dtype={x.dtype}, device={x.device})"
    return type(x).__name__


@dataclass(frozen=True)
class Layout:
    """How the user's state maps to the internal ``(B, N)`` tensor.

    ``shapes`` are the component shapes (without the batch dimension in per-sample mode);
    ``is_tuple`` says whether the user's state is a tuple.
    """

    shapes: tuple[torch.Size, ...]
    is_tuple: bool
    batch: int
    per_sample: bool
    dtype: torch.dtype
    device: torch.device

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def n(self) -> int:
        return sum(self.sizes)

    @property
    def real_dtype(self) -> torch.dtype:
        return self.dtype.to_real() if self.dtype.is_complex else self.dtype

    def to_user(self, y: Tensor) -> State:
        """``(B, N)`` → the user's structure (views, no copy)."""
        lead = (self.batch,) if self.per_sample else ()
        if not self.is_tuple:
            return y.view((*lead, *self.shapes[0]))
        return tuple(p.view((*lead, *s)) for p, s in zip(torch.split(y, self.sizes, dim=-1),
                                                          self.shapes, strict=True))

    def from_user(self, out: State) -> Tensor:
        """The user's structure → ``(B, N)``."""
        if not self.is_tuple:
            return out.reshape(self.batch, -1)
        flat = torch.cat([o.reshape(self.batch, -1) for o in out], dim=1)
        # components of narrower dtypes (a float32 log-density beside a float64 state) are
        # promoted, as torchdiffeq's concatenation does
        return flat if flat.dtype == self.dtype else flat.to(self.dtype)

    def trajectory(self, ys: Tensor) -> State:
        """``(T, B, N)`` outputs → ``(T, *y0.shape)`` (a tuple of such for a tuple state)."""
        T = ys.shape[0]
        lead = (T, self.batch) if self.per_sample else (T,)
        if not self.is_tuple:
            return ys.reshape((*lead, *self.shapes[0]))
        return tuple(p.reshape((*lead, *s)) for p, s in zip(torch.split(ys, self.sizes, dim=-1),
                                                             self.shapes, strict=True))


class Field:
    """``func`` evaluated on an internal ``(B, N)`` state: ``field(t_user, y) -> (B, N)``.

    ``t_user`` is the time ``func`` receives (0-d for a joint solve, ``(B,)`` per sample, in the
    problem's time dtype). The first output is checked for structure, shape, dtype and device.
    ``nfe`` counts the calls, except while ``counting`` is off (inside a compiled step, where a
    Python counter would force a recompilation per call; the loop counts those itself).
    """

    def __init__(self, func: Callable, layout: Layout):
        self.func = func
        self.layout = layout
        self.checked = False
        self.nfe = 0
        self.counting = True
        self._simple = not layout.is_tuple
        self._shape = ((layout.batch,) if layout.per_sample else ()) + tuple(layout.shapes[0]) \
            if self._simple else None
        self._flat = (layout.batch, layout.n)

    def __call__(self, tu: Tensor, y: Tensor) -> Tensor:
        if self.counting:
            self.nfe += 1
        if self._simple:
            out = self.func(tu, y.view(self._shape))
            if not self.checked:
                self._check(out)
            return out.view(self._flat) if out.is_contiguous() else out.reshape(self._flat)
        out = self.func(tu, self.layout.to_user(y))
        if not self.checked:
            self._check(out)
        return self.layout.from_user(out)

    def user(self, tu: Tensor, y: Tensor) -> Tensor:
        """``func(tu, y)`` on a state already in the user's shape (one tensor); the value is
        returned as ``func`` gave it."""
        if self.counting:
            self.nfe += 1
        out = self.func(tu, y)
        if not self.checked:
            self._check(out)
        return out

    @property
    def user_shape(self) -> tuple[int, ...] | None:
        """The shape ``func`` sees for a one-tensor state (None for a tuple state)."""
        return self._shape

    def _check(self, out) -> None:
        L = self.layout
        lead = (L.batch,) if L.per_sample else ()
        if not L.is_tuple:
            if not isinstance(out, Tensor):
                raise FuncOutputError(f"func must return a Tensor like y0, got {describe(out)}")
            got, want = [out], [(torch.Size((*lead, *L.shapes[0])), "")]
        else:
            if not isinstance(out, (tuple, list)) or len(out) != len(L.shapes) or \
                    not all(isinstance(o, Tensor) for o in out):
                raise FuncOutputError(
                    f"func must return a tuple of {len(L.shapes)} Tensors matching y0, got "
                    f"{describe(out)}" + (f" of length {len(out)}"
                                          if isinstance(out, (tuple, list)) else ""))
            got = list(out)
            want = [(torch.Size((*lead, *s)), f"[{i}]") for i, s in enumerate(L.shapes)]
        for o, (shape, idx) in zip(got, want, strict=True):
            if o.shape != shape:
                raise FuncOutputError(
                    f"func returned shape {tuple(o.shape)} for y0{idx} of shape {tuple(shape)}; "
                    "dy/dt must have the shape of y")
            if o.dtype != L.dtype and not (
                    L.is_tuple and torch.promote_types(o.dtype, L.dtype) == L.dtype):
                raise FuncOutputError(
                    f"func returned dtype {o.dtype} for y0{idx} of dtype {L.dtype}; "
                    "dy/dt must have the dtype of y")
            if o.device != L.device:
                raise FuncOutputError(
                    f"func returned a tensor on {o.device} for y0{idx} on {L.device}")
        self.checked = True


@dataclass(frozen=True)
class Callbacks:
    """``func``'s step hooks (any may be None), called with the user's time, state and step."""

    step: Callable | None
    accept: Callable | None
    reject: Callable | None


@dataclass(frozen=True)
class Problem:
    """A normalised initial value problem (see the module docstring)."""

    func: Callable
    layout: Layout
    field: Field
    y0: Tensor
    t: Tensor
    sign: float
    t_out: tuple[float, ...]
    t_eval: Tensor | None
    method: MethodSpec
    opts: Options
    rtol: float | Tensor
    atol: float | Tensor
    norm: RowNorm
    callbacks: Callbacks | None
    time_dtype: torch.dtype
    step_t: tuple[float, ...] = ()
    jump_t: tuple[float, ...] = ()

    @property
    def per_sample(self) -> bool:
        return self.layout.per_sample

    @property
    def is_tuple(self) -> bool:
        return self.layout.is_tuple

    def user_time(self, s: float) -> Tensor:
        """Internal forward time ``s`` as the time tensor ``func`` receives."""
        return torch.scalar_tensor(self.sign * s, dtype=self.time_dtype, device=self.y0.device)

    def with_y0(self, y0: Tensor) -> Problem:
        """The same problem from another initial state ``(B, N)``."""
        return replace(self, y0=y0)

    def with_func(self, func: Callable) -> Problem:
        """The same problem with another vector field (same structure)."""
        return replace(self, func=func, field=Field(func, self.layout))


# --- checks ------------------------------------------------------------------------------------


def check_state(y0, per_sample: bool) -> tuple[list[Tensor], bool]:
    if isinstance(y0, Tensor):
        tensors, is_tuple = [y0], False
    elif isinstance(y0, (tuple, list)):
        if len(y0) == 0:
            raise InvalidInputError("y0 is an empty tuple; give at least one tensor")
        if not all(isinstance(x, Tensor) for x in y0):
            raise InvalidInputError(
                "y0 must be a Tensor or a tuple of Tensors; got a tuple containing "
                + ", ".join(describe(x) for x in y0))
        tensors, is_tuple = list(y0), True
    else:
        raise InvalidInputError(f"y0 must be a Tensor or a tuple of Tensors, got {describe(y0)}")
    for i, x in enumerate(tensors):
        name = "y0" if not is_tuple else f"y0[{i}]"
        if not (x.is_floating_point() or x.is_complex()):
            raise InvalidInputError(
                f"{name} must be floating point or complex (float32/float64/complex64/complex128),"
                f" got dtype {x.dtype}; convert it, e.g. y0.float()")
        if per_sample and (x.ndim < 1 or x.shape[0] == 0):
            raise InvalidInputError(
                f"per-sample {name} must have a batch dimension: (B, ...), got shape "
                f"{tuple(x.shape)}")
    if is_tuple:
        dtypes = {x.dtype for x in tensors}
        devices = {x.device for x in tensors}
        if len(dtypes) > 1:
            # as torchdiffeq (which concatenates the tuple): solve in the promoted dtype; the
            # solution's components come back in it
            common = functools.reduce(torch.promote_types, dtypes)
            tensors = [x.to(common) for x in tensors]
        if len(devices) > 1:
            raise InvalidInputError(
                f"all tensors of the tuple y0 must be on one device, got {devices}")
        if per_sample and len({x.shape[0] for x in tensors}) > 1:
            raise InvalidInputError("per-sample: every tensor of the tuple y0 must have the same "
                                    "batch size (dimension 0)")
    return tensors, is_tuple


def _as_time_tensor(t, y0: Tensor) -> Tensor:
    if not isinstance(t, Tensor):
        try:
            t = torch.as_tensor(t, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as e:
            raise InvalidInputError(f"t must be a 1-D tensor of times, got {type(t).__name__}") \
                from e
    if t.is_complex():
        raise InvalidInputError(f"t must be real, got dtype {t.dtype}")
    if not t.is_floating_point():
        t = t.to(y0.real.dtype if y0.is_complex() else y0.dtype)
    return t


def _host_times(t: Tensor) -> list:
    try:
        return t.detach().double().cpu().tolist()
    except RuntimeError as e:  # a tensor without storage: batched by torch.func.vmap
        raise InvalidInputError(
            "t has no concrete values (batched by torch.func.vmap?): the solver chooses its steps "
            "from the times, so only y0 may be batched; vmap over y0 with t shared") from e


def monotone_sign(vals: Sequence[float], name: str = "t") -> float:
    """+1 (strictly increasing), −1 (strictly decreasing); InvalidInputError otherwise."""
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


def _check_times(t, y0: Tensor, per_sample: bool, batch: int):
    """``(t, sign, t_out, t_eval)``: joint solves get host floats, per-sample a device tensor."""
    t = _as_time_tensor(t, y0)
    if not per_sample or t.ndim == 1:
        if t.ndim != 1:
            raise InvalidInputError(
                f"t must be 1-D (a sequence of times), got shape {tuple(t.shape)}"
                + ("; per-sample mode also takes (B, T)" if per_sample else ""))
        if t.numel() == 0:
            raise InvalidInputError("t is empty; give at least the initial time")
        vals = _host_times(t)
        if not all(math.isfinite(v) for v in vals):
            raise InvalidInputError("t contains NaN or inf")
        sign = monotone_sign(vals)
        t_out = tuple(sign * v for v in vals)
        if not per_sample:
            return t, sign, t_out, None
        t_eval = torch.tensor(t_out, dtype=torch.float64, device=y0.device)
        return t, sign, t_out, t_eval.unsqueeze(0).expand(batch, -1).contiguous()
    if t.ndim != 2:
        raise InvalidInputError(
            f"t must be (T,) or (B, T) in per-sample mode, got shape {tuple(t.shape)}")
    if t.shape[0] != batch:
        raise InvalidInputError(f"per-sample t of shape {tuple(t.shape)} must have one row per "
                                f"sample: expected ({batch}, T)")
    if t.shape[1] < 1:
        raise InvalidInputError("t must contain at least one time")
    t2 = t.detach().to(device=y0.device, dtype=torch.float64)
    if not bool(torch.isfinite(t2).all()):
        raise InvalidInputError("t contains NaN or inf")
    sign = 1.0
    if t2.shape[1] > 1:
        d = t2[:, 1:] - t2[:, :-1]
        if bool((d > 0).all()):
            sign = 1.0
        elif bool((d < 0).all()):
            sign = -1.0
        else:
            raise InvalidInputError(
                "t must be strictly increasing (or strictly decreasing) in every row, in the "
                "same direction for all samples")
    return t, sign, (), (sign * t2).contiguous()


def _check_tol(tol, name: str, tensors: list[Tensor], is_tuple: bool, layout_dtype,
               device, per_sample: bool):
    """A number, or a flat real tensor broadcasting against the ``(B, N)`` state."""
    rdtype = layout_dtype.to_real() if layout_dtype.is_complex else layout_dtype
    lead = 1 if per_sample else 0
    if isinstance(tol, (tuple, list)):
        if not is_tuple or len(tol) != len(tensors):
            raise InvalidInputError(
                f"{name} given as a sequence must match the tuple y0 component by component")
        parts = []
        for x, y in zip(tol, tensors, strict=True):
            v = torch.as_tensor(x, dtype=rdtype, device=device)
            shape = y.shape[lead:]
            try:
                parts.append(v.expand(shape).reshape(-1))
            except RuntimeError as e:
                raise InvalidInputError(
                    f"{name}: an entry of shape {tuple(v.shape)} does not broadcast against its "
                    f"component of shape {tuple(shape)}") from e
        tol = torch.cat(parts)
    if isinstance(tol, Tensor):
        if tol.is_complex():
            raise InvalidInputError(f"{name} must be real, got dtype {tol.dtype}")
        if tol.numel() == 1:
            tol = float(tol)
        else:
            tol = tol.detach().to(device=device, dtype=rdtype)
            if is_tuple:
                n = sum(math.prod(x.shape[lead:]) for x in tensors)
                if tol.shape != (n,):
                    raise InvalidInputError(
                        f"{name} for a tuple y0 must be a number or a sequence with one entry per "
                        f"component; a tensor of shape {tuple(tol.shape)} does not match")
            else:
                y = tensors[0]
                try:
                    full = tol.expand(y.shape) if tol.ndim <= y.ndim else None
                    torch.broadcast_shapes(tol.shape, y.shape)
                except RuntimeError as e:
                    raise InvalidInputError(
                        f"{name} of shape {tuple(tol.shape)} does not broadcast against y0 of "
                        f"shape {tuple(y.shape)}") from e
                if full is None:
                    raise InvalidInputError(
                        f"{name} of shape {tuple(tol.shape)} has more dimensions than y0 "
                        f"{tuple(y.shape)}")
                B = y.shape[0] if per_sample else 1
                tol = full.reshape(B, -1).contiguous()
            if not bool(torch.isfinite(tol).all()) or bool((tol < 0).any()):
                raise InvalidInputError(f"{name} must be non-negative and finite")
            return tol
    try:
        tol = float(tol)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"{name} must be a number or a tensor, got {type(tol).__name__}") \
            from e
    if not (tol >= 0 and math.isfinite(tol)):
        raise InvalidInputError(f"{name} must be a non-negative number, got {tol}")
    return tol


def _zero_tolerance(rtol, atol) -> bool:
    """Whether some component has ``rtol = atol = 0`` (no step can meet a zero tolerance)."""
    both = (rtol == 0) & (atol == 0)
    return bool(both.any()) if isinstance(both, Tensor) else bool(both)


def _callbacks(func, suffix: str) -> Callbacks | None:
    cbs = [getattr(func, f"callback_{n}{suffix}", None)
           for n in ("step", "accept_step", "reject_step")]
    if all(c is None for c in cbs):
        return None
    return Callbacks(*cbs)


def make_problem(func, y0, t, rtol, atol, method: str | None, options: dict[str, Any] | None,
                 *, callback_suffix: str = "", per_sample: bool | None = None,
                 allow_seminorm: bool = False) -> Problem:
    """Validate every argument and build the normalised `Problem`.

    ``per_sample`` None: as ``options["per_sample"]`` says (default False).
    """
    if not callable(func):
        raise InvalidInputError(f"func must be callable as func(t, y), got {type(func).__name__}")
    spec = get_method("dopri5" if method is None else method)  # torchdiffeq's default
    opts = parse_options(spec.name, spec.families, options, spec.defaults)
    if per_sample is None:
        per_sample = opts.per_sample.per_sample
    if per_sample and not spec.per_sample:
        raise InvalidInputError(
            f"per-sample solving needs an adaptive explicit method (e.g. 'dopri5', 'tsit5', "
            f"'bosh3', 'alf'); method {spec.name!r} does not support it")
    if not per_sample and opts.per_sample.max_outputs_per_step is not None:
        raise InvalidInputError("options['max_outputs_per_step'] applies to per-sample solving "
                                "only; add options['per_sample'] = True or drop it")
    if opts.norm == "seminorm" and not allow_seminorm:
        raise InvalidInputError(
            "options['norm'] = 'seminorm' applies to the adjoint's backward solve "
            "(adjoint_options) and to odeint_jvp; give a callable norm here")
    tensors, is_tuple = check_state(y0, per_sample)
    first = tensors[0]
    B = first.shape[0] if per_sample else 1
    lead = 1 if per_sample else 0
    layout = Layout(shapes=tuple(x.shape[lead:] for x in tensors), is_tuple=is_tuple, batch=B,
                    per_sample=per_sample, dtype=first.dtype, device=first.device)
    y_flat = layout.from_user(tuple(tensors) if is_tuple else first)
    t, sign, t_out, t_eval = _check_times(t, first, per_sample, B)
    time_dtype = layout.real_dtype
    rtol = _check_tol(rtol, "rtol", tensors, is_tuple, layout.dtype, layout.device, per_sample)
    atol = _check_tol(atol, "atol", tensors, is_tuple, layout.dtype, layout.device, per_sample)
    if per_sample and spec.name == "auto":
        # Radau solves joint problems only: per sample, "auto" is the explicit method of the
        # tolerance, with that method's options (Newton's would never be used)
        spec = get_method(explicit_for(rtol))
        opts = parse_options(spec.name, spec.families, options, spec.defaults)
    if spec.adaptive and layout.real_dtype in (torch.float16, torch.bfloat16):
        eps = torch.finfo(layout.real_dtype).eps
        r_min = float(rtol.min()) if isinstance(rtol, Tensor) else rtol
        if r_min < eps:
            raise InvalidInputError(
                f"y0 is {layout.real_dtype} (machine epsilon {eps:.1e}): an adaptive method cannot "
                f"meet rtol={r_min:g} in that precision; solve in float32 (y0.float(), and the "
                f"field's parameters) or give rtol ≥ {eps:.0e}")
    if spec.adaptive and _zero_tolerance(rtol, atol):
        raise InvalidInputError(
            "rtol and atol are both 0 (for some component): no step can meet a zero error "
            "tolerance; give atol > 0 or rtol > 0")
    user_norm = opts.norm if callable(opts.norm) else None
    norm = make_row_norm(user_norm, layout.sizes if is_tuple else None, layout.to_user, B,
                         per_sample, layout.n, layout.real_dtype, layout.device)
    control = opts.control
    step_t = jump_t = ()
    if control is not None:
        step_t = tuple(sorted(sign * v for v in control.step_t))
        jump_t = tuple(sorted(sign * v for v in control.jump_t))
    return Problem(func=func, layout=layout, field=Field(func, layout), y0=y_flat, t=t,
                   sign=sign, t_out=t_out, t_eval=t_eval, method=spec, opts=opts, rtol=rtol,
                   atol=atol, norm=norm, callbacks=_callbacks(func, callback_suffix),
                   time_dtype=time_dtype, step_t=step_t, jump_t=jump_t)
