"""ODE-Net vs ResNet vs RK-Net on scikit-learn's 8×8 digits (Chen et al. 2018, Table 1, small).

    python examples/odenet_vs_resnet.py [--epochs 4] [--dim 32] [--models ode resnet rknet]

The three classifiers share one stem (a 3×3 convolution, then a stride-2 4×4 convolution:
8×8 → 4×4) and one head (norm, ReLU, average pooling, linear); they differ in the middle:

- ``resnet``: six residual blocks, each (norm, ReLU, conv 3×3) twice plus the skip;
- ``rknet``: one ODE block whose field has the parameters of one residual block (plus a time
  channel), integrated on [0, 1] by four fixed rk4 steps, trained by backprop through them;
- ``ode``: the same ODE block, integrated by adaptive dopri5 at rtol = atol = 1e-3 and trained
  with the adjoint method (constant memory in the steps).

Each is trained with Adam (lr 3e-3, batches of 64) for ``--epochs`` passes over the 1,437
training images (or ``--steps`` batches), then scored on the 360 test images. Prints, per model:
test accuracy, parameters, evaluations of the field per forward pass (ODE-Net: chosen by the
solver), bytes autograd saves for one batch's backward pass, and training time.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from neurode.data import load_digits

# the activation memory the classify experiment reports, measured the same way (the gradients
# tutorial shows how: bytes autograd saves for the backward pass, parameters excluded)
from neurode.experiments.runner import saved_for_backward_bytes
from neurode.nn import ODENetClassifier, count_parameters

NAMES = {"ode": "ODE-Net", "resnet": "ResNet", "rknet": "RK-Net"}


# --8<-- [start:models]
def make_model(kind: str, dim: int) -> ODENetClassifier:
    """``kind``: "ode" (dopri5 + adjoint), "resnet" (6 blocks) or "rknet" (4 rk4 steps)."""
    return ODENetClassifier(kind, in_channels=1, n_classes=10, dim=dim, downsample=1,
                            rtol=1e-3, atol=1e-3, gradient="adjoint", rk_steps=4)
# --8<-- [end:models]


def train_and_test(kind: str, data, *, dim: int, steps: int, lr: float, batch: int,
                   seed: int) -> dict[str, float]:
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = make_model(kind, dim)
    # --8<-- [start:train]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    per_epoch = len(y_train) // batch                     # whole batches only
    start = time.perf_counter()
    for step in range(steps):
        epoch, k = divmod(step, per_epoch)
        perm = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(epoch))
        idx = perm[k * batch:(k + 1) * batch]
        loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    nfe_train = model.nfe                                 # (forward, backward) of the last step
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).double().mean().item()
    # --8<-- [end:train]
    nfe_test = model.nfe[0]
    model.train()
    _, saved = saved_for_backward_bytes(lambda: model(x_train[:batch]),
                                       exclude=list(model.parameters()))
    return {"accuracy": accuracy, "parameters": float(count_parameters(model)),
            "nfe_forward": float(nfe_train[0]), "nfe_backward": float(nfe_train[1]),
            "nfe_test": float(nfe_test), "saved_mb": saved / 1e6, "seconds": seconds,
            "seconds_per_step": seconds / max(steps, 1)}


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train and score each model; return ``{"<model>_<metric>": value}``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=["ode", "resnet", "rknet"],
                   choices=list(NAMES))
    p.add_argument("--epochs", type=int, default=4, help="passes over the training set")
    p.add_argument("--steps", type=int, default=None,
                   help="training batches instead of --epochs (a small budget)")
    p.add_argument("--dim", type=int, default=32, help="feature channels")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (small 4×4 feature maps: one is fastest)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_digits(seed=args.seed)                    # (N, 1, 8, 8) in [0, 1], labels
    steps = args.steps if args.steps is not None else \
        args.epochs * (len(data[1]) // args.batch_size)
    print(f"digits: {len(data[1])} training, {len(data[3])} test images; {steps} steps of "
          f"{args.batch_size}, dim {args.dim}")
    print("model     test acc.   parameters   NFE fwd/bwd (train)   NFE (test)   "
          "MB saved (batch)   train s")
    res: dict[str, float] = {}
    for kind in args.models:
        r = train_and_test(kind, data, dim=args.dim, steps=steps, lr=args.lr,
                           batch=args.batch_size, seed=args.seed)
        res.update({f"{kind}_{k}": v for k, v in r.items()})
        nfe = "-" if kind == "resnet" else f"{r['nfe_forward']:.0f} / " + (
            "-" if kind == "rknet" else f"{r['nfe_backward']:.0f}")
        nfe_test = "-" if kind == "resnet" else f"{r['nfe_test']:.0f}"
        print(f"{NAMES[kind]:8s}  {r['accuracy']:9.3f}   {r['parameters']:10,.0f}   {nfe:>19s}   "
              f"{nfe_test:>10s}   {r['saved_mb']:16.2f}   {r['seconds']:7.1f}")
    return res


if __name__ == "__main__":
    main()
