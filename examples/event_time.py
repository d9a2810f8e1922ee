"""A terminal event and the derivative of its time: when does a thrown ball land?

    python examples/event_time.py [--v0 10] [--drag 0.05]

A ball is thrown straight up at speed ``v0`` from a height of 1 m; the state is
``[height, velocity]`` and the event is the height reaching zero. ``neurode.odeint_event``
(torchdiffeq's signature) integrates until then and returns the event time ``t*`` and the
state there; ``t*`` is differentiable (implicit function theorem).

* Without drag, ``t* = (v0 + sqrt(v0² + 2 g h0)) / g`` and
  ``dt*/dv0 = (1 + v0 / sqrt(v0² + 2 g h0)) / g``: the script compares both, with the gradient
  taken by backprop through the solver and through ``odeint_adjoint``.
* With quadratic air drag ``v' = -g - c v|v|`` there is no closed form: the gradient is
  compared with a central finite difference of the event time.
"""

from __future__ import annotations

import argparse
import math

import torch

import neurode

F64 = torch.float64
G, H0 = 9.81, 1.0


# --8<-- [start:event]
def landing(v0: torch.Tensor, drag: float, adjoint: bool = False):
    """When a ball thrown up at ``v0`` from ``H0`` metres hits the ground, and its velocity
    then (two 0-d tensors)."""
    def ball(t, y):
        velocity = y[1]
        return torch.stack([velocity, -G - drag * velocity * velocity.abs()])

    def ground(t, y):  # the event: the height crosses zero
        return y[0]

    y0 = torch.stack([torch.tensor(H0, dtype=F64), v0])
    t0 = torch.tensor(0.0, dtype=F64)
    # the adjoint needs the tensors func closes over (none here: v0 enters through y0)
    how = {"odeint_interface": neurode.odeint_adjoint, "adjoint_params": ()} if adjoint else {}
    event_t, solution = neurode.odeint_event(ball, y0, t0, event_fn=ground, rtol=1e-10,
                                             atol=1e-10, **how)
    # solution: (2, 2), the state at t0 and at the event (height 0, impact velocity)
    return event_t, solution[-1, 1]
# --8<-- [end:event]


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Compare event times and their gradients with the closed form and finite differences."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--v0", type=float, default=10.0)
    p.add_argument("--drag", type=float, default=0.05, help="quadratic drag coefficient c")
    args = p.parse_args(argv)
    out: dict[str, float] = {}

    # --8<-- [start:check]
    root = math.sqrt(args.v0**2 + 2 * G * H0)
    exact_t, exact_grad = (args.v0 + root) / G, (1 + args.v0 / root) / G
    for name, adjoint in (("backprop", False), ("adjoint", True)):
        v0 = torch.tensor(args.v0, dtype=F64, requires_grad=True)
        t_star, _ = landing(v0, drag=0.0, adjoint=adjoint)
        grad, = torch.autograd.grad(t_star, v0)
        out[f"time error {name}"] = abs(t_star.item() - exact_t)
        out[f"gradient error {name}"] = abs(grad.item() - exact_grad)
        print(f"no drag, {name:8s}: t* = {t_star.item():.10f} (exact {exact_t:.10f}), "
              f"dt*/dv0 = {grad.item():.10f} (exact {exact_grad:.10f})")

    v0 = torch.tensor(args.v0, dtype=F64, requires_grad=True)
    t_star, v_star = landing(v0, drag=args.drag)
    grad, = torch.autograd.grad(t_star, v0)
    eps = 1e-4
    with torch.no_grad():
        fd = (landing(v0 + eps, args.drag)[0] - landing(v0 - eps, args.drag)[0]) / (2 * eps)
    # --8<-- [end:check]
    out["drag gradient error"] = abs(grad.item() - fd.item())
    out["drag time"] = t_star.item()
    print(f"drag c = {args.drag:g}: t* = {t_star.item():.6f} (no drag {exact_t:.6f}), impact "
          f"velocity {v_star.item():.4f} m/s (no drag {-root:.4f}), "
          f"dt*/dv0 = {grad.item():.8f}, central difference {fd.item():.8f}")
    return out


if __name__ == "__main__":
    main()
