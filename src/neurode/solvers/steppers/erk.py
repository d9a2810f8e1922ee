"""The one explicit Runge–Kutta stepper, driven by a
[`ButcherTableau`][neurode.ButcherTableau].

With the step size a tensor (device decisions, per-sample solves), the stages of a step live in
a stage-major buffer ``K`` of shape ``(S_d, B, N)`` (``S_d`` dense stages: the method's stages,
``f(t+h, y1)`` unless FSAL, DOP853's extra dense stages), seen as the matrix ``(S_d, B·N)``:

* a stage input is one matrix product over the earlier stages — ``y + (h·A[i, :i]) @ K[:i]``
  for a joint solve, ``y + h_b · (A[i, :i] @ K[:i])`` per row ``b`` of a per-sample one (the
  coefficients are shared, the step sizes are not);
* the error estimate is ``E @ K`` (one product for both of DOP853's estimates), and the dense
  output's polynomial coefficients are ``P @ K`` (then a Horner sweep per output window).

The same few operations serve every tableau and every row. While nothing in the solve is
tracked by autograd the loop reuses a ring of buffers whose slices are made once; once a stage
value requires grad each step gets a fresh buffer (the in-place stage writes are then recorded,
and no saved input is overwritten). With the step size a host float the stages are a list of
tensors instead (`HostStages`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import torch
from torch import Tensor

from neurode.solvers.steppers.base import StageTimes, StepOut, nudge
from neurode.solvers.tableau import ButcherTableau

__all__ = ["ExplicitRK", "StageBuffer"]


def _dense_matrix(tab: ButcherTableau) -> tuple[list[list[float]], list[float], int]:
    """``(Ad, c_dense, y1_stage)``: row ``i`` of ``Ad`` combines the dense stages before ``i``
    into the input of dense stage ``i``; ``y1_stage`` is the stage whose input is ``y1``
    (the FSAL stage, or the extra stage ``f(t+h, y1)``)."""
    S = tab.stages
    n = tab.n_dense
    Ad = [[0.0] * n for _ in range(n)]
    for i, row in enumerate(tab.a):
        Ad[i][:len(row)] = list(row)
    c = list(tab.c)
    if not tab.fsal:
        Ad[S][:S] = list(tab.b)
        c.append(1.0)
    first_extra = S if tab.fsal else S + 1
    for k, (ci, row) in enumerate(zip(tab.extra_c, tab.extra_a, strict=True)):
        Ad[first_extra + k][:len(row)] = list(row)
        c.append(ci)
    return Ad, c, (S - 1 if tab.fsal else S)


def _untracked() -> bool:
    """Outside autograd and outside ``torch.func`` transforms: buffers may be reused in place."""
    return not torch.is_grad_enabled() and torch._C._functorch.peek_interpreter_stack() is None


class _HostPlan(NamedTuple):
    """A tableau's numbers as the host path uses them (made once per tableau)."""

    c: tuple[float, ...]  # the dense stages' nodes
    y1_stage: int
    c_one: tuple[int, ...]  # stages after k0 at c = 1
    rows_nz: tuple  # per dense stage: its input's non-zero (stage, a_ij)
    plan: tuple  # per stage after k0: (index, node, row, c = 1), without / with f(t + h, y1)
    err_nz: tuple  # the error rows' non-zero (stage, e_j)
    dense_rows: tuple  # the dense polynomials' non-zero (stage, coefficients) rows


@lru_cache(maxsize=64)
def _host_plan(tab: ButcherTableau) -> _HostPlan:
    Ad, c, y1_stage = _dense_matrix(tab)
    c = tuple(float(x) for x in c)
    c_one = tuple(i for i in range(y1_stage + 1) if c[i] == 1.0 and i > 0)
    rows_nz = tuple(_nonzero(r) for r in Ad)
    stage_plan = [(i, c[i], rows_nz[i], i in c_one) for i in range(1, y1_stage + 1)]
    err_nz = () if tab.b_error is None else (
        _nonzero(tab.b_error), *(() if tab.b_error_low is None
                                 else (_nonzero(tab.b_error_low),)))
    dense_rows = () if tab.dense is None else tuple(
        (j, tuple(float(x) for x in row)) for j, row in enumerate(tab.dense)
        if any(x != 0.0 for x in row))
    return _HostPlan(c, y1_stage, c_one, rows_nz, (tuple(stage_plan[:-1]), tuple(stage_plan)),
                     err_nz, dense_rows)


@lru_cache(maxsize=64)
def _constants(tab: ButcherTableau, dtype: torch.dtype, device: torch.device):
    """Device tensors of a tableau in the state's dtype: ``A (S_d, S_d)``, error rows
    ``E (e, S_e)`` and the dense polynomials ``P (D, S_d)`` with
    ``b_j(θ) = Σ_p P[p, j] θ^(p+1)``."""
    Ad, _, _ = _dense_matrix(tab)
    A = torch.tensor(Ad, dtype=torch.float64).to(dtype=dtype, device=device)
    E = None
    if tab.b_error is not None:
        rows = [tab.b_error] + ([tab.b_error_low] if tab.b_error_low is not None else [])
        width = max(len(r) for r in rows)
        E = torch.tensor([list(r) + [0.0] * (width - len(r)) for r in rows],
                         dtype=torch.float64).to(dtype=dtype, device=device)
    P = None
    if tab.dense is not None:
        P = torch.tensor(tab.dense, dtype=torch.float64).T.contiguous().to(
            dtype=dtype, device=device)
    return A, E, P


class StageBuffer:
    """A stage-major buffer ``K`` of shape ``(S_d, B, N)`` (module docstring).

    ``views``: its slices are made once (a buffer the loop reuses, outside autograd). Otherwise
    the in-place stage writes are recorded by autograd and `col` and `put` slice
    afresh. Stage values may be written in the user's shape (simple states).
    """

    __slots__ = ("K", "cols", "complete", "flat", "slots", "uslots")

    def __init__(self, K: Tensor, views: bool, ushape):
        self.K = K
        S = K.shape[0]
        self.flat = K.view(S, -1) if views else None
        if views:
            self.cols = [self.flat[:i] for i in range(S + 1)]
            self.slots = [K[i] for i in range(S)]  # (not unbind: its views refuse in-place writes)
            self.uslots = None if ushape is None else [x.view(ushape) for x in self.slots]
        else:
            self.cols = self.slots = self.uslots = None
        self.complete = False  # the extra dense stages are filled in

    def mat(self) -> Tensor:
        """All stages as a matrix ``(S_d, B·N)``."""
        return self.flat if self.flat is not None else self.K.view(self.K.shape[0], -1)

    def col(self, i: int) -> Tensor:
        """The first ``i`` stages as a matrix ``(i, B·N)``."""
        return self.cols[i] if self.cols is not None else self.mat()[:i]

    def slot(self, i: int) -> Tensor:
        """Stage ``i`` as ``(B, N)``."""
        return self.slots[i] if self.slots is not None else self.K[i]

    def put(self, i: int, k: Tensor) -> None:
        """Write stage ``i``: ``k`` is ``(B, N)``, or in the user's shape (simple states)."""
        if self.slots is not None and k.requires_grad:
            # the first value autograd tracks: slices made before it may not be written or read
            # any more (the buffer stops being a leaf), so slice afresh from now on
            self.cols = self.slots = self.uslots = self.flat = None
        if self.slots is None:
            self.K[i] = k.view(self.K.shape[1:]) if k.is_contiguous() else \
                k.reshape(self.K.shape[1:])
        elif self.uslots is not None and k.shape == self.uslots[i].shape:
            self.uslots[i].copy_(k)
        else:
            self.slots[i].copy_(k)


class HostStages:
    """The stages of a step whose size is a host float: a list of ``(1, N)`` tensors.

    With the step size a Python number, a stage input is a chain of ``y + (h·a_ij)·k_j``
    operations (no buffer, no copy), the cheapest form on the CPU for the few stages of a
    Runge–Kutta method; the dense output stacks them when it needs them.
    """

    __slots__ = ("complete", "ks", "n")

    def __init__(self, ks: list[Tensor], n: int):
        self.ks = ks  # in the field's own shape
        self.n = n
        self.complete = False

    def slot(self, i: int) -> Tensor:
        return self.ks[i].reshape(1, self.n)

    def matrix(self) -> Tensor:
        return torch.stack(self.ks).view(len(self.ks), self.n)


def _combine_floats(base: Tensor, ks: list[Tensor], coeffs, h: float) -> Tensor:
    """``base + h Σ_j c_j ks[j]`` over the non-zero ``(j, c_j)`` pairs (``base`` may be None)."""
    it = iter(coeffs)
    first = next(it, None)
    if first is None:
        return base.clone() if base is not None else torch.zeros_like(ks[0])
    j, a = first
    out = ks[j] * (h * a) if base is None else torch.add(base, ks[j], alpha=h * a)
    for j, a in it:
        out.add_(ks[j], alpha=h * a)
    return out


def _nonzero(row) -> tuple[tuple[int, float], ...]:
    return tuple((j, float(x)) for j, x in enumerate(row) if x != 0.0)


class ExplicitRK:
    """Steps of one explicit Runge–Kutta method on ``(B, N)`` states (module docstring).

    Attributes: ``order``, ``error_order`` (the controller's convention, None for fixed-step
    tableaux), ``fsal``, ``n_dense``, and ``evals_per_step`` (new evaluations of an adaptive step:
    the stages after ``k0`` and ``f(t+h, y1)``).
    """

    kind = "erk"
    lands_on_outputs = False
    syncs = False

    def __init__(self, tableau: ButcherTableau, *, batch: int, n: int, dtype: torch.dtype,
                 device, sign: float, time_dtype: torch.dtype, per_sample: bool,
                 user_shape=None):
        tab = tableau
        self.tableau = tab
        self.order = tab.order
        self.error_order = tab.error_order
        self.fsal = tab.fsal
        self.S = tab.stages
        self.n_dense = tab.n_dense
        self.B, self.N = batch, n
        self.joint = not per_sample
        self.ushape = user_shape  # the field's own state shape, for stage values written as is
        self._uview = user_shape is not None and tuple(user_shape) != (batch, n)
        self.dtype, self.device = dtype, device
        self.rdtype = dtype.to_real() if dtype.is_complex else dtype
        self.sign = sign
        hp = _host_plan(tab)
        c, self.y1_stage, self.c_one = hp.c, hp.y1_stage, hp.c_one
        self.rows_nz, self._plan, self.err_nz, self.dense_rows = (
            hp.rows_nz, hp.plan, hp.err_nz, hp.dense_rows)
        self.A, self.E, self.P = _constants(tab, dtype, torch.device(device))
        self.n_err = 0 if self.E is None else self.E.shape[1]
        # per-sample stage inputs: the rows A[i, :i] as (1, i) matrices, made once
        self.a_rows = None if self.joint else [self.A[i:i + 1, :i] for i in range(self.n_dense)]
        # None: buffers are reused unless autograd or torch.func is active; the adaptive loop
        # sets it per solve (False while no stage value requires grad)
        self.tracking: bool | None = None
        self.times = StageTimes(c, sign, time_dtype, device, per_sample)
        self.n_extra = len(tab.extra_c)
        self.evals_per_step = self.y1_stage
        self._ah = None

    # -- buffers -------------------------------------------------------------------------------
    def _reuse(self) -> bool:
        """Whether buffers may be reused and written through slices made once."""
        return _untracked() if self.tracking is None else not self.tracking

    def new_buffer(self) -> StageBuffer:
        return StageBuffer(torch.empty(self.n_dense, self.B, self.N, dtype=self.dtype,
                                       device=self.device), views=self._reuse(),
                           ushape=self.ushape)

    def _ah_rows(self, hs: Tensor) -> list[Tensor]:
        """Joint solves: the rows ``h·A[i, :i]`` ``(1, i)`` of the stage matrix."""
        if not self._reuse():
            Ah = self.A * hs
            return [Ah[i:i + 1, :i] for i in range(self.n_dense)]
        if self._ah is None:
            buf = torch.empty(self.A.shape, dtype=self.dtype, device=self.device)
            self._ah = (buf, [buf[i:i + 1, :i] for i in range(self.n_dense)])
        torch.mul(self.A, hs, out=self._ah[0])
        return self._ah[1]

    def signed(self, ds):
        """The signed step ``sign·ds`` in the state's real dtype, ``(B,)`` (a float on the host)."""
        hs = ds if self.sign > 0 else -ds
        if not isinstance(hs, Tensor):
            return hs
        return hs.to(self.rdtype) if hs.dtype != self.rdtype else hs

    def _eval(self, field, tu: Tensor, yi: Tensor) -> Tensor:
        """The field at a stage input (``(B, N)``), in the user's shape when the state is one
        tensor (no reshape of its value)."""
        if self.ushape is None:
            return field(tu, yi)
        return field.user(tu, yi.view(self.ushape) if self._uview else yi)

    def _combine(self, y: Tensor, hcol: Tensor | None, rows: list[Tensor], i: int,
                 buf: StageBuffer) -> Tensor:
        """The input of stage ``i``: ``y + Σ_j h a_ij k_j``, ``(B, N)`` (``rows``: the joint
        solve's ``h·A`` rows; ``hcol``: the per-sample ``h`` as ``(B, 1)``)."""
        if hcol is None:
            return torch.addmm(y, rows[i], buf.col(i))
        return torch.addcmul(y, hcol, torch.mm(rows[i], buf.col(i)).view(self.B, self.N))

    # -- the step ------------------------------------------------------------------------------
    def start(self, field, s: Tensor, y: Tensor, after: bool = False) -> Tensor:
        """The carry at ``s``: ``k0 = f(s, y)`` (just after ``s`` when ``after``: past a jump)."""
        t0 = self.times.at(s)
        return field(nudge(t0, self.sign, +1) if after else t0, y)

    def step(self, field, s: Tensor, ds: Tensor, y: Tensor, k0: Tensor | None,
             buf: StageBuffer | None, *, error: bool = True, want_f1: bool = True,
             before: Tensor | bool | None = None, after: bool = False) -> StepOut:
        """Attempt the step ``[s, s + ds]`` from ``y`` with ``k0 = f(s, y)`` (evaluated here when
        None).

        ``error``: also return the error estimate. ``want_f1``: evaluate ``f(s + ds, y1)`` (the
        FSAL stage, the next ``k0``, the Hermite end slope). ``before``: evaluate the ``c = 1``
        stages just before ``s + ds`` (True, or a mask per row: the step lands on a jump);
        ``after``: evaluate ``k0`` just after ``s`` (fixed grids' ``perturb``).
        """
        if not isinstance(ds, Tensor):
            return self._step_floats(field, s, ds, y, k0, error, want_f1, before, after)
        if buf is None:
            buf = self.new_buffer()
        buf.complete = False
        tus = self.times(s, ds)
        if before is not None and before is not False:
            mask = None if before is True else before.view(tus[0].shape)
            for i in self.c_one:
                tus[i] = nudge(tus[i], self.sign, -1, mask)
        hs = self.signed(ds)
        if self.joint:
            rows, hcol = self._ah_rows(hs), None
        else:
            rows, hcol = self.a_rows, hs.view(-1, 1)
        if k0 is None:
            t0 = nudge(tus[0], self.sign, +1) if after else tus[0]
            k0 = field(t0, y)
        buf.put(0, k0)
        raw = [k0]
        n = self.y1_stage + (1 if (want_f1 or error) else 0)
        y1 = None
        for i in range(1, n):
            yi = self._combine(y, hcol, rows, i, buf)
            ki = self._eval(field, tus[i], yi)
            buf.put(i, ki)
            raw.append(ki)
            if i == self.y1_stage:
                y1 = yi
        if y1 is None:
            y1 = self._combine(y, hcol, rows, self.y1_stage, buf)
        err = err_low = None
        if error:
            if hcol is None:
                e = torch.mm(self.E * hs, buf.col(self.n_err))
            else:
                e = torch.mm(self.E, buf.col(self.n_err)).view(-1, self.B, self.N) * hcol
            err = e[0].view(self.B, self.N)
            err_low = e[1].view(self.B, self.N) if e.shape[0] > 1 else None
        carry = buf.slot(n - 1) if n > self.y1_stage else None
        return StepOut(y1, err, err_low, buf, carry, raw)

    def _step_floats(self, field, s: float, ds: float, y: Tensor, k0, error: bool,
                     want_f1: bool, before, after: bool) -> StepOut:
        """The step with host floats (joint solves deciding on the host, fixed grids)."""
        sg, tdt, dev = self.sign, self.times.dtype, self.device
        hs = sg * ds
        shape = self.ushape
        call = field if shape is None else field.user
        yb = y if shape is None else y.view(shape)
        if k0 is None:
            t0 = torch.scalar_tensor(sg * s, dtype=tdt, device=dev)
            k0 = call(nudge(t0, sg, +1) if after else t0, yb)
        k_in = k0
        if shape is not None and k0.shape != shape:
            k0 = k0.view(shape)
        ks = [k0]
        y1 = None
        for i, c, row, at_end in self._plan[want_f1 or error]:
            yi = _combine_floats(yb, ks, row, hs)
            tu = torch.scalar_tensor(sg * (s + c * ds), dtype=tdt, device=dev)
            if at_end and before:
                tu = nudge(tu, sg, -1)
            ks.append(call(tu, yi))
            if i == self.y1_stage:
                y1 = yi
        if y1 is None:
            y1 = _combine_floats(yb, ks, self.rows_nz[self.y1_stage], hs)
        flat = (1, self.N)
        err = err_low = None
        if error:
            err = _combine_floats(None, ks, self.err_nz[0], hs).view(flat)
            if len(self.err_nz) > 1:
                err_low = _combine_floats(None, ks, self.err_nz[1], hs).view(flat)
        carry = ks[-1] if len(ks) > self.y1_stage else None
        # (raw keeps the k0 object it was given: a quadrature's derivatives ride on it)
        raw = ks if k_in is k0 else [k_in, *ks[1:]]
        return StepOut(y1.view(flat), err, err_low, HostStages(ks, self.N), carry, raw)

    def slopes(self, out: StepOut) -> tuple[Tensor, Tensor | None]:
        """``(f(s, y), f(s + ds, y1))`` of a step, ``(B, N)`` (the second None unless asked for):
        the end slopes of its cubic Hermite interpolant on fixed grids."""
        f1 = out.carry if out.carry is None else out.carry.reshape(out.dense.slot(0).shape)
        return out.dense.slot(0), f1

    def commit(self, k0: Tensor, out: StepOut, accept) -> Tensor:
        """The next ``k0``: ``f(s + ds, y1)`` where the step was accepted (a tensor per row, or a
        host bool)."""
        if isinstance(accept, bool):
            return out.carry if accept else k0  # (in the field's shape on the host path)
        return torch.where(accept if self.joint else accept.unsqueeze(1), out.carry, k0)

    # -- dense output ----------------------------------------------------------------------------
    def complete(self, field, s: Tensor, ds: Tensor, y: Tensor, buf: StageBuffer) -> None:
        """Evaluate the extra dense stages (DOP853) of an accepted step into its buffer (once)."""
        if not self.n_extra or buf.complete:
            return
        buf.complete = True
        if isinstance(buf, HostStages):
            tus = self.times(float(s), float(ds))
            hs = self.sign * float(ds)
            shape = buf.ks[0].shape
            for i in range(self.n_dense - self.n_extra, self.n_dense):
                yi = _combine_floats(y.view(shape), buf.ks, self.rows_nz[i], hs)
                buf.ks.append(field(tus[i], yi.view(1, -1)).view(shape))
            return
        tus = self.times(s, ds)
        hs = self.signed(ds)
        if self.joint:
            Ah = self.A * hs
            rows, hcol = [Ah[i:i + 1, :i] for i in range(self.n_dense)], None
        else:
            rows, hcol = self.a_rows, hs.view(-1, 1)
        for i in range(self.n_dense - self.n_extra, self.n_dense):
            buf.put(i, field(tus[i], self._combine(y, hcol, rows, i, buf)))

    def weights(self, thetas: list[float]) -> Tensor:
        """``b_j(θ)`` for each ``θ``: ``(m, S_d)`` (evaluated on the host, one tensor made)."""
        rows = []
        for th in thetas:
            row = [0.0] * self.n_dense
            for j, w in self._weights_nz(th):
                row[j] = w
            rows.append(row)
        return torch.tensor(rows, dtype=self.dtype, device=self.device)

    def interpolate(self, y: Tensor, y1: Tensor, buf: StageBuffer, hs: float,
                    thetas: list[float], row: int = 0) -> Tensor:
        """``y(s + θ·ds)`` for the floats ``θ`` of one row: ``(m, N)`` (``hs`` the signed step)."""
        if isinstance(buf, HostStages):
            if len(thetas) <= 2:  # a few outputs: weights as floats, no matrix to build
                yb = y.view(buf.ks[0].shape)
                rows = [_combine_floats(yb, buf.ks, self._weights_nz(th), hs).view(1, -1)
                        for th in thetas]
                return rows[0] if len(rows) == 1 else torch.cat(rows)
            K = buf.matrix()
        else:
            K = buf.K[:, row]
        return torch.addmm(y[row:row + 1], self.weights(thetas), K, alpha=hs)

    def _weights_nz(self, th: float) -> list[tuple[int, float]]:
        """The non-zero ``b_j(θ)`` as floats (Horner in ``θ``, then one factor ``θ``)."""
        out = []
        for j, row in self.dense_rows:
            w = 0.0
            for coef in reversed(row):
                w = w * th + coef
            out.append((j, w * th))
        return out

    def interpolate_rows(self, y: Tensor, y1: Tensor, buf: StageBuffer, hs: Tensor,
                         theta: Tensor) -> Tensor:
        """Per row ``b``, ``y_b(s_b + θ_bw·ds_b)`` for a window of ``θ`` ``(B, W)``:
        ``(B, W, N)`` (``hs`` the signed steps ``(B,)``).

        The interpolant is ``y + hθ (C_0 + θ (C_1 + θ (…)))`` with the coefficient states
        ``C = P @ K`` of the step (one matrix product), then a Horner sweep over the window.
        """
        D = self.P.shape[0]
        C = torch.mm(self.P, buf.mat()).view(D, self.B, 1, self.N).unbind(0)
        th = theta.to(self.rdtype).unsqueeze(-1)
        r = C[D - 1]
        for p in range(D - 2, -1, -1):
            r = torch.addcmul(C[p], r, th)
        return torch.addcmul(y.unsqueeze(1), r, th * hs.to(self.rdtype).view(-1, 1, 1))
