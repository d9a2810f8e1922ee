"""One step size per sample: a batch whose samples run on very different time scales.

    python examples/per_sample.py [--batch 64] [--omega-min 0.1] [--omega-max 10] [--rtol 1e-6]

The batch is ``B`` undamped oscillators ``x'' = -ω² x`` with ``x(0) = 1, x'(0) = 0`` and
frequencies ω spread log-uniformly over two decades, solved on [0, 10] with dopri5: the
slowest turns a sixth of a period, the fastest sixteen periods. The exact solution is
``x = cos ωt``, ``v = -ω sin ωt``.

* A joint solve (the default) moves the whole batch with one step size, controlled by the
  RMS error over all samples: every sample takes the fastest sample's steps.
* ``per_sample=True`` gives each sample its own time, step size and accept/reject decision.

The script prints steps and function evaluations per sample, the total work (evaluations of
one sample's row, summed over the batch), wall time and the error against the exact solution,
checks that per-sample results equal solving each sample alone, and differentiates ``x(T)``
with respect to each ω through ``odeint_adjoint(..., options={"per_sample": True})`` against
the exact ``dx(T)/dω = -T sin ωT``.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import neurode

F64 = torch.float64


# --8<-- [start:model]
class Oscillators(nn.Module):
    """``B`` independent oscillators ``[x, v]' = [v, -ω² x]``, one trainable ω per sample.

    ``t`` is a 0-d tensor in a joint solve and ``(B,)`` (each sample's own time) per sample;
    the field does not use it. Sample ``i`` depends on row ``i`` and ``ω_i`` only: per-sample
    mode needs independent samples.
    """

    def __init__(self, omega: torch.Tensor):
        super().__init__()
        self.omega = nn.Parameter(omega.clone())

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, v = y[:, 0], y[:, 1]
        return torch.stack([v, -self.omega**2 * x], dim=1)
# --8<-- [end:model]


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Solve the batch jointly and per sample; return work, errors and gradient errors."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--omega-min", type=float, default=0.1)
    p.add_argument("--omega-max", type=float, default=10.0)
    p.add_argument("--t-end", type=float, default=10.0)
    p.add_argument("--outputs", type=int, default=21, help="output times on [0, t_end]")
    p.add_argument("--rtol", type=float, default=1e-6)
    p.add_argument("--atol", type=float, default=1e-8)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (tiny tensors: more threads only add overhead)")
    args = p.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args) -> dict[str, float]:
    torch.manual_seed(0)
    B = args.batch
    omega = torch.logspace(torch.log10(torch.tensor(args.omega_min)),
                           torch.log10(torch.tensor(args.omega_max)), B, dtype=F64)
    func = Oscillators(omega)
    y0 = torch.stack([torch.ones(B, dtype=F64), torch.zeros(B, dtype=F64)], dim=1)  # (B, 2)
    t = torch.linspace(0.0, args.t_end, args.outputs, dtype=F64)                    # (T,)
    exact = torch.cos(omega * t[:, None])                                           # (T, B)
    tol = {"rtol": args.rtol, "atol": args.atol}
    out: dict[str, float] = {}
    picks = {"lowest ω": 0, "median ω": B // 2, "highest ω": B - 1}

    # --8<-- [start:solve]
    with torch.no_grad():
        start = time.perf_counter()
        joint = neurode.solve_ivp(func, y0, t, **tol)
        joint_s = time.perf_counter() - start
        start = time.perf_counter()
        each = neurode.solve_ivp(func, y0, t, **tol, per_sample=True)
        each_s = time.perf_counter() - start
    # joint: one count for the batch; per sample: (B,) counts
    joint_rows = joint.stats.nfe * B        # every row is evaluated at every batch evaluation
    each_rows = int(each.stats.nfe.sum())   # each row only while its sample is running
    # --8<-- [end:solve]

    err_joint = (joint.ys[..., 0] - exact).abs().amax(0)  # (B,) max over the outputs
    err_each = (each.ys[..., 0] - exact).abs().amax(0)
    out.update({"joint steps": joint.stats.n_steps, "joint nfe": joint.stats.nfe,
                "joint work": joint_rows, "per-sample work": each_rows,
                "per-sample batch evaluations": int(each.stats.nfe.max()),
                "joint seconds": joint_s, "per-sample seconds": each_s,
                "joint max error": err_joint.max().item(),
                "per-sample max error": err_each.max().item()})
    print(f"{B} oscillators, ω in [{args.omega_min:g}, {args.omega_max:g}], t in "
          f"[0, {args.t_end:g}], dopri5, rtol {args.rtol:g}, atol {args.atol:g}")
    print(f"{'':10s} {'ω':>7s} {'joint steps':>11s} {'per-sample steps':>16s} "
          f"{'NFE':>6s} {'joint error':>11s} {'per-sample error':>16s}")
    for name, i in picks.items():
        out[f"{name} per-sample steps"] = int(each.stats.n_steps[i])
        out[f"{name} joint error"] = err_joint[i].item()
        out[f"{name} per-sample error"] = err_each[i].item()
        print(f"{name:10s} {omega[i].item():7.3f} {joint.stats.n_steps:11d} "
              f"{int(each.stats.n_steps[i]):16d} {int(each.stats.nfe[i]):6d} "
              f"{err_joint[i].item():11.2e} {err_each[i].item():16.2e}")
    print(f"work (row evaluations): joint {joint_rows} = {joint.stats.nfe} x {B}, per sample "
          f"{each_rows} ({joint_rows / each_rows:.1f}x less); batch evaluations: joint "
          f"{joint.stats.nfe}, per sample {int(each.stats.nfe.max())} (the hardest sample's)")
    print(f"wall time: joint {joint_s:.3f} s, per sample {each_s:.3f} s")

    # --8<-- [start:alone]
    # each sample solved by itself, as a batch of one
    alone_diff, exact_diff = 0.0, 0.0
    capped = neurode.solve_ivp(func, y0, t, **tol, per_sample=True,
                               options={"max_outputs_per_step": len(t)})
    for i in picks.values():
        with torch.no_grad():
            one = neurode.solve_ivp(Oscillators(omega[i:i + 1]), y0[i:i + 1], t, **tol)
        alone_diff = max(alone_diff, (each.ys[:, i] - one.ys[:, 0]).abs().max().item())
        exact_diff = max(exact_diff, (capped.ys[:, i] - one.ys[:, 0]).abs().max().item())
    # --8<-- [end:alone]
    out["alone difference"] = alone_diff
    out["alone difference, uncapped"] = exact_diff
    print(f"per sample vs each sample alone: max difference {alone_diff:.1e} "
          f"(with max_outputs_per_step={len(t)}: {exact_diff:.1e})")

    # --8<-- [start:gradient]
    T = t[-1]
    start = time.perf_counter()
    ys = neurode.odeint_adjoint(func, y0, t, **tol, options={"per_sample": True})
    grad, = torch.autograd.grad(ys[-1, :, 0].sum(), func.omega)  # dx_i(T)/dω_i, (B,)
    grad_s = time.perf_counter() - start
    grad_exact = -T * torch.sin(omega * T)
    # --8<-- [end:gradient]
    scale = grad_exact.abs().max().item()
    out["gradient error"] = (grad - grad_exact).abs().max().item() / scale
    out["gradient seconds"] = grad_s
    print(f"dx(T)/dω by the per-sample adjoint: max error {out['gradient error']:.1e} "
          f"(relative to max |dx/dω| = {scale:.3g}), {grad_s:.2f} s")
    return out


if __name__ == "__main__":
    main()
