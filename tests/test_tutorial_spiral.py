"""The spiral tutorial (docs/tutorials/spiral.md): examples/spiral_fit.py learns the dynamics."""

from __future__ import annotations

import pytest
from example_scripts import load_example


def test_fitted_field_reproduces_the_trajectory():
    res = load_example("spiral_fit").main(["--iters", "200"])
    # the data: the true ODE solved with dopri8 at 1e-12 agrees with the closed form
    assert res["reference_error"] < 1e-9
    # rolled out from z(0) alone over the observed span, the learned ODE is far closer to the
    # truth than the untrained one (1.53 → 0.33 after 200 iterations)
    assert res["error"] < 0.3 * res["error_untrained"]
    assert res["future_error"] < 0.3 * res["future_error_untrained"]
    assert res["loss_last"] < 0.02 * res["loss_first"]  # 0.089 -> 0.0012


def test_adjoint_trains_like_backprop():
    # the adjoint gradient equals backprop's to the solver tolerance: the same ten Adam steps
    m = load_example("spiral_fit")
    back = m.main(["--iters", "10"])
    adj = m.main(["--iters", "10", "--adjoint"])
    assert adj["loss_final"] == pytest.approx(back["loss_final"], rel=1e-4)
    assert adj["error"] == pytest.approx(back["error"], rel=1e-3)
    assert adj["loss_final"] < 0.5 * adj["loss_first"]
