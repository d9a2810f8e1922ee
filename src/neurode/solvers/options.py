"""Method options: one schema per family, every value checked once at the front door.

A method takes the option families its registry entry lists (`FAMILY_KEYS`); a key that none of them
holds is an [`UnknownOptionError`][neurode.UnknownOptionError] that lists the valid keys. Each value
is checked here for type, NaN, sign and range and parsed into a frozen config, so the loops and
steppers never see a raw ``options`` dict. Time-valued options (``step_t``, ``jump_t``) stay in the
user's time here; the front door maps them to internal time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from neurode.errors import InvalidInputError, UnknownOptionError

__all__ = [
    "FAMILY_KEYS",
    "ALFOptions",
    "AdamsOptions",
    "GridOptions",
    "NewtonOptions",
    "Options",
    "PerSampleOptions",
    "ScipyOptions",
    "StepControl",
    "parse_options",
]

SCIPY_SOLVERS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")


@dataclass(frozen=True)
class StepControl:
    """Adaptive step control (see `PIDController`).

    ``sync_every``: steps queued between two host checks of the adaptive loop; ``compile``:
    run each step through ``torch.compile``; ``decisions`` (on `Options`): where the step
    control's numbers live, ``"auto"``, ``"host"`` or ``"device"``
    (`neurode.solvers.scalars`).
    """

    first_step: float | None = None
    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    pcoeff: float = 0.1
    icoeff: float = 1.0
    dcoeff: float = 0.0
    max_num_steps: int = 2**31 - 1
    min_step: float = 0.0
    max_step: float = math.inf
    step_t: tuple[float, ...] = ()
    jump_t: tuple[float, ...] = ()
    sync_every: int = 8
    compile: bool = False


@dataclass(frozen=True)
class GridOptions:
    """A fixed grid: ``step_size`` or a ``grid_constructor`` (else the output times),
    ``perturb`` (evaluate just inside each step), the output ``interp``olation, and the most
    steps to take (``max_num_steps``: a grid longer than that fails when it reaches it; an event
    search on an unbounded grid stops there, by default after 50,000 steps)."""

    step_size: float | None = None
    grid_constructor: Callable | None = None
    perturb: bool = False
    interp: str = "linear"
    max_num_steps: int | None = None


@dataclass(frozen=True)
class NewtonOptions:
    """The stage solve of implicit methods: iteration cap and how ``∂f/∂y`` is obtained."""

    max_iters: int | None = None
    jacobian: str = "autodiff"


@dataclass(frozen=True)
class AdamsOptions:
    """Adams–Bashforth(–Moulton): the highest order and the corrector's iteration cap."""

    max_order: int | None = None
    max_iters: int = 4


@dataclass(frozen=True)
class ALFOptions:
    """The asynchronous leapfrog: damping ``eta`` in (½, 1] and optional fixed ``step_size``."""

    eta: float = 1.0
    step_size: float | None = None


@dataclass(frozen=True)
class PerSampleOptions:
    """Per-sample stepping of a batch, and the most outputs one step may cover."""

    per_sample: bool = False
    max_outputs_per_step: int | None = None


@dataclass(frozen=True)
class ScipyOptions:
    """``scipy.integrate`` backend: the solver and the step bounds it honours."""

    solver: str = "LSODA"
    first_step: float | None = None
    min_step: float | None = None
    max_step: float | None = None
    max_num_steps: int = 2**31 - 1


@dataclass(frozen=True)
class Options:
    """Every option of one solve, parsed; a family the method does not take is None."""

    control: StepControl | None = None
    grid: GridOptions | None = None
    newton: NewtonOptions | None = None
    adams: AdamsOptions | None = None
    alf: ALFOptions | None = None
    per_sample: PerSampleOptions = field(default_factory=PerSampleOptions)
    scipy: ScipyOptions | None = None
    norm: Callable | str | None = None
    decisions: str = "auto"
    time_dtype: torch.dtype = torch.float64
    given: frozenset[str] = frozenset()


FAMILY_KEYS: dict[str, frozenset[str]] = {
    "common": frozenset({"dtype"}),
    "control": frozenset({"first_step", "safety", "ifactor", "dfactor", "pcoeff", "icoeff",
                          "dcoeff", "max_num_steps", "min_step", "max_step", "step_t", "jump_t",
                          "norm", "sync_every", "compile", "decisions"}),
    "grid": frozenset({"step_size", "grid_constructor", "perturb", "interp", "max_num_steps"}),
    "newton": frozenset({"max_iters", "jacobian"}),
    "adams": frozenset({"max_order"}),
    "corrector": frozenset({"max_iters", "norm"}),
    "alf": frozenset({"eta", "step_size"}),
    "per_sample": frozenset({"per_sample", "max_outputs_per_step"}),
    "scipy": frozenset({"solver", "first_step", "min_step", "max_step", "max_num_steps"}),
}


# --- value checks ------------------------------------------------------------------------------


def _name(key: str) -> str:
    return f"options[{key!r}]"


def number(o: dict, key: str, default, *, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, hi_open: bool = False, allow_inf: bool = False,
           what: str | None = None) -> float:
    """``o[key]`` as a float in the given range (``default`` if absent or None)."""
    v = o.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float | torch.Tensor) or (
            isinstance(v, torch.Tensor) and (v.numel() != 1 or v.is_complex())):
        raise InvalidInputError(f"{_name(key)} must be a real number, got {v!r}")
    x = float(v)
    rng = what or _range_text(lo, hi, lo_open, hi_open)
    if math.isnan(x) or (math.isinf(x) and not allow_inf):
        raise InvalidInputError(f"{_name(key)} must be a finite number {rng}, got {x}")
    if (lo is not None and (x < lo or (lo_open and x == lo))) or \
            (hi is not None and (x > hi or (hi_open and x == hi))):
        raise InvalidInputError(f"{_name(key)} must be {rng}, got {x}")
    return x


def _range_text(lo, hi, lo_open, hi_open) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '≥'} {lo:g}"
    if hi is not None:
        return f"{'<' if hi_open else '≤'} {hi:g}"
    return ""


def integer(o: dict, key: str, default, *, lo: int = 1) -> int:
    """``o[key]`` as an int ≥ ``lo`` (``default`` if absent or None)."""
    v = o.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float | torch.Tensor):
        raise InvalidInputError(f"{_name(key)} must be an integer ≥ {lo}, got {v!r}")
    x = float(v)
    if not math.isfinite(x) or x != int(x):
        raise InvalidInputError(f"{_name(key)} must be an integer ≥ {lo}, got {v!r}")
    if x < lo:
        raise InvalidInputError(f"{_name(key)} must be ≥ {lo}, got {int(x)}")
    return int(x)


def flag(o: dict, key: str, default: bool) -> bool:
    v = o.get(key)
    if v is None:
        return default
    if not isinstance(v, bool | int) or v not in (0, 1, True, False):
        raise InvalidInputError(f"{_name(key)} must be True or False, got {v!r}")
    return bool(v)


def choice(o: dict, key: str, default: str, choices: Iterable[str]) -> str:
    v = o.get(key)
    if v is None:
        return default
    choices = tuple(choices)
    if v not in choices:
        quoted = ", ".join(repr(c) for c in choices)
        raise InvalidInputError(f"{_name(key)} must be one of {quoted}, got {v!r}")
    return v


def times(o: dict, key: str) -> tuple[float, ...]:
    """A sequence (or 1-D tensor) of finite times, in the user's time."""
    v = o.get(key)
    if v is None:
        return ()
    try:
        vals = torch.as_tensor(v, dtype=torch.float64).reshape(-1).tolist()
    except (TypeError, ValueError, RuntimeError) as e:
        raise InvalidInputError(f"{_name(key)} must be a sequence of times, got {v!r}") from e
    if not all(math.isfinite(x) for x in vals):
        raise InvalidInputError(f"{_name(key)} contains NaN or inf")
    return tuple(vals)


# --- the families ------------------------------------------------------------------------------


def _control(o: dict) -> StepControl:
    first = number(o, "first_step", None, allow_inf=False)
    if first is not None:
        first = abs(first)
        if first == 0:
            raise InvalidInputError(f"{_name('first_step')} must be non-zero")
    min_step = abs(number(o, "min_step", 0.0))
    max_step = number(o, "max_step", math.inf, allow_inf=True)
    max_step = abs(max_step)
    if max_step == 0:
        raise InvalidInputError(f"{_name('max_step')} must be > 0, got 0")
    if min_step > max_step:
        raise InvalidInputError(f"options: min_step={min_step} exceeds max_step={max_step}")
    c = StepControl(
        first_step=first,
        safety=number(o, "safety", 0.9, lo=0, hi=1, lo_open=True),
        ifactor=number(o, "ifactor", 10.0, lo=1),
        dfactor=number(o, "dfactor", 0.2, lo=0, hi=1, lo_open=True),
        pcoeff=number(o, "pcoeff", 0.1),
        icoeff=number(o, "icoeff", 1.0),
        dcoeff=number(o, "dcoeff", 0.0),
        max_num_steps=integer(o, "max_num_steps", 2**31 - 1),
        min_step=min_step, max_step=max_step,
        step_t=times(o, "step_t"), jump_t=times(o, "jump_t"),
        sync_every=integer(o, "sync_every", 8),
        compile=flag(o, "compile", False),
    )
    if not c.pcoeff + c.icoeff + c.dcoeff > 0:
        raise InvalidInputError(
            "options: pcoeff + icoeff + dcoeff must be > 0 (the controller must shrink steps "
            f"whose error is too large), got {c.pcoeff} + {c.icoeff} + {c.dcoeff}")
    return c


def _grid(o: dict) -> GridOptions:
    step = o.get("step_size")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, int | float | torch.Tensor):
            raise InvalidInputError(f"{_name('step_size')} must be > 0, got {step!r}")
        step = float(step)
        if not step > 0 or not math.isfinite(step):
            raise InvalidInputError(f"{_name('step_size')} must be > 0 and finite, got {step}")
    gc = o.get("grid_constructor")
    if gc is not None and not callable(gc):
        raise InvalidInputError(
            f"{_name('grid_constructor')} must be callable as grid_constructor(func, y0, t)")
    if gc is not None and step is not None:
        raise InvalidInputError("options: give step_size or grid_constructor, not both")
    interp = o.get("interp", "linear")
    if interp not in ("linear", "cubic"):
        raise InvalidInputError(f"{_name('interp')} must be 'linear' or 'cubic', got {interp!r}")
    return GridOptions(step_size=step, grid_constructor=gc, perturb=flag(o, "perturb", False),
                       interp=interp, max_num_steps=integer(o, "max_num_steps", None))


def _newton(o: dict) -> NewtonOptions:
    return NewtonOptions(max_iters=integer(o, "max_iters", None),
                         jacobian=choice(o, "jacobian", "autodiff", ("autodiff", "fd", "krylov")))


def _adams(o: dict) -> AdamsOptions:
    return AdamsOptions(max_order=integer(o, "max_order", None),
                        max_iters=integer(o, "max_iters", 4))


def _alf(o: dict) -> ALFOptions:
    eta = number(o, "eta", 1.0, lo=0.5, hi=1.0, lo_open=True,
                 what="in (0.5, 1] (at 0.5 the step forgets v and cannot be inverted, below it "
                      "v lags f ever more)")
    step = number(o, "step_size", None, lo=0, lo_open=True)
    if step is not None:
        clash = sorted(k for k in FAMILY_KEYS["control"] if o.get(k) is not None)
        if clash:
            raise InvalidInputError(
                f"options: step_size (fixed steps) cannot be combined with {', '.join(clash)} "
                "(adaptive steps); give one or the other")
    return ALFOptions(eta=eta, step_size=step)


def _per_sample(o: dict) -> PerSampleOptions:
    return PerSampleOptions(per_sample=flag(o, "per_sample", False),
                            max_outputs_per_step=integer(o, "max_outputs_per_step", None))


def _scipy(o: dict) -> ScipyOptions:
    first = number(o, "first_step", None)
    first = None if first is None else abs(first)
    if first == 0:
        raise InvalidInputError(f"{_name('first_step')} must be non-zero")
    return ScipyOptions(solver=choice(o, "solver", "LSODA", SCIPY_SOLVERS), first_step=first,
                        min_step=number(o, "min_step", None, lo=0),
                        max_step=number(o, "max_step", None, lo=0, lo_open=True, allow_inf=True),
                        max_num_steps=integer(o, "max_num_steps", 2**31 - 1))


_PARSERS = {"control": _control, "grid": _grid, "newton": _newton, "adams": _adams,
            "alf": _alf, "per_sample": _per_sample, "scipy": _scipy}


def _dtype(o: dict) -> torch.dtype:
    v = o.get("dtype")
    if v is None:
        return torch.float64
    if v not in (torch.float32, torch.float64):
        raise InvalidInputError(
            f"{_name('dtype')} is the dtype of the solver's internal time and step size: "
            f"torch.float32 or torch.float64, got {v!r}")
    return v


def parse_options(method: str, families: Iterable[str], options: dict[str, Any] | None,
                  defaults: dict[str, Any] | None = None) -> Options:
    """Check ``options`` against the families of ``method`` and parse every value once
    (``defaults``: the method's own defaults for keys the user did not give)."""
    families = ("common", *families)
    if options is None:
        options = {}
    elif not isinstance(options, dict):
        raise InvalidInputError(f"options must be a dict, got {type(options).__name__}")
    given = frozenset(options)
    valid = frozenset().union(*(FAMILY_KEYS[f] for f in families))
    unknown = sorted(set(options) - valid, key=str)
    if unknown:
        raise UnknownOptionError(
            f"method {method!r} does not take option(s) {', '.join(map(repr, unknown))}; "
            f"valid options are: {', '.join(sorted(valid))}")
    if defaults:
        options = {**defaults, **options}
    parsed: dict[str, Any] = {f: _PARSERS[f](options) for f in families if f in _PARSERS}
    norm = options.get("norm")
    if norm is not None and not callable(norm) and norm != "seminorm":
        raise InvalidInputError(f"{_name('norm')} must be callable as norm(state) -> scalar")
    decisions = choice(options, "decisions", "auto", ("auto", "host", "device"))
    return Options(**parsed, norm=norm, decisions=decisions, time_dtype=_dtype(options),
                   given=given)
