"""The latent-ODE tutorial (docs/tutorials/latent-ode.md): examples/latent_ode.py trains."""

from __future__ import annotations

from example_scripts import load_example


def test_elbo_and_reconstruction_improve_on_irregular_series():
    res = load_example("latent_ode").main(["--iters", "60", "--lr", "2e-2", "--n-series", "64",
                                           "--n-test", "16"])
    # untrained, the decoder misses by the signal's whole scale (-ELBO/obs ≈ 136 on these 16
    # series, obs_std 0.05); sixty steps more than halve it (≈ 55), and the reconstruction
    # error falls well below the signal variance (≈ 0.55, what predicting zero scores)
    assert res["neg_elbo"] < 0.5 * res["neg_elbo_before"]
    assert res["recon_mse"] < 0.6 * res["recon_mse_before"]
    # every series has its own times; solved in a batch each gets its prediction alone
    assert res["batch_vs_alone"] < 1e-9


def test_adjoint_decoder_trains():
    res = load_example("latent_ode").main(["--iters", "10", "--gradient", "adjoint",
                                           "--n-series", "64", "--n-test", "16"])
    assert res["neg_elbo"] < 0.8 * res["neg_elbo_before"]
