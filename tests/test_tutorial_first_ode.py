"""The first-ODE tutorial (docs/tutorials/first-ode.md): the script it adds to first_order.py and
harmonic_oscillator.py (both tested in test_examples.py) reaches the accuracy the page quotes."""

from __future__ import annotations

from example_scripts import load_example


def test_tolerances_dense_output_and_tuple_states():
    r = load_example("dense_and_tuples").main([])
    # the global error follows the local tolerance (within a factor 30 either way: errors
    # accumulate over the span) and tighter tolerances cost more evaluations
    for tol in (1e-3, 1e-6, 1e-9, 1e-12):
        assert tol / 30 < r[f"error tol={tol:g}"] < 30 * tol
    assert r["nfe tol=1e-12"] > 10 * r["nfe tol=0.001"]
    # dense output: 1,000 times from a two-point solve, the 4th-order interpolant's accuracy;
    # and output times cost no steps (the same steps, the same values)
    assert r["dense error"] < 1e-6
    assert r["steps with 1000 outputs"] == r["dense steps"] < 200
    assert r["dense vs outputs"] < 1e-12
    assert r["odeint_dense error"] < 1e-6
    # the tuple state: the circular orbit and its action s = t/2
    assert r["orbit error"] < 1e-8 and r["action error"] < 1e-8
