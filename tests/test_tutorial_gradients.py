"""The gradients tutorial (docs/tutorials/gradients.md) and its script examples/gradients.py."""

from __future__ import annotations

import itertools
import math

import pytest
from example_scripts import load_example


@pytest.fixture(scope="module")
def res():
    return load_example("gradients").main(["--rev-step", "1e-2", "--steps", "10", "20", "40", "80"])


def test_four_methods_against_the_exact_gradient_of_a_linear_ode(res):
    # dopri5 at rtol = atol = 1e-8: the gradient of the continuous problem to about the tolerance
    for m in ("backprop", "adjoint", "checkpoint"):
        assert res[f"linear_{m}"] < 1e-7, m
    # ALF is second order: at step 1e-2 the gradient is off by O(h²)
    assert 1e-7 < res["linear_reversible"] < 1e-4
    # checkpoint and reversible are exact for their discrete solves
    assert res["linear_checkpoint_vs_backprop"] < 1e-12
    assert res["linear_reversible_vs_alf_backprop"] < 1e-12


def test_gradient_error_follows_the_tolerance(res):
    tols = (1e-4, 1e-6, 1e-8, 1e-10)
    for kind in ("backprop", "adjoint", "adjoint_bwd"):
        errs = [res[f"sweep_{kind}_{k}"] for k in range(4)]
        assert all(e < 10 * tol for e, tol in zip(errs, tols, strict=True)), (kind, errs)
        assert all(a > 10 * b for a, b in itertools.pairwise(errs)), (kind, errs)
    # a forward solve at 1e-10 does not help a backward solve at 1e-4
    assert res["sweep_adjoint_bwd_0"] > 1e3 * res["sweep_adjoint_3"]


def test_adjoint_reconstruction_fails_on_a_decaying_mode_unless_observed_in_between(res):
    assert res["recon_adjoint_ends"] > 30 * res["recon_backprop_ends"]
    assert res["recon_adjoint_every"] < res["recon_adjoint_ends"] / 10
    assert res["recon_backprop_ends"] < 1e-4 and res["recon_backprop_every"] < 1e-4


def test_mlp_field_gradients_agree(res):
    for m in ("backprop", "adjoint", "adjoint_seminorm", "checkpoint"):
        assert res[f"mlp_{m}"] < 1e-6, m
    assert res["mlp_reversible"] < 1e-4
    assert res["mlp_checkpoint_vs_backprop"] < 1e-12
    assert res["mlp_reversible_vs_alf_backprop"] < 1e-12
    assert res["mlp_adjoint_seminorm_nfe_bwd"] <= res["mlp_adjoint_nfe_bwd"]


def test_saved_memory_grows_with_steps_for_backprop_only(res):
    # 10 -> 80 steps: backprop keeps every stage's activations, 8x the bytes
    assert res["mem_backprop_last"] / res["mem_backprop_first"] == pytest.approx(8, rel=0.05)
    assert res["mem_backprop_first"] > 10 * res["mem_adjoint_first"]
    for m in ("adjoint", "checkpoint", "reversible"):
        assert res[f"mem_{m}_last"] == res[f"mem_{m}_first"], m


def test_alf_needs_damping_on_a_dissipative_field(res):
    exact = math.exp(-24)
    assert res["alf_eta_0.9"] == pytest.approx(exact, rel=0.05)
    assert abs(res["alf_eta_1.0"]) > 1e6 * exact  # the parasitic mode grows like exp(6 t)
    # adaptive ALF shrinks its steps against that mode instead: stuck short of t = 4
    assert res["alf_adaptive_status"] == -1 and res["alf_adaptive_t_reached"] < 2.0
