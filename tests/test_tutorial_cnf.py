"""The CNF tutorial (docs/tutorials/cnf.md): examples/cnf.py trains a flow both ways."""

from __future__ import annotations

import pytest
from example_scripts import load_example


def test_both_objectives_learn_a_normalised_density():
    res = load_example("cnf").main(["--ml-iters", "20", "--fm-iters", "300", "--batch", "128",
                        "--n-test", "300", "--grid", "60", "--rtol", "1e-3", "--atol", "1e-3"])
    # the log-density of a linear flow matches its closed form log N(exp(-A) x) - tr A
    assert res["linear_logp_error"] < 1e-6
    # moons under the untrained flow: ≈ 3.5 nats; both objectives bring the test NLL down
    # (maximum likelihood ≈ 3.2 after 20 steps, flow matching ≈ 2.8 after 300)
    assert res["nll_ml"] < res["nll_init"] - 0.2
    assert res["nll_fm"] < res["nll_init"] - 0.4
    # a density: exp(log p) sums to 1 over [-5, 5]² (the untrained flow, a near-Gaussian, too)
    for key in ("mass_init", "mass_ml", "mass_fm"):
        assert res[key] == pytest.approx(1.0, abs=0.02), key
    # Hutchinson's trace estimate is unbiased: its NLL agrees with the exact trace's
    assert res["nll_ml_hutchinson"] == pytest.approx(res["nll_ml"], abs=0.05)
    assert res["hutchinson_spread"] > 0  # ... and per point it is noisy
    assert res["nfe_density_ml"] > 0 and res["nfe_sample_fm"] > 0
