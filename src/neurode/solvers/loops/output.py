"""Output emission: the solution at the requested times, from each step's dense output.

Two strategies, one per kind of solve:

* `HostOutputs` (joint solves): steps are never shortened to hit output times; after each
  host check the loop hands over the accepted steps, and the outputs each one covers are
  interpolated with floats known on the host (a few matrix products per step that covers any).
* `DeviceOutputs` (per-sample solves): each sample's outputs fall in different steps, so a
  window of ``W`` outputs per row is interpolated and scattered on the device at every step, and
  steps are shortened so that none covers more than ``W`` outputs.
"""

from __future__ import annotations

import bisect
import math

import torch
from torch import Tensor

from neurode.solvers.problem import Problem

__all__ = ["DeviceOutputs", "HostOutputs"]

_EPS = 2.0**-52


class HostOutputs:
    """Outputs of a joint solve at the host floats ``t_out`` (internal, increasing)."""

    def __init__(self, pb: Problem, stepper, t_out: tuple[float, ...] | list[float]):
        self.pb = pb
        self.stepper = stepper
        self.t_out = list(t_out)
        self.ys: list[Tensor] = [pb.y0[0]]
        self.i = 1

    @property
    def done(self) -> bool:
        return self.i >= len(self.t_out)

    def covers(self, t1: float) -> bool:
        return self.i < len(self.t_out) and self.t_out[self.i] <= t1

    def emit(self, s0: float, ds: float, y: Tensor, y1: Tensor, dense, field) -> None:
        """Emit the outputs in ``(s0, s0 + ds]`` from an accepted step (no-op if none).

        The loop lands a step exactly on an output time ``t_k`` (the last one above all) and
        hands over its start and size, but ``s0 + (t_k − s0)`` can round to a float one unit
        below ``t_k``: the end is therefore taken to cover outputs within a few units of it,
        and such an output gets ``y1`` itself (else the last output of a solve that reached
        ``t[-1]`` would be left unwritten)."""
        t1 = s0 + ds
        slack = 4 * _EPS * max(abs(s0), abs(t1))
        if not self.covers(t1 + slack):
            return
        t_out = self.t_out
        j = bisect.bisect_right(t_out, t1 + slack, self.i)
        thetas = [(to - s0) / ds for to in t_out[self.i:j]]
        exact_end = abs(t_out[j - 1] - t1) <= slack
        if exact_end:
            thetas.pop()
        if thetas:
            st = self.stepper
            if st.n_extra:
                dev = y.device
                st.complete(field, torch.tensor([s0], dtype=torch.float64, device=dev),
                            torch.tensor([ds], dtype=torch.float64, device=dev), y, dense)
            self.ys.extend(st.interpolate(y, y1, dense, self.pb.sign * ds, thetas).unbind(0))
        if exact_end:
            self.ys.append(y1[0])
        self.i = j

    def stacked(self, n: int) -> Tensor:
        """``(T, 1, N)``: the emitted rows, NaN rows for the times not reached."""
        ys = self.ys
        if len(ys) < n:
            pad = torch.full_like(self.pb.y0[0], math.nan)
            ys = ys + [pad] * (n - len(ys))
        return torch.stack(ys).unsqueeze(1)


class DeviceOutputs:
    """Per-row output windows of a per-sample solve (module docstring).

    ``t_eval`` ``(B, T)`` internal float64 output times; ``W`` outputs per row and step at most.
    The times are padded with ``W`` infinite ones (a window never runs off the end: no clamp,
    no bound check) and the outputs with ``W`` more columns, where the window's uncovered entries
    are written (one column each: the indices of a scatter stay distinct) and dropped.
    """

    def __init__(self, pb: Problem, stepper, W: int):
        B, N = pb.layout.batch, pb.layout.n
        t_eval = pb.t_eval
        self.t_eval = t_eval
        self.T = T = t_eval.shape[1]
        self.W = W = max(1, min(W, T - 1))
        self.stepper = stepper
        dev = t_eval.device
        self.arange_w = torch.arange(W, device=dev)
        pad = torch.full((B, W), math.inf, dtype=t_eval.dtype, device=dev)
        self.t_pad = torch.cat([t_eval, pad], 1)
        self.snap_pad = torch.cat([t_eval - 4 * _EPS * t_eval.abs(), pad], 1)
        self.dump = T + self.arange_w  # the columns that take uncovered entries
        self.out = torch.zeros(B, T + W, N, dtype=pb.y0.dtype, device=dev)
        self.out[:, 0] = pb.y0  # in place: keeps y0's gradient path for row 0
        self.idx = torch.ones(B, dtype=torch.long, device=dev)
        self.expand = (-1, -1, N)

    def cap(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """The latest time a step may reach: the window's last output (inf past the last one),
        and its snap threshold."""
        c = (idx + (self.W - 1)).unsqueeze(1)
        return self.t_pad.gather(1, c).squeeze(1), self.snap_pad.gather(1, c).squeeze(1)

    def window(self, idx: Tensor, t: Tensor, dt: Tensor, t_next: Tensor, y: Tensor, out,
               accept: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Interpolate the outputs the accepted steps covered: ``(positions (B, W), values
        (B, W, N), new idx)``; the positions of entries nothing covered are dump columns."""
        pos = idx.unsqueeze(1) + self.arange_w
        tw = self.t_pad.gather(1, pos)
        tn = t_next.unsqueeze(1)
        m = (tw <= tn) & accept.unsqueeze(1)
        dt_div = torch.where(dt > 0, dt, 1.0).unsqueeze(1)
        theta = ((tw - t.unsqueeze(1)) / dt_div).clamp_(0.0, 1.0)
        st = self.stepper
        hs = dt if st.sign > 0 else -dt
        yw = st.interpolate_rows(y, out.y1, out.dense, hs, theta)
        # an output the step landed on is its end state, exactly
        yw = torch.where((tw == tn).unsqueeze(-1), out.y1.unsqueeze(1), yw)
        return torch.where(m, pos, self.dump), yw, idx + m.sum(1)

    def scatter(self, posc: Tensor, yw: Tensor) -> None:
        self.out.scatter_(1, posc.unsqueeze(-1).expand(self.expand), yw)

    def stacked(self, idx: Tensor) -> Tensor:
        """``(T, B, N)``: the outputs, NaN for the times a row did not reach."""
        T = self.T
        reached = torch.arange(T, device=idx.device).unsqueeze(0) < idx.unsqueeze(1)
        out = torch.where(reached.unsqueeze(-1), self.out[:, :T],
                          torch.full((), math.nan, dtype=self.out.dtype, device=idx.device))
        return out.transpose(0, 1)
