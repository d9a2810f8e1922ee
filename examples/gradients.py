"""Gradients through an ODE solve: backprop, adjoint, checkpointed adjoint, reversible (ALF).

    python examples/gradients.py [--rev-step 1e-3] [--steps 50 100 200 400]

Four parts, float64 throughout:

1. A linear ODE ``dz/dt = A z`` observed at five times, loss ``½ Σ_i ‖z(t_i) − y_i‖²``. Its exact
   gradient comes from ``z(t) = exp(tA) z0`` by autograd through ``torch.linalg.matrix_exp``.
   The four gradient methods against it, and how the error of backprop and of the adjoint follows
   the tolerance (the adjoint's: that of its backward solve).
2. The adjoint's reconstructed trajectory: with a fast decaying mode (eigenvalue −6) and only the
   final state observed, solving ``z`` backwards from ``z(T)`` amplifies its errors like
   ``e^{6T}``; observing intermediate times resets ``z`` and cures it.
3. A small tanh MLP field: the four methods against backprop through dopri8 at 1e-12; the
   checkpointed adjoint equals backprop through the same solve, the reversible gradient equals
   backprop through ``method="alf"``, to rounding; the adjoint's seminorm option.
4. Memory: the bytes autograd saves for the backward pass (``saved_tensors_hooks``) on a fixed
   rk4 grid of 50…400 steps: backprop grows linearly, the adjoint and the reversible method stay
   flat (the checkpointed adjoint keeps one state per step outside autograd).

Prints one report per part; ``main`` returns the measured errors, NFE counts and byte counts.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

import neurode

F64 = torch.float64


# --8<-- [start:linear]
class Linear:
    """``dz/dt = A z`` for a batch ``z`` of shape ``(B, n)``; counts its evaluations."""

    def __init__(self, A: torch.Tensor):
        self.A, self.nfe = A, 0

    def __call__(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return z @ self.A.T
# --8<-- [end:linear]


def flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def rel(g: torch.Tensor, ref: torch.Tensor) -> float:
    return float((g - ref).norm() / ref.norm())


# --- 1. a linear ODE with an exact gradient -----------------------------------------------------


def part_linear(rev_step: float) -> dict[str, float]:
    torch.manual_seed(0)
    # --8<-- [start:problem]
    A0 = 0.5 * torch.randn(4, 4, dtype=F64)              # eigenvalues -1.45 ... 0.60
    z0 = torch.randn(8, 4, dtype=F64)                    # a batch of 8 initial states
    t = torch.linspace(0.0, 2.0, 5, dtype=F64)           # observed at 0, 0.5, ..., 2
    y = torch.randn(5, 8, 4, dtype=F64)                  # targets

    def loss(zs: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((zs - y) ** 2).sum()
    # --8<-- [end:problem]

    # --8<-- [start:exact]
    A = A0.clone().requires_grad_(True)
    z = z0.clone().requires_grad_(True)
    zs = torch.stack([z @ torch.linalg.matrix_exp(ti * A).T for ti in t])   # z(t) = exp(tA) z0
    exact = flat(torch.autograd.grad(loss(zs), (A, z)))                     # dL/dA, dL/dz0
    # --8<-- [end:exact]

    # --8<-- [start:methods]
    def gradient(solve, **kw) -> tuple[torch.Tensor, int, int]:
        """dL/dA and dL/dz0 through ``solve``; its forward and backward evaluations."""
        A = A0.clone().requires_grad_(True)
        z = z0.clone().requires_grad_(True)
        f = Linear(A)                       # not an nn.Module: name the parameters
        params = {} if solve is neurode.odeint else {"adjoint_params": (A,)}
        L = loss(solve(f, z, t, **params, **kw))
        nfe_forward = f.nfe
        g = flat(torch.autograd.grad(L, (A, z)))
        return g, nfe_forward, f.nfe - nfe_forward

    tol = {"rtol": 1e-8, "atol": 1e-8}
    alf = {"options": {"step_size": rev_step}}
    runs = {
        "backprop": gradient(neurode.odeint, **tol),
        "adjoint": gradient(neurode.odeint_adjoint, **tol),
        "checkpoint": gradient(neurode.odeint_checkpoint, **tol),
        "reversible": gradient(neurode.odeint_reversible, **alf),
    }
    # --8<-- [end:methods]
    res = {}
    print("1. dz/dt = A z, five observation times: error of dL/d(A, z0) against exp(tA)")
    print("   method       settings                 rel. error   NFE fwd   NFE bwd")
    for name, (g, nf, nb) in runs.items():
        setting = f"alf, step {rev_step:g}" if name == "reversible" else "dopri5, rtol=atol=1e-8"
        res[f"linear_{name}"] = rel(g, exact)
        print(f"   {name:11s}  {setting:23s}  {res[f'linear_{name}']:10.1e}   {nf:7d}   {nb:7d}")
    # the two "exact for the discrete solve" methods against backprop through the same steps
    res["linear_checkpoint_vs_backprop"] = rel(runs["checkpoint"][0], runs["backprop"][0])
    alf_bp = gradient(neurode.odeint, method="alf", **alf)[0]
    res["linear_reversible_vs_alf_backprop"] = rel(runs["reversible"][0], alf_bp)
    print(f"   checkpoint vs backprop through the same dopri5 steps: "
          f"{res['linear_checkpoint_vs_backprop']:.1e}")
    print(f"   reversible vs backprop through odeint(method='alf'):  "
          f"{res['linear_reversible_vs_alf_backprop']:.1e}")

    print("   tolerance sweep (rel. error against the exact gradient):")
    print("      tol   backprop    adjoint   adjoint, forward at 1e-10   adjoint NFE bwd")
    for k, tl in enumerate((1e-4, 1e-6, 1e-8, 1e-10)):
        bp = rel(gradient(neurode.odeint, rtol=tl, atol=tl)[0], exact)
        adj, _, nb = gradient(neurode.odeint_adjoint, rtol=tl, atol=tl)
        # --8<-- [start:adjoint_tol]
        bwd_only = gradient(neurode.odeint_adjoint, rtol=1e-10, atol=1e-10,
                            adjoint_rtol=tl, adjoint_atol=tl)[0]
        # --8<-- [end:adjoint_tol]
        res[f"sweep_backprop_{k}"], res[f"sweep_adjoint_{k}"] = bp, rel(adj, exact)
        res[f"sweep_adjoint_bwd_{k}"] = rel(bwd_only, exact)
        print(f"   {tl:6.0e}   {bp:8.1e}   {res[f'sweep_adjoint_{k}']:8.1e}   "
              f"{res[f'sweep_adjoint_bwd_{k}']:24.1e}   {nb:15d}")
    return res


# --- 2. the adjoint's reconstructed trajectory ----------------------------------------------------


def part_reconstruction() -> dict[str, float]:
    torch.manual_seed(1)
    # a damped rotation, a slow decay and one fast decaying mode (eigenvalue -6), rotated
    D = torch.tensor([[-0.3, -2.0, 0.0, 0.0], [2.0, -0.3, 0.0, 0.0],
                      [0.0, 0.0, -6.0, 0.0], [0.0, 0.0, 0.0, -0.5]], dtype=F64)
    Q = torch.linalg.qr(torch.randn(4, 4, dtype=F64))[0]
    A0 = Q @ D @ Q.T
    z0 = torch.randn(8, 4, dtype=F64)
    res = {}
    print("2. the adjoint reconstructs z backwards: dz/dt = A z with an eigenvalue -6 on [0, 4]")
    print("   observed at      backprop   adjoint   (rel. error of the gradient, rtol=atol=1e-6)")
    for label, t in (("t = 0, 4", torch.tensor([0.0, 4.0], dtype=F64)),
                     ("t = 0, 1, ..., 4", torch.linspace(0.0, 4.0, 5, dtype=F64))):
        y = torch.randn(len(t), 8, 4, dtype=F64)
        A = A0.clone().requires_grad_(True)
        z = z0.clone().requires_grad_(True)
        zs = torch.stack([z @ torch.linalg.matrix_exp(ti * A).T for ti in t])
        exact = flat(torch.autograd.grad(0.5 * ((zs - y) ** 2).sum(), (A, z)))
        errs = []
        for solve in (neurode.odeint, neurode.odeint_adjoint):
            A = A0.clone().requires_grad_(True)
            z = z0.clone().requires_grad_(True)
            kw = {} if solve is neurode.odeint else {"adjoint_params": (A,)}
            zs = solve(Linear(A), z, t, rtol=1e-6, atol=1e-6, **kw)
            errs.append(rel(flat(torch.autograd.grad(0.5 * ((zs - y) ** 2).sum(), (A, z))),
                            exact))
        key = "ends" if len(t) == 2 else "every"
        res[f"recon_backprop_{key}"], res[f"recon_adjoint_{key}"] = errs
        print(f"   {label:16s}  {errs[0]:8.1e}  {errs[1]:8.1e}")
    return res


# --- 3. a neural vector field ---------------------------------------------------------------------


# --8<-- [start:mlp]
class MLPField(nn.Module):
    """``dz/dt = net(z)``, a tanh MLP ``2 → hidden → 2``; counts its evaluations."""

    def __init__(self, hidden: int = 32, scale: float = 2.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 2))
        with torch.no_grad():               # larger weights: a visibly nonlinear flow
            for p in self.net.parameters():
                p.mul_(scale)
        self.nfe = 0

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.net(z)
# --8<-- [end:mlp]


def part_mlp(rev_step: float) -> dict[str, float]:
    torch.manual_seed(0)
    func = MLPField().to(F64)
    params = list(func.parameters())
    z0 = torch.randn(16, 2, dtype=F64)
    t = torch.linspace(0.0, 2.0, 6, dtype=F64)
    y = torch.randn(6, 16, 2, dtype=F64)

    def gradient(solve, **kw) -> tuple[torch.Tensor, int]:
        """dL/d(z0, θ) through ``solve`` (parameters found as ``func.parameters()``)."""
        z = z0.clone().requires_grad_(True)
        L = 0.5 * ((solve(func, z, t, **kw) - y) ** 2).sum()
        n0 = func.nfe
        g = flat(torch.autograd.grad(L, [z, *params]))
        return g, func.nfe - n0

    ref = gradient(neurode.odeint, method="dopri8", rtol=1e-12, atol=1e-12)[0]
    tol = {"rtol": 1e-8, "atol": 1e-8}
    alf = {"options": {"step_size": rev_step}}
    runs = {"backprop": gradient(neurode.odeint, **tol),
            "adjoint": gradient(neurode.odeint_adjoint, **tol),
            "adjoint, seminorm": gradient(neurode.odeint_adjoint, **tol,
                                          adjoint_options={"norm": "seminorm"}),
            "checkpoint": gradient(neurode.odeint_checkpoint, **tol),
            "reversible": gradient(neurode.odeint_reversible, **alf)}
    res = {}
    print(f"3. MLP field 2-32-2 ({sum(p.numel() for p in params)} parameters), rel. error of "
          "dL/d(z0, θ) against backprop through dopri8 at 1e-12")
    print("   method              rel. error   NFE bwd")
    for name, (g, nb) in runs.items():
        key = "mlp_" + name.replace(", ", "_")
        res[key], res[key + "_nfe_bwd"] = rel(g, ref), float(nb)
        print(f"   {name:18s}  {res[key]:10.1e}   {nb:7d}")
    res["mlp_checkpoint_vs_backprop"] = rel(runs["checkpoint"][0], runs["backprop"][0])
    res["mlp_reversible_vs_alf_backprop"] = rel(
        runs["reversible"][0], gradient(neurode.odeint, method="alf", **alf)[0])
    print(f"   checkpoint vs backprop, same solve: {res['mlp_checkpoint_vs_backprop']:.1e};  "
          f"reversible vs backprop through alf: {res['mlp_reversible_vs_alf_backprop']:.1e}")
    return res


# --- 4. memory ------------------------------------------------------------------------------------


# --8<-- [start:saved_bytes]
def saved_bytes(forward, exclude=()) -> tuple[torch.Tensor, int]:
    """Run ``forward()``; return its output and the bytes autograd saved for the backward pass,
    each storage counted once (views share one), those of ``exclude`` (parameters) left out."""
    skip = {p.untyped_storage().data_ptr() for p in exclude}
    sizes: dict[int, int] = {}

    def pack(x: torch.Tensor) -> torch.Tensor:
        storage = x.untyped_storage()
        if storage.data_ptr() not in skip:
            sizes[storage.data_ptr()] = storage.nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = forward()
    return out, sum(sizes.values())
# --8<-- [end:saved_bytes]


def part_memory(steps: list[int]) -> dict[str, float]:
    torch.manual_seed(0)
    func = MLPField().to(F64)
    z0 = torch.randn(64, 2, dtype=F64).requires_grad_(True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    params = list(func.parameters())
    methods = {
        "backprop": lambda n: neurode.odeint(func, z0, t, method="rk4",
                                             options={"step_size": 1 / n}),
        "adjoint": lambda n: neurode.odeint_adjoint(func, z0, t, method="rk4",
                                                    options={"step_size": 1 / n}),
        "checkpoint": lambda n: neurode.odeint_checkpoint(func, z0, t, method="rk4",
                                                          options={"step_size": 1 / n}),
        "reversible": lambda n: neurode.odeint_reversible(func, z0, t,
                                                          options={"step_size": 1 / n}),
    }
    res = {}
    print("4. kB autograd saves for the backward pass (MLP field, state 64 x 2 float64, "
          "parameters left out)")
    print("   steps       " + "".join(f"{n:>9d}" for n in steps) + "   last/first   ms fwd+bwd")
    for name, run in methods.items():
        row = [saved_bytes(lambda run=run, n=n: run(n), exclude=params)[1] for n in steps]
        # time one forward + backward at the largest grid
        start = time.perf_counter()
        torch.autograd.grad(run(steps[-1]).square().sum(), [z0, *params])
        ms = 1e3 * (time.perf_counter() - start)
        res[f"mem_{name}_first"], res[f"mem_{name}_last"] = float(row[0]), float(row[-1])
        res[f"ms_{name}"] = ms
        print(f"   {name:10s}  " + "".join(f"{b / 1e3:9.1f}" for b in row)
              + f"   {row[-1] / row[0]:10.2f}   {ms:10.0f}")
    state = z0.untyped_storage().nbytes()
    print(f"   (rk4 steps; reversible: alf steps.) The checkpointed adjoint also keeps one state "
          f"per step outside autograd: {steps[0] * state / 1e3:.1f} ... "
          f"{steps[-1] * state / 1e3:.1f} kB")
    return res


# --- 5. ALF on a dissipative field ---------------------------------------------------------------


def decay(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``dz/dt = -6 z``: ``z(t) = exp(-6 t) z(0)``."""
    return -6.0 * z


def part_alf_damping() -> dict[str, float]:
    # --8<-- [start:alf_eta]
    t = torch.tensor([0.0, 4.0], dtype=F64)
    z0 = torch.ones(1, dtype=F64)
    res = {}
    for eta in (1.0, 0.9):                             # fixed steps of 1e-3
        z4 = neurode.odeint(decay, z0, t, method="alf", options={"step_size": 1e-3, "eta": eta})
        res[f"alf_eta_{eta}"] = float(z4[-1])
    sol = neurode.solve_ivp(decay, z0, t, method="alf", rtol=1e-3, atol=1e-6,  # adaptive
                            options={"max_num_steps": 2000}, throw=False)
    res["alf_adaptive_t_reached"] = sol.stats.segments[-1].t1
    # --8<-- [end:alf_eta]
    print(f"5. alf on dz/dt = -6 z, z(0) = 1: z(4) = {math.exp(-24):.3e} exactly; step 1e-3: "
          f"{res['alf_eta_1.0']:.3e} with eta = 1, {res['alf_eta_0.9']:.3e} with eta = 0.9")
    print(f"   adaptive (eta = 1, rtol 1e-3): {sol.stats.n_steps} steps reach only "
          f"t = {res['alf_adaptive_t_reached']:.2f} (status {sol.status})")
    res["alf_adaptive_status"] = float(sol.status)
    return res


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the five parts; return every error, NFE count and byte count they print."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rev-step", type=float, default=1e-3, help="ALF step of the reversible runs")
    p.add_argument("--steps", type=int, nargs="+", default=[50, 100, 200, 400],
                   help="rk4 grids of the memory part")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (tiny tensors: one is fastest, and steady under load)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    res: dict[str, float] = {}
    res.update(part_linear(args.rev_step))
    res.update(part_reconstruction())
    res.update(part_mlp(args.rev_step))
    res.update(part_memory(args.steps))
    res.update(part_alf_damping())
    return res


if __name__ == "__main__":
    main()
