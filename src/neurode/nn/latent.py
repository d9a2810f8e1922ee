"""Latent ODE / ODE-VAE for irregularly sampled series (Rubanova et al. 2019; Chen et al. 2018),
and the GRU baseline that sees the same time gaps.

Encoder: a GRU run over the series *reversed*, each input ``[x_i, Δt_i]``, whose last state gives
the mean and log-variance of ``q(z0 | x)``. Decoder: ``z(t)`` from ``dz/dt = f(z)`` at each series'
own observation times (per-sample solving: every series has its own time grid and step sizes),
then a linear Gaussian observation model. Loss: the negative ELBO with KL to ``N(0, I)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from neurode.errors import InvalidInputError
from neurode.gradients import odeint_adjoint
from neurode.solvers import odeint

__all__ = ["GRUBaseline", "LatentODE"]


def _gaps(t: Tensor) -> Tensor:
    """``(B, T)`` times → ``(B, T)`` gaps to the previous observation (0 for the first)."""
    return torch.cat([torch.zeros_like(t[:, :1]), t[:, 1:] - t[:, :-1]], 1)


def _check(x: Tensor, t: Tensor) -> None:
    if x.ndim != 3 or t.ndim != 2 or x.shape[:2] != t.shape:
        raise InvalidInputError(f"expected x (B, T, D) and t (B, T), got x {tuple(x.shape)} and "
                                f"t {tuple(t.shape)}")


class LatentODE(nn.Module):
    """Latent ODE with a GRU encoder.

    Args:
        obs_dim: observation dimension (features per time point).
        latent_dim: latent state dimension.
        hidden: width of the two hidden layers of the latent field's MLP.
        rnn_hidden: width (hidden-state size) of the GRU encoder.
        obs_std: standard deviation of the Gaussian observation noise.
        method: the decoder's solver (adaptive explicit: per-sample steps).
        rtol: its relative tolerance.
        atol: its absolute tolerance.
        gradient: ``"adjoint"`` (the joint per-sample adjoint) or ``"backprop"``.
    """

    def __init__(self, obs_dim: int = 1, latent_dim: int = 4, hidden: int = 32,
                 rnn_hidden: int = 32, obs_std: float = 0.05, method: str = "dopri5",
                 rtol: float = 1e-3, atol: float = 1e-4, gradient: str = "adjoint"):
        super().__init__()
        if gradient not in ("adjoint", "backprop"):
            raise InvalidInputError(f"gradient must be 'adjoint' or 'backprop', got {gradient!r}")
        self.gru = nn.GRU(obs_dim + 1, rnn_hidden, batch_first=True)
        self.to_q = nn.Linear(rnn_hidden, 2 * latent_dim)
        self.field = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(),
                                   nn.Linear(hidden, hidden), nn.Tanh(),
                                   nn.Linear(hidden, latent_dim))
        self.readout = nn.Linear(latent_dim, obs_dim)
        self.latent_dim, self.obs_std = latent_dim, obs_std
        self.method, self.rtol, self.atol, self.gradient = method, rtol, atol, gradient

    def _f(self, t: Tensor, z: Tensor) -> Tensor:
        return self.field(z)

    def encode(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of ``q(z0 | x)``, ``(B, latent_dim)`` each, for ``z`` at
        ``t[:, 0]``.

        The GRU reads the series backwards in time, each step's input being an observation and
        the gap to the one after it.

        Args:
            x: observations ``(B, T, obs_dim)``.
            t: their times ``(B, T)``, one row per series (increasing; rows may differ, as in
                irregularly sampled data), in ``x``'s dtype.

        Returns:
            ``(mu, logvar)``, each ``(B, latent_dim)``: the Gaussian posterior's mean and
                log-variance (natural log of the variance) of the latent state at ``t[:, 0]``.

        Raises:
            InvalidInputError: ``x`` is not 3-D, ``t`` not 2-D, or their ``(B, T)`` differ.
        """
        _check(x, t)
        gaps = _gaps(t)
        # reversed in time: the input at step k is x_{T-1-k} and the gap to the next observation
        rev = torch.cat([x.flip(1), torch.cat([gaps[:, 1:], torch.zeros_like(gaps[:, :1])],
                                              1).flip(1).unsqueeze(-1)], -1)
        _, h = self.gru(rev)
        mu, logvar = self.to_q(h[-1]).chunk(2, -1)
        return mu, logvar

    def decode(self, z0: Tensor, t: Tensor) -> Tensor:
        """``x̂`` at the times ``t`` ``(B, T)`` (``t[:, 0]`` is ``z0``'s time): ``(B, T, obs)``.

        Solves the latent ODE per sample (each series on its own time grid), with the joint
        per-sample adjoint when ``gradient="adjoint"`` and grad is enabled, then applies the
        linear readout (the mean of the observation model).

        Args:
            z0: latent states at ``t[:, 0]``, ``(B, latent_dim)``.
            t: output times ``(B, T)``, each row strictly increasing and starting at its
                ``z0``'s time.

        Returns:
            The predicted observations ``x̂``, ``(B, T, obs_dim)`` (``x̂[:, 0]`` is the readout
                of ``z0``).

        Raises:
            InvalidInputError: a bad ``t`` (not ``(B, T)`` matching ``z0``'s batch, or a row not
                strictly monotone, all in the same direction).
        """
        fn = odeint_adjoint if (self.gradient == "adjoint" and torch.is_grad_enabled()) \
            else odeint
        kw = {"adjoint_params": tuple(self.field.parameters())} if fn is odeint_adjoint else {}
        zs = fn(self._f, z0, t, rtol=self.rtol, atol=self.atol, method=self.method,
                options={"per_sample": True}, **kw)
        return self.readout(zs.transpose(0, 1))

    def elbo_loss(self, x: Tensor, t: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Negative ELBO per observation (mean over the batch), and its parts.

        Encodes ``x``, draws ``z0`` from ``q(z0 | x)`` by the reparameterisation trick (so the
        loss is random), decodes at ``t`` and scores ``x`` under ``N(x̂, obs_std²)``; the KL
        term is to the prior ``N(0, I)``. The per-series ``KL − log p(x | z0)`` is divided by
        the number of observed values ``T · obs_dim`` and averaged over the batch.

        Args:
            x: observations ``(B, T, obs_dim)``.
            t: their times ``(B, T)``, each row strictly increasing, in ``x``'s dtype.

        Returns:
            ``(loss, parts)``: ``loss``, a differentiable 0-d tensor (nats per observed value),
                and ``parts``, a dict of Python floats for logging: ``"loss"`` (the same value),
                ``"mse"`` (mean squared error of ``x̂`` over all values) and ``"kl"`` (the mean
                over the batch of each series' KL, in nats).

        Raises:
            InvalidInputError: ``x`` is not ``(B, T, D)`` or ``t`` not ``(B, T)``, or a row of
                ``t`` is not strictly increasing.
        """
        mu, logvar = self.encode(x, t)
        z0 = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        xhat = self.decode(z0, t)
        var = self.obs_std**2
        loglik = (-0.5 * ((x - xhat).pow(2) / var + math.log(2 * math.pi * var))).sum((1, 2))
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        n_obs = x.shape[1] * x.shape[2]
        loss = ((kl - loglik) / n_obs).mean()
        return loss, {"loss": float(loss.detach()),
                      "mse": float((x - xhat).detach().pow(2).mean()),
                      "kl": float(kl.detach().mean())}

    @torch.no_grad()
    def extrapolate(self, x: Tensor, t: Tensor, t_new: Tensor) -> Tensor:
        """Predictions ``(B, T', obs)`` at ``t_new`` ``(B, T')`` (any times after ``t[:, 0]``,
        inside or beyond the observed window) from the posterior mean of ``z0``.

        Runs under ``torch.no_grad()``: deterministic (no sampling of ``z0``) and without a
        graph.

        Args:
            x: the observed part, ``(B, T, obs_dim)``.
            t: its times ``(B, T)``, each row strictly increasing, in ``x``'s dtype.
            t_new: the times to predict at, ``(B, T')``, each row strictly increasing and
                strictly after that row's ``t[:, 0]`` (so ``t`` itself cannot be passed whole;
                ``t[:, 1:]`` can).

        Returns:
            The predicted observations (the readout's mean), ``(B, T', obs_dim)``.

        Raises:
            InvalidInputError: ``x``/``t`` of the wrong shapes, or a row of ``t_new`` not
                strictly increasing or not after ``t[:, 0]``.
        """
        mu, _ = self.encode(x, t)
        tt = torch.cat([t[:, :1], t_new], 1)
        return self.decode(mu, tt)[:, 1:]


class GRUBaseline(nn.Module):
    """GRU over ``[x_i, Δt_i]`` predicting the next observation given the gap to it.

    Args:
        obs_dim: observation dimension (features per time point).
        hidden: hidden-state size of the GRU cell.
    """

    def __init__(self, obs_dim: int = 1, hidden: int = 64):
        super().__init__()
        self.gru = nn.GRUCell(obs_dim + 1, hidden)
        self.out = nn.Linear(hidden + 1, obs_dim)
        self.hidden = hidden

    def _run(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        gaps = _gaps(t)
        h = x.new_zeros(x.shape[0], self.hidden)
        preds = []
        for i in range(x.shape[1]):
            h = self.gru(torch.cat([x[:, i], gaps[:, i:i + 1]], 1), h)
            if i + 1 < x.shape[1]:
                preds.append(self.out(torch.cat([h, gaps[:, i + 1:i + 2]], 1)))
        if not preds:  # one observation: nothing to predict within the series
            return h, x.new_zeros(x.shape[0], 0, x.shape[2])
        return h, torch.stack(preds, 1)

    def loss(self, x: Tensor, t: Tensor) -> Tensor:
        """Mean squared error of the one-step-ahead predictions.

        After reading ``x[:, i]`` (with the gap to ``x[:, i - 1]``) the GRU predicts
        ``x[:, i + 1]`` from its state and the gap ``t[:, i + 1] − t[:, i]``; teacher forcing
        (every step reads the true observation).

        Args:
            x: observations ``(B, T, obs_dim)``, ``T ≥ 2`` (there is nothing to predict with
                one).
            t: their times ``(B, T)``, each row increasing, in ``x``'s dtype.

        Returns:
            A differentiable 0-d tensor: the mean over the ``B · (T − 1) · obs_dim`` predicted
                values of the squared error.

        Raises:
            InvalidInputError: ``x`` is not 3-D, ``t`` not 2-D, their ``(B, T)`` differ, or
                ``T == 1`` (no prediction to score).
        """
        _check(x, t)
        if x.shape[1] < 2:
            raise InvalidInputError(
                f"GRUBaseline.loss needs at least 2 observations per series (it scores "
                f"one-step-ahead predictions), got x of shape {tuple(x.shape)}")
        _, preds = self._run(x, t)
        return (preds - x[:, 1:]).pow(2).mean()

    @torch.no_grad()
    def extrapolate(self, x: Tensor, t: Tensor, t_new: Tensor) -> Tensor:
        """Autoregressive rollout to ``t_new`` ``(B, T')`` (after ``t[:, -1]``).

        Reads the observed series, then predicts each new time from the GRU state and the gap
        to the previous time, feeding each prediction back in as the next input. Runs under
        ``torch.no_grad()``.

        Args:
            x: the observed part, ``(B, T, obs_dim)`` with ``T ≥ 1``.
            t: its times ``(B, T)``, each row increasing, in ``x``'s dtype.
            t_new: the times to predict at, ``(B, T')``, each row increasing and after that
                row's ``t[:, -1]``, in ``x``'s dtype (``T' = 0`` gives an empty result).

        Returns:
            The predicted observations, ``(B, T', obs_dim)``.

        Raises:
            InvalidInputError: ``x`` is not 3-D, ``t`` or ``t_new`` not 2-D, or their batch
                sizes or ``(B, T)`` differ.
        """
        _check(x, t)
        if t_new.ndim != 2 or t_new.shape[0] != x.shape[0]:
            raise InvalidInputError(
                f"t_new must be (B, T') with B = {x.shape[0]} (one row of new times per series), "
                f"got shape {tuple(t_new.shape)}")
        h, _ = self._run(x, t)
        prev_t = t[:, -1:]
        out = []
        for i in range(t_new.shape[1]):
            gap = t_new[:, i:i + 1] - prev_t
            y = self.out(torch.cat([h, gap], 1))
            out.append(y)
            h = self.gru(torch.cat([y, gap], 1), h)
            prev_t = t_new[:, i:i + 1]
        if not out:
            return x.new_zeros(x.shape[0], 0, x.shape[2])
        return torch.stack(out, 1)
