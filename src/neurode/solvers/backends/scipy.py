"""``method="scipy_solver"``: any ``scipy.integrate`` solver behind neurode's front door.

``options={"solver": "LSODA" | "BDF" | "Radau" | "RK45" | "DOP853" | "RK23"}`` (default
``"LSODA"``), with ``rtol``/``atol`` and the options ``first_step``, ``min_step`` (LSODA only),
``max_step`` and ``max_num_steps``. The solve runs in float64 (complex128 for complex states) on
the host, outside autograd: there is no gradient through it, but it serves as the backward solver
of [`neurode.odeint_adjoint`][] (``adjoint_method="scipy_solver"``), whose vector field computes
its VJPs itself. Events are located on SciPy's dense output with neurode's own root finder.
SciPy is an optional dependency (``pip install neurode[scipy]``).
"""

from __future__ import annotations

import warnings

import torch

from neurode.errors import InvalidInputError, Status
from neurode.solvers.loops.common import LoopResult
from neurode.solvers.loops.events import EventWatcher
from neurode.solvers.problem import Problem

__all__ = ["run_scipy"]

_I64 = torch.int64


def run_scipy(pb: Problem, *, record: str | None = None, event_fn=None) -> LoopResult:
    """Solve ``pb`` with the SciPy solver its options name; see the module docstring."""
    try:
        import numpy as np
        from scipy import integrate
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise InvalidInputError(
            "method 'scipy_solver' needs SciPy: pip install scipy (or neurode[scipy])") from e
    if record is not None:
        raise InvalidInputError("method 'scipy_solver' has no dense output or step record inside "
                                "neurode; ask for the times you need in t")
    if pb.per_sample:
        raise InvalidInputError("method 'scipy_solver' solves joint problems only")
    o = pb.opts.scipy
    if not isinstance(pb.rtol, float) or not isinstance(pb.atol, float):
        raise InvalidInputError("method 'scipy_solver' takes scalar rtol and atol")
    if pb.callbacks is not None:
        warnings.warn("method 'scipy_solver' does not call step callbacks (SciPy takes the "
                      "steps); they will never be called", UserWarning, stacklevel=4)
    kw: dict = {}
    if o.first_step is not None:
        kw["first_step"] = o.first_step
    if o.max_step is not None:
        kw["max_step"] = o.max_step
    if o.min_step is not None:
        if o.solver != "LSODA":
            raise InvalidInputError(
                f"options['min_step'] is honoured by solver 'LSODA' only, not {o.solver!r}")
        kw["min_step"] = o.min_step
    y0 = pb.y0
    dev = y0.device
    complex_state = y0.is_complex()
    if complex_state and o.solver == "LSODA":
        raise InvalidInputError("solver 'LSODA' does not take complex states; use 'BDF', "
                                "'Radau' or 'RK45'")
    wdtype = torch.complex128 if complex_state else torch.float64
    if torch.is_grad_enabled() and y0.requires_grad:
        warnings.warn("method 'scipy_solver' runs outside autograd: its outputs carry no "
                      "gradient. Use odeint_adjoint(..., adjoint_method='scipy_solver') for "
                      "gradients with a SciPy backward solve, or a torch method.", stacklevel=4)
    t_out = list(pb.t_out)
    ys = [y0[0].detach()]
    nfe0 = pb.field.nfe
    watch = None if event_fn is None else EventWatcher(pb, event_fn)

    def fun(s, y):
        yt = torch.from_numpy(np.asarray(y)).to(device=dev, dtype=y0.dtype).reshape(1, -1)
        with torch.no_grad():
            out = pb.field(pb.user_time(float(s)), yt)
        out = pb.sign * out.detach().to(wdtype).reshape(-1)
        return out.cpu().numpy()

    def to_state(y):
        return torch.from_numpy(np.array(y)).to(device=dev, dtype=y0.dtype)

    status, t_reached, n_steps, event = Status.SUCCESS, t_out[0], 0, None
    message = None
    # an event search runs on [t0, ∞) unless the problem has an end (hybrid segments)
    bounded = watch is None or len(t_out) > 1
    end = t_out[-1] if bounded else 1e300
    if len(t_out) > 1 or watch is not None:
        y_np = y0.detach().to(wdtype).reshape(-1).cpu().numpy()
        ode = getattr(integrate, o.solver)(fun, t_out[0], y_np, end,
                                           rtol=pb.rtol, atol=pb.atol, **kw)
        i_out = 1
        while i_out < len(t_out) or watch is not None:
            if n_steps >= o.max_num_steps:
                status, t_reached = Status.MAX_STEPS, ode.t
                break
            t_prev = ode.t
            msg = ode.step()
            n_steps += 1
            if ode.status == "failed":
                status, t_reached = Status.EXTERNAL_FAILED, t_prev
                message = f"scipy solver {o.solver!r} failed at t={pb.sign * t_prev:.6g}: {msg}"
                break
            t_reached = ode.t
            # SciPy's solvers can creep towards a singularity for ever: a step below the time
            # resolution, or a non-finite state, ends the solve here
            if not np.isfinite(ode.y).all():
                status, t_reached = Status.NON_FINITE, t_prev
                break
            if abs(ode.t - t_prev) <= 8 * 2.220446049250313e-16 * max(1.0, abs(t_prev)):
                status, t_reached = Status.STEP_SIZE_TOO_SMALL, t_prev
                message = (f"step size underflow in scipy solver {o.solver!r} at "
                           f"t={pb.sign * t_prev:.6g}: the problem may be stiff or singular there")
                break
            dense = None
            if watch is not None:
                dense = ode.dense_output()
                g1 = watch.values([(ode.t, to_state(ode.y).reshape(1, -1))])[0]
                s_ev = watch.locate(t_prev, ode.t - t_prev, g1,
                                    lambda s, d=dense: to_state(d(s)).reshape(1, -1))
                if s_ev is not None:
                    event = (s_ev, to_state(dense(s_ev)).reshape(1, -1), None)
                    break
                if ode.status == "finished":
                    break
                continue
            if t_out[i_out] <= ode.t:
                dense = ode.dense_output()
                while i_out < len(t_out) and t_out[i_out] <= ode.t:
                    ys.append(to_state(ode.y if t_out[i_out] == ode.t else dense(t_out[i_out])))
                    i_out += 1
            if ode.status == "finished" and i_out < len(t_out):
                break
        nfe = int(ode.nfev)
        n_jac, n_lu = int(ode.njev), int(ode.nlu)
    else:
        nfe = n_jac = n_lu = 0
    T = len(t_out)
    if watch is None and len(ys) < T:
        ys = ys + [torch.full_like(ys[0], float("nan"))] * (T - len(ys))
    res = LoopResult(
        ys=torch.stack(ys).unsqueeze(1),
        status=torch.full((1,), int(status), dtype=_I64, device=dev),
        t_final=torch.full((1,), float(t_reached), dtype=torch.float64, device=dev),
        n_steps=torch.full((1,), n_steps, dtype=_I64, device=dev),
        n_accepted=torch.full((1,), n_steps, dtype=_I64, device=dev),
        nfe=max(nfe, pb.field.nfe - nfe0), n_jac=n_jac, n_lu=n_lu, event=event,
        fail_dt=torch.zeros(1, dtype=torch.float64, device=dev))
    if message is not None:
        res.extra["message"] = message
    return res
