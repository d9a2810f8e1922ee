"""The events tutorial (docs/tutorials/events.md): the odeint_event script it adds to
bouncing_ball.py and thermostat.py (both tested in test_examples.py)."""

from __future__ import annotations

from example_scripts import load_example


def test_event_time_and_its_gradient_by_the_implicit_function_theorem():
    r = load_example("event_time").main([])
    for how in ("backprop", "adjoint"):  # against the closed form
        assert r[f"time error {how}"] < 1e-9
        assert r[f"gradient error {how}"] < 1e-8
    assert r["drag gradient error"] < 1e-6  # against a central difference (eps = 1e-4)
    assert 1.5 < r["drag time"] < 2.1       # drag brings the ball down sooner
