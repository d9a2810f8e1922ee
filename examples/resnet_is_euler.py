"""A ResNet is Euler's method: residual blocks with shared weights are Euler steps of an ODE.

    python examples/resnet_is_euler.py [--max-blocks 1024] [--resnet-steps 300] [--ode-steps 150]

Three parts, float64 throughout:

1. A stack of ``N`` residual blocks ``h ← h + (1/N) f(h)`` that share one small MLP ``f`` is,
   to rounding, ``neurode.odeint(f, h0, [0, 1], method="euler", options={"step_size": 1/N})``.
2. As ``N`` grows the stack converges to the flow of ``dh/dt = f(h)`` at ``t = 1`` (computed
   with dopri8 at rtol 1e-12): the error falls like ``1/N``, Euler's order 1. The same sweep
   with ``method="rk4"`` (four evaluations per step) falls like ``1/N⁴``.
3. ``neurode.nn.ODEBlock`` as the drop-in replacement for the residual stage of a classifier
   ``Linear → stage → Linear`` on two interleaved spirals: (a) trained as 8 residual blocks,
   the network need not be close to the flow of its own ``f`` (swapping in the ODE block
   afterwards breaks it); (b) trained with the ODE block in the stage's place, its ``f`` run as
   ``N`` residual blocks converges to the ODE network as ``N`` grows, again at order 1.

Prints the three reports; ``main`` returns the numbers (errors, fitted orders, accuracies).
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

import neurode
from neurode.nn import ODEBlock, ODEFunc, count_parameters

F64 = torch.float64


# --8<-- [start:stack]
class ResidualStack(nn.Module):
    """``n_blocks`` residual blocks ``h ← h + f(h) / n_blocks``, all with the same ``f``."""

    def __init__(self, f: nn.Module, n_blocks: int):
        super().__init__()
        self.f, self.n_blocks = f, n_blocks

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for _ in range(self.n_blocks):
            h = h + self.f(h) / self.n_blocks
        return h
# --8<-- [end:stack]


def make_field(dim: int, hidden: int, scale: float = 1.5) -> nn.Module:
    """A tanh MLP ``f: R^dim → R^dim`` with weights large enough to bend the flow."""
    f = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim)).to(F64)
    with torch.no_grad():
        for p in f.parameters():
            p.mul_(scale)
    return f


def fitted_order(ns: list[int], errors: list[float]) -> float:
    """Least-squares slope of ``-log(error)`` against ``log(N)``: the empirical order."""
    x = torch.log(torch.tensor(ns, dtype=F64))
    y = -torch.log(torch.tensor(errors, dtype=F64))
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum())


def part_equality(f: nn.Module, h0: torch.Tensor, ns: list[int]) -> float:
    print("1. residual stack vs odeint(method='euler', step_size=1/N)")
    worst = 0.0
    for n in ns:
        # --8<-- [start:equality]
        stack = ResidualStack(f, n_blocks=n)
        euler = neurode.odeint(lambda t, h: f(h), h0, torch.tensor([0.0, 1.0], dtype=F64),
                               method="euler", options={"step_size": 1.0 / n})[-1]
        diff = (stack(h0) - euler).abs().max().item()
        # --8<-- [end:equality]
        worst = max(worst, diff)
        print(f"   N = {n:4d}   max |stack - euler| = {diff:.1e}")
    return worst


def part_convergence(f: nn.Module, h0: torch.Tensor, ns: list[int]
                     ) -> tuple[list[float], list[float], float, float]:
    # --8<-- [start:convergence]
    t = torch.tensor([0.0, 1.0], dtype=F64)
    flow = neurode.odeint(lambda t, h: f(h), h0, t, method="dopri8",
                          rtol=1e-12, atol=1e-12)[-1]          # the exact flow, to 1e-12
    err_euler, err_rk4 = [], []
    for n in ns:
        err_euler.append((ResidualStack(f, n)(h0) - flow).abs().max().item())
        rk4 = neurode.odeint(lambda t, h: f(h), h0, t, method="rk4",
                             options={"step_size": 1.0 / n})[-1]
        err_rk4.append((rk4 - flow).abs().max().item())
    order_euler = fitted_order(ns, err_euler)
    # --8<-- [end:convergence]
    # rk4 reaches rounding level quickly; fit its order where the error is still well above it
    keep = [i for i, e in enumerate(err_rk4) if e > 1e-11]
    order_rk4 = fitted_order([ns[i] for i in keep], [err_rk4[i] for i in keep]) \
        if len(keep) >= 2 else math.nan
    print("2. convergence to the flow of dh/dt = f(h) (reference: dopri8, rtol 1e-12)")
    print("      N   stack (Euler) error   ratio   rk4 error")
    for i, n in enumerate(ns):
        ratio = f"{err_euler[i - 1] / err_euler[i]:5.2f}" if i else "    -"
        print(f"   {n:4d}   {err_euler[i]:19.3e}   {ratio}   {err_rk4[i]:9.2e}")
    print(f"   fitted order: stack {order_euler:.3f}, rk4 {order_rk4:.2f}")
    return err_euler, err_rk4, order_euler, order_rk4


def two_spirals(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points on two interleaved spiral arms of one turn each (label = arm), noisy."""
    label = torch.randint(0, 2, (n,), generator=g)
    r = torch.rand(n, generator=g, dtype=F64)
    angle = 2 * math.pi * r + math.pi * label
    x = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], 1)
    return x + 0.02 * torch.randn(n, 2, generator=g, dtype=F64), label


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int,
          g: torch.Generator) -> None:
    """``steps`` Adam steps on random batches of 128."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


def part_drop_in(resnet_steps: int, ode_steps: int, n_blocks: int, ns: list[int]
                 ) -> dict[str, float]:
    g = torch.Generator().manual_seed(1)
    x_train, y_train = two_spirals(2000, g)
    x_test, y_test = two_spirals(1000, g)

    def accuracy(model: nn.Module) -> float:
        with torch.no_grad():
            return (model(x_test).argmax(1) == y_test).double().mean().item()

    # (a) train the residual network, then swap its stage for the ODE block around its f
    torch.manual_seed(0)
    # --8<-- [start:network]
    f = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 16)).to(F64)
    lift, head = nn.Linear(2, 16).to(F64), nn.Linear(16, 2).to(F64)
    resnet = nn.Sequential(lift, ResidualStack(f, n_blocks), head)
    # --8<-- [end:network]
    train(resnet, x_train, y_train, resnet_steps, torch.Generator().manual_seed(2))
    # --8<-- [start:swap]
    flow = nn.Sequential(lift, ODEBlock(ODEFunc(f), rtol=1e-6, atol=1e-8), head)  # same f
    # --8<-- [end:swap]
    res = {"acc_resnet": accuracy(resnet), "acc_resnet_as_ode": accuracy(flow),
           "params_resnet": float(count_parameters(resnet))}
    print(f"3a. trained as {n_blocks} residual blocks ({resnet_steps} Adam steps)")
    print(f"    test accuracy as trained ({n_blocks} blocks)   {res['acc_resnet']:.3f}  "
          f"({count_parameters(resnet)} parameters)")
    print(f"    the same f, integrated by an ODEBlock  {res['acc_resnet_as_ode']:.3f}")

    # (b) train with the ODE block in the stage's place, then run its f as residual stacks
    torch.manual_seed(0)
    # --8<-- [start:odenet]
    f = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 16)).to(F64)
    lift, head = nn.Linear(2, 16).to(F64), nn.Linear(16, 2).to(F64)
    block = ODEBlock(ODEFunc(f), t=(0.0, 1.0), rtol=1e-3, atol=1e-4, gradient="adjoint")
    odenet = nn.Sequential(lift, block, head)
    # --8<-- [end:odenet]
    train(odenet, x_train, y_train, ode_steps, torch.Generator().manual_seed(3))
    nfe = block.nfe_forward
    with torch.no_grad():
        h0 = lift(x_test)
        h1 = ODEBlock(ODEFunc(f), rtol=1e-8, atol=1e-8)(h0)  # the stage's flow, accurately
    res.update({"acc_odenet": accuracy(odenet), "nfe_odenet": float(nfe),
                "params_odenet": float(count_parameters(odenet))})
    print(f"3b. trained as an ODEBlock (dopri5 at 1e-3, adjoint; {ode_steps} Adam steps)")
    print(f"    test accuracy as trained (ODEBlock)  {res['acc_odenet']:.3f}  "
          f"({count_parameters(odenet)} parameters, {nfe} evaluations per forward)")
    print("    the same f as N residual blocks:")
    print("       N   test accuracy   max |stage output - flow|")
    gaps = []
    for n in ns:
        with torch.no_grad():
            h = ResidualStack(f, n)(h0)
            gaps.append((h - h1).abs().max().item())
            res[f"acc_odenet_as_{n}_blocks"] = (head(h).argmax(1) == y_test).double().mean().item()
        print(f"    {n:4d}   {res[f'acc_odenet_as_{n}_blocks']:13.3f}   {gaps[-1]:.3e}")
    res["gap_first"], res["gap_last"] = gaps[0], gaps[-1]
    res["order_gap"] = fitted_order(ns[-3:], gaps[-3:])
    print(f"    fitted order of the gap (N >= {ns[-3]}): {res['order_gap']:.2f}")
    return res


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the three parts; return errors, fitted orders and accuracies."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--max-blocks", type=int, default=1024,
                   help="largest N of the convergence sweep (powers of two from 4)")
    p.add_argument("--resnet-steps", type=int, default=300,
                   help="Adam steps for part 3's residual network")
    p.add_argument("--ode-steps", type=int, default=150,
                   help="Adam steps for part 3's ODE-block network")
    p.add_argument("--blocks", type=int, default=8, help="residual blocks of part 3's stage")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (tiny tensors: one is fastest, and steady under load)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    f = make_field(dim=2, hidden=32)
    h0 = torch.randn(64, 2, dtype=F64)
    ns = [2**k for k in range(2, int(math.log2(args.max_blocks)) + 1)]

    worst = part_equality(f, h0, [1, 3, 10, ns[-1]])
    err_euler, _, order_euler, order_rk4 = part_convergence(f, h0, ns)
    res = {"max_diff_euler": worst, "order_euler": order_euler, "order_rk4": order_rk4,
           "error_euler_first": err_euler[0], "error_euler_last": err_euler[-1]}
    res.update(part_drop_in(args.resnet_steps, args.ode_steps, args.blocks, [2, *ns]))
    return res


if __name__ == "__main__":
    main()
