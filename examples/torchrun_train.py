"""Train a neural ODE on several processes with torchrun and DistributedDataParallel.

    torchrun --nproc_per_node=2 examples/torchrun_train.py [--iters 300]
    python examples/torchrun_train.py [--iters 300]          # one process, the same result

The data are trajectories of a damped pendulum ``[θ, ω]' = [ω, -sin θ - 0.25 ω]`` from 512
initial states in [-2, 2]², seen at 5 times on [0, 1]. The model is an MLP vector field
``f_θ(z)`` solved with ``odeint_adjoint`` (rk4 on a fixed grid by default); the loss is the
mean squared error of the predicted states.

Every step draws one *global* batch of initial states, the same on every rank (a generator
seeded by the step), and each rank takes its share ``batch[rank::world]``. The model is wrapped
in ``DistributedDataParallel`` (gloo on CPU): the adjoint's parameter gradient lands in the
parameters' ``.grad`` like any module's gradient, so DDP averages it across ranks during
``backward()``. With equal shares the average of the shard means is the global mean, and two
processes end with the parameters of one process that sees the whole batch (to rounding; with
``--method dopri5`` add ``--per-sample`` for that, since a joint adaptive solve picks its steps
from its own shard).

Run without torchrun (no ``WORLD_SIZE`` in the environment) it is a single process. Rank 0
prints the progress and the result; ``--out DIR`` saves the final parameters to
``DIR/params.pt`` (rank 0 only), and ``--compare DIR`` prints the largest difference between
this run's parameters and those saved in ``DIR``.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch
from torch import nn

import neurode

F64 = torch.float64


def pendulum(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The true field, ``z = [θ, ω]`` of shape ``(B, 2)``."""
    theta, omega = z[:, 0], z[:, 1]
    return torch.stack([omega, -torch.sin(theta) - 0.25 * omega], dim=1)


# --8<-- [start:model]
class NeuralODE(nn.Module):
    """``forward(z0 (B, 2), t (T,)) -> (T, B, 2)``: an MLP field solved by the adjoint method.

    DDP wraps this module, so its ``forward`` (the whole solve) runs once per step and the
    field's parameters get their gradient from the adjoint's backward pass.
    """

    def __init__(self, hidden: int, method: str, step_size: float, per_sample: bool):
        super().__init__()
        self.field = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, hidden),
                                   nn.Tanh(), nn.Linear(hidden, 2))
        self.method = method
        fixed = not neurode.METHODS[method].adaptive
        self.options = {"step_size": step_size} if fixed else {}
        if per_sample:
            self.options["per_sample"] = True

    def forward(self, z0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return neurode.odeint_adjoint(lambda t, z: self.field(z), z0, t, method=self.method,
                                      rtol=1e-6, atol=1e-8, options=self.options,
                                      adjoint_params=tuple(self.field.parameters()))
# --8<-- [end:model]


# --8<-- [start:setup]
def setup() -> tuple[int, int]:
    """``(rank, world size)``; joins the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    dist.init_process_group("gloo")  # torchrun sets MASTER_ADDR, MASTER_PORT, RANK, ...
    return dist.get_rank(), world
# --8<-- [end:setup]


def make_data(n: int, t: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` initial states ``(n, 2)`` and their true trajectories ``(T, n, 2)``: every rank
    makes the same data set (one batched solve)."""
    g = torch.Generator().manual_seed(seed)
    z0 = 4 * torch.rand(n, 2, generator=g, dtype=F64) - 2
    with torch.no_grad():
        zs = neurode.odeint(pendulum, z0, t, rtol=1e-10, atol=1e-12)
    return z0, zs


def field_error(model: NeuralODE) -> float:
    """RMS of ``f_θ - f`` over a grid of [-2, 2]², relative to the RMS of ``f``."""
    g = torch.linspace(-2, 2, 41, dtype=F64)
    z = torch.cartesian_prod(g, g)
    with torch.no_grad():
        diff = model.field(z) - pendulum(None, z)
        return (diff.pow(2).mean() / pendulum(None, z).pow(2).mean()).sqrt().item()


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train (on this rank's share of every batch); return the final metrics (every rank)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32, help="the global batch (all ranks)")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--method", default="rk4")
    p.add_argument("--step-size", type=float, default=0.05, help="for fixed-grid methods")
    p.add_argument("--per-sample", action="store_true", help="one step size per sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--out", type=Path, default=None, help="save params.pt here (rank 0)")
    p.add_argument("--compare", type=Path, default=None,
                   help="a folder with another run's params.pt: print the largest difference")
    args = p.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _train(args)
    finally:
        torch.set_num_threads(threads)


def _train(args) -> dict[str, float]:
    rank, world = setup()
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} is not a multiple of {world} ranks")
    t = torch.linspace(0.0, 1.0, 5, dtype=F64)
    z0_all, zs_all = make_data(512, t, args.seed)

    # --8<-- [start:wrap]
    torch.manual_seed(args.seed)  # the same initial parameters on every rank
    model = NeuralODE(args.hidden, args.method, args.step_size, args.per_sample).to(F64)
    net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model)  # broadcasts rank 0's parameters, then
        #                                       averages every gradient across the ranks
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    # --8<-- [end:wrap]

    start = time.perf_counter()
    first = last = math.nan
    # --8<-- [start:loop]
    for it in range(args.iters):
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + it)
        idx = torch.randperm(len(z0_all), generator=g)[:args.batch_size]  # the global batch
        idx = idx[rank::world]                                          # this rank's share
        pred = net(z0_all[idx], t)                                      # (T, B/world, 2)
        loss = (pred - zs_all[:, idx]).pow(2).mean()
        opt.zero_grad()
        loss.backward()  # adjoint solve; DDP all-reduces the parameter gradients
        opt.step()
        # --8<-- [end:loop]
        if world > 1:  # the global loss, for the log: the mean of the ranks' losses
            import torch.distributed as dist

            mean = loss.detach().clone()
            dist.all_reduce(mean)
            loss_value = mean.item() / world
        else:
            loss_value = loss.item()
        first = loss_value if it == 0 else first
        last = loss_value
        if rank == 0 and (it % 50 == 0 or it == args.iters - 1):
            print(f"iter {it:4d}  loss {loss_value:.3e}")
    seconds = time.perf_counter() - start

    out = {"world": float(world), "first loss": first, "final loss": last,
           "field error": field_error(model), "seconds": seconds}
    if rank == 0:
        print(f"{world} process(es), {args.iters} steps of a global batch of {args.batch_size}: "
              f"loss {first:.3e} -> {last:.3e}; learned field vs the pendulum's on [-2, 2]²: "
              f"relative RMS error {out['field error']:.3f}; {seconds:.1f} s")
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), args.out / "params.pt")
        if args.compare is not None:
            other = torch.load(args.compare / "params.pt")
            out["max difference"] = max((v - other[k]).abs().max().item()
                                        for k, v in model.state_dict().items())
            print(f"largest parameter difference to {args.compare}: {out['max difference']:.1e}")
    if world > 1:
        import torch.distributed as dist

        del net  # the DDP wrapper holds the process group: drop it before destroying the group
        dist.barrier()
        dist.destroy_process_group()
    return out


if __name__ == "__main__":
    main()
