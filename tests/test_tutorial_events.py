"""The events tutorial (docs/tutorials/events.md): the odeint_event script it adds to
bouncing_ball.py and thermostat.py (both tested in test_examples.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_event_time_and_its_gradient_by_the_implicit_function_theorem():
    r = _load("event_time").main([])
    for how in ("backprop", "adjoint"):  # against the closed form
        assert r[f"time error {how}"] < 1e-9
        assert r[f"gradient error {how}"] < 1e-8
    assert r["drag gradient error"] < 1e-6  # against a central difference (eps = 1e-4)
    assert 1.5 < r["drag time"] < 2.1       # drag brings the ball down sooner
