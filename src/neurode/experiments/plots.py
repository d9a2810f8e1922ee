"""Figures of the experiments (matplotlib, Agg backend, PNG). Needs ``neurode[experiments]``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from neurode.errors import InvalidInputError

__all__ = ["classify", "density", "latent", "spiral"]


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise InvalidInputError("plots need matplotlib: pip install matplotlib (or "
                                "neurode[experiments])") from e
    return plt


def _np(x: Tensor):
    return x.detach().cpu().double().numpy()


def spiral(path: Path, t, obs, z_true, z_pred, func) -> Path:
    """Phase plane (observations coloured by time, true and learned trajectories, the learned
    vector field) and both coordinates against time."""
    plt = _plt()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1, 1.3]})
    lim = float(obs.abs().max()) * 1.15
    g = torch.linspace(-lim, lim, 21, dtype=obs.dtype, device=obs.device)
    gx, gy = torch.meshgrid(g, g, indexing="xy")
    with torch.no_grad():
        v = func(t[0], torch.stack([gx.flatten(), gy.flatten()], 1))
    ax.quiver(_np(gx), _np(gy), _np(v[:, 0]).reshape(gx.shape), _np(v[:, 1]).reshape(gx.shape),
              color="0.8", width=0.003)
    sc = ax.scatter(_np(obs[:, 0]), _np(obs[:, 1]), c=_np(t), cmap="viridis", s=14,
                    label="observations", zorder=3)
    ax.plot(_np(z_true[:, 0]), _np(z_true[:, 1]), color="0.3", lw=1, ls="--", label="true")
    ax.plot(_np(z_pred[:, 0]), _np(z_pred[:, 1]), color="crimson", lw=2, label="learned")
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xlabel="z₁", ylabel="z₂",
           title="phase plane")
    fig.colorbar(sc, ax=ax, label="t", fraction=0.046)
    ax.legend(loc="lower right", fontsize=8)
    for k, c in ((0, "tab:blue"), (1, "tab:orange")):
        bx.plot(_np(t), _np(obs[:, k]), ".", color=c, ms=3, alpha=0.6)
        bx.plot(_np(t), _np(z_pred[:, k]), color=c, lw=2, label=f"z{k + 1} learned")
        bx.plot(_np(t), _np(z_true[:, k]), color="0.3", lw=0.8, ls="--")
    bx.set(xlabel="t", title="coordinates over time (dashed: truth, dots: data)")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def classify(path: Path, rows: dict[str, dict]) -> Path:
    """Bar charts per model: test accuracy, parameters, time per epoch, activation memory."""
    plt = _plt()
    names = [n for n in rows if n != "plots"]
    fig, axs = plt.subplots(1, 4, figsize=(15, 3.6))
    for ax, key, label in zip(axs, ("test_accuracy", "parameters", "seconds_per_epoch",
                                    "activation_mb"),
                              ("test accuracy", "parameters", "seconds per epoch",
                               "MB saved for backward (1 batch)"), strict=True):
        vals = [float("nan") if rows[n][key] is None else rows[n][key] for n in names]
        bars = ax.bar(names, vals, color=["crimson", "0.5", "tab:blue"][:len(names)])
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in vals], fontsize=8)
        ax.set_title(label)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latent(path: Path, data, preds) -> Path:
    """Four test series: observations, latent-ODE reconstruction and extrapolation, GRU."""
    plt = _plt()
    t, x, tf, xf = data
    fig, axs = plt.subplots(2, 2, figsize=(11, 6), sharex=True)
    for k, ax in enumerate(axs.flat):
        ax.plot(_np(t[k]), _np(x[k, :, 0]), "o", color="0.2", ms=3, label="observed")
        ax.plot(_np(tf[k]), _np(xf[k, :, 0]), "o", mfc="none", color="0.5", ms=3,
                label="future (held out)")
        td, zd = _np(preds["dense_t"][k]), _np(preds["dense_latent"][k, :, 0])
        inside = td <= float(t[k, -1])
        ax.plot(td[inside], zd[inside], color="crimson", label="latent ODE")
        ax.plot(td[~inside], zd[~inside], color="crimson", ls="--")
        ax.plot(_np(tf[k]), _np(preds["extrap_gru"][k, :, 0]), color="tab:blue", ls="--",
                label="GRU extrapolation")
        ax.axvline(float(t[k, -1]), color="0.8", lw=0.8)
    axs[0, 0].legend(fontsize=7)
    fig.suptitle("irregularly sampled series: reconstruction (solid) and extrapolation (dashed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def density(path: Path, x: Tensor, cnf, n: int = 120) -> Path:
    """Data, learned density on a grid, and samples of the flow."""
    plt = _plt()
    lim = 4.5
    g = torch.linspace(-lim, lim, n, dtype=x.dtype, device=x.device)
    gx, gy = torch.meshgrid(g, g, indexing="xy")
    with torch.no_grad():
        logp = cnf.log_prob(torch.stack([gx.flatten(), gy.flatten()], 1)).reshape(n, n)
        s = cnf.sample(2000)
    fig, axs = plt.subplots(1, 3, figsize=(12, 4))
    axs[0].scatter(_np(x[:, 0]), _np(x[:, 1]), s=2, color="0.2")
    axs[0].set_title("data")
    axs[1].imshow(_np(logp.exp()), extent=(-lim, lim, -lim, lim), origin="lower",
                  cmap="magma")
    axs[1].set_title("learned density")
    axs[2].scatter(_np(s[:, 0]), _np(s[:, 1]), s=2, color="crimson")
    axs[2].set_title("samples")
    for ax in axs:
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
