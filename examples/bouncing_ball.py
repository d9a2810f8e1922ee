"""Learn a ball's coefficient of restitution from the times it hits the ground — in one solve.

A ball falls under gravity (state: height, velocity). Each impact is an event of the height
falling through 0 (``direction=-1``); the reset flips the velocity and shrinks it by the
coefficient of restitution e, and the solve goes on: ``neurode.odeint_hybrid`` integrates every
bounce in one call and stops at the last one asked for (``stop_after``). The impact times are
differentiable with respect to e (implicit function theorem at each event, chain rule through
each reset), so e is fitted by gradient descent to observed impact times — by backprop, or with
``--adjoint`` through ``odeint_adjoint``.

    python examples/bouncing_ball.py [--bounces 10] [--iters 60] [--adjoint]
"""

from __future__ import annotations

import argparse

import torch

import neurode

G = 9.81


# --8<-- [start:hybrid]
def gravity(t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    return torch.stack([state[1], torch.full_like(state[1], -G)])


def height(t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    return state[0]


def impact_times(e: torch.Tensor, bounces: int, adjoint: bool = False) -> torch.Tensor:
    """Times ``(bounces,)`` of the first impacts of a ball dropped from 10 m with restitution e."""
    def bounce(t, state, which):
        return torch.stack([torch.zeros_like(state[0]), -e * state[1]])

    sol = neurode.odeint_hybrid(gravity, torch.tensor([10.0, 0.0], dtype=torch.float64),
                                torch.tensor([0.0, 1000.0], dtype=torch.float64),
                                event_fn=height, direction=-1, reset=bounce,
                                stop_after=bounces, rtol=1e-9, atol=1e-9, adjoint=adjoint,
                                adjoint_params=(e,) if adjoint else None)
    return sol.event_t
# --8<-- [end:hybrid]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bounces", type=int, default=10)
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--adjoint", action="store_true", help="gradients by odeint_adjoint")
    args = p.parse_args(argv)

    e_true = torch.tensor(0.8, dtype=torch.float64)
    with torch.no_grad():
        observed = impact_times(e_true, args.bounces)
    # --8<-- [start:fit]
    e = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([e], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.iters)
    for it in range(args.iters):
        opt.zero_grad()
        loss = ((impact_times(e, args.bounces, args.adjoint) - observed) ** 2).mean()
        loss.backward()
        opt.step()
        sched.step()
        # --8<-- [end:fit]
        if it % 10 == 0 or it == args.iters - 1:
            print(f"iter {it:3d}  loss {loss.item():.3e}  e {e.item():.5f}")
    print(f"observed impact times: {[round(x, 4) for x in observed.tolist()]}")
    print(f"learned e = {e.item():.5f} (true {e_true.item()})")
    return {"e": e.item(), "loss": loss.item()}


if __name__ == "__main__":
    main()
