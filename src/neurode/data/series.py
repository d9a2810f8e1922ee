"""Irregularly sampled time series: periodic signals and the 2-D spiral of the classic demo."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from neurode.errors import InvalidInputError

__all__ = ["periodic_series", "spiral_trajectory"]


def periodic_series(n_series: int, n_obs: int, *, t_max: float = 5.0, n_future: int = 0,
                    noise: float = 0.05, seed: int | None = None
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sinusoids with random amplitude, frequency and phase, seen at random times.

    Each series ``x(t) = a·sin(ω t + φ) + noise`` (``a ~ U(0.5, 1.5)``, ``ω ~ U(1, 2.5)``,
    ``φ ~ U(0, 2π)``) is observed at ``n_obs`` sorted times drawn uniformly from ``[0, t_max]``
    (a different subset per series), and, if ``n_future > 0``, at ``n_future`` noise-free times
    in ``(t_max, 2 t_max]`` for extrapolation.

    Returns ``(t_obs (B, n_obs), x_obs (B, n_obs, 1), t_future (B, n_future),
    x_future (B, n_future, 1))``, float32.

    Args:
        n_series: number of series ``B`` (at least 1).
        n_obs: observations per series in ``[0, t_max]`` (at least 2).
        t_max: end of the observed window (default 5.0).
        n_future: noise-free extrapolation targets per series in ``(t_max, 2 t_max]``
            (default 0: empty ``(B, 0)`` tensors).
        noise: standard deviation of the Gaussian noise added to the observations (default
            0.05).
        seed: seed of the random draws, for a reproducible data set (default None: torch's
            global generator).

    Raises:
        InvalidInputError: ``n_series < 1`` or ``n_obs < 2``.
    """
    if n_series < 1 or n_obs < 2:
        raise InvalidInputError("need n_series ≥ 1 and n_obs ≥ 2")
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    a = torch.rand(n_series, 1, generator=g) + 0.5
    w = torch.rand(n_series, 1, generator=g) * 1.5 + 1.0
    phi = torch.rand(n_series, 1, generator=g) * 2 * math.pi
    # distinct sorted times: sort uniform draws, nudge exact ties apart
    t_obs = torch.sort(torch.rand(n_series, n_obs, generator=g) * t_max, 1).values
    t_obs = t_obs + torch.arange(n_obs) * 1e-6
    x_obs = a * torch.sin(w * t_obs + phi) + noise * torch.randn(n_series, n_obs, generator=g)
    t_fut = torch.sort(t_max + torch.rand(n_series, n_future, generator=g) * t_max, 1).values
    t_fut = t_fut + torch.arange(n_future) * 1e-6
    x_fut = a * torch.sin(w * t_fut + phi)
    return t_obs, x_obs.unsqueeze(-1), t_fut, x_fut.unsqueeze(-1)


def spiral_trajectory(n_points: int = 200, *, t_max: float = 6.29 * 5, noise: float = 0.01,
                      seed: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The classic demo's spiral: ``dz/dt = A z``, ``A = [[-0.1, -1], [1, -0.1]]``,
    ``z0 = [0.6, 0.3]``, on ``n_points`` times in ``[0, t_max]``.

    Returns ``(t (T,), z_true (T, 2), z_observed (T, 2))`` with Gaussian noise of std ``noise``.

    Args:
        n_points: number of evenly spaced times ``T`` (default 200).
        t_max: the last time (default ``6.29 * 5``, about five periods of the rotation).
        noise: standard deviation of the noise in ``z_observed`` (default 0.01).
        seed: seed of the noise (default None: torch's global generator).
    """
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    A = torch.tensor([[-0.1, -1.0], [1.0, -0.1]], dtype=torch.float64)
    t = torch.linspace(0, t_max, n_points, dtype=torch.float64)
    z0 = torch.tensor([0.6, 0.3], dtype=torch.float64)
    z = torch.stack([torch.linalg.matrix_exp(A * tk) @ z0 for tk in t])
    obs = z + noise * torch.randn(z.shape, generator=g, dtype=torch.float64)
    return t.float(), z.float(), obs.float()
