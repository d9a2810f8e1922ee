"""Learn a ball's coefficient of restitution from the times it hits the ground.

A ball falls under gravity (state: height, velocity); at each impact, found by a terminal event,
its velocity flips and shrinks by the coefficient of restitution e. The times of the impacts are
differentiable with respect to e (implicit function theorem through ``neurode.odeint_event``), so
e can be fitted by gradient descent to observed impact times.

    python examples/bouncing_ball.py [--bounces 4] [--iters 100]
"""

from __future__ import annotations

import argparse

import torch

import neurode

G = 9.81


def gravity(t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    return torch.stack([state[1], torch.full_like(state[1], -G)])


def ground(t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    return state[0]


def impact_times(e: torch.Tensor, bounces: int) -> torch.Tensor:
    """Times of the first ``bounces`` impacts of a ball dropped from 10 m with restitution e."""
    t = torch.tensor(0.0, dtype=torch.float64)
    state = torch.tensor([10.0, 0.0], dtype=torch.float64)
    times = []
    for _ in range(bounces):
        t, sol = neurode.odeint_event(gravity, state, t, event_fn=ground, rtol=1e-9, atol=1e-9)
        times.append(t)
        height, velocity = sol[-1]
        # Restart just above the ground, moving up; the event's own zero is not re-detected.
        state = torch.stack([height.clamp(min=0.0) + 1e-9, -e * velocity])
    return torch.stack(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bounces", type=int, default=4)
    p.add_argument("--iters", type=int, default=100)
    args = p.parse_args()

    e_true = torch.tensor(0.8, dtype=torch.float64)
    observed = impact_times(e_true, args.bounces)
    e = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([e], lr=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.iters)
    for it in range(args.iters):
        opt.zero_grad()
        loss = ((impact_times(e, args.bounces) - observed) ** 2).mean()
        loss.backward()
        opt.step()
        sched.step()
        if it % 10 == 0 or it == args.iters - 1:
            print(f"iter {it:3d}  loss {loss.item():.3e}  e {e.item():.5f}")
    print(f"observed impact times: {[round(x, 4) for x in observed.tolist()]}")
    print(f"learned e = {e.item():.5f} (true {e_true.item()})")


if __name__ == "__main__":
    main()
