"""The experiments: spiral fitting, image classification, latent ODE, continuous flows.

Each task owns its data, model, batches, loss, evaluation and plots; the shared loop, run
folder and checkpoints are in `neurode.experiments.runner`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from neurode.data import (
    load_digits,
    load_torchvision,
    periodic_series,
    sample_2d,
    spiral_trajectory,
)
from neurode.data.toy2d import TOY_2D
from neurode.experiments import plots
from neurode.nn import (
    CNF,
    GRADIENTS,
    ConcatMLP,
    GRUBaseline,
    LatentODE,
    ODEFunc,
    ODENetClassifier,
    count_parameters,
    flow_matching_loss,
    solve,
)

__all__ = ["TASKS"]


def _rank_slice(x: Tensor, dist) -> Tensor:
    """This rank's share of a global batch (the same global batch on every rank)."""
    return x[dist.rank::dist.world]


# --- spiral ---------------------------------------------------------------------------------


class SpiralModel(nn.Module):
    """An MLP vector field and its solve: ``forward(y0 (B, 2), t (T,)) -> (T, B, 2)``."""

    def __init__(self, hidden: int, method: str, rtol: float, atol: float, gradient: str):
        super().__init__()
        self.func = ODEFunc(nn.Sequential(nn.Linear(2, hidden), nn.Tanh(),
                                          nn.Linear(hidden, hidden), nn.Tanh(),
                                          nn.Linear(hidden, 2)))
        self.method, self.rtol, self.atol, self.gradient = method, rtol, atol, gradient

    def forward(self, y0: Tensor, t: Tensor) -> Tensor:
        return solve(self.func, y0, t, gradient=self.gradient, method=self.method,
                     rtol=self.rtol, atol=self.atol)


class SpiralTask:
    """``dz/dt = A z`` observed with noise; fit an MLP field on random sub-trajectories."""

    name = "spiral"
    gradients = GRADIENTS
    structural_keys = ("hidden", "dtype", "n_points")
    defaults: ClassVar[dict[str, float]] = {"steps": 500, "lr": 0.01, "batch_size": 16}

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--hidden", type=int, default=32, help="width of the MLP field")
        p.add_argument("--n-points", type=int, default=200, help="observation times")
        p.add_argument("--noise", type=float, default=0.01, help="observation noise std")
        p.add_argument("--min-span", type=float, default=1.0,
                       help="shortest training window (time units)")
        p.add_argument("--max-span", type=float, default=5.0,
                       help="longest training window (time units, ≤ 32 points)")

    def __init__(self, cfg: dict[str, Any], device: torch.device, dtype: torch.dtype):
        self.cfg, self.device, self.dtype = cfg, device, dtype
        t, z, obs = spiral_trajectory(cfg["n_points"], noise=cfg["noise"], seed=cfg["seed"])
        self.t, self.z_true, self.obs = (x.to(device, dtype) for x in (t, z, obs))
        dt = float(self.t[1] - self.t[0])
        self.min_len = max(2, round(cfg["min_span"] / dt) + 1)
        self.max_len = max(self.min_len, min(32, round(cfg["max_span"] / dt) + 1))
        torch.manual_seed(cfg["seed"])
        self.model = SpiralModel(cfg["hidden"], cfg["method"], cfg["rtol"], cfg["atol"],
                                 cfg["gradient"]).to(device, dtype)

    def make_optimizer(self, params):
        return torch.optim.Adam(params, lr=self.cfg["lr"])

    def batch(self, step: int, g: torch.Generator, dist):
        L = int(torch.randint(self.min_len, self.max_len + 1, (1,), generator=g))
        starts = torch.randint(0, len(self.t) - L, (self.cfg["batch_size"],), generator=g)
        return L, _rank_slice(starts, dist).to(self.device)

    def loss(self, model: nn.Module, batch) -> tuple[Tensor, dict[str, float]]:
        L, starts = batch
        idx = starts.unsqueeze(0) + torch.arange(L, device=self.device).unsqueeze(1)
        func = self.model.func
        before = func.nfe
        pred = model(self.obs[starts], self.t[:L] - self.t[0])
        return (pred - self.obs[idx]).abs().mean(), {"nfe_f": float(func.nfe - before)}

    @torch.no_grad()
    def trajectory(self) -> Tensor:
        return self.model(self.z_true[:1], self.t - self.t[0])[:, 0]

    def evaluate(self) -> dict[str, float]:
        pred = self.trajectory()
        err = (pred - self.z_true).norm(dim=1)
        return {"trajectory_error_mean": float(err.mean()),
                "trajectory_error_max": float(err.max()),
                "observation_mae": float((pred - self.obs).abs().mean())}

    def plot(self, run_dir: Path, step: int | None = None) -> list[Path]:
        return [plots.spiral(run_dir / "spiral.png", self.t, self.obs, self.z_true,
                             self.trajectory(), self.model.func,
                             caption=plots.caption(self.cfg, step))]


# --- classification -------------------------------------------------------------------------


class ClassifyTask:
    """ODE-Net, ResNet-6 and RK-Net on the same data; one model per sub-run (``--model``)."""

    name = "classify"
    gradients = GRADIENTS
    structural_keys = ("model", "dim", "dataset", "dtype")
    defaults: ClassVar[dict[str, float]] = {"steps": 0, "lr": 3e-3, "batch_size": 64}

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", default="digits", choices=["digits", "mnist", "cifar10"],
                       help="digits ships with scikit-learn; mnist/cifar10 read --data-root")
        p.add_argument("--data-root", default="data", help="folder with MNIST/CIFAR-10 files")
        p.add_argument("--models", nargs="+", default=["ode", "resnet", "rknet"],
                       choices=["ode", "resnet", "rknet"])
        p.add_argument("--epochs", type=int, default=4, help="passes over the training set")
        p.add_argument("--dim", type=int, default=32, help="feature channels")

    def __init__(self, cfg: dict[str, Any], device: torch.device, dtype: torch.dtype):
        self.cfg, self.device, self.dtype = cfg, device, dtype
        if cfg["dataset"] == "digits":
            data = load_digits(seed=cfg["seed"])
        else:
            data = load_torchvision(cfg["dataset"], cfg["data_root"])
        self.xtr, self.ytr, self.xte, self.yte = (d.to(device) for d in data)
        self.xtr, self.xte = self.xtr.to(dtype), self.xte.to(dtype)
        size = self.xtr.shape[-1]
        self.downsample = 1 if size <= 8 else 2
        # whole batches only (the last partial one is dropped): equal shares for every rank
        self.steps_per_epoch = max(1, len(self.ytr) // cfg["batch_size"])
        torch.manual_seed(cfg["seed"])
        self.model = ODENetClassifier(cfg["model"], in_channels=self.xtr.shape[1], dim=cfg["dim"],
                                      downsample=self.downsample, method=cfg["method"],
                                      rtol=cfg["rtol"], atol=cfg["atol"],
                                      gradient=cfg["gradient"]).to(device, dtype)

    def make_optimizer(self, params):
        return torch.optim.Adam(params, lr=self.cfg["lr"])

    def batch(self, step: int, g: torch.Generator, dist):
        epoch, k = divmod(step, self.steps_per_epoch)
        perm = torch.randperm(len(self.ytr), generator=torch.Generator().manual_seed(
            self.cfg["seed"] * 7919 + epoch))
        idx = perm[k * self.cfg["batch_size"]:(k + 1) * self.cfg["batch_size"]]
        return _rank_slice(idx, dist).to(self.device)

    def loss(self, model: nn.Module, idx) -> tuple[Tensor, dict[str, float]]:
        logits = model(self.xtr[idx])
        nfe = self.model.nfe
        return nn.functional.cross_entropy(logits, self.ytr[idx]), {"nfe_f": float(nfe[0])}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        correct = 0
        for i in range(0, len(self.yte), 512):
            correct += int((self.model(self.xte[i:i + 512]).argmax(1) == self.yte[i:i + 512])
                           .sum())
        return {"test_accuracy": correct / len(self.yte),
                "parameters": count_parameters(self.model)}

    def plot(self, run_dir: Path, step: int | None = None) -> list[Path]:
        return []  # the models are compared in one figure (plots.classify, from results.json)


# --- latent ODE -----------------------------------------------------------------------------


class LatentPair(nn.Module):
    def __init__(self, latent: LatentODE, gru: GRUBaseline):
        super().__init__()
        self.latent, self.gru = latent, gru

    def forward(self, x: Tensor, t: Tensor):
        loss, parts = self.latent.elbo_loss(x, t)
        return loss, self.gru.loss(x, t), parts


class LatentTask:
    """Latent ODE vs a GRU with time gaps on irregularly sampled periodic series."""

    name = "latent"
    gradients = ("adjoint", "backprop")  # LatentODE's decoder: the joint per-sample adjoint
    structural_keys = ("latent_dim", "hidden", "dtype")
    # ≈ 3 min on 2 cores; at 300 steps the latent ODE still trails the GRU
    defaults: ClassVar[dict[str, float]] = {"steps": 1000, "lr": 1e-2, "batch_size": 32}

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--n-series", type=int, default=256, help="training series")
        p.add_argument("--n-obs", type=int, default=30, help="observations per series")
        p.add_argument("--latent-dim", type=int, default=4, help="size of the latent state")
        p.add_argument("--hidden", type=int, default=32, help="width of the networks")

    def __init__(self, cfg: dict[str, Any], device: torch.device, dtype: torch.dtype):
        self.cfg, self.device, self.dtype = cfg, device, dtype
        n = cfg["n_series"]
        tr = periodic_series(n, cfg["n_obs"], n_future=20, seed=cfg["seed"])
        te = periodic_series(max(16, n // 4), cfg["n_obs"], n_future=20, seed=cfg["seed"] + 1)
        self.train_data = [x.to(device, dtype) for x in tr]
        self.test_data = [x.to(device, dtype) for x in te]
        torch.manual_seed(cfg["seed"])
        self.model = LatentPair(LatentODE(latent_dim=cfg["latent_dim"], hidden=cfg["hidden"],
                                          rnn_hidden=cfg["hidden"], method=cfg["method"],
                                          rtol=cfg["rtol"], atol=cfg["atol"],
                                          gradient=cfg["gradient"]),
                                GRUBaseline(hidden=2 * cfg["hidden"])).to(device, dtype)

    def make_optimizer(self, params):
        return torch.optim.Adam(params, lr=self.cfg["lr"])

    def batch(self, step: int, g: torch.Generator, dist):
        idx = torch.randint(0, len(self.train_data[0]), (self.cfg["batch_size"],), generator=g)
        return _rank_slice(idx, dist).to(self.device)

    def loss(self, model: nn.Module, idx) -> tuple[Tensor, dict[str, float]]:
        t, x = self.train_data[0][idx], self.train_data[1][idx]
        elbo, gru, parts = model(x, t)
        return elbo + gru, {"elbo_loss": parts["loss"], "latent_mse": parts["mse"],
                            "gru_mse": float(gru.detach())}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        t, x, tf, xf = self.test_data
        lat, gru = self.model.latent, self.model.gru
        _, gru_preds = gru._run(x, t)
        return {"interp_mse_latent": float((lat.extrapolate(x, t, t[:, 1:]) - x[:, 1:])
                                           .pow(2).mean()),
                "interp_mse_gru": float((gru_preds - x[:, 1:]).pow(2).mean()),
                "extrap_mse_latent": float((lat.extrapolate(x, t, tf) - xf).pow(2).mean()),
                "extrap_mse_gru": float((gru.extrapolate(x, t, tf) - xf).pow(2).mean())}

    @torch.no_grad()
    def _curves(self) -> dict[str, Tensor]:
        """The latent ODE on a fine grid from the first observation to the last future time,
        and the GRU's extrapolation, for the figure."""
        t, x, tf, _ = self.test_data
        frac = torch.linspace(0, 1, 161, device=t.device, dtype=t.dtype)[1:]
        dense_t = t[:, :1] + (tf[:, -1:] - t[:, :1]) * frac
        return {"dense_t": dense_t, "dense_latent": self.model.latent.extrapolate(x, t, dense_t),
                "extrap_gru": self.model.gru.extrapolate(x, t, tf)}

    def plot(self, run_dir: Path, step: int | None = None) -> list[Path]:
        return [plots.latent(run_dir / "latent.png", self.test_data, self._curves(),
                             caption=plots.caption(self.cfg, step))]


# --- continuous normalizing flow ------------------------------------------------------------


class FlowObjective(nn.Module):
    """The training loss of a CNF as a module's forward, so DistributedDataParallel sees it:
    flow matching on ``(x1, x0, t)`` or the negative log-likelihood of ``x1``."""

    def __init__(self, cnf: CNF, objective: str):
        super().__init__()
        self.cnf, self.objective = cnf, objective

    def forward(self, x1: Tensor, x0: Tensor, t: Tensor) -> Tensor:
        if self.objective == "fm":
            return flow_matching_loss(self.cnf.func, x1, x0=x0, t=t)
        return -self.cnf.log_prob(x1).mean()


class CNFTask:
    """A 2-D continuous normalizing flow, by flow matching (default) or maximum likelihood."""

    name = "cnf"
    gradients = ("adjoint", "backprop", "checkpoint")
    structural_keys = ("hidden", "data", "dtype")
    # flow matching steps cost one field evaluation, maximum likelihood steps a solve with
    # its adjoint: 20,000 of the first (≈ 30 s on 2 cores) or 1,000 of the second (≈ 3 min)
    defaults: ClassVar[dict[str, Any]] = {"steps": {"fm": 20000, "ml": 1000}, "lr": 3e-3,
                                          "batch_size": 256}

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", default="moons", choices=sorted(TOY_2D),
                       help="the 2-D density to learn")
        p.add_argument("--objective", default="fm", choices=["fm", "ml"],
                       help="flow matching (simulation-free) or maximum likelihood")
        p.add_argument("--hidden", type=int, default=64, help="width of the flow's field")

    def __init__(self, cfg: dict[str, Any], device: torch.device, dtype: torch.dtype):
        self.cfg, self.device, self.dtype = cfg, device, dtype
        self.train_x = sample_2d(cfg["data"], 20000, seed=cfg["seed"]).to(device, dtype)
        self.test_x = sample_2d(cfg["data"], 2000, seed=cfg["seed"] + 1).to(device, dtype)
        torch.manual_seed(cfg["seed"])
        self.cnf = CNF(ConcatMLP(2, cfg["hidden"], layers=3), dim=2, method=cfg["method"],
                       rtol=cfg["rtol"], atol=cfg["atol"], gradient=cfg["gradient"])
        self.model = FlowObjective(self.cnf, cfg["objective"]).to(device, dtype)

    def make_optimizer(self, params):
        return torch.optim.Adam(params, lr=self.cfg["lr"])

    def batch(self, step: int, g: torch.Generator, dist):
        idx = torch.randint(0, len(self.train_x), (self.cfg["batch_size"],), generator=g)
        x0 = torch.randn(self.cfg["batch_size"], 2, generator=g)
        tt = torch.rand(self.cfg["batch_size"], generator=g)
        return (_rank_slice(idx, dist).to(self.device),
                _rank_slice(x0, dist).to(self.device, self.dtype),
                _rank_slice(tt, dist).to(self.device, self.dtype))

    def loss(self, model: nn.Module, batch) -> tuple[Tensor, dict[str, float]]:
        idx, x0, tt = batch
        return model(self.train_x[idx], x0, tt), {}

    def evaluate(self) -> dict[str, float]:
        with torch.no_grad():
            nll = -self.cnf.log_prob(self.test_x).mean()
        return {"test_nll": float(nll)}

    def plot(self, run_dir: Path, step: int | None = None) -> list[Path]:
        return [plots.density(run_dir / "cnf.png", self.test_x, self.cnf,
                              caption=plots.caption(self.cfg, step))]


TASKS: dict[str, type] = {t.name: t for t in (SpiralTask, ClassifyTask, LatentTask, CNFTask)}
