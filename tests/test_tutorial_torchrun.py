"""The torchrun tutorial (docs/tutorials/torchrun.md): examples/torchrun_train.py trains the same
parameters on two gloo processes as on one process that sees the whole global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch
from example_scripts import EXAMPLES, load_example


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_train_the_parameters_of_one(tmp_path):
    args = ["--iters", "6", "--batch-size", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={_free_port()}", str(EXAMPLES / "torchrun_train.py"),
                           *args, "--out", str(tmp_path / "two")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun exit {proc.returncode}:\n{proc.stderr[-4000:]}"
    assert "2 process(es)" in proc.stdout
    assert proc.stdout.count("loss ") == 3  # rank 0 alone prints (iterations 0 and 5, result)

    # the same script as one process, without torchrun, on the same global batches
    one = load_example("torchrun_train").main([*args, "--out", str(tmp_path / "one"),
                                        "--compare", str(tmp_path / "two")])
    assert one["world"] == 1.0
    assert one["final loss"] < 0.5 * one["first loss"]  # it trains
    a = torch.load(tmp_path / "one" / "params.pt")
    b = torch.load(tmp_path / "two" / "params.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-6), k
    assert one["max difference"] < 1e-6
