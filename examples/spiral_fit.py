"""The spiral experiment: learn unknown dynamics from one observed trajectory.

A 2-D system spirals into the origin, slowly and nonlinearly: its damping and its rotation
speed both grow with the radius (``dz/dt = -a|z|²z + (w + b|z|²) Jz``, ``J`` the rotation by
90 degrees). We observe one trajectory of it at ``--n-points`` times, with a little noise, and
fit an MLP vector field ``f_θ(z)`` so that ``dz/dt = f_θ(z)`` reproduces it: every iteration
solves the learned ODE over a minibatch of short windows of the trajectory, each started at an
observation, and Adam reduces the squared error at the window's observations. Gradients flow
through the solver by backprop, or with ``--adjoint`` through ``neurode.odeint_adjoint``.

At the end the learned model is rolled out from the first observation alone over the whole
observed span and beyond it (the truth is known in closed form), and its error is compared
with the untrained model's.

    python examples/spiral_fit.py [--iters 1000] [--adjoint] [--plot spiral_fit.png]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

import neurode

# --8<-- [start:truth]
A_DAMP, OMEGA, B_ROT = 0.1, 1.0, 0.4  # damping a, base rotation w, radius-dependent rotation b
Z0 = (1.5, 0.0)


def true_field(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """dz/dt = -a |z|² z + (w + b |z|²) J z, for z of shape (..., 2)."""
    r2 = z.pow(2).sum(-1, keepdim=True)
    jz = torch.stack([-z[..., 1], z[..., 0]], -1)  # z turned by 90 degrees
    return -A_DAMP * r2 * z + (OMEGA + B_ROT * r2) * jz


def exact_solution(t: torch.Tensor) -> torch.Tensor:
    """The closed form: in polar coordinates r' = -a r³ and θ' = w + b r², so
    1/r² = 1/r0² + 2at and θ = θ0 + wt + (b / 2a) log(r0² / r²)."""
    r0 = math.hypot(*Z0)
    u = 1 / r0**2 + 2 * A_DAMP * t  # u = 1/r²
    theta = math.atan2(Z0[1], Z0[0]) + OMEGA * t + B_ROT / (2 * A_DAMP) * torch.log(u * r0**2)
    return torch.stack([torch.cos(theta), torch.sin(theta)], -1) / u.sqrt().unsqueeze(-1)
# --8<-- [end:truth]


# --8<-- [start:model]
class MLPField(nn.Module):
    """f_θ(z): an autonomous MLP vector field (the time argument is ignored)."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(),
                                 nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 2))
        self.nfe = 0

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.net(z)
# --8<-- [end:model]


def rollout(field: nn.Module, t: torch.Tensor, rtol: float, atol: float) -> torch.Tensor:
    """The model's trajectory (T, 2) from the first observation's true state."""
    z0 = torch.tensor(Z0, dtype=t.dtype)
    with torch.no_grad():
        return neurode.odeint(field, z0, t, rtol=rtol, atol=atol)


def plot(path: str, t, t_max: float, obs, truth, pred, field: nn.Module) -> None:
    """Phase portraits: the true field and trajectory beside the learned ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lim = 1.7
    g = torch.linspace(-lim, lim, 25, dtype=t.dtype)
    gx, gy = torch.meshgrid(g, g, indexing="xy")
    grid = torch.stack([gx.flatten(), gy.flatten()], 1)
    seen = t <= t_max
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.4), sharex=True, sharey=True)
    with torch.no_grad():
        fields = (true_field(t[0], grid), field(t[0], grid))
    for ax, v, traj, title in zip(axes, fields, (truth, pred), ("true", "learned"), strict=True):
        ax.streamplot(gx.numpy(), gy.numpy(), v[:, 0].reshape(gx.shape).numpy(),
                      v[:, 1].reshape(gx.shape).numpy(), color="0.8", density=1.0,
                      linewidth=0.7)
        ax.plot(traj[seen, 0], traj[seen, 1], color="crimson", lw=1.2,
                label=f"{title} trajectory from z(0)")
        ax.plot(traj[~seen, 0], traj[~seen, 1], color="crimson", lw=1.2, ls="--",
                label="... beyond the observed span")
        ax.scatter(obs[:, 0], obs[:, 1], c=t[: len(obs)], cmap="viridis", s=7, zorder=3,
                   label="observations (colour: time)")
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xlabel="z1",
               title=f"{title} vector field")
        ax.legend(loc="lower left", fontsize=8)
    axes[0].set_ylabel("z2")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=1000, help="Adam iterations")
    p.add_argument("--batch", type=int, default=16, help="windows per minibatch")
    p.add_argument("--window", type=int, default=10, help="observations per window")
    p.add_argument("--n-points", type=int, default=200, help="observation times T")
    p.add_argument("--t-max", type=float, default=20.0, help="observed span [0, t_max]")
    p.add_argument("--noise", type=float, default=0.01, help="observation noise std")
    p.add_argument("--hidden", type=int, default=64, help="width of the MLP field")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--rtol", type=float, default=1e-6)
    p.add_argument("--atol", type=float, default=1e-8)
    p.add_argument("--adjoint", action="store_true", help="gradients by odeint_adjoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (small tensors: more threads only add overhead)")
    p.add_argument("--plot", metavar="PATH", help="write the phase portraits to PATH (PNG)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dtype = torch.float64

    # --8<-- [start:data]
    t = torch.linspace(0, args.t_max, args.n_points, dtype=dtype)
    z0 = torch.tensor(Z0, dtype=dtype)
    with torch.no_grad():  # the data: the true ODE solved tightly, plus noise
        truth = neurode.odeint(true_field, z0, t, method="dopri8", rtol=1e-12, atol=1e-12)
    obs = truth + args.noise * torch.randn(truth.shape, dtype=dtype)
    reference_error = (truth - exact_solution(t)).abs().max().item()
    # --8<-- [end:data]

    # the unseen future: the truth on (t_max, 1.5 t_max], never observed
    t_all = torch.linspace(0, 1.5 * args.t_max, int(1.5 * args.n_points), dtype=dtype)
    truth_all = exact_solution(t_all)
    observed = t_all <= args.t_max

    def errors(field: nn.Module) -> tuple[float, float, torch.Tensor]:
        pred = rollout(field, t_all, args.rtol, args.atol)
        err = (pred - truth_all).norm(dim=1)
        return err[observed].mean().item(), err[~observed].mean().item(), pred

    field = MLPField(args.hidden).to(dtype)
    err0, future0, _ = errors(field)

    # --8<-- [start:train]
    odeint = neurode.odeint_adjoint if args.adjoint else neurode.odeint
    opt = torch.optim.Adam(field.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.iters)
    window_t = t[: args.window] - t[0]  # the field is autonomous: every window starts at 0
    offsets = torch.arange(args.window)
    losses = []
    start = time.perf_counter()
    for it in range(args.iters):
        s = torch.randint(0, args.n_points - args.window + 1, (args.batch,))
        target = obs[s.unsqueeze(0) + offsets.unsqueeze(1)]  # (window, batch, 2)
        pred = odeint(field, obs[s], window_t, rtol=args.rtol, atol=args.atol)
        loss = (pred - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if it % max(1, args.iters // 10) == 0 or it == args.iters - 1:
            print(f"iter {it:4d}  window loss {loss.item():.3e}  NFE so far {field.nfe}")
    seconds = time.perf_counter() - start
    # --8<-- [end:train]

    err, future, pred = errors(field)
    noise_floor = args.noise**2
    print(f"ground truth vs closed form: max error {reference_error:.1e}")
    print(f"training: {args.iters} iterations in {seconds:.1f} s "
          f"({'adjoint' if args.adjoint else 'backprop'}), window loss "
          f"{losses[0]:.3e} -> {min(losses[-10:]):.3e} (best of the last 10; noise floor "
          f"{noise_floor:.1e})")
    print(f"rollout from z(0), mean |z - z_true| on [0, {args.t_max:g}]: "
          f"untrained {err0:.3f}, trained {err:.3f}")
    print(f"extrapolation on ({args.t_max:g}, {1.5 * args.t_max:g}]: "
          f"untrained {future0:.3f}, trained {future:.3f}")
    if args.plot:
        plot(args.plot, t_all, args.t_max, obs, truth_all, pred, field)
        print(f"wrote {args.plot}")
    return {"reference_error": reference_error, "loss_first": losses[0],
            "loss_last": min(losses[-10:]), "loss_final": losses[-1],
            "error_untrained": err0, "error": err,
            "future_error_untrained": future0, "future_error": future, "seconds": seconds}


if __name__ == "__main__":
    main()
