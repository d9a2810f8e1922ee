"""The ``neurode`` command on tiny settings: files, falling losses, PNGs, resume, crash safety,
distributed training."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from neurode.experiments.cli import main
from neurode.experiments.runner import CheckpointError, load_checkpoint
from neurode.experiments.tasks import TASKS

PNG = b"\x89PNG\r\n\x1a\n"
SPIRAL = ["train", "spiral", "--no-progress", "--hidden", "16", "--n-points", "100"]


def _run(tmp_path: Path, *args: str) -> int:
    return main([*args, "--runs-dir", str(tmp_path)] if args[0] == "train" else list(args))


def _is_png(path: Path) -> bool:
    import matplotlib.image

    data = path.read_bytes()
    return data[:8] == PNG and matplotlib.image.imread(path).ndim == 3


def _metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_spiral_writes_its_files_and_the_loss_falls(tmp_path):
    assert _run(tmp_path, *SPIRAL, "--name", "a", "--steps", "80") == 0
    run = tmp_path / "a"
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "results.json", "spiral.png"):
        assert (run / name).exists(), name
    assert _is_png(run / "spiral.png")
    m = _metrics(run)
    assert [r["step"] for r in m] == list(range(80))
    first = sum(r["loss"] for r in m[:10]) / 10
    last = sum(r["loss"] for r in m[-10:]) / 10
    assert last < 0.7 * first, (first, last)
    res = json.loads((run / "results.json").read_text())
    cfg = json.loads((run / "config.json").read_text())
    untrained = TASKS["spiral"](cfg, torch.device("cpu"), torch.float32).evaluate()
    assert res["trajectory_error_mean"] < 0.5 * untrained["trajectory_error_mean"]
    assert cfg["task"] == "spiral" and cfg["hidden"] == 16 and cfg["seed"] == 0
    assert load_checkpoint(run / "checkpoint.pt", "spiral")["step"] == 80


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    # extending a finished run: a constant learning rate (the cosine schedule spans --steps)
    common = [*SPIRAL, "--checkpoint-every", "10", "--gradient", "backprop", "--lr-schedule",
              "constant"]
    assert _run(tmp_path, *common, "--name", "full", "--steps", "30") == 0
    assert _run(tmp_path, *common, "--name", "part", "--steps", "20") == 0
    assert _run(tmp_path, *common, "--name", "part", "--steps", "30", "--resume") == 0
    full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    part = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert part["step"] == 30
    for k, v in full["model"].items():
        assert torch.equal(v, part["model"][k]), k
    assert [r["step"] for r in _metrics(tmp_path / "part")] == list(range(30))
    assert [r["loss"] for r in _metrics(tmp_path / "part")] == \
        [r["loss"] for r in _metrics(tmp_path / "full")]


def test_a_stochastic_loss_resumes_exactly_and_a_resume_keeps_the_saved_length(tmp_path):
    # the latent ODE's ELBO samples z0 from the global generator at every step
    common = ["train", "latent", "--no-progress", "--n-series", "16", "--n-obs", "8",
              "--batch-size", "8", "--lr-schedule", "constant", "--checkpoint-every", "2"]
    assert _run(tmp_path, *common, "--name", "full", "--steps", "4") == 0
    assert _run(tmp_path, *common, "--name", "part", "--steps", "2") == 0
    assert _run(tmp_path, *common, "--name", "part", "--steps", "4", "--resume") == 0
    full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    part = load_checkpoint(tmp_path / "part" / "checkpoint.pt")["model"]
    assert all(torch.equal(full[k], part[k]) for k in full)
    # without --steps a resumed run keeps its own length (here: nothing left to do)
    assert main(["train", "latent", "--no-progress", "--name", "part", "--resume",
                 "--runs-dir", str(tmp_path)]) == 0
    assert load_checkpoint(tmp_path / "part" / "checkpoint.pt")["step"] == 4
    assert json.loads((tmp_path / "part" / "config.json").read_text())["steps"] == 4


def test_a_new_run_refuses_to_overwrite_and_resume_needs_a_run(tmp_path, capsys):
    assert _run(tmp_path, *SPIRAL, "--name", "x", "--steps", "2") == 0
    assert _run(tmp_path, *SPIRAL, "--name", "x", "--steps", "2") == 2
    assert "--resume" in capsys.readouterr().err
    assert _run(tmp_path, *SPIRAL, "--name", "nothing", "--steps", "2", "--resume") == 2
    assert "no run" in capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (["--gradient", "reversible"], "--method alf"),
    (["--resume"], "--resume needs --name"),
    (["--name", "nothing-here", "--resume"], "no run at"),
    pytest.param(["--device", "cuda"], "no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has CUDA")),
])
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, capsys, extra, message):
    assert _run(tmp_path, *SPIRAL, "--steps", "2", *extra) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_corrupt_and_mismatched_checkpoints_give_clear_errors(tmp_path, capsys):
    assert _run(tmp_path, *SPIRAL, "--name", "c", "--steps", "2") == 0
    run = tmp_path / "c"
    good = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(good[: len(good) // 2])
    assert _run(tmp_path, *SPIRAL, "--name", "c", "--steps", "4", "--resume") == 2
    assert "corrupt" in capsys.readouterr().err
    (run / "checkpoint.pt").write_bytes(good)
    cfg = json.loads((run / "config.json").read_text())
    cfg["hidden"] = 8
    (run / "config.json").write_text(json.dumps(cfg))
    assert _run(tmp_path, *SPIRAL, "--name", "c", "--steps", "4", "--resume") == 2
    assert "hidden" in capsys.readouterr().err
    cfg["hidden"] = 16
    (run / "config.json").write_text(json.dumps(cfg))
    # options a resumed run cannot honour are named, and the saved ones are used
    assert _run(tmp_path, *SPIRAL, "--name", "c", "--steps", "3", "--resume", "--lr",
                "0.5") == 0
    assert "ignoring --lr 0.5 (the run has 0.01)" in capsys.readouterr().err
    assert json.loads((run / "config.json").read_text())["lr"] == 0.01
    with pytest.raises(CheckpointError, match="belongs to task"):
        load_checkpoint(run / "checkpoint.pt", "cnf")


def _spawn(tmp_path: Path, name: str, steps: int, env_extra: dict) -> subprocess.Popen:
    # one intra-op thread, as in this process (conftest): bitwise comparisons need equal threads
    env = {**os.environ, **env_extra, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "neurode", *SPIRAL, "--name", name,
                             "--steps", str(steps), "--checkpoint-every", "5",
                             "--runs-dir", str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(pred, timeout=120.0):
    t0 = time.time()
    while not pred():
        if time.time() - t0 > timeout:
            raise TimeoutError
        time.sleep(0.02)


def test_sigkill_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    proc = _spawn(tmp_path, "k", 1000, {"NEURODE_TEST_SLOW_SAVE": "1.5"})
    run = tmp_path / "k"
    try:
        _wait_for(lambda: (run / "checkpoint.pt").exists())  # the first save (step 5) landed
        _wait_for(lambda: any(p.name.startswith(".checkpoint.pt.tmp") for p in run.iterdir()))
        proc.send_signal(signal.SIGKILL)  # in the middle of the second save
        proc.wait(30)
    finally:
        proc.kill()
    state = load_checkpoint(run / "checkpoint.pt", "spiral")
    assert state["step"] == 5
    assert main([*SPIRAL, "--name", "k", "--steps", "8", "--resume", "--runs-dir",
                 str(tmp_path)]) == 0
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 8


def test_sigint_saves_a_checkpoint_exits_130_and_resumes_exactly(tmp_path):
    proc = _spawn(tmp_path, "i", 200, {})
    run = tmp_path / "i"
    try:
        _wait_for(lambda: (run / "metrics.jsonl").exists()
                  and len((run / "metrics.jsonl").read_text().splitlines()) >= 7)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(60)
    finally:
        proc.kill()
    assert rc == 130
    state = load_checkpoint(run / "checkpoint.pt")
    assert 7 <= state["step"] < 200
    assert len(_metrics(run)) == state["step"]
    # resumed to the end, it equals a run that was never interrupted (cosine schedule included)
    base = [*SPIRAL, "--steps", "200", "--checkpoint-every", "5", "--runs-dir", str(tmp_path)]
    assert main([*base, "--name", "i", "--resume"]) == 0
    assert main([*base, "--name", "straight"]) == 0
    a = load_checkpoint(run / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_classify_latent_and_cnf_run_and_write_their_results(tmp_path):
    pytest.importorskip("sklearn")  # classify's default data set ships with scikit-learn
    assert _run(tmp_path, "train", "classify", "--no-progress", "--name", "cl", "--epochs",
                "2", "--dim", "16", "--models", "ode", "resnet") == 0
    res = json.loads((tmp_path / "cl" / "results.json").read_text())
    assert set(res) >= {"ode", "resnet"}
    # twice chance (10 classes) after two short epochs (measured: 0.34 and 0.48)
    assert res["ode"]["test_accuracy"] > 0.2 and res["resnet"]["test_accuracy"] > 0.2
    assert res["ode"]["parameters"] < res["resnet"]["parameters"]
    # the adjoint keeps only the block's input and output for the backward pass
    assert 0 < res["ode"]["activation_mb"] < res["resnet"]["activation_mb"]
    assert res["ode"]["nfe_forward"] > 0 and res["ode"]["nfe_backward"] > 0
    assert _is_png(tmp_path / "cl" / "classify.png")
    assert _run(tmp_path, "train", "latent", "--no-progress", "--name", "la", "--steps", "6",
                "--n-series", "32", "--n-obs", "12") == 0
    res = json.loads((tmp_path / "la" / "results.json").read_text())
    assert {"interp_mse_latent", "extrap_mse_latent", "extrap_mse_gru"} <= set(res)
    assert _is_png(tmp_path / "la" / "latent.png")
    assert _run(tmp_path, "train", "cnf", "--no-progress", "--name", "fl", "--steps", "60",
                "--data", "8gaussians") == 0
    m = _metrics(tmp_path / "fl")
    assert sum(r["loss"] for r in m[-10:]) < sum(r["loss"] for r in m[:10])
    assert _is_png(tmp_path / "fl" / "cnf.png")
    assert "test_nll" in json.loads((tmp_path / "fl" / "results.json").read_text())


def test_evaluate_and_plot_a_saved_run(tmp_path, capsys):
    assert _run(tmp_path, *SPIRAL, "--name", "e", "--steps", "5") == 0
    (tmp_path / "e" / "spiral.png").unlink()
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "e")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["run"]["step"] == 5 and "trajectory_error_mean" in out["run"]
    assert main(["plot", str(tmp_path / "e")]) == 0
    assert _is_png(tmp_path / "e" / "spiral.png")
    assert main(["evaluate", str(tmp_path / "missing")]) == 2


def test_help_and_bench_run(capsys):
    for argv in (["--help"], ["train", "--help"], ["train", "spiral", "--help"],
                 ["evaluate", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    assert "--gradient" in capsys.readouterr().out
    assert main(["bench", "--repeats", "1"]) == 0
    assert "dopri5" in capsys.readouterr().out


def test_bench_suite_runs_each_script_and_reports_failures(tmp_path, capfd):
    suite = tmp_path / "benchmarks"
    suite.mkdir()
    (suite / "bench_a.py").write_text("print('| case | ratio |')\nprint('| x | 0.5 |')\n")
    (suite / "bench_b.py").write_text("import sys\nsys.exit(3)\n")
    (suite / "helper.py").write_text("raise SystemExit('not a benchmark')\n")
    assert main(["bench", "--suite", str(suite)]) == 1
    out = capfd.readouterr().out
    assert "| x | 0.5 |" in out and "not a benchmark" not in out
    assert "bench_a.py" in out and "FAILED (exit 3)" in out
    assert main(["bench", "--suite", str(suite), "--only", "a"]) == 0
    assert main(["bench", "--suite", str(suite), "--only", "c"]) == 2
    assert "unknown benchmark" in capfd.readouterr().err
    assert main(["bench", "--suite", str(tmp_path / "nowhere")]) == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("task", [
    [*SPIRAL, "--steps", "6", "--method", "rk4", "--gradient", "backprop"],
    # flow matching: a loss that calls the field directly must still go through DDP
    ["train", "cnf", "--no-progress", "--steps", "6", "--hidden", "16"],
])
def test_two_process_gloo_training_equals_one_process_with_the_same_global_batch(tmp_path, task):
    args = [*task, "--batch-size", "8", "--runs-dir", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={_free_port()}", "-m", "neurode", *args, "--name",
                           "ddp"],
                          env=env, capture_output=True, timeout=300, text=True)
    assert proc.returncode == 0, f"torchrun exit {proc.returncode}:\n{proc.stderr[-4000:]}"
    assert "2 processes" in proc.stderr
    assert main([*args, "--name", "one"]) == 0
    a = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "one" / "checkpoint.pt")["model"]
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k
    # only rank 0 wrote: one metrics line per step
    assert len(_metrics(tmp_path / "ddp")) == 6
