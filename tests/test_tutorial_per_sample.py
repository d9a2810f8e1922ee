"""The per-sample tutorial (docs/tutorials/per-sample.md): examples/per_sample.py measures what
the page claims."""

from __future__ import annotations

from example_scripts import load_example


def test_per_sample_steps_do_less_work_and_match_each_sample_alone():
    r = load_example("per_sample").main(["--batch", "8", "--t-end", "4", "--outputs", "9",
                                  "--rtol", "1e-5", "--atol", "1e-7"])
    # the joint solve moves every sample with the hardest one's steps; per sample the easy
    # samples take a handful
    assert r["per-sample work"] < 0.5 * r["joint work"]
    assert r["lowest ω per-sample steps"] < 10 < r["joint steps"]
    assert r["highest ω per-sample steps"] > r["median ω per-sample steps"]
    # each sample's result is that sample solved alone: to the tolerance (a step covers at most
    # 4 outputs per sample by default), to rounding with the window as wide as the outputs
    assert r["alone difference"] < 1e-5
    assert r["alone difference, uncapped"] < 1e-12
    # both are accurate against cos(ωt) (16 periods of the fastest at rtol 1e-5)
    assert r["per-sample max error"] < 1e-3 and r["joint max error"] < 1e-3
    assert r["lowest ω per-sample error"] < 1e-6
    # dx(T)/dω through the per-sample adjoint against -T sin(ωT)
    assert r["gradient error"] < 1e-3
