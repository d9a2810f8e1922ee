"""Error norms and the scaled error ratio that decides whether a step is accepted.

Every state behind the front door is ``(B, N)`` (``B = 1`` for a joint solve), so every norm here
maps ``(B, N) → (B,)``: one value per row. The ratio of a step is Hairer's
``norm(err / (atol + rtol·max(|y0|, |y1|)))`` (*Solving ODEs I*, II.4); ``≤ 1`` accepts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from neurode.errors import InvalidInputError

__all__ = ["RowNorm", "error_ratio", "make_row_norm", "max_norm", "rms_norm", "row_rms"]

RowNorm = Callable[[Tensor], Tensor]


def rms_norm(x: Tensor) -> Tensor:
    """Root mean square ``sqrt(mean(|x|²))`` of a whole tensor (Hairer's norm), 0-d and real."""
    n = x.numel()
    if n == 0:
        return torch.zeros((), dtype=x.real.dtype, device=x.device)
    return torch.linalg.vector_norm(x) * (1.0 / math.sqrt(n))


def max_norm(x: Tensor) -> Tensor:
    """``max |x|`` of a whole tensor, 0-d and real (0 for an empty tensor)."""
    if x.numel() == 0:
        return torch.zeros((), dtype=x.real.dtype, device=x.device)
    return torch.linalg.vector_norm(x, ord=math.inf)


def row_rms(x: Tensor) -> Tensor:
    """RMS of each row of ``x`` ``(B, N) → (B,)``."""
    n = x.shape[-1]
    if n == 0:
        return torch.zeros(x.shape[0], dtype=x.real.dtype, device=x.device)
    return torch.linalg.vector_norm(x, dim=-1).mul_(1.0 / math.sqrt(n))


def _row_rms_of(n: int, dtype: torch.dtype, device) -> RowNorm:
    """`row_rms` for rows of ``n``, its scale a tensor (a Python number is wrapped into
    a tensor at every call, which costs more than the operation on small rows)."""
    if n == 0:
        return row_rms
    inv = torch.tensor(1.0 / math.sqrt(n), dtype=dtype, device=device)

    def rms(x: Tensor) -> Tensor:
        return torch.linalg.vector_norm(x, dim=-1).mul_(inv)

    return rms


def _mixed(sizes: Sequence[int]) -> RowNorm:
    """Per row: the largest RMS over the components of a flattened tuple state.

    torchdiffeq's default for tuple states: no component hides its error behind a larger one.
    """
    bounds = []
    start = 0
    for s in sizes:
        bounds.append((start, start + s))
        start += s

    def mixed(x: Tensor) -> Tensor:
        return torch.stack([row_rms(x[:, a:b]) for a, b in bounds]).amax(0)

    return mixed


def make_row_norm(user_norm, sizes: Sequence[int] | None, to_user: Callable[[Tensor], object],
                  batch: int, per_sample: bool, n: int = 0,
                  dtype: torch.dtype = torch.float64, device=None) -> RowNorm:
    """The error norm of a ``(B, N)`` state.

    ``user_norm`` None: RMS (a tensor state) or the mixed RMS over components (``sizes`` of a
    tuple state). A callable is applied to the state in the user's structure (``to_user``); it
    must return a scalar (joint) or one value per sample ``(B,)`` (per-sample mode), which is
    checked on its first call.
    """
    if user_norm is None:
        if sizes is None or len(sizes) == 1:
            return _row_rms_of(n, dtype, device)
        return _mixed(sizes)
    checked = False

    def user(x: Tensor) -> Tensor:
        nonlocal checked
        r = user_norm(to_user(x))
        if not checked:
            want = (batch,) if per_sample else ()
            if not isinstance(r, Tensor) or r.shape not in (want, (batch,)) or r.is_complex():
                got = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
                raise InvalidInputError(
                    f"options['norm'] must return a real "
                    f"{'tensor of one value per sample ' + str(want) if per_sample else 'scalar'}"
                    f", got {got}")
            checked = True
        return r.reshape(batch)

    return user


def error_ratio(err: Tensor, err_low: Tensor | None, y0: Tensor, y1: Tensor, rtol, atol,
                norm: RowNorm, abs_y0: Tensor | None = None,
                abs_y1: Tensor | None = None) -> Tensor:
    """``norm(err / (atol + rtol·max(|y0|, |y1|)))`` per row, ``(B,)`` (``err`` is consumed;
    ``abs_y0``, ``abs_y1``: ``|y0|``, ``|y1|`` when the caller has them — ``|y0|`` is the
    accepted step's ``|y1|``).

    With a second, lower-order estimate (DOP853) the two are blended as in Hairer's dop853.f:
    ``r5² / sqrt(r5² + 0.01 r3²)``, an estimate that behaves like the method's own order.
    """
    scale = torch.maximum(y0.abs() if abs_y0 is None else abs_y0,
                          y1.abs() if abs_y1 is None else abs_y1).mul_(rtol).add_(atol)
    r = norm(err.div_(scale))
    if err_low is not None:
        r3 = norm(err_low.div_(scale))
        d = torch.sqrt(r * r + 0.01 * r3 * r3)
        r = torch.where(d > 0, r * r / d, d)
    return r
