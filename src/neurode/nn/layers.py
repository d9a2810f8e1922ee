"""Vector-field building blocks: an evaluation-counting ``ODEFunc`` and layers that see time.

Time enters as one extra input feature (``ConcatLinear``) or one extra constant channel
(``ConcatConv2d``), as in Chen et al. (2018). ``t`` may be a 0-d tensor (one time for the batch)
or a ``(B,)`` tensor (per-sample solving): both broadcast over the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import torch
from torch import Tensor, nn

from neurode.errors import InvalidInputError

__all__ = ["ConcatConv2d", "ConcatLinear", "ConcatMLP", "ODEFunc"]


def _time_column(t: Tensor, x: Tensor, trailing: tuple[int, ...]) -> Tensor:
    """``t`` broadcast to ``(B, 1, *trailing)`` in ``x``'s dtype and device."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    B = x.shape[0]
    if t.ndim == 0:
        t = t.expand(B)
    elif t.shape != (B,):
        raise InvalidInputError(f"t must be 0-d or of shape ({B},) (one time per sample), got "
                         f"{tuple(t.shape)}")
    return t.view(B, 1, *([1] * len(trailing))).expand(B, 1, *trailing)


class ConcatLinear(nn.Module):
    """``Linear(in_features + 1, out_features)`` applied to ``[x, t]``; ``x`` is ``(B, in)``.

    Called as ``layer(t, x)`` with ``t`` 0-d or ``(B,)``; returns ``(B, out_features)``.

    Args:
        in_features: features of ``x`` (the time column is added on top).
        out_features: features of the output.
        bias: whether the linear map has a bias (default True).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(in_features + 1, out_features, bias=bias)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        """Apply the linear map to ``[x, t]`` (``t`` appended as the last feature).

        Args:
            t: the time: a 0-d tensor or Python number (one time for the whole batch), or a
                ``(B,)`` tensor, one time per sample (per-sample solving); cast to ``x``'s
                dtype and device.
            x: the input, ``(B, in_features)``.

        Returns:
            ``(B, out_features)``, in ``x``'s dtype.

        Raises:
            InvalidInputError: ``t`` is neither 0-d nor of shape ``(B,)``.
        """
        return self.linear(torch.cat([x, _time_column(t, x, ())], 1))


class ConcatConv2d(nn.Module):
    """``Conv2d(in_channels + 1, out_channels, ...)`` on ``x`` ``(B, C, H, W)`` with ``t`` as an
    extra constant channel.

    Called as ``layer(t, x)`` with ``t`` 0-d or ``(B,)``; returns ``(B, out_channels, H', W')``
    (``H' = H``, ``W' = W`` with the defaults).

    Args:
        in_channels: channels ``C`` of ``x`` (the time channel is added on top).
        out_channels: channels of the output.
        kernel_size: size of the square convolution kernel (default 3).
        stride: stride of the convolution (default 1).
        padding: zero padding on each side (default 1: same size for a 3×3 kernel).
        bias: whether the convolution has a bias (default True).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, padding: int = 1, bias: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels + 1, out_channels, kernel_size, stride, padding,
                              bias=bias)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        """Convolve ``[x, t]``, ``t`` appended as a constant ``(B, 1, H, W)`` channel.

        Args:
            t: the time: a 0-d tensor or Python number (one time for the whole batch), or a
                ``(B,)`` tensor, one time per sample (per-sample solving); cast to ``x``'s
                dtype and device.
            x: the feature map, ``(B, in_channels, H, W)``.

        Returns:
            ``(B, out_channels, H', W')`` with ``H' = (H + 2·padding − kernel_size) // stride
                + 1`` (likewise ``W'``): ``H' = H``, ``W' = W`` with the defaults.

        Raises:
            InvalidInputError: ``t`` is neither 0-d nor of shape ``(B,)``.
        """
        return self.conv(torch.cat([x, _time_column(t, x, tuple(x.shape[2:]))], 1))


class ConcatMLP(nn.Module):
    """A time-dependent field ``f(t, z)``: ``layers`` [`ConcatLinear`][neurode.nn.ConcatLinear]
    maps with ``tanh`` between them, widths ``dim → hidden → … → hidden → dim``; ``z`` is
    ``(B, dim)``.

    The usual field of 2-D flows and small ODE blocks (``layers=2``: one hidden layer).

    Args:
        dim: dimension of the state ``z`` (input and output width).
        hidden: width of the hidden layers.
        layers: number of [`ConcatLinear`][neurode.nn.ConcatLinear] maps, so ``layers - 1``
            hidden layers (default 3); ``layers=1`` is a single time-dependent linear map.

    Raises:
        InvalidInputError: ``layers < 1``.
    """

    def __init__(self, dim: int, hidden: int, layers: int = 3):
        super().__init__()
        if layers < 1:
            raise InvalidInputError(f"layers must be ≥ 1, got {layers}")
        widths = [dim] + [hidden] * (layers - 1) + [dim]
        self.layers = nn.ModuleList(ConcatLinear(a, b) for a, b in pairwise(widths))

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        """Evaluate the field: every layer sees ``t``; ``tanh`` between layers, none at the end.

        Args:
            t: the time: a 0-d tensor or Python number (one time for the whole batch), or a
                ``(B,)`` tensor, one time per sample (per-sample solving).
            z: the state, ``(B, dim)``.

        Returns:
            ``f(t, z)``, ``(B, dim)`` (unbounded: the last map is linear).

        Raises:
            InvalidInputError: ``t`` is neither 0-d nor of shape ``(B,)``.
        """
        for k, layer in enumerate(self.layers):
            z = layer(t, z if k == 0 else torch.tanh(z))
        return z


class ODEFunc(nn.Module):
    """A vector field ``f(t, y)`` that counts its evaluations.

    Either wrap a module (``ODEFunc(net)`` calls ``net(y)``, or ``net(t, y)`` with
    ``time_input=True``) or subclass and override `dynamics`. ``nfe`` counts calls since
    the last `reset_nfe`: every call, the solver's and the backward pass's alike, for your own
    accounting (the solvers and [`ODEBlock`][neurode.nn.ODEBlock] count for themselves).

    Args:
        net: the module (or any callable) that computes the field; None when a subclass
            overrides `dynamics` (calling an ``ODEFunc`` without either raises
            ``NotImplementedError``).
        time_input: call ``net(t, y)`` instead of ``net(y)`` (default False: an autonomous
            field).
    """

    def __init__(self, net: nn.Module | Callable | None = None, time_input: bool = False):
        super().__init__()
        self.net = net
        self.time_input = time_input
        self.nfe = 0

    def reset_nfe(self) -> None:
        """Set the evaluation counter ``nfe`` back to 0 (e.g. before a solve to be counted)."""
        self.nfe = 0

    def dynamics(self, t: Tensor, y: Tensor) -> Tensor:
        """The field itself, without counting: ``net(y)``, or ``net(t, y)`` with ``time_input``.

        Override this (not `forward`) in a subclass, so that evaluations stay counted.

        Args:
            t: the time, as the solver passes it: a 0-d tensor (a ``(B,)`` tensor in
                per-sample mode); ignored unless ``time_input=True``.
            y: the state, any shape ``net`` accepts (for the solvers, ``y0``'s shape).

        Returns:
            ``dy/dt``, shaped like ``y``.

        Raises:
            NotImplementedError: no ``net`` was given and the subclass does not override
                `dynamics`.
        """
        if self.net is None:
            raise NotImplementedError("ODEFunc needs a net, or a subclass overriding dynamics()")
        return self.net(t, y) if self.time_input else self.net(y)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        """Count one evaluation (``nfe += 1``) and return `dynamics` ``(t, y)``.

        Args:
            t: the time, a 0-d tensor (a ``(B,)`` tensor in per-sample mode).
            y: the state, shaped like ``y0`` of the solve.

        Returns:
            ``dy/dt``, shaped like ``y``.

        Raises:
            NotImplementedError: as `dynamics` (no ``net`` and no override).
        """
        self.nfe += 1
        return self.dynamics(t, y)
