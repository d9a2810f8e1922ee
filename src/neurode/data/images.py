"""Image classification data: scikit-learn's bundled digits (default), MNIST/CIFAR-10 from disk.

Nothing is downloaded: digits ship with scikit-learn (``pip install neurode[data]``), and the
torchvision loaders read a folder the user already has.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from neurode.errors import InvalidInputError

__all__ = ["load_digits", "load_torchvision"]


def load_digits(test_fraction: float = 0.2, seed: int = 0,
                dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The 1,797 8×8 handwritten digits of scikit-learn, split at random.

    Returns ``(x_train, y_train, x_test, y_test)``: images ``(N, 1, 8, 8)`` scaled to [0, 1],
    labels ``(N,)`` int64. The split is a seeded permutation (``seed``).

    Args:
        test_fraction: share of the 1,797 images held out for the test split, in ``(0, 1)``
            (default 0.2: 359 test images).
        seed: seed of the permutation that splits the data (default 0; the same seed gives
            the same split).
        dtype: floating dtype of the images (default ``torch.float32``).

    Raises:
        InvalidInputError: scikit-learn is not installed, or ``test_fraction`` is not in
            ``(0, 1)``.
    """
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise InvalidInputError("the digits data set needs scikit-learn: pip install "
                                "scikit-learn (or neurode[data])") from e
    if not 0.0 < test_fraction < 1.0:
        raise InvalidInputError(f"test_fraction must be in (0, 1), got {test_fraction}")
    d = _load()
    x = torch.tensor(d.images, dtype=dtype).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = round(test_fraction * len(y))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


def load_torchvision(name: str, root: str | Path, dtype: torch.dtype = torch.float32
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """MNIST or CIFAR-10 from a local folder through torchvision (never downloads).

    Returns ``(x_train, y_train, x_test, y_test)`` with images ``(N, C, H, W)`` in [0, 1]
    (``(N, 1, 28, 28)`` for MNIST, ``(N, 3, 32, 32)`` for CIFAR-10) and labels ``(N,)`` int64.

    Args:
        name: ``"mnist"`` or ``"cifar10"`` (case-insensitive).
        root: the folder that holds the data set in torchvision's layout (as
            ``torchvision.datasets.MNIST(root)`` / ``CIFAR10(root)`` expect it).
        dtype: floating dtype of the images (default ``torch.float32``).

    Raises:
        InvalidInputError: an unknown ``name``, torchvision is not installed, or the data are
            not found under ``root``.
    """
    name = name.lower()
    if name not in ("mnist", "cifar10"):
        raise InvalidInputError(f"name must be 'mnist' or 'cifar10', got {name!r}")
    try:
        import torchvision
    except ImportError as e:
        raise InvalidInputError(f"{name} needs torchvision: pip install torchvision (the data "
                                f"must already be in {root}; nothing is downloaded)") from e
    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.CIFAR10
    try:
        train = cls(str(root), train=True, download=False)
        test = cls(str(root), train=False, download=False)
    except RuntimeError as e:
        raise InvalidInputError(f"{name} not found under {root!s}: torchvision says {e}. Put "
                                f"the files there (nothing is downloaded), or use the bundled "
                                "digits") from e

    def convert(ds):
        data = torch.as_tensor(ds.data)
        x = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)
        return x.to(dtype) / 255.0, torch.as_tensor(ds.targets, dtype=torch.int64)

    return (*convert(train), *convert(test))
