"""The ``neurode`` command has no dead ends and says nothing silly (issue: the command as a
person meets it). Each test is a case that once failed: a run stopped before its first
checkpoint, a missing or malformed ``config.json``, settings that were accepted and then did
nonsense, unwritable folders, a classify run that ``plot`` ignored, a finished run resumed, a
misspelt method."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from neurode.experiments.cli import main

SPIRAL = ["train", "spiral", "--no-progress", "--hidden", "8", "--n-points", "60"]


def _run(tmp_path: Path, *args: str) -> int:
    return main([*args, "--runs-dir", str(tmp_path)])


@pytest.mark.parametrize("extra,message", [
    (["--steps", "0"], "--steps 0: the number of training steps must be at least 1"),
    (["--steps", "-5"], "--steps -5"),
    (["--batch-size", "0"], "--batch-size 0: a batch holds at least one sample"),
    (["--lr", "-1"], "--lr -1.0: the learning rate must be positive"),
    (["--lr", "nan"], "--lr nan"),
    (["--rtol", "-1"], "--rtol -1.0: a tolerance is a non-negative number"),
    (["--rtol", "0", "--atol", "0"], "both 0"),
    (["--checkpoint-every", "0"], "--checkpoint-every 0"),
    (["--hidden", "0"], "--hidden 0"),
    (["--noise", "-0.1"], "--noise -0.1"),
])
def test_bad_settings_fail_with_a_message_and_leave_no_folder(tmp_path, capsys, extra, message):
    assert _run(tmp_path, *SPIRAL, "--name", "bad", *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_a_misspelt_method_suggests_the_right_one(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "spiral", "--method", "dopri"])
    assert e.value.code == 2
    assert "did you mean 'dopri5'" in capsys.readouterr().err


def test_a_run_stopped_before_its_first_checkpoint_can_be_started_again_or_resumed(tmp_path,
                                                                                    capsys):
    run = tmp_path / "early"
    run.mkdir()
    # what a run killed in its first seconds leaves: its settings, no checkpoint
    assert _run(tmp_path, *SPIRAL, "--name", "early", "--steps", "2") == 0
    (run / "checkpoint.pt").unlink()
    (run / "results.json").unlink()
    assert _run(tmp_path, *SPIRAL, "--name", "early", "--steps", "3") == 0
    assert "starting it afresh" in capsys.readouterr().err
    assert json.loads((run / "config.json").read_text())["steps"] == 3
    (run / "checkpoint.pt").unlink()
    assert _run(tmp_path, *SPIRAL, "--name", "early", "--resume") == 0
    assert "no checkpoint yet" in capsys.readouterr().err
    assert (run / "checkpoint.pt").exists()


def test_a_missing_or_malformed_config_is_recovered_from_the_checkpoint(tmp_path, capsys):
    assert _run(tmp_path, *SPIRAL, "--name", "c", "--steps", "2") == 0
    run = tmp_path / "c"
    (run / "config.json").unlink()
    assert _run(tmp_path, *SPIRAL, "--name", "c", "--steps", "3", "--resume") == 0
    assert json.loads((run / "config.json").read_text())["steps"] == 3
    (run / "config.json").write_text("{not json")
    capsys.readouterr()
    assert _run(tmp_path, *SPIRAL, "--name", "c", "--steps", "4", "--resume") == 0
    assert "is unusable" in capsys.readouterr().err
    assert main(["evaluate", str(run)]) == 0
    # with neither a readable config nor a checkpoint: a named error, nothing deleted
    (run / "config.json").write_text("{not json")
    (run / "checkpoint.pt").unlink()
    capsys.readouterr()
    assert _run(tmp_path, *SPIRAL, "--name", "c", "--resume") == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert (run / "config.json").exists()


def test_resuming_a_finished_run_says_so(tmp_path, capsys):
    assert _run(tmp_path, *SPIRAL, "--name", "f", "--steps", "2") == 0
    capsys.readouterr()
    assert _run(tmp_path, *SPIRAL, "--name", "f", "--resume") == 0
    assert "already complete (step 2 of 2)" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_runs_folder_is_a_message_and_exit_2(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main([*SPIRAL, "--name", "x", "--steps", "2", "--runs-dir", str(ro)]) == 2
    finally:
        ro.chmod(0o700)
    err = capsys.readouterr().err
    assert "Permission denied" in err and "--runs-dir" in err


def test_plot_draws_a_classify_runs_figure(tmp_path, capsys):
    pytest.importorskip("sklearn")
    assert _run(tmp_path, "train", "classify", "--no-progress", "--name", "cl", "--epochs",
                "1", "--dim", "8", "--models", "ode") == 0
    fig = tmp_path / "cl" / "classify.png"
    fig.unlink()
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "cl")]) == 0
    assert fig.exists() and str(fig) in capsys.readouterr().out


def test_threads_auto_uses_one_thread_for_the_run_and_restores_the_pool(tmp_path, capsys):
    before = torch.get_num_threads()
    assert _run(tmp_path, *SPIRAL, "--name", "t", "--steps", "1") == 0
    assert "1 CPU thread (auto" in capsys.readouterr().err
    assert torch.get_num_threads() == before
    assert _run(tmp_path, *SPIRAL, "--name", "t2", "--steps", "1", "--threads", "2") == 0
    assert "2 CPU threads (--threads)" in capsys.readouterr().err


def test_a_runs_folder_that_cannot_be_made_is_a_message_and_exit_2(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main([*SPIRAL, "--name", "x", "--steps", "2", "--runs-dir", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert "neurode: error:" in err and "--runs-dir" in err and "Traceback" not in err
    assert blocker.read_text() == "not a folder"


def test_figure_captions_say_what_was_run_and_whether_it_was_trained():
    from neurode.experiments.plots import _count, caption

    cfg = {"task": "cnf", "data": "moons", "objective": "fm", "method": "dopri5", "rtol": 1e-5,
           "gradient": "adjoint", "dtype": "float32", "steps": 100}
    assert "UNTRAINED" in caption(cfg, 0)
    text = caption(cfg, 100)
    assert "cnf (moons, fm)" in text and "step 100 of 100" in text and "UNTRAINED" not in text
    assert (_count(36458), _count(128938), _count(2.5e6), _count(12)) == ("36.5k", "129k",
                                                                          "2.5M", "12")


def test_abbreviated_options_are_refused_not_silently_ignored_on_resume(tmp_path, capsys):
    assert _run(tmp_path, *SPIRAL, "--name", "ab", "--steps", "1") == 0
    with pytest.raises(SystemExit) as e:
        _run(tmp_path, *SPIRAL, "--name", "ab", "--resume", "--step", "5")
    assert e.value.code == 2
    assert "unrecognized arguments: --step" in capsys.readouterr().err
