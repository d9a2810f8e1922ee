"""Libraries built on torchdiffeq, run unchanged on torchdiffeq and then on neurode.

Each test runs one client function twice in this process: first on the real torchdiffeq 0.2.5,
then with neurode in torchdiffeq's place (``twice.run(fn)``), and compares the two results —
outputs and gradients — to a tolerance the test derives from the solve's rtol/atol.

How neurode is put in torchdiffeq's place (:func:`neurode_in_place_of_torchdiffeq`), undone on
leaving the block:

- ``sys.modules["torchdiffeq"]`` becomes ``neurode``, so an ``import torchdiffeq`` run inside the
  block gets neurode; torchdiffeq's submodules (``torchdiffeq._impl...``) are set to ``None``
  there, so a client that imports a private submodule fails with ImportError instead of quietly
  running torchdiffeq code (neurode has no such submodules to stand in for them);
- in every loaded module of the client package, a global bound to the torchdiffeq module
  (``import torchdiffeq``) is rebound to neurode, and a global bound to one of torchdiffeq's public
  functions (``from torchdiffeq import odeint``) to neurode's function of the same name. A global
  bound to anything else of torchdiffeq's raises: neurode cannot stand in for a private name.

Rebinding the client's globals is used instead of reloading its modules: a reload makes new
classes (e.g. ``ODESolver``) while objects made before it keep the old ones, and reloading back
afterwards makes yet others; the functions of a module look their globals up at call time, so
rebinding changes what every one of them calls, and it is undone exactly.

Proof that each run used the library it should: neurode's public functions are wrapped by
call counters inside the block, and every torchdiffeq solve (``odeint``, ``odeint_adjoint``,
``odeint_dense``, ``odeint_event``, and each backward solve of ``odeint_adjoint``) goes through
``torchdiffeq._impl.misc._check_inputs``, which is counted in both runs. ``twice.run`` asserts
that the torchdiffeq run made torchdiffeq solves and no neurode call, and that the neurode run
made neurode calls and no torchdiffeq solve — so no test can pass by running torchdiffeq twice.

Clients: flow_matching 1.0.10 (``from torchdiffeq import odeint`` in
flow_matching.solver.ode_solver) and torchcde 0.2.5 (``import torchdiffeq`` in torchcde.solver);
neither touches a private name.
torchdyn 1.0.6 is not here: it has solvers of its own and no module of it imports torchdiffeq
(it needs pytorch_lightning to import, and torchsde for its SDEs only).

Set ``NEURODE_CLIENT_REPORT=1`` to print, at the end of the session, the largest difference that
each comparison saw.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
import types
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pytest
import torch

import neurode

try:
    import torchdiffeq
except ImportError:  # the tests skip (fixtures below); the clients need it to import anyway
    torchdiffeq = None

#: The names torchdiffeq exports (``torchdiffeq/__init__.py`` of 0.2.5), all of which neurode has.
PUBLIC = ("odeint", "odeint_adjoint", "odeint_dense", "odeint_event")

#: (test id, quantity, max |neurode - torchdiffeq|, that / tolerance, note): NEURODE_CLIENT_REPORT.
REPORT: list[tuple[str, str, float, float, str]] = []


def _private_torchdiffeq(value: Any) -> str | None:
    """The name of a torchdiffeq object other than the package itself, or None."""
    if isinstance(value, types.ModuleType):
        name = value.__name__
    else:
        name = getattr(value, "__module__", None)
        if not isinstance(name, str) or not isinstance(value, (type, types.FunctionType)):
            return None
    if name == "torchdiffeq" or name.startswith("torchdiffeq."):
        return f"{name}.{getattr(value, '__qualname__', '')}".rstrip(".")
    return None


class Shim(NamedTuple):
    calls: Counter  # calls of each neurode function made through the shim
    rebound: frozenset[str]  # the client globals rebound: "module.name"


@contextlib.contextmanager
def neurode_in_place_of_torchdiffeq(*packages: str) -> Iterator[Shim]:
    """Within the block, the client ``packages`` call neurode where they called torchdiffeq."""
    calls: Counter = Counter()
    real = {name: getattr(torchdiffeq, name) for name in PUBLIC}

    def counted(name: str) -> Callable:
        fn = getattr(neurode, name)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    with pytest.MonkeyPatch.context() as mp:
        for name in PUBLIC:
            mp.setattr(neurode, name, counted(name))
        shim = {name: getattr(neurode, name) for name in PUBLIC}
        mp.setitem(sys.modules, "torchdiffeq", neurode)
        for modname in [m for m in sys.modules if m.startswith("torchdiffeq.")]:
            mp.setitem(sys.modules, modname, None)
        clients = [m for m in list(sys.modules.values())
                   if isinstance(m, types.ModuleType)
                   and any(m.__name__ == p or m.__name__.startswith(p + ".") for p in packages)]
        assert clients, f"none of {packages} is imported"
        rebound = []
        for module in clients:
            for key, value in list(vars(module).items()):
                if value is torchdiffeq:
                    mp.setattr(module, key, neurode)
                    rebound.append(f"{module.__name__}.{key}")
                    continue
                match = [name for name, fn in real.items() if value is fn]
                if match:
                    mp.setattr(module, key, shim[match[0]])
                    rebound.append(f"{module.__name__}.{key}")
                elif (private := _private_torchdiffeq(value)) is not None:
                    raise RuntimeError(
                        f"{module.__name__}.{key} is bound to torchdiffeq's private {private}: "
                        "neurode has no stand-in for it")
        assert rebound, f"no module of {packages} refers to torchdiffeq"
        yield Shim(calls, frozenset(rebound))


@contextlib.contextmanager
def torchdiffeq_solves() -> Iterator[list[int]]:
    """Counts torchdiffeq's solves (forward and adjoint) inside the block: yields [count]."""
    count = [0]
    misc = importlib.import_module("torchdiffeq._impl.misc")
    original = misc._check_inputs

    @functools.wraps(original)
    def counted(*args, **kwargs):
        count[0] += 1
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        for modname in ("torchdiffeq._impl.odeint", "torchdiffeq._impl.adjoint"):
            module = importlib.import_module(modname)
            assert module._check_inputs is original
            mp.setattr(module, "_check_inputs", counted)
        yield count


class Twice:
    """Runs a client call on torchdiffeq and on neurode, and compares results."""

    def __init__(self, test_id: str):
        self.test_id = test_id
        self.neurode_calls: Counter = Counter()
        self.rebound: frozenset[str] = frozenset()

    def run(self, fn: Callable[[], Any], *packages: str) -> tuple[Any, Any]:
        """``fn()`` on torchdiffeq, then with neurode in its place for ``packages``."""
        with torchdiffeq_solves() as solves:
            ref = fn()
        assert solves[0] > 0, "the torchdiffeq run made no torchdiffeq solve"
        with torchdiffeq_solves() as solves, neurode_in_place_of_torchdiffeq(*packages) as shim:
            new = fn()
        assert solves[0] == 0, f"the neurode run made {solves[0]} torchdiffeq solve(s)"
        assert sum(shim.calls.values()) > 0, "the neurode run made no neurode call"
        self.neurode_calls, self.rebound = shim.calls, shim.rebound
        return ref, new

    def close(self, what: str, new: torch.Tensor, ref: torch.Tensor, *, rtol: float,
              atol: float) -> float:
        """Asserts max |new - ref| <= atol + rtol max |ref|; returns max |new - ref|.

        The scale is the tensor's largest entry, as in a solver's error norm, not each entry's
        own: an entry near zero is held to the tensor's accuracy, not to atol alone.
        """
        new, ref = self._check(what, new, ref)
        biggest = (new - ref).abs().max().item()
        ratio = biggest / (atol + rtol * ref.abs().max().item())
        REPORT.append((self.test_id, what, biggest, ratio, ""))
        assert ratio <= 1, (f"{what}: max |neurode - torchdiffeq| = {biggest:.3g}, "
                            f"{ratio:.3g} x (atol={atol:g} + rtol={rtol:g} max|y|)")
        return biggest

    def accurate(self, what: str, new: torch.Tensor, ref: torch.Tensor, exact: torch.Tensor, *,
                 rtol: float, atol: float, slack: float) -> float:
        """Adaptive solves: neurode's error is at most twice torchdiffeq's, or slack x tolerance.

        Both libraries choose their own steps, so each is only within some multiple of its
        tolerance of ``exact`` (a far tighter solve), and torchdiffeq's multiple can be large
        (bosh3's); a direct bound on |neurode - torchdiffeq| would then measure torchdiffeq's
        error. Returns max |new - ref|.
        """
        new, ref = self._check(what, new, ref)
        scale = atol + rtol * exact.abs().max().item()
        err_n = (new - exact).abs().max().item()
        err_t = (ref - exact).abs().max().item()
        biggest = (new - ref).abs().max().item()
        note = f"error/tol: neurode {err_n / scale:.2g}, torchdiffeq {err_t / scale:.2g}"
        REPORT.append((self.test_id, what + " vs exact", biggest, biggest / scale, note))
        assert err_n <= max(2 * err_t, slack * scale), (
            f"{what}: neurode's error {err_n:.3g} > max(2 x torchdiffeq's {err_t:.3g}, "
            f"{slack:g} x (atol={atol:g} + rtol={rtol:g} max|y|))")
        return biggest

    @staticmethod
    def _check(what: str, new: torch.Tensor, ref: torch.Tensor):
        assert new.shape == ref.shape, (what, new.shape, ref.shape)
        assert new.dtype == ref.dtype, (what, new.dtype, ref.dtype)
        assert torch.isfinite(new).all(), f"{what}: neurode gave non-finite values"
        return new.detach(), ref.detach()


def _need_torchdiffeq():
    if torchdiffeq is None:
        pytest.skip("torchdiffeq is not installed")


@pytest.fixture
def twice(request) -> Twice:
    _need_torchdiffeq()
    return Twice(request.node.nodeid.split("::", 1)[-1])


@pytest.fixture
def shim():
    """:func:`neurode_in_place_of_torchdiffeq`, for the tests of the shim itself."""
    _need_torchdiffeq()
    return neurode_in_place_of_torchdiffeq


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_terminal_summary(terminalreporter):
    if os.environ.get("NEURODE_CLIENT_REPORT") != "1" or not REPORT:
        return
    terminalreporter.section("neurode vs torchdiffeq in client libraries")
    width = max(len(f"{t}  {w}") for t, w, *_ in REPORT)
    terminalreporter.write_line(f"{'test  quantity':<{width}}  max|N-T|  N-T/tol")
    for test_id, what, biggest, ratio, note in REPORT:
        terminalreporter.write_line(
            f"{test_id + '  ' + what:<{width}}  {biggest:8.1e}  {ratio:7.1e}  {note}")
