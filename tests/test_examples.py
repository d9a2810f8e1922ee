"""The scripts in examples/ run and reach the accuracy their docstrings promise."""

from __future__ import annotations

import subprocess
import sys

import pytest
from example_scripts import EXAMPLES, load_example


def test_first_order():
    err = load_example("first_order").main()
    # rk4 is exact at its steps; between them, linear interpolation of t²/2 on a 0.25 grid is
    # off by (t - a)(b - t)/2, largest at the outputs t = 0.4, 1.4: 0.15 · 0.1 / 2
    assert err["dz/dt=t rk4"] == pytest.approx(0.0075, abs=1e-12)
    assert err["dz/dt=t rk4 cubic"] < 1e-13 and err["dz/dt=t dopri5"] < 1e-13
    assert err["decay dopri5"] < 1e-8 and err["decay rk4"] < 5e-6
    assert err["decay backwards dopri5"] < 1e-6  # exp(6) growth of a 1e-8 relative error


def test_harmonic_oscillator():
    err = load_example("harmonic_oscillator").main([])
    assert err["position error"] < 1e-9
    assert err["d/domega backprop"] < 1e-8 and err["d/domega adjoint"] < 1e-8
    assert err["energy drift"] < 1e-8


def test_jvp_vjp():
    err = load_example("jvp_vjp").main()
    assert err["jvp"] < 1e-9 and err["vjp backprop"] < 1e-9 and err["vjp adjoint"] < 1e-9
    assert err["dot product"] < 1e-10
    assert err["parameter jvp"] < 1e-6  # central difference, eps = 1e-5


def test_odeblock_in_a_network():
    res = load_example("odeblock_in_a_network").main(["--steps", "60"])
    assert res["accuracy"] > 0.95
    assert res["nfe_forward"] > 0 and res["nfe_backward"] > 0


def test_thermostat_fits_the_heater_power_from_switching_times():
    res = load_example("thermostat").main(["--iters", "30"])
    assert res["switches"] >= 10
    assert abs(res["power"] - 8.0) < 0.1


def test_bouncing_ball_learns_restitution_in_one_solve_per_iteration():
    res = load_example("bouncing_ball").main(["--bounces", "6", "--iters", "40"])
    assert abs(res["e"] - 0.8) < 0.02


@pytest.mark.parametrize("script,args,expect", [
    ("spiral.py", [], "max |z(t) - exp(At) z0|"),
    # methods without a step size (they once got one passed and crashed)
    ("spiral.py", ["--method", "radau"], "max |z(t) - exp(At) z0|"),
    ("spiral.py", ["--method", "scipy_solver"], "max |z(t) - exp(At) z0|"),
    ("bouncing_ball.py", ["--iters", "30"], "learned e"),
])
def test_scripts_run(script, args, expect):
    out = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert expect in out.stdout
