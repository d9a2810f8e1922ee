"""ODE-Net (Chen et al. 2018) and its baselines, with the same stem and head.

- stem: ``Conv3×3(in, dim)``, then ``downsample`` × (GroupNorm, ReLU, ``Conv4×4 stride 2``):
  28×28 → 7×7 with two, 8×8 → 4×4 with one;
- features: ``"ode"``: one [`ODEBlock`][neurode.nn.ODEBlock] over (norm, ReLU, ConcatConv2d) ×2;
  ``"resnet"``: 6 residual blocks (norm, ReLU, Conv) ×2 + skip; ``"rknet"``: the ODE block
  solved by a fixed-step rk4 with backprop through the steps;
- head: GroupNorm, ReLU, global average pooling, ``Linear(dim, n_classes)``.

The ODE block's field has the parameters of *one* residual block (plus the time channel), so
ODE-Net and RK-Net have about a third of the ResNet's parameters at the MNIST settings.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from neurode.errors import InvalidInputError
from neurode.nn.block import ODEBlock
from neurode.nn.layers import ConcatConv2d, ODEFunc

__all__ = ["ConvODEFunc", "ODENetClassifier", "ResBlock", "count_parameters"]


def _norm(dim: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, dim), dim)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars.

    Args:
        module: the module whose parameters are counted (those with ``requires_grad``; a
            parameter shared between submodules counts once).

    Returns:
        The total number of elements of those parameters.
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class ConvODEFunc(ODEFunc):
    """Chen et al.'s convolutional field: (norm, ReLU, ConcatConv2d) ×2, then norm.

    Maps ``(B, dim, H, W)`` to the same shape; the norms are ``GroupNorm(min(32, dim), dim)``.

    Args:
        dim: channels of the feature map, in and out (at most 32, or a multiple of 32, for the
            group norms).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = _norm(dim), _norm(dim), _norm(dim)
        self.conv1 = ConcatConv2d(dim, dim, 3, 1, 1)
        self.conv2 = ConcatConv2d(dim, dim, 3, 1, 1)
        self.relu = nn.ReLU()

    def dynamics(self, t: Tensor, x: Tensor) -> Tensor:
        """The field: (norm, ReLU, ConcatConv2d) ×2, then norm (counted by `forward`).

        Args:
            t: the time, a 0-d tensor or a ``(B,)`` tensor (per-sample solving); enters each
                convolution as an extra constant channel.
            x: the feature map, ``(B, dim, H, W)``.

        Returns:
            ``dx/dt``, ``(B, dim, H, W)``.
        """
        out = self.conv1(t, self.relu(self.norm1(x)))
        out = self.conv2(t, self.relu(self.norm2(out)))
        return self.norm3(out)


class ResBlock(nn.Module):
    """Pre-activation residual block: ``x + conv(relu(norm(conv(relu(norm(x))))))``.

    Maps ``(B, dim, H, W)`` to the same shape (3×3 convolutions, padding 1).

    Args:
        dim: channels of the feature map, in and out (at most 32, or a multiple of 32, for the
            ``GroupNorm(min(32, dim), dim)`` norms).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(_norm(dim), nn.ReLU(), nn.Conv2d(dim, dim, 3, 1, 1),
                                  _norm(dim), nn.ReLU(), nn.Conv2d(dim, dim, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block: ``x`` plus the residual branch.

        Args:
            x: the feature map, ``(B, dim, H, W)``.

        Returns:
            ``(B, dim, H, W)``, the same shape as ``x``.
        """
        return x + self.body(x)


class ODENetClassifier(nn.Module):
    """Image classifier: stem → features (``kind``) → head (module docstring).

    Args:
        kind: ``"ode"``, ``"resnet"`` or ``"rknet"``.
        in_channels: image channels (1 for digits and MNIST, 3 for CIFAR-10).
        n_classes: number of classes.
        dim: feature channels of the residual/ODE stage.
        downsample: stride-2 convolutions in the stem (1 for 8×8 digits, 2 for MNIST).
        method: the ODE block's solver (``kind="ode"``; default as in
            [`ODEBlock`][neurode.nn.ODEBlock]: dopri5, alf when reversible).
        rtol: the ODE block's relative tolerance.
        atol: the ODE block's absolute tolerance.
        gradient: the ODE block's gradient method (one of [`GRADIENTS`][neurode.nn.GRADIENTS]).
        options: the ODE block's solver options.
        rk_steps: RK-Net's number of ``rk4`` steps on [0, 1] (trained by backprop).
    """

    def __init__(self, kind: str = "ode", *, in_channels: int = 1, n_classes: int = 10,
                 dim: int = 64, downsample: int = 1, method: str | None = None,
                 rtol: float = 1e-3, atol: float = 1e-3, gradient: str = "adjoint",
                 options: dict[str, Any] | None = None, rk_steps: int = 4):
        super().__init__()
        if kind not in ("ode", "resnet", "rknet"):
            raise InvalidInputError(f"kind must be 'ode', 'resnet' or 'rknet', got {kind!r}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, dim, 3, 1, 1)]
        for _ in range(downsample):
            layers += [_norm(dim), nn.ReLU(), nn.Conv2d(dim, dim, 4, 2, 1)]
        self.stem = nn.Sequential(*layers)
        self.kind = kind
        if kind == "resnet":
            self.features: nn.Module = nn.Sequential(*[ResBlock(dim) for _ in range(6)])
        elif kind == "ode":
            self.features = ODEBlock(ConvODEFunc(dim), method=method, rtol=rtol, atol=atol,
                                     gradient=gradient, options=options)
        else:
            self.features = ODEBlock(ConvODEFunc(dim), method="rk4", gradient="backprop",
                                     options={"step_size": 1.0 / rk_steps})
        self.head = nn.Sequential(_norm(dim), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(dim, n_classes))

    def forward(self, x: Tensor) -> Tensor:
        """Classify a batch of images (stem, features, head); after it, `nfe` holds the counts.

        Args:
            x: images ``(B, in_channels, H, W)``, e.g. ``(B, 1, 28, 28)`` for MNIST; the stem
                halves ``H`` and ``W`` ``downsample`` times.

        Returns:
            Unnormalised logits ``(B, n_classes)`` (apply ``cross_entropy`` or ``softmax``).
        """
        return self.head(self.features(self.stem(x)))

    @property
    def nfe(self) -> tuple[int, int]:
        """(forward, backward) evaluations of the last pass (0, 0 for the ResNet)."""
        if isinstance(self.features, ODEBlock):
            return self.features.nfe_forward, self.features.nfe_backward
        return 0, 0
