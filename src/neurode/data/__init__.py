"""Data sets that need no download: generated ones and scikit-learn's digits (plus loaders for
MNIST/CIFAR-10 in a local folder)."""

from neurode.data.images import load_digits, load_torchvision
from neurode.data.series import periodic_series, spiral_trajectory
from neurode.data.toy2d import TOY_2D, sample_2d

__all__ = [
    "TOY_2D",
    "load_digits",
    "load_torchvision",
    "periodic_series",
    "sample_2d",
    "spiral_trajectory",
]
