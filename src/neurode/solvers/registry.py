"""The method registry: every method neurode knows, registered here and nowhere else.

A method is a name → [`MethodSpec`][neurode.solvers.MethodSpec]: which loop runs it, which option
families it takes, how its stepper is built from a problem, and what it supports. An explicit
Runge–Kutta method is a tableau in [`TABLEAUX`][neurode.TABLEAUX] plus one line below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from neurode.errors import InvalidInputError, UnknownMethodError
from neurode.solvers.norms import error_ratio
from neurode.solvers.options import Options
from neurode.solvers.steppers.adams import Adams
from neurode.solvers.steppers.alf import ALF
from neurode.solvers.steppers.erk import ExplicitRK
from neurode.solvers.steppers.irk import ImplicitRK, Radau
from neurode.solvers.tableau import ButcherTableau, ImplicitTableau
from neurode.solvers.tableaux import IMPLICIT_TABLEAUX, TABLEAUX

__all__ = ["BY_TOLERANCE", "METHODS", "MethodSpec", "explicit_for", "get_method",
           "register_method"]


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    Attributes:
        name: the registry name.
        families: the option families it takes (`FAMILY_KEYS`).
        loop: ``opts -> "adaptive" | "fixed" | "scipy"``: the loop that runs it.
        stepper: ``problem -> stepper`` (None for external backends).
        order: order of the method.
        adaptive: has an error estimate and takes ``rtol``/``atol`` for step control.
        per_sample: can give every sample of a batch its own steps.
        tableau: its tableau, if it is one.
        defaults: option defaults that differ from the family's (e.g. radau's pure I control).
        kind: a short word for the feature table of the methods guide.
    """

    name: str
    families: tuple[str, ...]
    loop: Callable[[Options], str]
    stepper: Callable | None
    order: int | None
    adaptive: bool
    per_sample: bool = False
    tableau: ButcherTableau | ImplicitTableau | None = None
    defaults: dict = field(default_factory=dict)
    kind: str = ""


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec, *aliases: str) -> None:
    """Add ``spec`` to the registry under its name and any ``aliases``.

    A name already registered is replaced (no error), so a user's spec can override a built-in
    method.

    Args:
        spec: the [`MethodSpec`][neurode.solvers.MethodSpec] to register; it is stored under
            ``spec.name``.
        *aliases: further names the same spec answers to (e.g. ``"fixed_adams"`` for
            ``implicit_adams``).
    """
    for name in (spec.name, *aliases):
        METHODS[name] = spec


def get_method(name: str) -> MethodSpec:
    """The spec for ``name``; [`UnknownMethodError`][neurode.UnknownMethodError] listing valid
    names otherwise."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(METHODS))
        raise UnknownMethodError(
            f"unknown method {name!r}; valid methods are: {valid}") from None


def geometry(pb) -> dict:
    """The keyword arguments every stepper takes: the state's and time's layout."""
    L = pb.layout
    return {"batch": L.batch, "n": L.n, "dtype": L.dtype, "device": L.device, "sign": pb.sign,
            "time_dtype": pb.time_dtype, "per_sample": L.per_sample}


def _joint_only(pb, name: str) -> None:
    if pb.per_sample:
        raise InvalidInputError(f"method {name!r} solves joint problems only (no per-sample)")


def _erk(tab: ButcherTableau):
    def make(pb):
        return ExplicitRK(tab, **geometry(pb), user_shape=pb.field.user_shape)
    return make


def _adaptive(_opts) -> str:
    return "adaptive"


def _fixed(_opts) -> str:
    return "fixed"


for _name in ("euler", "midpoint", "heun2", "heun3", "rk4", "rk4_classic"):
    _tab = TABLEAUX[_name]
    register_method(MethodSpec(_name, ("grid", "per_sample"), _fixed, _erk(_tab), _tab.order,
                               adaptive=False, tableau=_tab, kind="explicit RK, fixed grid"))
for _name in ("adaptive_heun", "fehlberg2", "bosh3", "dopri5", "tsit5", "dopri8", "vern6", "vern7",
              "vern8", "vern9"):
    _tab = TABLEAUX[_name]
    register_method(MethodSpec(_name, ("control", "per_sample"), _adaptive, _erk(_tab),
                               _tab.order, adaptive=True, per_sample=True, tableau=_tab,
                               kind="explicit RK, adaptive"))


# --- Adams ---------------------------------------------------------------------------------------

def _adams(implicit: bool, default_order: int):
    def make(pb):
        _joint_only(pb, "implicit_adams" if implicit else "explicit_adams")
        a = pb.opts.adams
        return Adams(implicit=implicit, max_order=a.max_order or default_order,
                     max_iters=a.max_iters, rtol=pb.rtol, atol=pb.atol, norm=pb.norm,
                     boot=ExplicitRK(TABLEAUX["rk4"], **geometry(pb)), **geometry(pb))
    return make


# Adams–Bashforth above order ~6 has a tiny stability region (torchdiffeq's default of 12 blows
# up on the spiral at h = 0.05), so the explicit method defaults to order 4; the corrector of the
# implicit method keeps high orders stable, so it defaults to torchdiffeq's 12.
register_method(MethodSpec("explicit_adams", ("grid", "adams", "per_sample"), _fixed,
                           _adams(False, 4), 4, adaptive=False, kind="multistep, fixed grid"))
register_method(MethodSpec("implicit_adams", ("grid", "adams", "corrector", "per_sample"),
                           _fixed, _adams(True, 12), 4, adaptive=False,
                           kind="multistep (corrector), fixed grid"), "fixed_adams")


# --- implicit Runge–Kutta ------------------------------------------------------------------------

def _irk(tab: ImplicitTableau):
    def make(pb):
        _joint_only(pb, tab.name)
        return ImplicitRK(tab, pb.opts.newton, pb.rtol, pb.atol, **geometry(pb))
    return make


def _radau(pb):
    _joint_only(pb, "radau")
    rtol, atol, norm = pb.rtol, pb.atol, pb.norm

    def ratio(err, y, y1):
        return error_ratio(err, None, y, y1, rtol, atol, norm)

    c = pb.opts.control
    return Radau(IMPLICIT_TABLEAUX["radauIIA5"], pb.opts.newton, rtol, atol, ratio_fn=ratio,
                 min_step=c.min_step, safety=c.safety, **geometry(pb))


for _name, _tab in IMPLICIT_TABLEAUX.items():
    register_method(MethodSpec(_name, ("grid", "newton", "per_sample"), _fixed, _irk(_tab),
                               _tab.order, adaptive=False, tableau=_tab,
                               kind="implicit RK, fixed grid"))
register_method(MethodSpec("radau", ("control", "newton", "per_sample"), _adaptive, _radau, 5,
                           adaptive=True, tableau=IMPLICIT_TABLEAUX["radauIIA5"],
                           defaults={"pcoeff": 0.0}, kind="implicit RK, adaptive (stiff)"))


# --- ALF -----------------------------------------------------------------------------------------

def _alf(pb):
    return ALF(pb.opts.alf.eta, **geometry(pb))


def _alf_loop(opts: Options) -> str:
    return "fixed" if opts.alf.step_size is not None else "adaptive"


register_method(MethodSpec("alf", ("control", "alf", "per_sample"), _alf_loop, _alf, 2,
                           adaptive=True, per_sample=True,
                           kind="asynchronous leapfrog (reversible)"))


# --- auto ----------------------------------------------------------------------------------------

#: ``(rtol at least, method)``, first match wins: the explicit method ``auto`` starts with. From
#: ``bench_work_precision.py`` (NFE at equal error over the best of all explicit methods per
#: problem, geometric mean over DETEST A/B/D and an MLP field): tsit5 is best at 1e-3 and 1e-4
#: (1.00, 1.06); from 1e-5 to 1e-12 vern8 is best or within 0.02 of the best (1.06–1.12).
BY_TOLERANCE: tuple[tuple[float, str], ...] = ((1e-4, "tsit5"), (0.0, "vern8"))


def explicit_for(rtol) -> str:
    """The explicit method `BY_TOLERANCE` gives for ``rtol`` (a tensor: its smallest
    entry)."""
    r = float(rtol.min()) if hasattr(rtol, "min") else float(rtol)
    for bound, name in BY_TOLERANCE:
        if r >= bound:
            return name
    return BY_TOLERANCE[-1][1]


def _auto_loop(_opts) -> str:
    return "auto"


# the explicit method of the tolerance, Radau while the problem is stiff (loops/auto.py); it takes
# both methods' options (Newton's are used while Radau runs)
register_method(MethodSpec("auto", ("control", "newton", "per_sample"), _auto_loop, None, None,
                           adaptive=True, per_sample=True,
                           kind="tsit5 / vern8 by tolerance, radau while stiff"))


# --- SciPy ---------------------------------------------------------------------------------------

def _scipy(_opts) -> str:
    return "scipy"


register_method(MethodSpec("scipy_solver", ("scipy", "per_sample"), _scipy, None, None,
                           adaptive=True, kind="scipy.integrate backend"))
