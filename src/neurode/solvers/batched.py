"""Per-sample adaptive stepping of a batch, with the step control done on the device.

A batch ``y0`` of shape ``(B, ...)`` holds ``B`` independent problems. The joint solver (the
default) controls one step size with the RMS error of the whole batch, so the hardest sample
sets every sample's steps. Here each sample has its own time ``t_b``, step ``h_b``,
accept/reject decision, controller history, output cursor and status. All samples are evaluated
together (one call of ``func`` on the whole batch per stage, so the batch stays a batch); a
sample that is done is carried along unchanged by ``torch.where``.

Everything per step is tensor arithmetic: the accept/reject decision, the PI controller, the
dense-output interpolation at the output times that the step covered and their scatter into the
output buffer. The host is asked one question every ``sync_every`` steps ("is every sample
done?"), so on a GPU the loop queues ``sync_every`` steps of kernels without a stall.

Output times: at most ``max_outputs_per_step`` (``W``) outputs are interpolated per step and
sample (a fixed-size window, so no host decision is needed); a step is shortened so that it never
covers more than ``W`` outputs. With ``W`` = 4 (default) this binds only when outputs are denser
than the steps.

Shapes: ``y`` is handled flat as ``(B, N)``; times are float64 ``(B,)``; outputs are ``(B, T, N)``
internally and returned as ``(T, B, ...)`` (as :func:`neurode.odeint`).

``func`` receives ``t`` as a ``(B,)`` tensor (each sample's own time) and ``y`` as ``(B, ...)``.
Samples must be independent (no coupling across the batch such as batch norm in training mode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
from torch import Tensor

from neurode.errors import (
    FuncOutputError,
    InvalidInputError,
    MaxStepsReachedError,
    NonFiniteStateError,
    SolverError,
    StepSizeTooSmallError,
    UnknownOptionError,
)
from neurode.solvers.adaptive import config_from_options
from neurode.solvers.registry import get_method
from neurode.solvers.solution import STATUS_MESSAGES
from neurode.solvers.tableaux import ButcherTableau

__all__ = ["BATCHED_OPTIONS", "BatchedResult", "integrate_per_sample"]

BATCHED_OPTIONS = frozenset({
    "per_sample", "first_step", "safety", "ifactor", "dfactor", "pcoeff", "icoeff", "dcoeff",
    "max_num_steps", "min_step", "max_step", "sync_every", "max_outputs_per_step", "compile",
    "dtype",
})
_EPS = 2.0**-52


@dataclass
class BatchedResult:
    """Outputs ``ys`` ``(T, B, ...)`` and per-sample ``(B,)`` int64 statistics and status."""

    ys: Tensor
    n_steps: Tensor
    n_accepted: Tensor
    n_rejected: Tensor
    nfe: Tensor
    status: Tensor
    t_final: Tensor
    host_syncs: int
    iterations: int
    #: with ``record_steps``: per iteration ``(t_before, t_after, accepted, idx_before,
    #: idx_after)`` in internal time (``(B,)`` tensors; ``idx`` is the next output's index)
    steps: list | None = None

    def failure(self, options: dict[str, Any] | None = None
                ) -> tuple[int, SolverError] | None:
        """``(status, error)`` for the first failed sample (the message counts them all), or
        None when every sample succeeded. One host sync."""
        failed = torch.nonzero(self.status < 0).flatten().tolist()
        if not failed:
            return None
        b = failed[0]
        status, t_b = int(self.status[b]), float(self.t_final[b])
        message = (f"{len(failed)} of {self.status.numel()} samples failed; sample {b}: "
                   f"{STATUS_MESSAGES[status]} at t={t_b:.6g}")
        if status == -1:
            message += (f" (max_num_steps={(options or {}).get('max_num_steps')} steps of the "
                        "batch); raise options['max_num_steps'] or loosen rtol/atol")
        cls = {-1: MaxStepsReachedError, -2: StepSizeTooSmallError,
               -3: NonFiniteStateError}[status]
        return status, cls(message, t=t_b)


class _Coeffs:
    """A tableau's coefficients as Python floats (stage sums) and one dense-output matrix."""

    def __init__(self, tab: ButcherTableau):
        def nz(row):
            return tuple((j, float(x)) for j, x in enumerate(row) if x != 0.0)

        self.tab = tab
        self.c = tuple(float(x) for x in tab.c)
        self.a_rows = tuple(nz(row) for row in tab.a)
        self.b = nz(tab.b)
        self.b_error = nz(tab.b_error)
        self.b_error_low = None if tab.b_error_low is None else nz(tab.b_error_low)
        self.fsal = tab.fsal
        self.stages = tab.stages
        self.extra_c = tuple(float(x) for x in tab.extra_c)
        self.extra_a = tuple(nz(row) for row in tab.extra_a)
        self.error_uses_f1 = tab.error_uses_f1
        n_dense = len(tab.dense)
        degree = max(len(row) for row in tab.dense)
        d = torch.zeros(n_dense, degree, dtype=torch.float64)
        for j, row in enumerate(tab.dense):
            d[j, :len(row)] = torch.tensor([float(x) for x in row], dtype=torch.float64)
        self.dense = d  # b_j(θ) = Σ_p dense[j, p] θ^(p+1)
        self.degree = degree
        k_err = min(tab.order, tab.error_order if tab.error_order is not None else tab.order) + 1
        self.k = k_err


@cache
def _coeffs(tab: ButcherTableau) -> _Coeffs:
    return _Coeffs(tab)


def _lin(ks: list[Tensor], coeffs) -> Tensor:
    """``Σ c_j ks[j]`` into a fresh tensor (the step size is applied per sample afterwards).

    In-place accumulation into the fresh product is autograd-safe (``add`` saves no inputs)."""
    it = iter(coeffs)
    j, a = next(it)
    out = ks[j] * a
    for j, a in it:
        out.add_(ks[j], alpha=a)
    return out


def _rms(x: Tensor) -> Tensor:
    """Per-sample RMS over the last dimension: ``(B, N) -> (B,)``."""
    return torch.linalg.vector_norm(x, dim=-1) * (1.0 / math.sqrt(x.shape[-1]))


def _check_times(t: Tensor, B: int) -> tuple[Tensor, float]:
    if not isinstance(t, Tensor):
        raise InvalidInputError(f"t must be a tensor, got {type(t).__name__}")
    if t.ndim == 1:
        t2 = t.detach().to(torch.float64).unsqueeze(0).expand(B, -1)
    elif t.ndim == 2:
        if t.shape[0] != B:
            raise InvalidInputError(f"per-sample t of shape {tuple(t.shape)} must have one row per "
                                    f"sample: expected ({B}, T)")
        t2 = t.detach().to(torch.float64)
    else:
        raise InvalidInputError(f"t must be (T,) or (B, T) in per-sample mode, got shape "
                                f"{tuple(t.shape)}")
    if t2.shape[1] < 1:
        raise InvalidInputError("t must contain at least one time")
    if not bool(torch.isfinite(t2).all()):
        raise InvalidInputError("t contains NaN or inf")
    if t2.shape[1] == 1:
        return t2, 1.0
    d = t2[:, 1:] - t2[:, :-1]
    if bool((d > 0).all()):
        return t2, 1.0
    if bool((d < 0).all()):
        return -t2, -1.0
    raise InvalidInputError("t must be strictly increasing (or strictly decreasing) in every "
                            "row, in the same direction for all samples")


def integrate_per_sample(func, y0: Tensor, t: Tensor, *, method: str = "dopri5",
                         rtol: float = 1e-7, atol: float = 1e-9,
                         options: dict[str, Any] | None = None,
                         record_steps: bool = False) -> BatchedResult:
    """Solve ``B`` independent problems with per-sample step sizes (module docstring).

    Args:
        func: ``func(t, y)`` with ``t`` ``(B,)`` and ``y`` ``(B, ...)``.
        y0: ``(B, ...)`` initial states (floating point or complex).
        t: shared ``(T,)`` or per-sample ``(B, T)`` output times; ``t[..., 0]`` is each sample's
            initial time. All rows must run in the same direction.
        method: an adaptive explicit Runge–Kutta method (``dopri5``, ``tsit5``, ``bosh3``, ...).
        rtol, atol: tolerances (floats).
        options: the adaptive options (``first_step``, ``safety``, ``ifactor``, ``dfactor``,
            ``pcoeff``/``icoeff``/``dcoeff``, ``max_num_steps``, ``min_step``, ``max_step``) plus
            ``sync_every`` (steps between host checks, default 8), ``max_outputs_per_step`` (4)
            and ``compile`` (``torch.compile`` the step, default False).
        record_steps: keep every iteration's times, acceptance and output cursor (a few
            ``(B,)`` tensors per iteration, no states) and land a step on every output time
            (window 1): the per-sample adjoint replays these steps backwards.
    """
    o = dict(options or {})
    unknown = set(o) - BATCHED_OPTIONS
    if unknown:
        raise UnknownOptionError(f"unknown option(s) {sorted(unknown)} for per-sample solving; "
                                 f"valid: {sorted(BATCHED_OPTIONS)}")
    spec = get_method(method)
    if spec.kind != "adaptive" or spec.tableau is None or spec.tableau.dense is None:
        raise InvalidInputError(f"per-sample solving needs an adaptive explicit Runge–Kutta "
                                f"method (e.g. 'dopri5', 'tsit5', 'bosh3'), got {method!r}")
    if not isinstance(y0, Tensor):
        raise InvalidInputError("per-sample solving takes a tensor y0 of shape (B, ...), got "
                                f"{type(y0).__name__}")
    if y0.ndim < 1 or y0.shape[0] == 0:
        raise InvalidInputError(f"per-sample y0 must have a batch dimension: (B, ...), got shape "
                                f"{tuple(y0.shape)}")
    if not (y0.is_floating_point() or y0.is_complex()):
        raise InvalidInputError(f"y0 must be floating point or complex, got {y0.dtype}")
    for name, v in (("rtol", rtol), ("atol", atol)):
        if isinstance(v, Tensor):
            if v.numel() != 1:
                raise InvalidInputError(f"per-sample solving takes a scalar {name}")
            v = float(v)
        if not (isinstance(v, int | float) and v >= 0 and math.isfinite(v)):
            raise InvalidInputError(f"{name} must be a finite number ≥ 0, got {v!r}")
    rtol, atol = float(rtol), float(atol)
    B = y0.shape[0]
    t_int, sign = _check_times(t, B)
    t_int = t_int.to(y0.device).contiguous()
    cf = _coeffs(spec.tableau)
    if record_steps:
        o["max_outputs_per_step"] = 1
    loop = _Loop(func, y0, t_int, sign, t.dtype if t.is_floating_point() else torch.float64,
                 cf, rtol, atol, o)
    loop.record_steps = record_steps
    return loop.run()


def _compile_step(step):
    """``torch.compile`` the step as one graph (``fullgraph``); if ``func`` cannot be traced
    into one graph (data-dependent Python control flow, unsupported calls), fall back to a
    compilation with graph breaks, and say so once."""
    full = torch.compile(step, dynamic=False, fullgraph=True)
    state = {"fn": full}

    def run(*args):
        try:
            return state["fn"](*args)
        except Exception as e:  # torch._dynamo raises its own Unsupported/UserError types
            if state["fn"] is not full:
                raise
            import warnings

            warnings.warn(f"options['compile']: the step does not compile to one graph "
                          f"({type(e).__name__}); compiling with graph breaks instead",
                          stacklevel=2)
            state["fn"] = torch.compile(step, dynamic=False)
            return state["fn"](*args)

    return run


class _Loop:
    def __init__(self, func, y0, t_int, sign, t_dtype, cf: _Coeffs, rtol, atol, o):
        self.func = func
        self.shape = y0.shape
        self.B, self.N = y0.shape[0], max(1, y0[0].numel())
        self.y0 = y0.reshape(self.B, -1)
        self.t_eval = t_int
        self.T = t_int.shape[1]
        self.sign = sign
        self.t_dtype = t_dtype
        self.cf = cf
        self.rtol, self.atol = rtol, atol
        # the options shared with the joint loop, parsed and checked by the same function
        c = config_from_options(o, rtol, atol)
        if c.dcoeff != 0.0:
            raise InvalidInputError("per-sample solving supports PI control only: "
                                    "options['dcoeff'] must be 0")
        self.safety, self.ifactor, self.dfactor = c.safety, c.ifactor, c.dfactor
        self.e1, self.e2 = -(c.pcoeff + c.icoeff) / cf.k, c.pcoeff / cf.k
        self.first_step = c.first_step
        self.record_steps = False
        self.max_steps = c.max_num_steps
        self.min_step, self.max_step = c.min_step, c.max_step
        self.K = int(o.get("sync_every", 8))
        self.W = min(int(o.get("max_outputs_per_step", 4)), max(1, self.T - 1))
        if self.K < 1:
            raise InvalidInputError(f"options['sync_every'] must be ≥ 1, got {self.K}")
        if self.W < 1:
            raise InvalidInputError(f"options['max_outputs_per_step'] must be ≥ 1, got {self.W}")
        self._output_checked = False
        dev = y0.device
        self.arange_w = torch.arange(self.W, device=dev)
        self.rdtype = y0.real.dtype if y0.is_complex() else y0.dtype
        self.dense_t = cf.dense.to(device=dev, dtype=self.rdtype).T.contiguous()  # (P, S_dense)
        # a step whose end is within 4 ulp of its cap lands on the cap
        self.t_snap = t_int - 4 * _EPS * t_int.abs()
        self.tiny = 8 * _EPS
        self.step_fn = self._step
        if o.get("compile", False):
            self.step_fn = _compile_step(self._step)
        # stages after k0, f(t+h, y1) when not FSAL (dense output and the next k0), extras
        self.nfe_per_step = cf.stages - 1 + (0 if cf.fsal else 1) + len(cf.extra_c)

    # -- the vector field in internal time --------------------------------------------------
    def user_t(self, t: Tensor) -> Tensor:
        """Internal (float64, forward) time → the time ``func`` sees."""
        return (self.sign * t).to(self.t_dtype)

    def f(self, tf: Tensor, y: Tensor) -> Tensor:
        """``sign·func(tf, y)`` on flat ``(B, N)`` states; ``tf`` is already in user time."""
        out = self.func(tf, y.view(self.shape))
        if not self._output_checked:  # func's output is checked once (no cost per step)
            if not isinstance(out, Tensor) or out.shape != self.shape:
                raise FuncOutputError(
                    f"func must return a tensor shaped like y0 {tuple(self.shape)}, got "
                    f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}")
            if out.dtype != y.dtype or out.device != y.device:
                raise FuncOutputError(
                    f"func returned {out.dtype} on {out.device} for y0 of {y.dtype} on "
                    f"{y.device}; dy/dt must have the dtype and device of y")
            self._output_checked = True
        out = out.reshape(self.B, -1)
        return out if self.sign > 0 else -out

    def _initial_step(self, t0: Tensor, y0: Tensor, f0: Tensor) -> Tensor:
        """Hairer's heuristic per sample (one extra evaluation of the batch)."""
        with torch.no_grad():
            y0d, f0d = y0.detach(), f0.detach()
            scale = self.atol + self.rtol * y0d.abs()
            d0, d1 = _rms(y0d / scale).double(), _rms(f0d / scale).double()
            h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6),
                             0.01 * d0 / d1.clamp_min(1e-300))
            span = (self.t_eval[:, -1] - t0).clamp_min(1e-300)
            h0 = torch.minimum(h0, span)
            f1 = self.f(self.user_t(t0 + h0), y0d + h0.to(y0d.real.dtype).unsqueeze(1) * f0d)
            d2 = _rms((f1 - f0d) / scale).double() / h0
            m = torch.maximum(d1, d2)
            h1 = torch.where(m <= 1e-15, torch.clamp_min(h0 * 1e-3, 1e-6),
                             (0.01 / m.clamp_min(1e-300)) ** (1.0 / self.cf.k))
            return torch.minimum(100 * h0, h1)

    # -- one step of every sample --------------------------------------------------------------
    def _step(self, t, y, k0, h, prev_r, rej_last, done, idx, n_steps, n_acc, status):
        """Attempt one step in every running sample; returns the updated loop state and the
        window of interpolated outputs (``posc`` ``(B, W)`` positions, ``yw`` ``(B, W, N)``,
        zero where the step covered no output)."""
        cf = self.cf
        active = ~done
        cap_idx = (idx + (self.W - 1)).clamp_(max=self.T - 1).unsqueeze(1)
        t_cap = self.t_eval.gather(1, cap_idx).squeeze(1)
        target = t + h
        landing = target >= self.t_snap.gather(1, cap_idx).squeeze(1)
        t_next = torch.where(landing, t_cap, target)
        # finished samples take a step of length 0 (stay put, finite, zero error)
        dt = torch.where(active, t_next - t, 0.0)
        dtr = dt.to(self.rdtype).unsqueeze(1)
        tf = (t if self.sign > 0 else -t).to(self.t_dtype)
        dtf = (dt if self.sign > 0 else -dt).to(self.t_dtype)
        # stages
        ks = [k0]
        yi = y
        for i in range(1, cf.stages):
            yi = torch.addcmul(y, dtr, _lin(ks, cf.a_rows[i]))
            ks.append(self.f(torch.add(tf, dtf, alpha=cf.c[i]), yi))
        y1 = yi if cf.fsal else torch.addcmul(y, dtr, _lin(ks, cf.b))
        if cf.fsal:
            f1 = ks[-1]
            dense_ks = ks
        else:
            f1 = self.f(tf + dtf, y1)
            dense_ks = [*ks, f1]
        for ci, row in zip(cf.extra_c, cf.extra_a, strict=True):
            dense_ks.append(self.f(torch.add(tf, dtf, alpha=ci),
                                   torch.addcmul(y, dtr, _lin(dense_ks, row))))
        with torch.no_grad():  # step control: no gradient
            scale = torch.maximum(y.abs(), y1.abs()).mul_(self.rtol).add_(self.atol)
            r = _rms(_lin(dense_ks, cf.b_error).mul_(dtr).div_(scale))
            if cf.b_error_low is not None:
                r3 = _rms(_lin(dense_ks, cf.b_error_low).mul_(dtr).div_(scale))
                den = torch.sqrt(r * r + 0.01 * r3 * r3)
                r = torch.where(den > 0, r * r / den, den)
            finite = torch.isfinite(r)
            stuck = None
            if self.min_step > 0:
                # a step pinned at min_step is accepted, but never a non-finite one: that
                # sample is stuck, no smaller step being allowed (h, not dt: dt = t_new − t
                # may round to just above min_step)
                at_min = torch.minimum(h, dt) <= self.min_step
                ok = ((r <= 1.0) | at_min) & finite
                stuck = at_min & ~finite
            else:
                ok = r <= 1.0
            accept = active & ok
            # PI controller, per sample
            rc = r.clamp_min(1e-10)
            fac_a = rc.pow(self.e1).mul_(prev_r.pow(self.e2)).mul_(self.safety) \
                .clamp_(self.dfactor, self.ifactor)
            fac_a = torch.where(rej_last, fac_a.clamp(max=1.0), fac_a)
            fac_r = rc.pow(-1.0 / cf.k).mul_(self.safety).clamp_(self.dfactor, 0.9)
            fac = torch.where(accept, fac_a, torch.where(finite, fac_r, self.dfactor))
            h_new = (dt * fac).clamp_(self.min_step, self.max_step)
            # a step cut short to land on an output says little about the next step's size:
            # keep at least the step that was planned (as the joint loop does)
            cut = accept & landing & (dt < h)
            h_new = torch.where(cut, torch.maximum(h_new, h), h_new)  # h ≤ max_step already
            h_new = torch.where(active, h_new, h)
            prev_new = torch.where(accept, rc.clamp_min(1e-4), prev_r)
            rej_new = active & ~accept
            # a step too small to resolve, or stuck at min_step
            small = h_new <= self.tiny * t.abs().clamp_min(1.0)
            underflow = rej_new & (small if stuck is None else small | stuck)
            status = torch.where(underflow, torch.where(finite, -2, -3), status)
            done_new = done | (accept & landing & (cap_idx.squeeze(1) == self.T - 1)) | underflow
        # outputs covered by the accepted step, interpolated with the method's dense output
        pos = idx.unsqueeze(1) + self.arange_w
        posc = pos.clamp(max=self.T - 1)
        tw = self.t_eval.gather(1, posc)
        m = (tw <= t_next.unsqueeze(1)) & (pos < self.T) & accept.unsqueeze(1)
        dt_div = torch.where(dt > 0, dt, 1.0).unsqueeze(1)
        theta = ((tw - t.unsqueeze(1)) / dt_div).clamp_(0.0, 1.0).to(self.rdtype)
        bw = theta.unsqueeze(-1).expand(-1, -1, self.cf.degree).cumprod(-1) @ self.dense_t
        Kd = torch.stack(dense_ks, 1)  # (B, S_dense, N)
        yw = torch.baddbmm(y.unsqueeze(1), (bw * dtr.unsqueeze(2)).to(Kd.dtype), Kd)
        yw = torch.where((tw == t_next.unsqueeze(1)).unsqueeze(-1), y1.unsqueeze(1), yw)
        yw = torch.where(m.unsqueeze(-1), yw, 0.0)
        acc1 = accept.unsqueeze(1)
        return (torch.where(accept, t_next, t), torch.where(acc1, y1, y),
                torch.where(acc1, f1, k0), h_new, prev_new, rej_new, done_new,
                idx + m.sum(1), n_steps + active, n_acc + accept, status, posc, yw, accept)

    def run(self) -> BatchedResult:
        B, N, T = self.B, self.N, self.T
        dev = self.y0.device
        y = self.y0
        t = self.t_eval[:, 0].clone()
        out = torch.zeros(B, T, N, dtype=y.dtype, device=dev)
        out[:, 0] = y  # in place: keeps y's gradient path for row 0
        status = torch.zeros(B, dtype=torch.int64, device=dev)
        zeros = torch.zeros(B, dtype=torch.int64, device=dev)
        n_steps, n_acc, nfe = zeros.clone(), zeros.clone(), zeros.clone()
        done = t >= self.t_eval[:, -1]
        idx = torch.ones(B, dtype=torch.long, device=dev)
        host_syncs = 0
        iterations = 0
        record = [] if self.record_steps else None
        if T > 1:
            k0 = self.f(self.user_t(t), y)
            nfe += 1
            bad = ~torch.isfinite(y.detach()).all(1) | ~torch.isfinite(k0.detach()).all(1)
            status = torch.where(bad, torch.full_like(status, -3), status)
            done = done | bad
            if self.first_step is not None:
                h = torch.full((B,), self.first_step, dtype=torch.float64, device=dev)
            else:
                h = self._initial_step(t, y, k0)
                nfe += 1
            h = h.clamp(self.min_step, self.max_step)
            prev_r = torch.ones(B, dtype=self.rdtype, device=dev)
            rej_last = torch.zeros(B, dtype=torch.bool, device=dev)
            expand = (-1, -1, N)
            while True:
                for _ in range(self.K):
                    t_in, idx_in = t, idx
                    (t, y, k0, h, prev_r, rej_last, done, idx, n_steps, n_acc, status, posc,
                     yw, accept) = self.step_fn(t, y, k0, h, prev_r, rej_last, done, idx,
                                                n_steps, n_acc, status)
                    iterations += 1
                    if record is not None:
                        record.append((t_in, t, accept, idx_in, idx))
                    out.scatter_add_(1, posc.unsqueeze(-1).expand(expand), yw)
                    if iterations >= self.max_steps:
                        break
                host_syncs += 1
                if bool(done.all()):
                    break
                if iterations >= self.max_steps:
                    status = torch.where(done, status, -1)
                    break
            nfe = nfe + n_steps * self.nfe_per_step
        n_rej = n_steps - n_acc
        # samples that stopped early: NaN for the times they did not reach
        reached = torch.arange(T, device=dev).unsqueeze(0) < idx.unsqueeze(1)
        out = torch.where(reached.unsqueeze(-1), out,
                          torch.full((), math.nan, dtype=out.dtype, device=dev))
        ys = out.transpose(0, 1).reshape(T, *self.shape)
        return BatchedResult(ys=ys, n_steps=n_steps, n_accepted=n_acc, n_rejected=n_rej,
                             nfe=nfe, status=status, t_final=self.sign * t,
                             host_syncs=host_syncs, iterations=iterations, steps=record)
