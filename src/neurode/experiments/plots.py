"""Figures of the experiments (matplotlib, Agg backend, PNG). Needs ``neurode[experiments]``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from neurode.errors import InvalidInputError

__all__ = ["caption", "classify", "density", "latent", "spiral"]


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


def caption(cfg: dict, step: int | None) -> str:
    """What was run, for a figure's title: task, solver, gradient, training progress (an
    untrained model says so)."""
    steps = cfg.get("steps")
    if step is None:
        progress = ""
    elif step == 0:
        progress = " · UNTRAINED (step 0): the model as initialised"
    else:
        progress = f" · step {step}" + (f" of {steps}" if steps else "")
    what = cfg.get("task", "?")
    extra = [str(cfg[k]) for k in ("data", "objective") if cfg.get(k)]
    if extra:  # cnf: its data set and objective (fm: flow matching, ml: maximum likelihood)
        what += f" ({', '.join(extra)})"
    return (f"{what} · {cfg.get('method', '?')} rtol {cfg.get('rtol', '?'):g} · "
            f"gradient {cfg.get('gradient', '?')} · {cfg.get('dtype', '')}{progress}")


def _count(x: float) -> str:
    """36500 -> '36.5k' (a parameter count a person reads at a glance)."""
    if x >= 1e6:
        return f"{x / 1e6:.3g}M"
    if x >= 1e3:
        return f"{x / 1e3:.3g}k"
    return f"{x:.0f}"


def spiral(path: Path, t, obs, z_true, z_pred, func, caption: str = "") -> Path:
    """Phase plane (observations coloured by time, true and learned trajectories, the learned
    vector field) and both coordinates against time."""
    plt = _plt()
    from matplotlib.lines import Line2D

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12.5, 5.4),
                                 gridspec_kw={"width_ratios": [1, 1.3]})
    lim = float(obs.abs().max()) * 1.15
    g = torch.linspace(-lim, lim, 21, dtype=obs.dtype, device=obs.device)
    gx, gy = torch.meshgrid(g, g, indexing="xy")
    with torch.no_grad():
        v = func(t[0], torch.stack([gx.flatten(), gy.flatten()], 1))
    ax.quiver(_np(gx), _np(gy), _np(v[:, 0]).reshape(gx.shape), _np(v[:, 1]).reshape(gx.shape),
              color="0.78", width=0.003)
    sc = ax.scatter(_np(obs[:, 0]), _np(obs[:, 1]), c=_np(t), cmap="viridis", s=14, zorder=3)
    ax.plot(_np(z_pred[:, 0]), _np(z_pred[:, 1]), color="crimson", lw=2.2, zorder=4)
    # the truth on top of the learned curve, thin and dashed, so it shows where they agree
    ax.plot(_np(z_true[:, 0]), _np(z_true[:, 1]), color="black", lw=1.1, ls=(0, (4, 3)),
            zorder=5)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xlabel="z₁", ylabel="z₂",
           title="phase plane")
    fig.colorbar(sc, ax=ax, label="time t of an observation", fraction=0.046)
    handles = [Line2D([], [], ls="", marker="o", color="tab:green", ms=4,
                      label="noisy observations"),
               Line2D([], [], color="crimson", lw=2.2, label="learned trajectory"),
               Line2D([], [], color="black", lw=1.1, ls=(0, (4, 3)), label="true trajectory"),
               Line2D([], [], ls="", marker=r"$\rightarrow$", color="0.6", ms=10,
                      label="learned vector field")]
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    for k, c in ((0, "tab:blue"), (1, "tab:orange")):
        bx.plot(_np(t), _np(obs[:, k]), ".", color=c, ms=3, alpha=0.6,
                label=f"z{k + 1} observed")
        bx.plot(_np(t), _np(z_pred[:, k]), color=c, lw=2, label=f"z{k + 1} learned")
        bx.plot(_np(t), _np(z_true[:, k]), color="black", lw=0.9, ls=(0, (4, 3)),
                label="true (both)" if k == 0 else "_")
    bx.set(xlabel="t", ylabel="state zₖ(t)", title="coordinates over time")
    bx.legend(fontsize=8, ncol=2)
    if caption:
        fig.suptitle(caption, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def classify(path: Path, rows: dict[str, dict], cfg: dict | None = None) -> Path:
    """Bar charts per model: test accuracy, parameters, time per epoch, activation memory."""
    plt = _plt()
    names = [n for n in rows if n != "plots"]
    fig, axs = plt.subplots(1, 4, figsize=(15, 3.9))
    fmt = {"test_accuracy": lambda v: f"{v:.3f}", "parameters": _count,
           "seconds_per_epoch": lambda v: f"{v:.2f} s", "activation_mb": lambda v: f"{v:.2f}"}
    for ax, key, label in zip(axs, ("test_accuracy", "parameters", "seconds_per_epoch",
                                    "activation_mb"),
                              ("test accuracy (fraction correct)", "parameters",
                               "seconds per epoch", "MB saved for backward (1 batch)"),
                              strict=True):
        vals = [float("nan") if rows[n][key] is None else rows[n][key] for n in names]
        bars = ax.bar(names, vals, color=["crimson", "0.5", "tab:blue"][:len(names)])
        ax.bar_label(bars, labels=["n/a" if v != v else fmt[key](v) for v in vals], fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("model")
        ax.margins(y=0.15)
        if key == "parameters":
            from matplotlib.ticker import FuncFormatter

            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _count(v)))
    if cfg is not None:
        fig.suptitle(f"classify: ODE-Net vs ResNet vs RK-Net on {cfg.get('dataset', '?')}, "
                     f"{cfg.get('epochs', '?')} epochs, batch {cfg.get('batch_size', '?')} · "
                     f"{cfg.get('method', '?')} rtol {cfg.get('rtol', '?')} · gradient "
                     f"{cfg.get('gradient', '?')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latent(path: Path, data, preds, caption: str = "") -> Path:
    """Four test series: observations, latent-ODE reconstruction and extrapolation, GRU."""
    plt = _plt()
    t, x, tf, xf = data
    fig, axs = plt.subplots(2, 2, figsize=(11, 6.4), sharex=True)
    for k, ax in enumerate(axs.flat):
        ax.plot(_np(t[k]), _np(x[k, :, 0]), "o", color="0.2", ms=3, label="observed")
        ax.plot(_np(tf[k]), _np(xf[k, :, 0]), "o", mfc="none", color="0.5", ms=3,
                label="future (held out)")
        td, zd = _np(preds["dense_t"][k]), _np(preds["dense_latent"][k, :, 0])
        inside = td <= float(t[k, -1])
        ax.plot(td[inside], zd[inside], color="crimson", label="latent ODE: reconstruction")
        ax.plot(td[~inside], zd[~inside], color="crimson", ls="--",
                label="latent ODE: extrapolation")
        ax.plot(_np(tf[k]), _np(preds["extrap_gru"][k, :, 0]), color="tab:blue", ls="--",
                label="GRU extrapolation")
        ax.axvline(float(t[k, -1]), color="0.6", lw=0.8, ls=":", label="last observation")
        ax.set_title(f"test series {k + 1}", fontsize=9)
        if k >= 2:
            ax.set_xlabel("t")
        if k % 2 == 0:
            ax.set_ylabel("x(t)")
    axs[0, 0].legend(fontsize=7)
    fig.suptitle("irregularly sampled series: reconstruction, then extrapolation"
                 + (f"\n{caption}" if caption else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def density(path: Path, x: Tensor, cnf, n: int = 120, caption: str = "") -> Path:
    """Data, learned density on a grid (with its colorbar), and samples of the flow."""
    plt = _plt()
    lim = 4.5
    g = torch.linspace(-lim, lim, n, dtype=x.dtype, device=x.device)
    gx, gy = torch.meshgrid(g, g, indexing="xy")
    with torch.no_grad():
        logp = cnf.log_prob(torch.stack([gx.flatten(), gy.flatten()], 1)).reshape(n, n)
        s = cnf.sample(2000)
    fig, axs = plt.subplots(1, 3, figsize=(13, 4.6))
    axs[0].scatter(_np(x[:, 0]), _np(x[:, 1]), s=2, color="0.2")
    axs[0].set_title("test data")
    im = axs[1].imshow(_np(logp.exp()), extent=(-lim, lim, -lim, lim), origin="lower",
                       cmap="magma")
    fig.colorbar(im, ax=axs[1], fraction=0.046, label="density p(x)")
    axs[1].set_title("learned density")
    axs[2].scatter(_np(s[:, 0]), _np(s[:, 1]), s=2, color="crimson")
    axs[2].set_title("2000 samples of the flow")
    for ax in axs:
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xlabel="x₁", ylabel="x₂")
    if caption:
        fig.suptitle(caption, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
