"""The shim of conftest.py itself: it makes a client call neurode, proves it, and undoes it.

Fake client modules stand for the two ways clients bind torchdiffeq (``import torchdiffeq``, as
torchcde does, and ``from torchdiffeq import odeint``, as flow_matching does) and for the ways
the shim must refuse: a reference it cannot see (which would run torchdiffeq twice), a private
name, a private submodule imported at call time.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

import neurode

torchdiffeq = pytest.importorskip("torchdiffeq")

T = torch.tensor([0.0, 1.0], dtype=torch.float64)
Y0 = torch.tensor([1.0, 2.0], dtype=torch.float64)


def decay(t, y):
    return -y


def fake_client(monkeypatch, name: str, source: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(source, module.__dict__)  # the module's globals bind as an import would
    monkeypatch.setitem(sys.modules, name, module)
    return module


def test_rebinds_module_and_from_imports_then_restores(twice, monkeypatch):
    a = fake_client(monkeypatch, "_fake_client_a",
                    "import torchdiffeq\ndef solve(f, y, t): return torchdiffeq.odeint(f, y, t)")
    b = fake_client(monkeypatch, "_fake_client_a.sub",
                    "from torchdiffeq import odeint_adjoint as oa\n"
                    "def solve(f, y, t): return oa(f, y, t, adjoint_params=())")
    real_odeint = neurode.odeint

    def fn():
        return a.solve(decay, Y0, T), b.solve(decay, Y0, T)

    ref, new = twice.run(fn, "_fake_client_a")
    assert twice.neurode_calls == {"odeint": 1, "odeint_adjoint": 1}
    assert twice.rebound == {"_fake_client_a.torchdiffeq", "_fake_client_a.sub.oa"}
    for n, r in zip(new, ref, strict=True):
        assert torch.allclose(n, r, rtol=1e-6, atol=1e-8)
    assert a.torchdiffeq is torchdiffeq and b.oa is torchdiffeq.odeint_adjoint
    assert sys.modules["torchdiffeq"] is torchdiffeq and neurode.odeint is real_odeint
    assert "torchdiffeq._impl" in sys.modules and sys.modules["torchdiffeq._impl"] is not None


def test_a_hidden_reference_to_torchdiffeq_fails_the_run(twice, monkeypatch):
    # A solver kept where the shim cannot rebind it (a default argument) would run torchdiffeq
    # in both runs: the solve counter catches it.
    c = fake_client(monkeypatch, "_fake_client_c",
                    "import torchdiffeq\n"
                    "def solve(f, y, t, _odeint=torchdiffeq.odeint): return _odeint(f, y, t)")
    with pytest.raises(AssertionError, match=r"the neurode run made 1 torchdiffeq solve"):
        twice.run(lambda: c.solve(decay, Y0, T), "_fake_client_c")


def test_a_private_name_is_refused(shim, monkeypatch):
    fake_client(monkeypatch, "_fake_client_d", "from torchdiffeq._impl.misc import _check_inputs")
    with pytest.raises(RuntimeError, match=r"_fake_client_d._check_inputs is bound to torchdiffeq"
                                           r"'s private torchdiffeq._impl.misc._check_inputs"), \
            shim("_fake_client_d"):
        pass


def test_a_private_submodule_imported_at_call_time_fails(shim, monkeypatch):
    e = fake_client(monkeypatch, "_fake_client_e",
                    "import torchdiffeq\n"
                    "def solve():\n"
                    "    from torchdiffeq._impl.odeint import SOLVERS\n"
                    "    return SOLVERS")
    with shim("_fake_client_e"), pytest.raises(ImportError):
        e.solve()
    assert e.solve() is sys.modules["torchdiffeq._impl.odeint"].SOLVERS
