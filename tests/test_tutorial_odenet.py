"""The ODE-Net vs ResNet vs RK-Net tutorial (docs/tutorials/odenet.md) and its script."""

from __future__ import annotations

import pytest
from example_scripts import load_example

pytest.importorskip("sklearn")  # the bundled digits ship with scikit-learn



def _parameters(kind: str, d: int) -> int:
    """The architecture's parameter count, by hand: stem (conv 3×3, norm, conv 4×4 stride 2) and
    head (norm, linear to 10) shared; six residual blocks of two (norm + conv 3×3) each, or one
    field of three norms and two 3×3 convolutions with a time channel."""
    shared = (9 * d + d) + 2 * d + (16 * d * d + d) + 2 * d + (10 * d + 10)
    if kind == "resnet":
        return shared + 6 * 2 * (2 * d + 9 * d * d + d)
    return shared + 3 * 2 * d + 2 * (9 * (d + 1) * d + d)


def test_untrained_models_counts_memory_and_evaluations():
    res = load_example("odenet_vs_resnet").main(["--steps", "0"])
    for kind in ("ode", "resnet", "rknet"):
        assert res[f"{kind}_parameters"] == _parameters(kind, 32)
        assert res[f"{kind}_accuracy"] < 0.3  # untrained: near chance (0.1)
    # the numbers the page quotes (dim 32)
    assert res["ode_parameters"] == res["rknet_parameters"] == 36_458
    assert res["resnet_parameters"] == 128_938
    # RK-Net: four rk4 steps of four stages; ODE-Net: the adaptive solver chooses
    assert res["rknet_nfe_test"] == 16
    assert res["ode_nfe_test"] >= 8
    # the adjoint saves the block's input and output only; RK-Net every stage of every step
    assert res["ode_saved_mb"] < res["resnet_saved_mb"] < res["rknet_saved_mb"]
    assert res["ode_saved_mb"] < res["rknet_saved_mb"] / 5


@pytest.mark.parametrize("kind", ["ode", "resnet", "rknet"])
def test_each_model_learns_digits_in_a_tiny_budget(kind):
    res = load_example("odenet_vs_resnet").main(["--models", kind, "--steps", "40", "--dim", "16",
                                          "--lr", "1e-2"])
    assert res[f"{kind}_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert res[f"{kind}_parameters"] == _parameters(kind, 16)
    if kind == "ode":
        assert res["ode_nfe_forward"] > 0 and res["ode_nfe_backward"] > 0
