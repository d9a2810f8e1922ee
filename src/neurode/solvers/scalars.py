"""Where the step control's numbers live: tensors on the device, or floats on the host.

The adaptive loop and the PID controller are written once, against a small arithmetic
interface; two back ends carry it out:

* `DeviceScalars`: every row's time, step, controller memory, decision and status is a
  ``(B,)`` tensor (``B = 1`` for a joint solve). Nothing is read on the host, so steps can be
  queued and compiled; per-sample solves always run here.
* `HostScalars`: one row, Python floats and bools; the error ratio of each step is read
  once. On the CPU a read costs next to nothing, while the same control as tensor operations costs
  a few microseconds per operation in PyTorch's dispatcher (~100 µs per step), so this is the
  default for joint solves on the CPU (``options["decisions"]``).

Constants are tensors in the device back end, made once (a Python number passed to a tensor
operation is wrapped into a tensor at every call, which costs more than the operation itself on
a few rows).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["DeviceScalars", "HostScalars"]


_CONSTANTS: dict = {}


def _const(x, dtype: torch.dtype, device) -> Tensor:
    # a plain dict (not lru_cache): torch.compile traces a lookup, and reads the tensor as a
    # constant of the graph
    key = (x, dtype, device)
    c = _CONSTANTS.get(key)
    if c is None:
        c = _CONSTANTS[key] = torch.tensor(x, dtype=dtype, device=device)
    return c


class DeviceScalars:
    """Row-wise ``(B,)`` tensors; ``r`` is the ratio dtype, ``t`` the time dtype."""

    host = False

    def __init__(self, rdtype: torch.dtype, tdtype: torch.dtype, device):
        self.rdtype, self.tdtype, self.device = rdtype, tdtype, device
        self._packs: dict = {}

    def pack(self, key: str, build) -> tuple:
        """``build(self)``, made once per ``key`` (one back end serves one loop, whose
        controller, initial step and loop each have one key): the constants a caller uses
        every step. Keys are strings so that ``torch.compile`` guards on them cheaply; a compiled
        loop runs its first step eagerly, which makes them."""
        p = self._packs.get(key)
        if p is None:
            p = self._packs[key] = build(self)
        return p

    def r(self, x: float) -> Tensor:
        """A constant in the ratio's dtype."""
        return _const(float(x), self.rdtype, self.device)

    def t(self, x: float) -> Tensor:
        """A constant in the time's dtype."""
        return _const(float(x), self.tdtype, self.device)

    def i(self, x: int) -> Tensor:
        return _const(x, torch.int64, self.device)

    def w(self, x: float) -> Tensor:
        """A float64 constant (the initial-step heuristic's arithmetic)."""
        return _const(float(x), torch.float64, self.device)

    @staticmethod
    def wide(x: Tensor) -> Tensor:
        """A row value in float64 (no read)."""
        return x.to(torch.float64)

    where = staticmethod(torch.where)
    minimum = staticmethod(torch.minimum)
    maximum = staticmethod(torch.maximum)

    @staticmethod
    def pow(x: Tensor, e) -> Tensor:
        return x.pow(e)

    clamp = staticmethod(torch.clamp)

    @staticmethod
    def nan_to(x: Tensor, value: float) -> Tensor:
        """NaN entries of ``x`` (a fresh tensor) replaced by ``value``."""
        return x.nan_to_num_(value)

    @staticmethod
    def not_(a: Tensor) -> Tensor:
        return ~a

    @staticmethod
    def abs(x: Tensor) -> Tensor:
        return x.abs()

    def finite(self, x: Tensor) -> Tensor:
        return x < self.r(math.inf)  # ratios are ≥ 0 or NaN

    @staticmethod
    def to_time(x: Tensor, like: Tensor) -> Tensor:
        return x if x.dtype == like.dtype else x.to(like.dtype)

    @staticmethod
    def select(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
        """Per row: ``new`` where ``mask``, else ``old`` (rows of ``(B, ...)`` tensors)."""
        return torch.where(mask.view(-1, *([1] * (new.ndim - 1))), new, old)

    @staticmethod
    def read(x: Tensor) -> Tensor:
        return x


class HostScalars:
    """One row of Python numbers; `read` is the one host read of a step."""

    host = True

    def __init__(self):
        self._packs: dict = {}

    pack = DeviceScalars.pack

    @staticmethod
    def r(x: float) -> float:
        return x

    t = r

    @staticmethod
    def i(x: int) -> int:
        return x

    w = r

    @staticmethod
    def wide(x: Tensor) -> float:
        """A one-row value as a float (a read)."""
        return float(x)

    @staticmethod
    def where(c: bool, a, b):
        return a if c else b

    @staticmethod
    def minimum(a, b):
        return a if a <= b else b

    @staticmethod
    def maximum(a, b):
        return a if a >= b else b

    @staticmethod
    def pow(x: float, e: float) -> float:
        return x ** e

    @staticmethod
    def clamp(x: float, lo: float, hi: float) -> float:
        """``x`` into ``[lo, hi]``; NaN becomes ``lo``."""
        if x != x:
            return lo
        return lo if x < lo else hi if x > hi else x

    @staticmethod
    def nan_to(x: float, value: float) -> float:
        return value if x != x else x

    @staticmethod
    def not_(a: bool) -> bool:
        return not a

    abs = staticmethod(abs)

    @staticmethod
    def finite(x: float) -> bool:
        return x < math.inf

    @staticmethod
    def to_time(x: float, like) -> float:
        return x

    @staticmethod
    def select(mask: bool, new, old):
        return new if mask else old

    @staticmethod
    def read(x: Tensor) -> float:
        return float(x)
