"""Neural-network modules built on the solvers: ODE blocks, ODE-Net, CNFs, latent ODEs.

Depends on `neurode.gradients` and `neurode.solvers`; nothing there depends on it.
"""

from neurode.nn.block import GRADIENTS, ODEBlock, solve
from neurode.nn.cnf import CNF, flow_matching_loss
from neurode.nn.dynamics import RegularizedODEFunc, SecondOrderFunc
from neurode.nn.latent import GRUBaseline, LatentODE
from neurode.nn.layers import ConcatConv2d, ConcatLinear, ConcatMLP, ODEFunc
from neurode.nn.odenet import ConvODEFunc, ODENetClassifier, ResBlock, count_parameters

__all__ = [
    "CNF",
    "GRADIENTS",
    "ConcatConv2d",
    "ConcatLinear",
    "ConcatMLP",
    "ConvODEFunc",
    "GRUBaseline",
    "LatentODE",
    "ODEBlock",
    "ODEFunc",
    "ODENetClassifier",
    "RegularizedODEFunc",
    "ResBlock",
    "SecondOrderFunc",
    "count_parameters",
    "flow_matching_loss",
    "solve",
]
