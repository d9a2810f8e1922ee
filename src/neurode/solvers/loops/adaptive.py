"""The adaptive loop: any stepper with an error estimate, joint or per sample.

Every row (``B = 1`` for a joint solve) has its own time, step size, controller memory, stop
cursor, status and counters. One attempted step of every row is `AdaptiveLoop.attempt`: it
lands the step on the next stop if it reaches it (``step_t``, the segment's end, output times for
steppers that land on them, the per-sample output window), runs the stepper, the error norm and
the controller, detects failures and merges the new state. The step control's numbers live on a
scalar back end (`neurode.solvers.scalars`):

* on the device (per-sample solves; joint solves on accelerators, or with ``sync_every`` or
  ``compile``): ``attempt`` reads nothing on the host, so it can be compiled
  (``options={"compile": True}``) and queued ``sync_every`` times before the loop asks the host its
  one question per window; after each window the host processes the accepted steps of a joint
  solve (outputs from their dense output, the step record, events, callbacks);
* on the host (joint solves on the CPU, by default): one row of floats, the error ratio read once
  per step, and each accepted step processed right away.

Per-sample solves emit outputs on the device instead
(`DeviceOutputs`).

Failures, per row and never an endless loop: a step whose next size falls below the time
resolution (``8 ulp(t)``) fails — after a rejection it cannot shrink further, after an acceptance
it could not advance ``t`` — as a step-size underflow, or as non-finite if its ratio was NaN/inf,
or as a Newton failure for implicit steppers; so does a non-finite step stuck at ``min_step``;
``max_num_steps`` counts each row's own steps. ``jump_t`` splits the solve into segments: at each
jump the stepper restarts from ``f`` evaluated just after it.
"""

from __future__ import annotations

import bisect
import math
from typing import NamedTuple

import torch
from torch import Tensor

from neurode.errors import InvalidInputError, Status
from neurode.solvers.controller import ControllerState, PIDController, initial_step
from neurode.solvers.loops.common import LoopResult, StepRecord, call_callbacks
from neurode.solvers.loops.events import EventWatcher
from neurode.solvers.loops.output import DeviceOutputs, HostOutputs
from neurode.solvers.norms import error_ratio
from neurode.solvers.problem import Problem
from neurode.solvers.quadrature import Quadrature
from neurode.solvers.scalars import DeviceScalars, HostScalars

__all__ = ["AdaptiveLoop", "LoopState"]

_I64 = torch.int64
_SWITCH = ("switch",)  # what ``_process`` returns in place of an event when the monitor fires


class Segment(NamedTuple):
    """The part of a solve up to the next jump (or the end): its end and snap threshold per row,
    whether the end is a jump, and the stops inside it (None when the end is the only one)."""

    end: Tensor | float
    snap: Tensor | float
    at_jump: Tensor | bool | None
    stops: Tensor | list | None
    snaps: Tensor | list | None


class LoopState(NamedTuple):
    """The per-row state of the adaptive loop (tensors with a leading ``B``, or host numbers)."""

    t: Tensor | float
    h: Tensor | float
    y: Tensor
    carry: Tensor
    history: Tensor | float
    prev: Tensor | float
    cap: Tensor | float
    si: Tensor | int
    done: Tensor | bool
    status: Tensor | int
    fail_dt: Tensor | float
    n_steps: Tensor | int
    n_acc: Tensor | int
    idx: Tensor | None


def _int_attrs_dynamic():
    # a field that counts its calls (``self.nfe += 1`` on an nn.Module, as torchdiffeq's examples
    # do) would otherwise recompile the step at every new count
    return torch._dynamo.config.patch(allow_unspec_int_on_nn_module=True)


def compile_step(step):
    """``torch.compile`` the step as one graph (``fullgraph``); if the field cannot be traced into
    one graph, fall back to a compilation with graph breaks, and say so once."""
    full = torch.compile(step, dynamic=None, fullgraph=True)
    state = {"fn": full}

    def run(*args):
        try:
            with _int_attrs_dynamic():
                return state["fn"](*args)
        except Exception as e:  # torch._dynamo raises its own Unsupported/UserError types
            if state["fn"] is not full:
                raise
            import warnings

            warnings.warn(f"options['compile']: the step does not compile to one graph "
                          f"({type(e).__name__}); compiling with graph breaks instead",
                          stacklevel=2)
            state["fn"] = torch.compile(step, dynamic=None)
            with _int_attrs_dynamic():
                return state["fn"](*args)

    return run


def host_decisions(pb: Problem, stepper) -> bool:
    """Whether a solve makes its step decisions on the host (``options["decisions"]``).

    ``"auto"``: on the host for joint solves on the CPU (where a read costs nothing and tensor
    arithmetic on one row costs microseconds per operation) unless ``sync_every`` or ``compile``
    asks for the device; for steppers that read the host themselves (Newton), always.
    """
    ctl = pb.opts.control
    choice = pb.opts.decisions
    if pb.per_sample:
        if choice == "host":
            raise InvalidInputError("options['decisions'] = 'host' is for joint solves; a "
                                    "per-sample solve decides every sample's steps on the device")
        return False
    if stepper.syncs:
        return True
    device_asked = ctl.compile or "sync_every" in pb.opts.given
    if choice == "host" and device_asked:
        raise InvalidInputError("options: decisions='host' reads the host every step; "
                                "sync_every and compile apply to decisions='device'")
    if choice == "auto":
        return pb.y0.device.type == "cpu" and not device_asked
    return choice == "host"


class AdaptiveLoop:
    """One adaptive solve of ``pb`` with ``stepper`` (module docstring).

    Args:
        record: ``None``, ``"steps"`` (accepted steps' start, size and state: checkpoints),
            ``"dense"`` (also their dense information: dense output) or ``"times"`` (start and
            size only: reversible gradients); joint solves only.
        quad: quadratures integrated beside the state (joint solves only).
        event_fn: a terminal event function (joint solves only); the solve then runs until it
            crosses zero (``t_end`` may be inf).
        t_end: the final internal time when it is not ``t_out[-1]`` (events: ``math.inf``).
        per_sample_record: keep every iteration's per-row times, acceptance and output cursor
            (per-sample adjoint) and land on every output time.
        monitor: a stiffness test (`neurode.solvers.loops.stiffness`, joint solves) that
            sees every accepted step; when it fires the solve stops after that step and
            `switched` holds ``(s, y1)`` there (``method="auto"`` then changes method).
    """

    def __init__(self, pb: Problem, stepper, *, record: str | None = None,
                 quad: Quadrature | None = None, event_fn=None, t_end: float | None = None,
                 per_sample_record: bool = False, monitor=None):
        self.pb = pb
        self.stepper = stepper
        ctl = pb.opts.control
        self.ctl = ctl
        L = pb.layout
        self.B, self.N = L.batch, L.n
        self.per_sample = L.per_sample
        self.dev = pb.y0.device
        self.tdt = pb.opts.time_dtype
        self.rdtype = L.real_dtype
        self.eps = torch.finfo(self.tdt).eps
        self.record = record
        self.quad = quad
        self.watch = None if event_fn is None else EventWatcher(pb, event_fn)
        self.monitor = monitor
        self.switched: tuple[float, Tensor] | None = None
        self.per_sample_record = per_sample_record
        self.controller = PIDController(
            stepper.error_order, safety=ctl.safety, ifactor=ctl.ifactor, dfactor=ctl.dfactor,
            pcoeff=ctl.pcoeff, icoeff=ctl.icoeff, dcoeff=ctl.dcoeff, min_step=ctl.min_step,
            max_step=ctl.max_step)
        self.callbacks = pb.callbacks
        host = host_decisions(pb, stepper)
        self.S = HostScalars() if host else DeviceScalars(self.rdtype, self.tdt, self.dev)
        # callbacks must see every step once: the device loop then checks after every step
        self.K = 1 if (host or self.callbacks is not None) else ctl.sync_every
        self.end = (pb.t_out[-1] if pb.t_out else None) if t_end is None else t_end
        if self.per_sample:
            t_eval = pb.t_eval.to(self.tdt)
            self.t0, self.t_end = t_eval[:, 0].clone(), t_eval[:, -1].clone()
            W = 1 if per_sample_record else (pb.opts.per_sample.max_outputs_per_step or 4)
            self.outputs = DeviceOutputs(pb, stepper, W)
        else:
            self.outputs = HostOutputs(pb, stepper, pb.t_out)
            if host:
                self.t0, self.t_end = pb.t_out[0], self.end
            else:
                self.t0 = torch.tensor([pb.t_out[0]], dtype=self.tdt, device=self.dev)
                self.t_end = torch.tensor([self.end], dtype=self.tdt, device=self.dev)
        self.grad = torch.is_grad_enabled()
        self.forward_ad = (torch._C._functorch.peek_interpreter_stack() is not None
                           or torch.autograd.forward_ad._current_level >= 0)
        # tolerances as tensors in either back end: the error norm is tensor arithmetic
        dev_s = DeviceScalars(self.rdtype, self.tdt, self.dev)
        self.rtol = pb.rtol if isinstance(pb.rtol, Tensor) else dev_s.r(pb.rtol)
        self.atol = pb.atol if isinstance(pb.atol, Tensor) else dev_s.r(pb.atol)
        # stage buffers: a ring while nothing is tracked by autograd (records of a window keep
        # theirs), else fresh ones (``run`` decides, once the first slope is known)
        self._abs = (None, None)  # (y1, |y1|) of the last host step
        self.functorch = torch._C._functorch.peek_interpreter_stack() is not None
        self.tracking = self.grad or self.functorch
        self.fresh_buffers = True
        self.ring = None
        self.step_fn = self.attempt
        self.compiled = ctl.compile and not host and quad is None
        if self.compiled:
            self.step_fn = self._eager_first(compile_step(self._counted_off(self.attempt)))

    def _eager_first(self, compiled):
        # the first attempt runs eagerly: it makes the caches and constants made on first use
        # (the back end's packs, the stepper's lazy tensors), which torch.compile would guard
        # on and recompile for once they exist
        eager = self._counted_off(self.attempt)
        state = {"first": True}

        def run(*args):
            if state["first"]:
                state["first"] = False
                return eager(*args)
            return compiled(*args)

        return run

    def _counted_off(self, fn):
        field = self.pb.field

        def run(*args):
            field.counting = False
            try:
                return fn(*args)
            finally:
                field.counting = True

        return run

    # -- set-up ------------------------------------------------------------------------------
    def _user_time(self, s: Tensor) -> Tensor:
        tu = s if self.pb.sign > 0 else -s
        tu = tu.to(self.pb.time_dtype)
        return tu if self.per_sample else tu.reshape(())

    def _first_step(self, t, y: Tensor, k0: Tensor):
        ctl, pb = self.ctl, self.pb
        S = self.S
        if ctl.first_step is not None:
            h = ctl.first_step if S.host else torch.full((self.B,), ctl.first_step,
                                                         dtype=self.tdt, device=self.dev)
        else:
            # the heuristic probes forward in internal time: dy/ds = sign·f
            sign = pb.sign

            def f_eval(t0, h0, y1):
                s1 = t0 + h0
                f1 = pb.field(pb.user_time(s1) if S.host else self._user_time(s1), y1)
                return f1 if sign > 0 else -f1

            if S.host:
                t_row, span = float(t), self.t_end - float(t)
                span = span if math.isfinite(span) else None
            else:
                t_row = torch.as_tensor(t, dtype=torch.float64, device=self.dev).reshape(-1)
                span = torch.as_tensor(self.t_end, dtype=torch.float64,
                                       device=self.dev).reshape(-1) - t_row
                span = span if bool(torch.isfinite(span).all()) else None
            k0 = k0 if sign > 0 else -k0
            h = initial_step(S, f_eval, t_row, y.detach(), k0.detach(),
                             self.stepper.error_order, pb.rtol, pb.atol, pb.norm, span)
            h = h if S.host else h.detach().to(self.tdt)
        if ctl.min_step > 0 or ctl.max_step < math.inf:
            h = S.clamp(h, S.t(ctl.min_step), S.t(ctl.max_step))
        return h

    def _segment(self, t) -> Segment:
        """The segment starting at ``t`` (per row): its end (the next jump, or the final time)
        and the sorted times a step must land on before it (inf padded)."""
        pb = self.pb
        lands = self.stepper.lands_on_outputs
        if self.S.host:
            ahead = [j for j in pb.jump_t if j > t and j < self.t_end]
            end = ahead[0] if ahead else self.t_end
            snap = end - 4 * self.eps * abs(end) if math.isfinite(end) else end
            cand = sorted({x for x in (*pb.step_t, *(pb.t_out if lands else ())) if t < x < end})
            if not cand:
                return Segment(end, snap, bool(ahead), None, None)
            stops = [*cand, end]
            return Segment(end, snap, bool(ahead), stops,
                           [x - 4 * self.eps * abs(x) for x in stops])
        t_end = self.t_end
        if pb.jump_t:
            jumps = torch.tensor(pb.jump_t, dtype=self.tdt, device=self.dev).unsqueeze(0)
            nxt = torch.where(jumps > t.unsqueeze(1), jumps, math.inf).amin(1)
            end = torch.minimum(nxt, t_end)
            at_jump = nxt < t_end
        else:
            end, at_jump = t_end, None
        snap = end - 4 * self.eps * end.abs().nan_to_num(posinf=0.0)
        parts = []
        if pb.step_t:
            parts.append(torch.tensor(pb.step_t, dtype=self.tdt, device=self.dev)
                         .unsqueeze(0).expand(self.B, -1))
        if lands:
            parts.append(pb.t_eval.to(self.tdt) if self.per_sample else torch.tensor(
                [pb.t_out], dtype=self.tdt, device=self.dev))
        if not parts:
            return Segment(end, snap, at_jump, None, None)
        cand = torch.cat([end.unsqueeze(1), *parts], 1)
        valid = (cand > t.unsqueeze(1)) & (cand <= end.unsqueeze(1))
        stops = torch.where(valid, cand, math.inf).sort(1).values.contiguous()
        snaps = stops - 4 * self.eps * stops.abs().nan_to_num(posinf=0.0)
        return Segment(end, snap, at_jump, stops, snaps)

    # -- one attempted step of every row ---------------------------------------------------------
    def plan(self, st: LoopState, seg: Segment):
        """``(dt, t_next, landing)`` of the next attempt of every row (``dt = 0`` when done)."""
        S = self.S
        if seg.stops is None:
            stop, snap = seg.end, seg.snap
        elif S.host:
            stop, snap = seg.stops[st.si], seg.snaps[st.si]
        else:
            si = st.si.unsqueeze(1)
            stop = seg.stops.gather(1, si).squeeze(1)
            snap = seg.snaps.gather(1, si).squeeze(1)
        if self.per_sample:
            cap, cap_snap = self.outputs.cap(st.idx)
            stop = torch.minimum(stop, cap)
            snap = torch.minimum(snap, cap_snap)
        target = st.t + st.h
        landing = target >= snap
        t_next = S.where(landing, stop, target)
        return S.where(st.done, S.t(0.0), t_next - st.t), t_next, landing

    def attempt(self, st: LoopState, seg: Segment, buf):
        """One attempted step of every row (module docstring); on the device back end it reads
        nothing on the host."""
        pb, stepper, S = self.pb, self.stepper, self.S
        dt, t_next, landing = self.plan(st, seg)
        before = None
        if seg.at_jump is not None:
            before = landing & (t_next >= seg.end) & seg.at_jump
        out = stepper.step(pb.field, st.t, dt, st.y, st.carry, buf, error=True, want_f1=True,
                           before=before)
        if self.per_sample and stepper.n_extra:
            stepper.complete(pb.field, st.t, dt, st.y, out.dense)
        with torch.no_grad():
            if out.ratio is not None:
                ratio = out.ratio
            elif S.host:  # |y| of an accepted step is the next step's |y0|
                a1 = out.y1.abs()
                ratio = error_ratio(out.err, out.err_low, st.y, out.y1, self.rtol, self.atol,
                                    pb.norm, self._abs[1] if self._abs[0] is st.y else None, a1)
                self._abs = (out.y1, a1)
            else:
                ratio = error_ratio(out.err, out.err_low, st.y, out.y1, self.rtol, self.atol,
                                    pb.norm)
            if self.quad is not None:
                ratio = self.quad.ratio(out, dt if pb.sign > 0 else -dt, ratio)
            if self.forward_ad:
                # no_grad stops reverse mode only: a forward-mode tangent (torch.func.jvp) must
                # not reach the step sizes either, which are held fixed as backprop holds them
                ratio = ratio.detach()
            ratio = S.read(ratio)  # the host back end's one read of the step
            hint = out.failed  # hints come in the back end's own type (Newton: host bools)
            accept, h_new, cst = self.controller.update(
                S, ratio, dt, st.h, ControllerState(st.history, st.prev, st.cap), st.done,
                landing, safety=out.safety, hold=out.hold, failed=hint)
            tiny, inf, t_min, c_small, c_nonfinite, c_newton = S.pack("loop", self._constants)
            # A step whose next size is below the time resolution (8 ulp of t) fails: a rejected
            # one cannot shrink further, an accepted one could not advance t. Its status says
            # whether the last ratio was finite (a genuine underflow) or not (NaN/inf).
            # (not '<=': a NaN step size fails too; so does an infinite one, whose time overflowed
            # — an event solve on [t0, ∞) whose event never comes)
            failed = S.not_(((h_new > S.maximum(S.abs(st.t) * tiny, tiny)) & (h_new < inf))
                            | st.done)
            finite = S.finite(ratio)
            if self.ctl.min_step > 0:  # stuck at min_step on a non-finite step
                failed = failed | (S.not_(accept | st.done | finite)
                                   & (S.minimum(st.h, dt) <= t_min))
            code = S.where(finite, c_small, c_nonfinite)
            if hint is not None:
                code = S.where(hint, c_newton, code)
            finished = accept & landing
            if seg.stops is not None or self.per_sample:  # landing may be on an inner stop
                finished = finished & (t_next >= seg.end)
            si = st.si
            if seg.stops is not None:
                if S.host:
                    if accept and landing:
                        si = min(bisect.bisect_right(seg.stops, t_next), len(seg.stops) - 1)
                else:
                    si = torch.where(accept & landing, (seg.stops <= t_next.unsqueeze(1)).sum(1)
                                     .clamp_(max=seg.stops.shape[1] - 1), st.si)
            status = S.where(failed, code, st.status)
            fail_dt = S.where(failed, dt, st.fail_dt)
            t = S.where(accept, t_next, st.t)
            n_steps = st.n_steps + S.not_(st.done)
            done = st.done | finished | failed
        y = S.select(accept, out.y1, st.y)
        carry = stepper.commit(st.carry, out, accept)
        idx = st.idx
        window = None
        if self.per_sample:
            posc, yw, idx = self.outputs.window(st.idx, st.t, dt, t_next, st.y, out, accept)
            window = (posc, yw)
        new = LoopState(t, h_new, y, carry, cst.history, cst.prev, cst.cap, si, done, status,
                        fail_dt, n_steps, st.n_acc + accept, idx)
        return new, out, dt, accept, window

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> LoopResult:
        pb, stepper, S = self.pb, self.stepper, self.S
        B, dev = self.B, self.dev
        nfe0 = pb.field.nfe
        y = pb.y0
        record = (StepRecord(contiguous=self.record == "steps") if self.record is not None
                  else None)
        steps_log = [] if self.per_sample_record else None
        idx = self.outputs.idx if self.per_sample else None
        if (not self.per_sample and len(pb.t_out) == 1 and self.watch is None) or \
                (self.per_sample and self.outputs.T == 1):
            zero = 0 if S.host else torch.zeros(B, dtype=_I64, device=dev)
            return self._result(self.t0, y, zero, zero, zero, 0.0, None, idx, record,
                                steps_log, 0, 0, nfe0)
        t0_tensor = self.t0 if not S.host else torch.tensor([self.t0], dtype=self.tdt,
                                                            device=dev)
        carry = stepper.start(pb.field, t0_tensor if not S.host else self.t0, y)
        if self.quad is not None:
            self.quad.start(carry)
        self._set_tracking(self.functorch or (self.grad and (
            y.requires_grad or carry.requires_grad
            or (self.per_sample and pb.t_eval.requires_grad))))
        with torch.no_grad():
            bad = ~(torch.isfinite(y).all(1) & torch.isfinite(carry).all(1))
        h = self._first_step(self.t0, y, carry)
        cst = self.controller.init_state(S, B)
        if S.host:
            bad = bool(bad[0])
            st = LoopState(self.t0, h, y, carry, cst.history, cst.prev, cst.cap, 0,
                           bad or self.t0 >= self.t_end,
                           int(Status.NON_FINITE) if bad else 0, 0.0, 0, 0, None)
        else:
            zeros = torch.zeros(B, dtype=_I64, device=dev)
            st = LoopState(self.t0.clone(), h, y, carry, cst.history, cst.prev, cst.cap,
                           zeros, bad | (self.t0 >= self.t_end),
                           torch.where(bad, Status.NON_FINITE, zeros),
                           torch.zeros(B, dtype=self.tdt, device=dev), zeros.clone(), zeros.clone(),
                           idx)  # distinct tensors: torch.compile guards on their aliasing
        loop = self._run_host if S.host else self._run_device
        st, event, host_syncs, iterations = loop(st, record, steps_log)
        t_fin, y_fin = st.t, st.y
        if event is _SWITCH:  # stop after the step the monitor chose (a window may have gone on)
            event = None
            s_sw, y_fin = self.switched
            t_fin = s_sw if S.host else torch.full_like(st.t, s_sw)
        return self._result(t_fin, y_fin, st.status, st.n_steps, st.n_acc, st.fail_dt, st.h,
                            st.idx, record, steps_log, host_syncs, iterations, nfe0, event,
                            st.carry)

    def _constants(self, S) -> tuple:
        """The numbers of `attempt` in the back end's form (made once per back end)."""
        return (S.t(8 * self.eps), S.t(math.inf), S.t(self.ctl.min_step),
                S.i(Status.STEP_SIZE_TOO_SMALL), S.i(Status.NON_FINITE),
                S.i(Status.NEWTON_FAILED))

    def _set_tracking(self, tracking: bool) -> None:
        """Whether autograd records the solve: stage buffers are then fresh per step (a ring is
        reused in place otherwise). A field whose values start requiring grad later (a branch
        that uses parameters only after some time) switches it on at that step."""
        self.tracking = tracking
        self.fresh_buffers = tracking or self.record == "dense" or self.compiled
        if hasattr(self.stepper, "tracking"):
            self.stepper.tracking = tracking

    def _restart(self, st: LoopState, cont) -> LoopState:
        """Rows that stopped at a jump go on from ``f`` evaluated just after it."""
        stepper, pb = self.stepper, self.pb
        t = st.t if not self.S.host else torch.tensor([st.t], dtype=self.tdt, device=self.dev)
        restart = stepper.start(pb.field, t if not self.S.host else st.t, st.y, after=True)
        if self.quad is not None:
            self.quad.start(restart)
        return st._replace(carry=self.S.select(cont, restart, st.carry),
                           done=self.S.not_(cont))

    def _run_host(self, st: LoopState, record, steps_log):
        """The host back end: one row of floats, each accepted step processed right away."""
        max_steps = self.ctl.max_num_steps
        iterations = 0
        event = None
        cb = self.callbacks
        while True:  # segments (jump_t)
            seg = self._segment(st.t)
            st = st._replace(si=0)
            while not st.done:
                if cb is not None and cb.step is not None:
                    dt, _, _ = self.plan(st, seg)
                    self._host_callback("step", st.t, st.y, dt)
                prev = st
                # (host floats: the stepper keeps its stages in a list, no buffer)
                st, out, dt, accept, _ = self.attempt(st, seg, None)
                iterations += 1
                if self.quad is not None:
                    self.quad.commit(accept)
                _, event = self._process([(prev, out, dt, accept)], [prev.t], [dt], [accept],
                                         record)
                if event is not None:
                    return st, event, iterations, iterations
                if not st.done and st.n_steps >= max_steps:
                    st = st._replace(status=int(Status.MAX_STEPS), fail_dt=st.h, done=True)
            cont = st.status == 0 and st.t < self.t_end
            if not cont:
                return st, event, iterations, iterations
            st = self._restart(st, True)

    def _run_device(self, st: LoopState, record, steps_log):
        """The device back end: windows of ``sync_every`` queued attempts, one read after each."""
        pb = self.pb
        tdt = self.tdt
        max_steps = self.ctl.max_num_steps
        host_syncs = iterations = n_max = 0
        growth = self.ctl.ifactor
        event = None
        while True:  # segments (jump_t)
            seg = self._segment(st.t)
            st = st._replace(si=torch.zeros_like(st.si))
            R = h_host = math.inf
            if not self.per_sample and self.K > 1:
                R, h_host = torch.cat([seg.end - st.t, st.h]).tolist()
                host_syncs += 1
            while True:  # windows
                n = self._window(R, h_host, growth) if not self.per_sample else self.K
                n = max(1, min(n, max_steps - n_max))
                pending = []
                for _ in range(n):
                    buf = self._buffer()
                    if self.callbacks is not None and self.callbacks.step is not None:
                        dt, _, _ = self.plan(st, seg)
                        call_callbacks(self.callbacks, pb, "step", st.t, st.y, dt,
                                       mask=None if not self.per_sample else ~st.done)
                    prev = st
                    st, out, dt, accept, window = self.step_fn(st, seg, buf)
                    iterations += 1
                    if not self.tracking and self.grad and out.y1.requires_grad:
                        self._set_tracking(True)
                    if self.quad is not None:
                        self.quad.commit(accept)
                    if window is not None:
                        self.outputs.scatter(*window)
                    if steps_log is not None:
                        steps_log.append((prev.t, st.t, accept, prev.idx, st.idx))
                    if not self.per_sample:
                        pending.append((prev, out, dt, accept))
                    elif self.callbacks is not None:
                        self._callbacks_after(prev, dt, accept)
                # the host check: done? the most steps any row took; for a joint solve also the
                # remaining span, the next step, each attempt's start, size and acceptance
                head = [st.done.all().to(tdt).view(1), st.n_steps.max().to(tdt).view(1)]
                if not self.per_sample:
                    head += [seg.end - st.t, st.h]
                    starts, sizes, accs = zip(*[(p.t, d, a) for p, _, d, a in pending],
                                              strict=True)
                    head += [torch.cat(starts), torch.cat(sizes), torch.cat(accs).to(tdt)]
                info = torch.cat(head).tolist()
                host_syncs += 1
                done, n_max = info[0] != 0, int(info[1])
                if not self.per_sample:
                    R, h_host = info[2], info[3]
                    m = len(pending)
                    growth, event = self._process(pending, info[4:4 + m], info[4 + m:4 + 2 * m],
                                                  info[4 + 2 * m:], record)
                    if event is not None:
                        return st, event, host_syncs, iterations
                if not done and n_max >= max_steps:
                    # rows that used their max_num_steps without finishing stop here
                    over = ~st.done & (st.n_steps >= max_steps)
                    st = st._replace(status=torch.where(over, Status.MAX_STEPS, st.status),
                                     fail_dt=torch.where(over, st.h, st.fail_dt),
                                     done=st.done | over)
                    done = bool(st.done.all())
                if done:
                    break
            with torch.no_grad():
                cont = (st.status == 0) & (st.t < self.t_end)
            if not bool(cont.any()):
                return st, event, host_syncs, iterations
            st = self._restart(st, cont)

    def _t(self, vals):
        """Host floats as ``(1,)`` tensors."""
        return [torch.tensor([v], dtype=self.tdt, device=self.dev) for v in vals]

    def _host_callback(self, which: str, t: float, y: Tensor, dt: float) -> None:
        s, ds = self._t((t, dt))
        call_callbacks(self.callbacks, self.pb, which, s, y, ds)

    def _buffer(self):
        """The stage buffer of the next attempt: None (the stepper allocates a fresh one) or the
        next of a ring, whose size keeps every buffer of a pending window untouched."""
        if self.fresh_buffers:
            return None
        if self.ring is None:
            self.ring, self._ring_i = [], -1
        # buffers are made as windows need them (a short solve uses one or two)
        self._ring_i = (self._ring_i + 1) % (self.K + 1)
        if self._ring_i == len(self.ring):
            self.ring.append(self.stepper.new_buffer())
        return self.ring[self._ring_i]

    def _window(self, R: float, h: float, growth: float) -> int:
        """Steps to queue before the next host check of a joint solve whose remaining span is
        ``R`` and next step ``h``, at most ``sync_every``: as many as cannot reach the segment's
        end even if steps grow at the recent rate — or, within 16 steps of it, at the fastest
        rate the controller allows (``ifactor``) — so that steps are rarely attempted after the
        end."""
        K = self.K
        if K == 1:
            return 1
        if not math.isfinite(R) or h <= 0:
            return K
        g = self.ctl.ifactor if 16 * h >= R else max(growth, 1.0 + 1e-9)
        covered, step, n = 0.0, h, 0
        while n < K:
            covered += step
            n += 1
            if covered >= R:
                break
            step *= g
        return max(1, n)

    def _callbacks_after(self, prev: LoopState, dt, accept) -> None:
        """``callback_accept_step`` / ``callback_reject_step`` of one attempt (per sample: the
        rows that were accepted / rejected)."""
        cb, pb, S = self.callbacks, self.pb, self.S
        rejected = S.not_(prev.done) & S.not_(accept)
        for which, mask in (("accept", accept), ("reject", rejected)):
            if getattr(cb, which) is None:
                continue
            if self.per_sample:
                call_callbacks(cb, pb, which, prev.t, prev.y, dt, mask=mask)
            elif S.host:
                if mask:
                    self._host_callback(which, prev.t, prev.y, dt)
            elif bool(mask.all()):
                call_callbacks(cb, pb, which, prev.t, prev.y, dt)

    def _process(self, pending, starts, sizes, accs, record):
        """Host work of a joint window: callbacks, outputs, record, events, observed growth."""
        pb, stepper = self.pb, self.stepper
        outputs = self.outputs
        growth = 1.0
        last = None
        accepted = []
        for (prev, out, dt, accept), s0, ds, a in zip(pending, starts, sizes, accs, strict=True):
            if self.callbacks is not None:
                self._callbacks_after(prev, dt, accept)
            if not a:
                continue
            accepted.append((prev, out, s0, ds))
            if last is not None and last > 0:
                growth = max(growth, ds / last)
            last = ds
        if self.watch is not None and accepted:
            g_ends = self.watch.values([(s0 + ds, out.y1) for _, out, s0, ds in accepted])
        switch_at = self.monitor.observe(accepted) if self.monitor is not None else None
        for k, (prev, out, s0, ds) in enumerate(accepted):
            if self.watch is not None:
                at = self._interp(prev, out, s0, ds)
                s_ev = self.watch.locate(s0, ds, g_ends[k], at)
                if s_ev is not None:
                    return growth, (s_ev, at(s_ev), (s0, ds, prev.y, out))
            outputs.emit(s0, ds, prev.y, out.y1, out.dense, pb.field)
            if record is not None:
                if self.record == "dense":
                    if stepper.n_extra:
                        stepper.complete(pb.field, *self._t((s0, ds)), prev.y, out.dense)
                    record.append(s0, ds, prev.y, out.y1, out.dense)
                elif self.record == "steps":
                    record.append(s0, ds, prev.y)
                else:  # "times"
                    record.append(s0, ds, None)
            if k == switch_at:
                self.switched = (s0 + ds, out.y1)
                return growth, _SWITCH
        return growth, None

    def _interp(self, prev: LoopState, out, s0: float, ds: float):
        """``s ↦ y(s)`` inside an accepted step, from the stepper's dense output."""
        stepper, pb = self.stepper, self.pb

        def at(s: float) -> Tensor:
            if stepper.n_extra:
                stepper.complete(pb.field, *self._t((s0, ds)), prev.y, out.dense)
            th = min(1.0, max(0.0, (s - s0) / ds))
            if th == 1.0:
                return out.y1
            return stepper.interpolate(prev.y, out.y1, out.dense, pb.sign * ds, [th])

        return at

    def _result(self, t, y, status, n_steps, n_acc, fail_dt, h, idx, record, steps_log,
                host_syncs, iterations, nfe0, event=None, carry=None) -> LoopResult:
        pb = self.pb
        if self.per_sample:
            ys = self.outputs.stacked(idx)
            st = self.stepper
            # each row's evaluations while it was running: k0, the initial-step probe, its steps
            first = 1 if self.ctl.first_step is None else 0
            nfe = 1 + first + n_steps * (st.evals_per_step + st.n_extra) if iterations else \
                torch.zeros_like(n_steps)
        else:
            ys = self.outputs.stacked(len(pb.t_out))
            nfe = pb.field.nfe - nfe0
            if self.compiled:  # the compiled steps' evaluations, which the field did not count
                nfe += iterations * self.stepper.evals_per_step

        def row(x, dtype):
            if isinstance(x, Tensor) or x is None:
                return x
            return torch.tensor([x], dtype=dtype, device=self.dev)

        res = LoopResult(ys=ys, status=row(int(status) if not isinstance(status, Tensor)
                                           else status, _I64),
                         t_final=row(t, self.tdt), n_steps=row(n_steps, _I64),
                         n_accepted=row(n_acc, _I64), nfe=nfe, fail_dt=row(fail_dt, self.tdt),
                         h_next=row(h, self.tdt), host_syncs=host_syncs,
                         iterations=iterations, record=record, steps=steps_log, event=event)
        res.extra["y_final"] = y
        res.extra["carry"] = carry
        if not self.per_sample:
            res.extra["emitted"] = self.outputs.i  # output rows filled, y0's included
        if hasattr(self.stepper, "n_jac"):
            res.n_jac, res.n_lu = self.stepper.n_jac, self.stepper.n_lu
            res.newton = getattr(self.stepper, "last_failure", None)
        return res
