"""2-D toy densities for continuous normalizing flows: ``sample_2d(name, n)``.

Each returns ``(n, 2)`` float samples, roughly standardised (most mass within [−4, 4]²).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from neurode.errors import InvalidInputError

__all__ = ["TOY_2D", "sample_2d"]


def _gen(seed):
    return torch.Generator().manual_seed(seed) if seed is not None else None


def _eight_gaussians(n, g):
    centers = torch.tensor([(math.cos(k * math.pi / 4), math.sin(k * math.pi / 4))
                            for k in range(8)]) * 2.0 * math.sqrt(2)
    idx = torch.randint(0, 8, (n,), generator=g)
    return centers[idx] + 0.2 * torch.randn(n, 2, generator=g)


def _moons(n, g):
    n1 = n // 2
    a = torch.rand(n1, generator=g) * math.pi
    b = torch.rand(n - n1, generator=g) * math.pi
    upper = torch.stack([torch.cos(a), torch.sin(a)], 1)
    lower = torch.stack([1 - torch.cos(b), 0.5 - torch.sin(b)], 1)
    x = torch.cat([upper, lower]) + 0.05 * torch.randn(n, 2, generator=g)
    x = (x - torch.tensor([0.5, 0.25])) * 2.0
    return x[torch.randperm(n, generator=g)]


def _pinwheel(n, g, arms=5, radial=0.3, tangential=0.1, rate=0.25):
    labels = torch.randint(0, arms, (n,), generator=g)
    feats = torch.randn(n, 2, generator=g) * torch.tensor([radial, tangential])
    feats[:, 0] += 1.0
    angle = labels * (2 * math.pi / arms) + rate * torch.exp(feats[:, 0])
    rot = torch.stack([torch.cos(angle), -torch.sin(angle), torch.sin(angle), torch.cos(angle)],
                      1).view(n, 2, 2)
    return 2.0 * torch.einsum("nij,nj->ni", rot, feats)


def _checkerboard(n, g):
    x1 = torch.rand(n, generator=g) * 4 - 2
    x2 = torch.rand(n, generator=g) - torch.randint(0, 2, (n,), generator=g) * 2.0
    x2 = x2 + torch.floor(x1) % 2
    return torch.stack([x1, x2], 1) * 2.0


def _two_spirals(n, g):
    m = torch.sqrt(torch.rand(n // 2, generator=g)) * 540 * (2 * math.pi) / 360
    d1 = torch.stack([-torch.cos(m) * m, torch.sin(m) * m], 1) + torch.rand(n // 2, 2,
                                                                            generator=g) * 0.5
    x = torch.cat([d1, -d1]) / 3.0
    x = torch.cat([x, x[: n - x.shape[0]]]) if x.shape[0] < n else x
    return (x + 0.1 * torch.randn(n, 2, generator=g))[torch.randperm(n, generator=g)]


def _circles(n, g):
    n1 = n // 2
    a = torch.rand(n, generator=g) * 2 * math.pi
    r = torch.cat([torch.full((n1,), 1.0), torch.full((n - n1,), 2.5)])
    x = torch.stack([r * torch.cos(a), r * torch.sin(a)], 1) + 0.08 * torch.randn(n, 2,
                                                                                 generator=g)
    return x[torch.randperm(n, generator=g)]


TOY_2D = {"8gaussians": _eight_gaussians, "moons": _moons, "pinwheel": _pinwheel,
          "checkerboard": _checkerboard, "2spirals": _two_spirals, "circles": _circles}


def sample_2d(name: str, n: int, seed: int | None = None) -> Tensor:
    """``n`` samples ``(n, 2)`` float32 of the toy density ``name`` (one of
    [`TOY_2D`][neurode.data.TOY_2D]).

    Args:
        name: the density: ``"8gaussians"``, ``"moons"``, ``"pinwheel"``, ``"checkerboard"``,
            ``"2spirals"`` or ``"circles"``.
        n: number of samples (at least 1).
        seed: seed of the draws, for reproducible samples (default None: torch's global
            generator).

    Raises:
        InvalidInputError: an unknown ``name``, or ``n < 1``.
    """
    if name not in TOY_2D:
        raise InvalidInputError(f"unknown 2-D data set {name!r}; choose one of "
                                f"{', '.join(sorted(TOY_2D))}")
    if n < 1:
        raise InvalidInputError(f"n must be ≥ 1, got {n}")
    return TOY_2D[name](int(n), _gen(seed)).float()
