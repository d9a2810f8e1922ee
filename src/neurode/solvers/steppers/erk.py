"""The one explicit Runge–Kutta stepper, driven by a
:class:`~neurode.solvers.tableau.ButcherTableau`.

The stages of a step live in a buffer ``K`` of shape ``(B, S_d, N)`` (``S_d`` dense stages: the
method's stages, ``f(t+h, y1)`` unless FSAL, DOP853's extra dense stages), and every stage input
is one batched matrix product ``y + (h·A[i, :i]) @ K[:, :i]``. With the step size a tensor (one
per row), this costs the same few operations for every tableau and every row, and the error
estimate and the dense output are matrix products over the same buffer. Outside autograd the
loop reuses a ring of buffers; with autograd each step gets a fresh one (the in-place stage
writes are then recorded, and no saved input is overwritten: the coefficient matrix does not
require grad).
"""

from __future__ import annotations

from functools import lru_cache

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


def _plain() -> bool:
    """Outside autograd and outside ``torch.func`` transforms: buffers may be reused in place."""
    return not torch.is_grad_enabled() and torch._C._functorch.peek_interpreter_stack() is None


@lru_cache(maxsize=64)
def _constants(tab: ButcherTableau, dtype: torch.dtype, device: torch.device):
    """Device tensors of a tableau: ``A (1, S_d, S_d)``, error rows ``E (1, e, S_e)`` and the
    dense polynomials ``P (D, S_d)`` with ``b_j(θ) = Σ_p P[p, j] θ^(p+1)``."""
    Ad, _, _ = _dense_matrix(tab)
    A = torch.tensor(Ad, dtype=torch.float64).to(dtype=dtype, device=device).unsqueeze(0)
    E = None
    if tab.b_error is not None:
        rows = [tab.b_error] + ([tab.b_error_low] if tab.b_error_low is not None else [])
        width = max(len(r) for r in rows)
        E = torch.tensor([list(r) + [0.0] * (width - len(r)) for r in rows],
                         dtype=torch.float64).to(dtype=dtype, device=device).unsqueeze(0)
    P = None
    if tab.dense is not None:
        rdtype = dtype.to_real() if dtype.is_complex else dtype
        P = torch.tensor(tab.dense, dtype=torch.float64).T.contiguous().to(
            dtype=rdtype, device=device)
    return A, E, P


class StageBuffer:
    """A stage buffer ``K`` of shape ``(B, S_d, N)``.

    Outside autograd its slices are made once (no slicing per stage; the loop reuses the
    buffer). With autograd the in-place stage writes are recorded and must slice the buffer at
    the time of use, so :meth:`col` and :meth:`put` slice afresh. A joint solve (``B = 1``) works
    on the 2-D ``K[0]``, the stage values being written through views in the user's shape.
    """

    __slots__ = ("K", "M", "cols", "complete", "slots", "uslots")

    def __init__(self, K: Tensor, views: bool, joint: bool, ushape):
        self.K = K
        M = K[0] if joint else K
        self.M = M
        S = K.shape[1]
        if views:
            self.cols = [M[:i] for i in range(S + 1)] if joint else [M[:, :i] for i in range(S + 1)]
            self.slots = [M[i:i + 1] for i in range(S)] if joint else [M[:, i] for i in range(S)]
            self.uslots = None if ushape is None else [x.view(ushape) for x in self.slots]
        else:
            self.cols = self.slots = self.uslots = None
        self.complete = False  # the extra dense stages are filled in

    def col(self, i: int) -> Tensor:
        """The first ``i`` dense stages: ``(i, N)`` joint, ``(B, i, N)`` per sample."""
        if self.cols is not None:
            return self.cols[i]
        return self.M[:i] if self.M.ndim == 2 else self.M[:, :i]

    def slot(self, i: int) -> Tensor:
        """Dense stage ``i`` as ``(B, N)``."""
        if self.slots is not None:
            return self.slots[i]
        return self.M[i:i + 1] if self.M.ndim == 2 else self.M[:, i]

    def put(self, i: int, k: Tensor) -> None:
        """Write stage ``i``: ``k`` is ``(B, N)``, or in the user's shape (simple states)."""
        if self.slots is None:
            if self.M.ndim == 2:
                self.M[i] = k.reshape(-1)
            else:
                self.M[:, i] = k.reshape(self.M.shape[0], -1)
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
        self.dtype, self.device = dtype, device
        self.rdtype = dtype.to_real() if dtype.is_complex else dtype
        self.sign = sign
        _, c, self.y1_stage = _dense_matrix(tab)
        A, E, self.P = _constants(tab, dtype, torch.device(device))
        self.A = A[0] if self.joint else A
        self.E = None if E is None else (E[0] if self.joint else E)
        self.n_err = 0 if E is None else E.shape[2]
        self.times = StageTimes(c, sign, time_dtype, device, per_sample)
        self.c_one = tuple(i for i in range(self.y1_stage + 1) if c[i] == 1.0 and i > 0)
        self.n_extra = len(tab.extra_c)
        self.evals_per_step = self.y1_stage
        self._ah = None
        self.dense_rows = () if tab.dense is None else tuple(
            (j, tuple(float(x) for x in row)) for j, row in enumerate(tab.dense)
            if any(x != 0.0 for x in row))
        # the host path's coefficients: non-zero (stage, value) pairs per dense-stage row
        Ad, _, _ = _dense_matrix(tab)
        self.rows_nz = tuple(_nonzero(r) for r in Ad)
        # per stage evaluated after k0: (index, node, its row, a c = 1 stage), without or with
        # the stage f(t + h, y1)
        stage_plan = [(i, c[i], self.rows_nz[i], i in self.c_one)
                      for i in range(1, self.y1_stage + 1)]
        self._plan = (tuple(stage_plan[:-1]), tuple(stage_plan))
        self.err_nz = () if tab.b_error is None else (
            _nonzero(tab.b_error), *(() if tab.b_error_low is None
                                     else (_nonzero(tab.b_error_low),)))

    # -- buffers -------------------------------------------------------------------------------
    def new_buffer(self) -> StageBuffer:
        return StageBuffer(torch.empty(self.B, self.n_dense, self.N, dtype=self.dtype,
                                       device=self.device), views=_plain(), joint=self.joint,
                           ushape=self.ushape)

    def _ah_rows(self, hs) -> list[Tensor]:
        """Rows ``h·A[i, :i]`` of the stage matrix: ``(1, i)`` joint, ``(B, 1, i)`` per sample."""
        h = hs if self.joint else hs.view(-1, 1, 1)
        if not _plain():
            Ah = self.A * h
            return [Ah[i:i + 1, :i] if self.joint else Ah[:, i:i + 1, :i]
                    for i in range(self.n_dense)]
        if self._ah is None:
            buf = torch.empty(self.A.shape if self.joint else (self.B, *self.A.shape[1:]),
                              dtype=self.dtype, device=self.device)
            rows = [buf[i:i + 1, :i] if self.joint else buf[:, i:i + 1, :i]
                    for i in range(self.n_dense)]
            self._ah = (buf, rows)
        torch.mul(self.A, h, out=self._ah[0])
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
        if self.ushape is not None:
            return field.user(tu, yi.view(self.ushape))
        return field(tu, yi)

    def _combine(self, y: Tensor, y3: Tensor | None, row: Tensor, cols: Tensor) -> Tensor:
        if self.joint:
            return torch.addmm(y, row, cols)
        return torch.baddbmm(y3, row, cols).view(self.B, self.N)

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
        rows = self._ah_rows(hs)
        if k0 is None:
            t0 = nudge(tus[0], self.sign, +1) if after else tus[0]
            k0 = field(t0, y)
        buf.put(0, k0)
        raw = [k0]
        y3 = None if self.joint else y.unsqueeze(1)
        n = self.y1_stage + (1 if (want_f1 or error) else 0)
        y1 = None
        for i in range(1, n):
            yi = self._combine(y, y3, rows[i], buf.col(i))
            ki = self._eval(field, tus[i], yi)
            buf.put(i, ki)
            raw.append(ki)
            if i == self.y1_stage:
                y1 = yi
        if y1 is None:
            y1 = self._combine(y, y3, rows[self.y1_stage], buf.col(self.y1_stage))
        err = err_low = None
        if error:
            if self.joint:
                e = torch.mm(self.E * hs, buf.col(self.n_err))
                err = e[0:1]
                err_low = e[1:2] if e.shape[0] > 1 else None
            else:
                e = torch.bmm(self.E * hs.view(-1, 1, 1), buf.col(self.n_err))
                err = e[:, 0]
                err_low = e[:, 1] if e.shape[1] > 1 else None
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
        Ah = self.A * (hs if self.joint else hs.view(-1, 1, 1))
        y3 = None if self.joint else y.unsqueeze(1)
        for i in range(self.n_dense - self.n_extra, self.n_dense):
            row = Ah[i:i + 1, :i] if self.joint else Ah[:, i:i + 1, :i]
            buf.put(i, field(tus[i], self._combine(y, y3, row, buf.col(i))))

    def weights(self, thetas: list[float]) -> Tensor:
        """``b_j(θ)`` for each ``θ``: ``(m, S_d)``."""
        D = self.P.shape[0]
        powers = [[th ** (p + 1) for p in range(D)] for th in thetas]
        return torch.tensor(powers, dtype=self.rdtype, device=self.device) @ self.P

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
            K = buf.K[row]
        W = self.weights(thetas).to(self.dtype)
        return torch.addmm(y[row:row + 1], W, K, alpha=hs)

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
        ``(B, W, N)``."""
        D = self.P.shape[0]
        th = theta.to(self.rdtype).unsqueeze(-1).expand(-1, -1, D).cumprod(-1)
        bw = (th @ self.P) * hs.view(-1, 1, 1)
        return torch.baddbmm(y.unsqueeze(1), bw.to(self.dtype), buf.K)
