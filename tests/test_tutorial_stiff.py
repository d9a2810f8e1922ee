"""The stiff-problems tutorial (docs/tutorials/stiff.md): examples/stiff.py measures what the
page claims."""

from __future__ import annotations

import pytest
from example_scripts import load_example

pytest.importorskip("scipy")  # the reference solution



def test_dopri5_is_stability_limited_and_radau_is_not():
    cap = 1000
    r = load_example("stiff").main(["--problem", "robertson", "--cap", str(cap), "--span", "0.5"])
    # dopri5's real stability interval, from its tableau (Hairer & Wanner: about 3.3)
    assert r["dopri5 boundary"] == pytest.approx(3.3066, abs=1e-3)
    # its accepted steps sit on that boundary, and a 1000x tighter tolerance barely adds steps
    for rtol in ("0.001", "1e-06"):
        assert r[f"robertson h|lambda| rtol={rtol}"] == pytest.approx(r["dopri5 boundary"],
                                                                      rel=0.1)
    loose, tight = r["robertson dopri5 steps rtol=0.001"], r["robertson dopri5 steps rtol=1e-06"]
    assert abs(loose - tight) < 0.2 * loose
    # over the whole span dopri5 runs into its cap long before t = 1e5 ...
    assert r["robertson dopri5 steps"] == cap and r["robertson dopri5 t reached"] < 10.0
    # ... while radau and auto finish in a few hundred steps, within tolerance of SciPy's Radau
    for method in ("radau", "auto"):
        assert r[f"robertson {method} t reached"] == pytest.approx(1e5)
        assert r[f"robertson {method} steps"] < cap / 4
        assert r[f"robertson {method} err/tol"] < 1.0
    assert r["robertson radau n_jac"] > 0
    assert r["robertson auto switches"] >= 1  # explicit through the transient, then Radau
