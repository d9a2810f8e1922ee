"""Test-session settings.

The tests use small tensors, for which PyTorch's intra-op threads only add synchronisation: on a
loaded 2-core machine, OpenMP's busy-waiting made small matrix products 10–30x slower. One thread
keeps the suite fast and its timings steady.
"""

import torch

torch.set_num_threads(1)
