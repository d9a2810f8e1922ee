"""A thermostat — a hybrid system with two event functions — and its heater power fitted to
observed switching times.

State: room temperature T and heater mode u ∈ {0, 1}; ``dT/dt = −k (T − T_out) + P u``. Two
events with directions: T rising through ``T_high`` switches the heater off, T falling through
``T_low`` switches it on (the reset sets u). ``neurode.odeint_hybrid`` runs the whole span in one
call and records every switch (time, which function); the switching times are differentiable in
the heater power P, which is fitted by gradient descent to observed ones.

    python examples/thermostat.py [--hours 8] [--iters 30]
"""

from __future__ import annotations

import argparse

import torch

import neurode

K, T_OUT, T_LOW, T_HIGH = 0.3, 5.0, 19.0, 21.0


# --8<-- [start:hybrid]
def switching_times(power: torch.Tensor, hours: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(times, which)`` of every switch in ``[0, hours]``, starting at 18 °C with the heater on
    (which = 0: off at T_high, 1: on at T_low)."""
    def room(t, y):
        temp, u = y[0], y[1]
        return torch.stack([-K * (temp - T_OUT) + power * u, torch.zeros_like(u)])

    def thresholds(t, y):
        return torch.stack([y[0] - T_HIGH, y[0] - T_LOW])

    def switch(t, y, which):
        return torch.stack([y[0], torch.full_like(y[1], 0.0 if which == 0 else 1.0)])

    y0 = torch.tensor([18.0, 1.0], dtype=torch.float64)
    sol = neurode.odeint_hybrid(room, y0, torch.tensor([0.0, hours], dtype=torch.float64),
                                event_fn=thresholds, direction=(+1, -1), reset=switch,
                                rtol=1e-9, atol=1e-9)
    return sol.event_t, sol.event_index
# --8<-- [end:hybrid]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hours", type=float, default=8.0)
    p.add_argument("--iters", type=int, default=30)
    args = p.parse_args(argv)

    with torch.no_grad():
        observed, which = switching_times(torch.tensor(8.0, dtype=torch.float64), args.hours)
    print(f"{len(observed)} switches; first: "
          + ", ".join(f"{'off' if w == 0 else 'on'} {t:.3f} h"
                      for t, w in zip(observed[:4].tolist(), which[:4].tolist(), strict=True)))
    # --8<-- [start:fit]
    power = torch.tensor(6.5, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([power], lr=1.0)  # the loss is nearly quadratic in P
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.iters)
    for it in range(args.iters):
        opt.zero_grad()
        times, _ = switching_times(power, args.hours)
        n = min(len(times), len(observed), 6)  # the first switches (their number depends on P)
        loss = ((times[:n] - observed[:n]) ** 2).mean()
        loss.backward()
        opt.step()
        sched.step()
        # --8<-- [end:fit]
        if it % 10 == 0 or it == args.iters - 1:
            print(f"iter {it:3d}  loss {loss.item():.3e}  P {power.item():.4f}")
    print(f"learned heater power P = {power.item():.4f} (true 8.0)")
    return {"power": power.item(), "switches": len(observed)}


if __name__ == "__main__":
    main()
