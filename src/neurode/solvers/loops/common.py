"""What both loops share: the result of a solve, failure reports, callbacks.

Statuses are [`Status`][neurode.Status] codes per row; a failure is turned into the named
exception (with the user's time and step) only when the caller asks for it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

from neurode.errors import SolverError, Status
from neurode.solvers.problem import Callbacks, Problem

__all__ = ["LoopResult", "RowStore", "StepRecord", "call_callbacks", "failure",
           "warn_unused_callbacks"]


class RowStore:
    """States ``(1, N)`` copied into blocks of rows (about 4 MB each), read back as ``(1, N)``
    views: the checkpoints of a long solve. Thousands of separately allocated states, each
    between one step's temporaries, fragment the C heap (glibc kept 3-4x the stored bytes
    resident at 10,000 steps of a 32 KB state); a few large blocks do not."""

    BLOCK_BYTES = 4 << 20

    def __init__(self) -> None:
        self.blocks: list[Tensor] = []
        self.rows = 0
        self.n = 0

    def append(self, y: Tensor) -> None:
        flat = y.reshape(-1)
        if self.n == 0:
            self.rows = max(1, min(1024, self.BLOCK_BYTES // max(1, flat.numel()
                                                                * flat.element_size())))
        k = self.n % self.rows
        if k == 0:
            self.blocks.append(torch.empty((self.rows, flat.numel()), dtype=flat.dtype,
                                           device=flat.device))
        with torch.no_grad():  # a replay record: values only
            self.blocks[-1][k].copy_(flat)
        self.n += 1

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Tensor:
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.blocks[i // self.rows][i % self.rows].unsqueeze(0)

    def __iter__(self):
        return (self[i] for i in range(self.n))


@dataclass
class StepRecord:
    """Accepted steps of a joint solve, in order: start time and signed-free step (internal
    forward floats), start state ``(1, N)`` and, for dense output, end state and dense info.

    With ``contiguous=True`` the start states are copied into a `RowStore` (the checkpointed
    adjoint's record, kept without a graph) instead of referenced one by one."""

    t: list[float] = field(default_factory=list)
    h: list[float] = field(default_factory=list)
    y: list[Tensor] | RowStore = field(default_factory=list)
    y1: list[Tensor | None] = field(default_factory=list)
    dense: list[object] = field(default_factory=list)
    contiguous: bool = False

    def __post_init__(self) -> None:
        if self.contiguous:
            self.y = RowStore()

    def append(self, t: float, h: float, y: Tensor, y1: Tensor | None = None,
               dense: object = None) -> None:
        self.t.append(t)
        self.h.append(h)
        self.y.append(y)
        self.y1.append(y1)
        self.dense.append(dense)


@dataclass
class LoopResult:
    """Outcome of a loop. Counters and statuses are ``(B,)`` tensors (``B = 1`` joint).

    ``ys`` ``(T, B, N)`` holds the outputs (NaN rows where a row failed first); ``t_final`` the
    internal time each row reached; ``fail_dt`` the step that failed; ``h_next`` the step the
    controller proposes after the last one (adaptive); ``record`` the accepted steps (joint, when
    asked for); ``steps`` the per-sample step log (per-sample adjoint); ``event`` the located
    event ``(s, y, row)`` when an event function was given; ``extra`` loop-specific data (ALF's
    final ``v``, output step indices).
    """

    ys: Tensor
    status: Tensor
    t_final: Tensor
    n_steps: Tensor
    n_accepted: Tensor
    nfe: int | Tensor
    fail_dt: Tensor | None = None
    h_next: Tensor | None = None
    n_jac: int = 0
    n_lu: int = 0
    host_syncs: int = 0
    iterations: int = 0
    record: StepRecord | None = None
    steps: list | None = None
    event: tuple | None = None
    extra: dict = field(default_factory=dict)
    newton: tuple[int, float] | None = None

    @property
    def n_rejected(self) -> Tensor:
        return self.n_steps - self.n_accepted

    def ok(self) -> bool:
        """True if every row succeeded (one host read)."""
        return bool((self.status >= 0).all())


def _fmt(t: float) -> str:
    return f"{t:.6g}"


def _row_message(pb: Problem, code: Status, t: float, dt: float, n_steps: int,
                 t_end: float | None, newton: tuple[int, float] | None) -> str:
    """The message of one failed row; ``t``/``dt`` in the user's time."""
    family = pb.opts.control or pb.opts.scipy or pb.opts.grid
    max_steps = getattr(family, "max_num_steps", None)
    if code == Status.MAX_STEPS:
        end = "" if t_end is None or not math.isfinite(t_end) else f" before t={_fmt(t_end)}"
        if t_end is not None and math.isinf(t_end):  # an event search
            return (f"max_num_steps={max_steps} reached at t={_fmt(t)} without an event (an event "
                    "search takes at most 50,000 steps unless options['max_num_steps'] says "
                    "otherwise); check event_fn, or raise options['max_num_steps']")
        return (f"max_num_steps={max_steps} reached at t={_fmt(t)}{end}; raise "
                "options['max_num_steps'], loosen rtol/atol, or check for stiffness")
    if code == Status.NON_FINITE:
        if n_steps == 0:
            return ("non-finite value (NaN or inf) in y0 or in func(t, y0) at the initial time "
                    f"t={_fmt(t)}")
        return ("func returned a non-finite value (NaN or inf) for every step from "
                f"t={_fmt(t)}, however small")
    if code == Status.STEP_SIZE_TOO_SMALL:
        hint = {"alf": "or too dissipative for ALF: try a damped step, options['eta'] < 1, or "
                       "looser rtol/atol",
                "radau": "try looser rtol/atol, or check func"}.get(
            pb.method.name, "try a stiff method, or looser rtol/atol")
        return (f"step size underflow: dt={abs(dt):.3e} at t={_fmt(t)}; the problem may be stiff "
                f"or singular there ({hint})")
    if code == Status.NEWTON_FAILED:
        iters, rate = newton if newton is not None else (0, math.nan)
        return (f"{pb.method.name}: Newton's method did not converge in the step from "
                f"t={_fmt(t)} with dt={dt:.3e} ({iters} iterations, contraction rate {rate:.2g}); "
                "try a smaller step_size, options['max_iters'] higher, "
                "options['jacobian']='autodiff' (exact), or an adaptive stiff method ('radau')")
    return f"{code.message} at t={_fmt(t)}"


def failure(pb: Problem, res: LoopResult, t_end: Tensor | float | None = None
            ) -> SolverError | None:
    """The error of the first failed row (the message counts them all), or None."""
    status = res.status.tolist()
    failed = [b for b, s in enumerate(status) if s < 0]
    if not failed:
        return None
    b = failed[0]
    code = Status(status[b])
    t = pb.sign * float(res.t_final[b])
    dt = pb.sign * float(res.fail_dt[b]) if res.fail_dt is not None else 0.0
    if isinstance(t_end, Tensor):
        t_end = float(t_end[b])
    te = None if t_end is None else pb.sign * t_end
    located = res.extra.get("non_finite_step")
    if "message" in res.extra:
        msg = res.extra["message"]
    elif code == Status.NON_FINITE and located is not None:
        a, h = located
        t, dt = pb.sign * a, pb.sign * h
        msg = (f"non-finite value (NaN or inf) appeared in the step from t={_fmt(t)} to "
               f"t={_fmt(t + dt)}; reduce the step size or check func")
    else:
        msg = _row_message(pb, code, t, dt, int(res.n_steps[b]), te, res.newton)
    if pb.per_sample:
        # the row's own message first (torchdiffeq's max-steps message starts with
        # "max_num_steps", which code matches on), then how many samples failed
        msg = f"{msg} (sample {b}; {len(failed)} of {len(status)} samples failed)"
    return code.error(msg, t=t, dt=dt)


def call_callbacks(cb: Callbacks, pb: Problem, which: str, s: Tensor, y: Tensor, ds: Tensor,
                   mask: Tensor | None = None) -> None:
    """Call ``cb.<which>(t, y, dt)`` in the user's time and structure (per-sample: the rows in
    ``mask``, or all rows for ``step``)."""
    fn = getattr(cb, which)
    if fn is None:
        return
    L = pb.layout
    tu, du = pb.sign * s, pb.sign * ds
    if L.per_sample:
        if mask is not None:
            idx = mask.nonzero().flatten()
            if idx.numel() == 0:
                return
            tu, du, y = tu[idx], du[idx], y[idx]
            shapes = L.shapes
            parts = [y] if not L.is_tuple else torch.split(y, L.sizes, dim=1)
            state = tuple(p.reshape(len(idx), *s_) for p, s_ in zip(parts, shapes, strict=True))
            fn(tu.to(pb.time_dtype), state if L.is_tuple else state[0], du.to(pb.time_dtype))
            return
        fn(tu.to(pb.time_dtype), L.to_user(y), du.to(pb.time_dtype))
        return
    fn(tu.to(pb.time_dtype).reshape(()), L.to_user(y), du.to(pb.time_dtype).reshape(()))


def warn_unused_callbacks(pb: Problem, rejects: bool, callbacks: bool = True) -> None:
    """A callback the method never calls is a warning, not a silent no-op."""
    cb = pb.callbacks
    if cb is None:
        return
    names = []
    if not callbacks:
        names = [n for n, c in (("callback_step", cb.step), ("callback_accept_step", cb.accept),
                                ("callback_reject_step", cb.reject)) if c is not None]
    elif not rejects and cb.reject is not None:
        names = ["callback_reject_step"]
    if names:
        why = "never rejects a step" if callbacks else "does not call step callbacks"
        warnings.warn(f"method {pb.method.name!r} {why}, so func.{' and func.'.join(names)} "
                      "will never be called", UserWarning, stacklevel=4)
