"""``method="scipy_solver"``: any ``scipy.integrate.solve_ivp`` method behind neurode's front door.

``options={"solver": "LSODA" | "BDF" | "Radau" | "RK45" | "DOP853" | "RK23"}`` (default
``"LSODA"``), with ``rtol``/``atol`` and the options ``first_step``, ``min_step`` (LSODA only),
``max_step`` and ``max_num_steps`` honoured. The solve runs in float64 (complex128 for complex
states) on the host, outside autograd: there is no gradient through it, but it serves as the
backward solver of :func:`neurode.odeint_adjoint` (``adjoint_method="scipy_solver"``), whose
vector field computes its VJPs itself. SciPy is an optional dependency (``pip install
neurode[scipy]``).
"""

from __future__ import annotations

import warnings

import torch

from neurode.errors import InvalidInputError, MaxStepsReachedError, SolverError
from neurode.solvers.adaptive import LoopResult
from neurode.solvers.problem import Problem
from neurode.solvers.registry import MethodSpec, register_method

__all__ = ["SCIPY_OPTIONS", "SCIPY_SOLVERS"]

SCIPY_SOLVERS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")
SCIPY_OPTIONS = frozenset({"solver", "first_step", "min_step", "max_step", "max_num_steps",
                           "dtype"})


def _run(pb: Problem, record_dense: bool) -> LoopResult:
    try:
        import numpy as np
        from scipy import integrate
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise InvalidInputError(
            "method 'scipy_solver' needs SciPy: pip install scipy (or neurode[scipy])") from e
    if record_dense:
        raise InvalidInputError("method 'scipy_solver' has no dense output inside neurode; "
                                "ask for the times you need in t")
    o = pb.options
    solver = o.get("solver", "LSODA")
    if solver not in SCIPY_SOLVERS:
        raise InvalidInputError(
            f"options['solver'] must be one of {', '.join(SCIPY_SOLVERS)}, got {solver!r}")
    if not isinstance(pb.rtol, float) or not isinstance(pb.atol, float):
        raise InvalidInputError("method 'scipy_solver' takes scalar rtol and atol")
    kw: dict = {}
    if o.get("first_step") is not None:
        kw["first_step"] = abs(float(o["first_step"]))
    if o.get("max_step") is not None:
        kw["max_step"] = abs(float(o["max_step"]))
    if o.get("min_step") is not None:
        if solver != "LSODA":
            raise InvalidInputError(
                f"options['min_step'] is honoured by solver 'LSODA' only, not {solver!r}")
        kw["min_step"] = abs(float(o["min_step"]))
    max_steps = int(o.get("max_num_steps", 2**31 - 1))

    y0 = pb.y0
    complex_state = y0.is_complex()
    if complex_state and solver == "LSODA":
        raise InvalidInputError("solver 'LSODA' does not take complex states; use 'BDF', "
                                "'Radau' or 'RK45'")
    wdtype = torch.complex128 if complex_state else torch.float64
    if torch.is_grad_enabled() and y0.requires_grad:
        warnings.warn("method 'scipy_solver' runs outside autograd: its outputs carry no "
                      "gradient. Use odeint_adjoint(..., adjoint_method='scipy_solver') for "
                      "gradients with a SciPy backward solve, or a torch method.", stacklevel=4)
    res = LoopResult(ys=[y0.detach()], t_final=pb.t_out[0])
    t_out = pb.t_out
    if len(t_out) == 1:
        return res

    def fun(s, y):
        yt = torch.from_numpy(np.asarray(y)).to(device=y0.device, dtype=y0.dtype)
        with torch.no_grad():
            out = pb.f(float(s), yt.reshape(y0.shape), 0)
        return out.detach().to(wdtype).reshape(-1).cpu().numpy()

    def to_state(y):
        return torch.from_numpy(np.array(y)).to(device=y0.device, dtype=y0.dtype).reshape(
            y0.shape)

    y_np = y0.detach().to(wdtype).reshape(-1).cpu().numpy()
    ode = getattr(integrate, solver)(fun, t_out[0], y_np, t_out[-1], rtol=pb.rtol,
                                     atol=pb.atol, **kw)
    i_out = 1
    n_steps = 0
    while i_out < len(t_out):
        if n_steps >= max_steps:
            res.status = -1
            res.message = (f"max_num_steps={max_steps} reached at t={ode.t * pb.sign:.6g} by "
                           f"scipy solver {solver!r}")
            res.error = MaxStepsReachedError(res.message, t=ode.t * pb.sign)
            break
        t_prev = ode.t
        msg = ode.step()
        n_steps += 1
        if ode.status == "failed":
            res.status = -2
            res.message = f"scipy solver {solver!r} failed at t={t_prev * pb.sign:.6g}: {msg}"
            res.error = SolverError(res.message, t=t_prev * pb.sign)
            break
        if i_out < len(t_out) and t_out[i_out] <= ode.t:
            dense = ode.dense_output()
            while i_out < len(t_out) and t_out[i_out] <= ode.t:
                res.ys.append(to_state(ode.y if t_out[i_out] == ode.t else dense(t_out[i_out])))
                i_out += 1
    res.nfe, res.n_jac, res.n_lu = int(ode.nfev), int(ode.njev), int(ode.nlu)
    res.n_steps = res.n_accepted = n_steps
    res.t_final = float(ode.t)
    return res


register_method(MethodSpec("scipy_solver", "scipy", SCIPY_OPTIONS, runner=_run))
