"""Continuous normalizing flows on a 2-D toy density, trained two ways.

A CNF (``neurode.nn.CNF``) pushes Gaussian noise z(0) along ``dz/dt = f(t, z)`` to data
x = z(1), and gets the density of x from the instantaneous change of variables
``d log p(z(t))/dt = -tr(∂f/∂z)``. The same field architecture is trained

* by maximum likelihood: minimise ``-log p(x)``, one ODE solve (and its adjoint) per step;
* by conditional flow matching (``neurode.nn.flow_matching_loss``): regress f on the velocity
  of straight paths from noise to data, no solve at all during training.

Both are then evaluated the same way: test negative log-likelihood in nats (exact trace), the
function evaluations (NFE) a log-density solve and a sampling solve take, and the probability
mass of the density on a grid (it must be 1). A linear field, whose flow is known in closed
form, checks the log-density computation itself.

    python examples/cnf.py [--data moons] [--ml-iters 400] [--fm-iters 20000] [--plot cnf.png]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from neurode.data import TOY_2D, sample_2d
from neurode.nn import CNF, ConcatMLP, ODEFunc, flow_matching_loss


def make_cnf(args, seed: int) -> CNF:
    """A fresh CNF; the same seed gives the same initial field."""
    torch.manual_seed(seed)
    # --8<-- [start:model]
    field = ODEFunc(ConcatMLP(2, args.hidden, layers=3), time_input=True)  # counts its calls
    cnf = CNF(field, dim=2, trace=args.trace, method="dopri5", rtol=args.rtol, atol=args.atol,
              gradient="adjoint")
    # --8<-- [end:model]
    return cnf


def train_ml(cnf: CNF, data: torch.Tensor, args) -> None:
    g = torch.Generator().manual_seed(args.seed)
    # --8<-- [start:ml]
    opt = torch.optim.Adam(cnf.parameters(), lr=args.lr)
    for it in range(args.ml_iters):
        x = data[torch.randint(0, len(data), (args.batch,), generator=g)]
        loss = -cnf.log_prob(x).mean()  # a solve from x back to noise, with the trace
        opt.zero_grad()
        loss.backward()  # the adjoint solve
        opt.step()
        # --8<-- [end:ml]
        if it % max(1, args.ml_iters // 5) == 0 or it == args.ml_iters - 1:
            print(f"  ml iter {it:5d}  train nll {loss.item():.3f}")


def train_fm(cnf: CNF, data: torch.Tensor, args) -> None:
    g = torch.Generator().manual_seed(args.seed)
    # --8<-- [start:fm]
    opt = torch.optim.Adam(cnf.parameters(), lr=args.lr)
    # the regression targets are random (each x0 paired with a random x1): a decaying
    # learning rate averages their noise out at the end
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.fm_iters)
    for it in range(args.fm_iters):
        x1 = data[torch.randint(0, len(data), (args.batch,), generator=g)]
        loss = flow_matching_loss(cnf.func, x1)  # one field evaluation, no solve
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        # --8<-- [end:fm]
        if it % max(1, args.fm_iters // 5) == 0 or it == args.fm_iters - 1:
            print(f"  fm iter {it:5d}  flow-matching loss {loss.item():.3f}")


def evaluate(cnf: CNF, test: torch.Tensor, lim: float = 5.0, n: int = 100) -> dict[str, float]:
    """Test NLL (nats), NFE of a log-density and of a sampling solve, mass on a grid."""
    field = cnf.func
    # --8<-- [start:evaluate]
    with torch.no_grad():
        field.reset_nfe()
        nll = -cnf.log_prob(test).mean().item()  # solve x -> z(0), log N(z(0)) + c(0)
        nfe_density = field.nfe
        field.reset_nfe()
        samples = cnf.sample(len(test))  # solve noise z(0) -> x = z(1), no trace
        nfe_sample = field.nfe
        # the density integrates to 1: sum p over an n x n grid on [-lim, lim]^2
        g = torch.linspace(-lim, lim, n)
        gx, gy = torch.meshgrid(g, g, indexing="xy")
        p = cnf.log_prob(torch.stack([gx.flatten(), gy.flatten()], 1)).exp()
        mass = (p.sum() * (g[1] - g[0]) ** 2).item()
    # --8<-- [end:evaluate]
    return {"nll": nll, "nfe_density": nfe_density, "nfe_sample": nfe_sample, "mass": mass,
            "samples": samples}


def hutchinson_nll(cnf: CNF, test: torch.Tensor, n_probes: int = 4) -> tuple[float, float]:
    """The test NLL with Hutchinson's trace estimator (one vector-Jacobian product per step
    instead of D) on the same field: its mean over probes, and the per-point spread."""
    # --8<-- [start:hutchinson]
    stochastic = CNF(cnf.func, dim=2, trace="hutchinson", noise="rademacher",
                     rtol=cnf.rtol, atol=cnf.atol)
    with torch.no_grad():
        draws = torch.stack([-stochastic.log_prob(test) for _ in range(n_probes)])
    # --8<-- [end:hutchinson]
    return draws.mean().item(), draws.std(0).mean().item()


def linear_flow_error() -> float:
    """log p of a CNF with the linear field f(z) = A z against the closed form.

    The flow is z(1) = exp(A) z(0), so log p(x) = log N(exp(-A) x) - tr(A): the integral of
    -tr(∂f/∂z) = -tr(A) over a unit of time."""
    # --8<-- [start:linear]
    A = torch.tensor([[0.3, -1.0], [0.8, -0.5]], dtype=torch.float64)
    linear = nn.Linear(2, 2, bias=False).double()
    linear.weight.data.copy_(A)
    cnf = CNF(ODEFunc(linear), dim=2, rtol=1e-10, atol=1e-10)
    x = torch.randn(64, 2, dtype=torch.float64)
    z0 = x @ torch.linalg.matrix_exp(-A).T
    exact = cnf.base_log_prob(z0) - torch.trace(A)
    with torch.no_grad():
        error = (cnf.log_prob(x) - exact).abs().max().item()
    # --8<-- [end:linear]
    return error


def plot(path: str, test: torch.Tensor, models: dict[str, CNF], samples: dict, lim: float = 4.0):
    """Test data; each model's density on a grid and its samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = 120
    g = torch.linspace(-lim, lim, n)
    gx, gy = torch.meshgrid(g, g, indexing="xy")
    fig, axes = plt.subplots(2, 3, figsize=(11, 7.4))
    axes[0, 0].scatter(test[:, 0], test[:, 1], s=1.5, color="0.2")
    axes[0, 0].set_title("test data")
    axes[1, 0].scatter(*torch.randn(len(test), 2).T, s=1.5, color="0.5")
    axes[1, 0].set_title("noise z(0) ~ N(0, I)")
    for col, (name, cnf) in enumerate(models.items(), start=1):
        with torch.no_grad():
            p = cnf.log_prob(torch.stack([gx.flatten(), gy.flatten()], 1)).exp().reshape(n, n)
        axes[0, col].imshow(p, extent=(-lim, lim, -lim, lim), origin="lower", cmap="magma")
        axes[0, col].set_title(f"{name}: density p(x)")
        s = samples[name]
        axes[1, col].scatter(s[:, 0], s[:, 1], s=1.5, color="crimson")
        axes[1, col].set_title(f"{name}: samples z(1)")
    for ax in axes.flat:
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xticks=[], yticks=[])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="moons", choices=sorted(TOY_2D))
    p.add_argument("--ml-iters", type=int, default=400, help="maximum-likelihood iterations")
    p.add_argument("--fm-iters", type=int, default=20000, help="flow-matching iterations")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--hidden", type=int, default=64, help="width of the field's MLP")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--trace", default="exact", choices=["exact", "hutchinson"],
                   help="trace of ∂f/∂z during maximum-likelihood training")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--n-test", type=int, default=2000, help="test points")
    p.add_argument("--grid", type=int, default=100, help="grid points per axis for the mass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (small tensors: more threads only add overhead)")
    p.add_argument("--plot", metavar="PATH", help="write densities and samples to PATH (PNG)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    # --8<-- [start:data]
    data = sample_2d(args.data, 20000, seed=args.seed)  # (20000, 2) float32
    test = sample_2d(args.data, args.n_test, seed=args.seed + 1)
    # --8<-- [end:data]
    results: dict[str, float] = {"linear_logp_error": linear_flow_error()}
    print(f"linear field: |log p - closed form| <= {results['linear_logp_error']:.1e}")
    initial = evaluate(make_cnf(args, args.seed), test, n=args.grid)
    results["nll_init"], results["mass_init"] = initial["nll"], initial["mass"]
    print(f"untrained: test NLL {initial['nll']:.3f} nats, grid mass {initial['mass']:.4f}")

    models, samples = {}, {}
    for name, train in (("ml", train_ml), ("fm", train_fm)):
        cnf = make_cnf(args, args.seed)  # both start from the same field
        print(f"{'maximum likelihood' if name == 'ml' else 'flow matching'}:")
        start = time.perf_counter()
        train(cnf, data, args)
        seconds = time.perf_counter() - start
        ev = evaluate(cnf, test, n=args.grid)
        samples[name], models[name] = ev.pop("samples"), cnf
        results.update({f"{k}_{name}": float(v) for k, v in ev.items()})
        results[f"seconds_{name}"] = seconds
        print(f"  {seconds:.1f} s; test NLL {ev['nll']:.3f} nats; NFE: log-density "
              f"{ev['nfe_density']}, sampling {ev['nfe_sample']}; grid mass {ev['mass']:.4f}")
    mean, spread = hutchinson_nll(models["ml"], test)
    results["nll_ml_hutchinson"], results["hutchinson_spread"] = mean, spread
    print(f"ml model, Hutchinson trace: test NLL {mean:.3f} nats (exact {results['nll_ml']:.3f}),"
          f" per-point std {spread:.3f}")
    if args.plot:
        plot(args.plot, test, models, samples)
        print(f"wrote {args.plot}")
    return results


if __name__ == "__main__":
    main()
