"""A latent ODE for irregularly sampled time series, against a GRU that sees the same gaps.

Every series is a sinusoid with its own amplitude, frequency and phase, observed with noise at
``--n-obs`` random times in [0, 5] (a different set of times per series). The latent ODE
(``neurode.nn.LatentODE``) encodes a series into a distribution over an initial latent state
z0, samples z0, solves ``dz/dt = f(z)`` at that series' own observation times and reads the
observations out of z(t); it is trained by maximising the evidence lower bound (ELBO). The
baseline (``neurode.nn.GRUBaseline``) is a GRU fed ``[x_i, Δt_i]`` that predicts the next
observation from the gap to it.

After training both predict each test series on (5, 10] from its observations on [0, 5]; the
script prints the negative ELBO and reconstruction error before and after training, the
extrapolation errors of both models, and checks that a series predicted inside a batch of
series with other time grids gets the same prediction as when it is solved alone.

    python examples/latent_ode.py [--iters 1000] [--gradient adjoint] [--plot latent.png]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from neurode.data import periodic_series
from neurode.nn import GRUBaseline, LatentODE


def evaluate(model: LatentODE, gru: GRUBaseline, test, seed: int = 1) -> dict[str, float]:
    """Negative ELBO per observation, reconstruction and extrapolation errors on ``test``."""
    t, x, t_future, x_future = test
    # --8<-- [start:evaluate]
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)  # the same z0 draws for every evaluation
        neg_elbo, _ = model.elbo_loss(x, t)
        mu, _ = model.encode(x, t)  # the posterior mean of z0 ...
        recon = model.decode(mu, t)  # ... decoded at each series' own times
        latent_future = model.extrapolate(x, t, t_future)  # z(t) solved on past t_max
        gru_future = gru.extrapolate(x, t, t_future)  # the GRU rolled out step by step
    # --8<-- [end:evaluate]
    return {"neg_elbo": neg_elbo.item(),
            "recon_mse": (recon - x).pow(2).mean().item(),
            "extrap_mse_latent": (latent_future - x_future).pow(2).mean().item(),
            "extrap_mse_gru": (gru_future - x_future).pow(2).mean().item()}


def plot(path: str, model: LatentODE, gru: GRUBaseline, test, n: int = 4) -> None:
    """A few test series: observations, the latent ODE on a fine grid, both extrapolations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, x, tf, xf = (v[:n] for v in test)
    dense = t[:, :1] + (tf[:, -1:] - t[:, :1]) * torch.linspace(0, 1, 200)[1:]
    curve, gru_future = model.extrapolate(x, t, dense), gru.extrapolate(x, t, tf)
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.1 * n), sharex=True)
    for i, ax in enumerate(axes):
        ax.axvspan(float(tf[i, 0]), float(tf[i, -1]), color="0.94")
        ax.plot(t[i], x[i, :, 0], "o", ms=3.5, color="black", label="observed")
        ax.plot(tf[i], xf[i, :, 0], "o", ms=3.5, mfc="none", color="black",
                label="future (held out)")
        ax.plot(dense[i], curve[i, :, 0], color="crimson", lw=1.4, label="latent ODE")
        ax.plot(tf[i], gru_future[i, :, 0], "x-", ms=4, lw=0.8, color="tab:blue",
                label="GRU rollout")
    axes[0].legend(ncol=4, fontsize=8, loc="upper left")
    axes[-1].set_xlabel("t")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=1000, help="Adam iterations (both models)")
    p.add_argument("--batch", type=int, default=32, help="series per minibatch")
    p.add_argument("--n-series", type=int, default=256, help="training series")
    p.add_argument("--n-test", type=int, default=64, help="test series")
    p.add_argument("--n-obs", type=int, default=30, help="observations per series")
    p.add_argument("--latent-dim", type=int, default=4)
    p.add_argument("--hidden", type=int, default=32, help="width of the field and the GRU")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--gradient", default="backprop", choices=["adjoint", "backprop"],
                   help="how the decoder's solve is differentiated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (small tensors: more threads only add overhead)")
    p.add_argument("--plot", metavar="PATH", help="write a figure of test series to PATH")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    # --8<-- [start:data]
    # t: (B, n_obs) sorted times, a different draw per series; x: (B, n_obs, 1)
    t, x, _, _ = periodic_series(args.n_series, args.n_obs, seed=args.seed)
    test = periodic_series(args.n_test, args.n_obs, n_future=20, seed=args.seed + 1)
    # --8<-- [end:data]

    # --8<-- [start:models]
    model = LatentODE(obs_dim=1, latent_dim=args.latent_dim, hidden=args.hidden,
                      rnn_hidden=args.hidden, obs_std=0.05, rtol=1e-3, atol=1e-4,
                      gradient=args.gradient)
    gru = GRUBaseline(obs_dim=1, hidden=2 * args.hidden)
    # --8<-- [end:models]
    before = evaluate(model, gru, test)

    # --8<-- [start:train]
    opt = torch.optim.Adam([*model.parameters(), *gru.parameters()], lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.iters)
    start = time.perf_counter()
    for it in range(args.iters):
        idx = torch.randint(0, args.n_series, (args.batch,))
        neg_elbo, parts = model.elbo_loss(x[idx], t[idx])  # the latent ODE's loss
        gru_mse = gru.loss(x[idx], t[idx])  # the GRU's one-step-ahead error
        opt.zero_grad()
        (neg_elbo + gru_mse).backward()  # the two models share no parameters
        opt.step()
        sched.step()
        if it % max(1, args.iters // 10) == 0 or it == args.iters - 1:
            print(f"iter {it:4d}  -ELBO/obs {parts['loss']:8.3f}  recon mse {parts['mse']:.4f}"
                  f"  kl {parts['kl']:6.2f}  gru mse {gru_mse.item():.4f}")
    seconds = time.perf_counter() - start
    # --8<-- [end:train]
    after = evaluate(model, gru, test)

    # --8<-- [start:check]
    # each series has its own grid; inside a batch it is solved with its own steps, so it gets
    # the prediction it would get alone (to rounding: checked in float64, where float32's
    # rounding differences between batched and single products cannot flip a step decision)
    m64 = copy.deepcopy(model).double()
    tt, xx, tf = (v[:4].double() for v in test[:3])
    together = m64.extrapolate(xx, tt, tf)
    alone = torch.cat([m64.extrapolate(xx[i:i + 1], tt[i:i + 1], tf[i:i + 1])
                       for i in range(4)])
    batch_vs_alone = (together - alone).abs().max().item()
    # --8<-- [end:check]

    print(f"training: {args.iters} iterations in {seconds:.1f} s (decoder gradient: "
          f"{args.gradient})")
    print(f"test -ELBO per observation: {before['neg_elbo']:.3f} -> {after['neg_elbo']:.3f}")
    print(f"test reconstruction mse:    {before['recon_mse']:.4f} -> {after['recon_mse']:.4f}")
    print(f"extrapolation mse on (5, 10]: latent ODE {after['extrap_mse_latent']:.4f}, "
          f"GRU {after['extrap_mse_gru']:.4f} (untrained: {before['extrap_mse_latent']:.4f}, "
          f"{before['extrap_mse_gru']:.4f})")
    print(f"series in a batch vs alone: max difference {batch_vs_alone:.1e}")
    if args.plot:
        plot(args.plot, model, gru, test)
        print(f"wrote {args.plot}")
    return {**{f"{k}_before": v for k, v in before.items()}, **after,
            "batch_vs_alone": batch_vs_alone, "seconds": seconds}


if __name__ == "__main__":
    main()
