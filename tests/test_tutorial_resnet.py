"""The "A ResNet is Euler's method" tutorial (docs/tutorials/resnet-euler.md) and its script."""

from __future__ import annotations

from example_scripts import load_example


def test_resnet_is_euler():
    res = load_example("resnet_is_euler").main(["--max-blocks", "128", "--resnet-steps", "100",
                                         "--ode-steps", "50"])
    # N shared-weight residual blocks are N Euler steps of size 1/N, to rounding (float64)
    assert res["max_diff_euler"] < 1e-12
    # ... and converge to the flow at order 1 (rk4 on the same grids: order 4)
    assert 0.9 < res["order_euler"] < 1.1
    assert 3.7 < res["order_rk4"] < 4.3
    assert res["error_euler_first"] / res["error_euler_last"] > 25  # N from 4 to 128: 1/N
    # a network trained with the ODE block: its f run as N residual blocks approaches the flow
    assert res["acc_odenet"] > 0.85  # chance: 0.5
    assert res["gap_last"] < res["gap_first"] / 10
    assert 0.8 < res["order_gap"] < 1.2
    assert abs(res["acc_odenet_as_128_blocks"] - res["acc_odenet"]) < 0.03
    assert res["acc_odenet_as_2_blocks"] < res["acc_odenet"] - 0.2
    # the ODE block replaces the stage with the same parameters
    assert res["params_odenet"] == res["params_resnet"]
    # a network trained as 8 residual blocks fits, yet is no discretised flow of its own f
    assert res["acc_resnet"] > 0.9
    assert res["acc_resnet_as_ode"] < res["acc_resnet"] - 0.2
