"""The ``neurode`` command: ``train``, ``evaluate``, ``plot`` and ``bench``.

    neurode train spiral                 # the classic first experiment (< 2 min on 2 CPU cores)
    neurode train classify               # ODE-Net vs ResNet vs RK-Net on the bundled digits
    neurode train latent                 # latent ODE vs GRU on irregular periodic series
    neurode train cnf --data moons       # a 2-D continuous normalizing flow
    neurode evaluate runs/<name>         # metrics of a saved run
    neurode plot runs/<name>             # its figures again
    neurode bench                        # a quick solver benchmark (vs torchdiffeq if installed)
    neurode bench --suite benchmarks     # the full benchmark suite of a clone (minutes)

Every run writes ``runs/<name>/`` (config, metrics, checkpoint, plots); ``--resume`` continues
it. Under ``torchrun --nproc_per_node=N -m neurode train ...`` training is data-parallel.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from neurode.errors import NeurodeError
from neurode.experiments.runner import (
    CHECKPOINT,
    CheckpointError,
    Dist,
    Trainer,
    load_checkpoint,
    saved_for_backward_bytes,
    write_text_atomic,
)
from neurode.experiments.tasks import TASKS
from neurode.solvers.registry import METHODS

__all__ = ["main"]

# settings that do not change what a run computes (not checked on resume)
_NOT_CONFIG = {"command", "resume", "no_progress", "runs_dir", "name", "checkpoint_every",
               "explicit", "threads"}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise NeurodeError("--device cuda: no CUDA device is available (use cpu or auto)")
    return torch.device(name)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except ``None`` (an option whose default is worked out later)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _method(name: str) -> str:
    """``--method``: a registered name, or an error that suggests the nearest ones."""
    if name in METHODS:
        return name
    import difflib

    near = difflib.get_close_matches(name, sorted(METHODS), n=3, cutoff=0.5)
    # equally close names in alphabetical order (dopri5 before dopri8)
    near.sort(key=lambda n: (-difflib.SequenceMatcher(None, name, n).ratio(), n))
    hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
    raise argparse.ArgumentTypeError(f"unknown method {name!r}{hint} (valid: "
                                     f"{', '.join(sorted(METHODS))})")


def _threads(value: str) -> str | int:
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive number of threads, "
                                         f"got {value!r}")
    return n


def _parser() -> argparse.ArgumentParser:
    # no abbreviations: an abbreviated option would pass unseen by --resume's check of the
    # options it cannot honour
    p = argparse.ArgumentParser(prog="neurode", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model (see: neurode train TASK --help)",
                           allow_abbrev=False)
    tsub = train.add_subparsers(dest="task", required=True)
    for name, task in TASKS.items():
        tp = tsub.add_parser(name, help=task.__doc__.splitlines()[0],
                             formatter_class=_HelpFormatter, allow_abbrev=False)
        common = tp.add_argument_group("run")
        common.add_argument("--name", help="run name (default: TASK-DATE-TIME); the folder is "
                            "RUNS_DIR/NAME")
        common.add_argument("--runs-dir", default="runs", help="folder of the run folders")
        common.add_argument("--resume", action="store_true",
                            help="continue the run NAME from its checkpoint")
        common.add_argument("--seed", type=int, default=0,
                            help="initialisation and batches; equal seeds give equal runs")
        steps = task.defaults["steps"]
        common.add_argument("--steps", type=int, default=None,
                            help="optimisation steps (default: " + (
                                ", ".join(f"{k}: {v}" for k, v in steps.items())
                                if isinstance(steps, dict) else str(steps)) + ")"
                            if name != "classify" else "classify: use --epochs")
        common.add_argument("--lr", type=float, default=task.defaults["lr"],
                            help="Adam learning rate")
        common.add_argument("--batch-size", type=int, default=task.defaults["batch_size"],
                            help="global batch (split across processes under torchrun)")
        common.add_argument("--lr-schedule", default="cosine", choices=["cosine", "constant"],
                            help="cosine: decay to 5 %% of --lr over the run")
        common.add_argument("--checkpoint-every", type=int, default=50,
                            help="steps between checkpoints (also saved at the end and on "
                                 "Ctrl-C)")
        common.add_argument("--no-progress", action="store_true", help="no progress bar")
        common.add_argument("--threads", default="auto", type=_threads,
                            help="CPU threads of PyTorch's pool; auto: 1 on the CPU (these "
                                 "models' tensors are small: a thread pool only contends with "
                                 "other load), torch's default on CUDA")
        solver = tp.add_argument_group("solver")
        solver.add_argument("--method", default="dopri5", type=_method, metavar="METHOD",
                            help="ODE solver: " + ", ".join(sorted(METHODS)))
        solver.add_argument("--rtol", type=float, default=1e-3 if name == "classify" else 1e-5,
                            help="relative tolerance of adaptive methods")
        solver.add_argument("--atol", type=float, default=1e-3 if name == "classify" else 1e-6,
                            help="absolute tolerance of adaptive methods")
        solver.add_argument("--gradient", default="adjoint", choices=task.gradients,
                            help="how gradients pass the solver (reversible: method alf)")
        solver.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"],
                            help="auto: cuda when available")
        solver.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                            help="of the model and the data")
        task.add_arguments(tp.add_argument_group(name))
    for cmd, text in (("evaluate", "print the metrics of a saved run"),
                      ("plot", "draw a saved run's figures again")):
        c = sub.add_parser(cmd, help=text, allow_abbrev=False)
        c.add_argument("run", type=Path, help="the run folder (runs/NAME)")
        c.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    b = sub.add_parser("bench", help="quick solver benchmark, or the full suite (--suite)",
                       formatter_class=_HelpFormatter, allow_abbrev=False)
    b.add_argument("--repeats", type=int, default=5, help="timed repeats per case (median)")
    b.add_argument("--suite", nargs="?", const="benchmarks", default=None, metavar="DIR",
                   type=Path, help="run every bench_*.py in DIR (a clone's benchmarks/ folder) "
                                   "and print their tables")
    b.add_argument("--only", nargs="+", metavar="NAME",
                   help="with --suite: just these (solvers, gradients, batch, flows, stiff)")
    return p


def _build(cfg: dict[str, Any], device: torch.device):
    task_cls = TASKS[cfg["task"]]
    return task_cls(cfg, device, getattr(torch, cfg["dtype"]))


def _train(args: argparse.Namespace) -> int:
    threads = torch.get_num_threads()  # set for the run (--threads), restored after it
    try:
        # the process group is torn down however training ends (see Dist.close)
        with Dist.setup(_device(args.device)) as dist:
            return _train_in(args, dist)
    except KeyboardInterrupt:  # Ctrl-C/SIGTERM: the checkpoint is saved
        return 130
    finally:
        torch.set_num_threads(threads)


def _validate(args: argparse.Namespace) -> None:
    """Every setting checked before a run folder exists: a bad one leaves nothing behind."""
    def need(ok: bool, opt: str, why: str) -> None:
        if not ok:
            raise NeurodeError(f"--{opt} {getattr(args, opt.replace('-', '_'))}: {why}")

    if args.steps is not None:
        need(args.steps >= 1, "steps", "the number of training steps must be at least 1")
    need(math.isfinite(args.lr) and args.lr > 0, "lr", "the learning rate must be positive")
    need(args.batch_size >= 1, "batch-size", "a batch holds at least one sample")
    need(args.checkpoint_every >= 1, "checkpoint-every", "must be at least 1 step")
    for opt in ("epochs", "dim", "latent_dim", "hidden", "n_obs", "n_series", "n_points"):
        if isinstance(getattr(args, opt, None), int):
            need(getattr(args, opt) >= 1, opt.replace("_", "-"), "must be at least 1")
    if isinstance(getattr(args, "noise", None), float):
        need(math.isfinite(args.noise) and args.noise >= 0, "noise", "a standard deviation "
             "is a non-negative number")
    if isinstance(getattr(args, "min_span", None), float):
        need(0 < args.min_span <= args.max_span, "min-span", f"must be positive and at most "
             f"--max-span {args.max_span}")
    for opt in ("rtol", "atol"):
        need(math.isfinite(getattr(args, opt)) and getattr(args, opt) >= 0, opt,
             "a tolerance is a non-negative number")
    # the solver's own front door checks the method with these tolerances (and names problems)
    from neurode.solvers.problem import make_problem

    dtype = getattr(torch, args.dtype)
    try:
        make_problem(lambda t, y: y, torch.zeros(1, dtype=dtype),
                     torch.tensor([0.0, 1.0], dtype=dtype), args.rtol, args.atol, args.method,
                     None)
    except NeurodeError as e:
        raise NeurodeError(f"--method {args.method} --rtol {args.rtol} --atol {args.atol}: "
                           f"{e}") from None


def _has_checkpoint(run_dir: Path) -> bool:
    """A checkpoint of the run itself or of a classify sub-run."""
    return (run_dir / CHECKPOINT).exists() or any(run_dir.glob(f"*/{CHECKPOINT}"))


def _read_config(run_dir: Path) -> dict[str, Any] | None:
    """The run's settings: ``config.json``, or (missing or unreadable) those its checkpoint
    stores; None when there is neither."""
    path = run_dir / "config.json"
    problem = None
    if path.exists():
        try:
            cfg = json.loads(path.read_text())
            if isinstance(cfg, dict) and "task" in cfg:
                return cfg
            problem = "it does not hold a run's settings"
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            problem = f"it is not valid JSON ({e})"
    ckpts = sorted(run_dir.glob(CHECKPOINT)) + sorted(run_dir.glob(f"*/{CHECKPOINT}"))
    for ck in ckpts:
        cfg = dict(load_checkpoint(ck)["config"])
        if ck.parent != run_dir:
            cfg.pop("model", None)  # a classify sub-run's own key
        if problem is not None:
            print(f"neurode: note: {path} is unusable ({problem}); using the settings stored in "
                  f"{ck}", file=sys.stderr)
        return cfg
    if problem is not None:
        raise CheckpointError(f"{path} is unusable: {problem}, and the run has no checkpoint to "
                              "recover its settings from; delete the folder or start another "
                              "--name")
    return None


def _threads_for(args: argparse.Namespace, device: torch.device) -> str:
    """Set PyTorch's CPU thread count for the run; returns what was chosen, for the log."""
    n = args.threads
    if n == "auto":
        if device.type != "cpu":
            return f"{torch.get_num_threads()} CPU threads (torch's default)"
        torch.set_num_threads(1)
        return "1 CPU thread (auto: small tensors; --threads N for more)"
    torch.set_num_threads(n)
    return f"{n} CPU thread{'s' if n > 1 else ''} (--threads)"


def _train_in(args: argparse.Namespace, dist: Dist) -> int:
    runs = Path(args.runs_dir)
    explicit = getattr(args, "explicit", set())
    _validate(args)
    if args.name is None:
        if args.resume:
            raise NeurodeError("--resume needs --name (the run to continue)")
        stamp = time.localtime(dist.from_main(int(time.time())))  # one name on every rank
        args.name = f"{args.task}-{time.strftime('%Y%m%d-%H%M%S', stamp)}"
    if args.gradient == "reversible" and args.method != "alf":
        raise NeurodeError(f"--gradient reversible needs an invertible step: --method alf (got "
                           f"--method {args.method}); or use --gradient adjoint|checkpoint")
    if args.batch_size % dist.world:
        raise NeurodeError(f"--batch-size {args.batch_size} must be a multiple of the "
                           f"{dist.world} processes (each takes an equal share)")
    threads = _threads_for(args, dist.device)
    run_dir = runs / args.name
    cfg = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
    resume = args.resume
    if resume:
        saved = _read_config(run_dir)
        if saved is None:
            raise CheckpointError(f"--resume: no run at {run_dir} (no config.json, no "
                                  "checkpoint)")
        for k in ("steps", "epochs"):  # the length of a run can be extended on resume
            if k in explicit:
                saved[k] = cfg[k]
        ignored = sorted(k for k in explicit if k in saved and k not in ("steps", "epochs")
                         and saved[k] != cfg.get(k))
        if ignored and dist.main:
            print("neurode: note: a resumed run keeps the settings it was started with; "
                  "ignoring " + ", ".join(f"--{k.replace('_', '-')} {cfg[k]} (the run has "
                                          f"{saved[k]})" for k in ignored)
                  + "; start a new run (another --name) to change them", file=sys.stderr)
        cfg = saved
        if not _has_checkpoint(run_dir):
            resume = False
            if dist.main:
                print(f"neurode: note: {run_dir} has no checkpoint yet (it stopped before its "
                      "first one): starting it from step 0 with its saved settings",
                      file=sys.stderr)
        if dist.main:  # the extended length, so that the folder describes the run
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(run_dir / "config.json", json.dumps(cfg, indent=2) + "\n")
    else:
        if cfg["steps"] is None:  # a task's default may depend on its other settings
            steps = TASKS[args.task].defaults["steps"]
            cfg["steps"] = steps[args.objective] if isinstance(steps, dict) else steps
        # rank 0 decides, so that no rank sees the config rank 0 has just written
        if dist.from_main(_has_checkpoint(run_dir)):
            raise NeurodeError(f"{run_dir} already holds a run: pass --resume to continue it, "
                               "or another --name")
        if dist.main:
            if (run_dir / "config.json").exists():
                print(f"neurode: note: {run_dir} holds a run that stopped before its first "
                      "checkpoint; starting it afresh with these settings", file=sys.stderr)
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(run_dir / "config.json", json.dumps(cfg, indent=2) + "\n")
    if dist.main:
        print(f"run {run_dir}  ({dist.world} process{'es' if dist.world > 1 else ''}, "
              f"{dist.device}, {cfg['dtype']}, {threads})", file=sys.stderr)
    progress = not args.no_progress
    if cfg["task"] == "classify":
        results = _train_classify(cfg, run_dir, dist, resume, progress,
                                  args.checkpoint_every)
    else:
        task = _build(cfg, dist.device)
        trainer = Trainer(task, run_dir, cfg, dist)
        try:
            if resume:
                trainer.resume()
                _note_complete(trainer.step, cfg["steps"], dist)
            last = trainer.train(cfg["steps"], checkpoint_every=args.checkpoint_every,
                                 progress=progress)
        finally:
            trainer.close()
        results = {"final_train": last}
        if dist.main:
            results.update(task.evaluate())
            results["plots"] = [str(p) for p in task.plot(run_dir, trainer.step)]
    if dist.main:
        write_text_atomic(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
        _print_results(results, cfg["task"])
    return 0


def _train_classify(cfg, run_dir, dist, resume, progress, checkpoint_every) -> dict:
    from neurode.experiments import plots

    rows: dict[str, dict] = {}
    for model in cfg["models"]:
        sub_cfg = {**cfg, "model": model}
        task = _build(sub_cfg, dist.device)
        sub = run_dir / model
        if dist.main:
            sub.mkdir(parents=True, exist_ok=True)
        trainer = Trainer(task, sub, sub_cfg, dist)
        steps = cfg["epochs"] * task.steps_per_epoch
        if dist.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dist.device)
        if resume and (sub / CHECKPOINT).exists():
            trainer.resume()
            _note_complete(trainer.step, steps, dist, f" ({model})")
        t0 = time.perf_counter()
        done_before = trainer.step
        try:
            trainer.train(steps, checkpoint_every=checkpoint_every, progress=progress)
        finally:
            trainer.close()
        epochs_run = (trainer.step - done_before) / task.steps_per_epoch
        # a finished run resumed with nothing left to do has no time per epoch to report
        sec = (time.perf_counter() - t0) / epochs_run if epochs_run else None
        # NFE and activation memory of one forward and backward pass on a training batch
        idx = task.batch(0, torch.Generator().manual_seed(0), dist)
        (loss, _), saved = saved_for_backward_bytes(partial(task.loss, task.model, idx),
                                                    exclude=list(task.model.parameters()))
        loss.backward()
        nfe_f, nfe_b = task.model.nfe
        task.model.zero_grad(set_to_none=True)
        if dist.main:
            ev = task.evaluate()
            rows[model] = {**ev, "nfe_forward": nfe_f, "nfe_backward": nfe_b,
                           "seconds_per_epoch": sec, "activation_mb": saved / 2**20,
                           "peak_memory_mb": _peak_memory_mb(dist.device)}
    if dist.main:
        rows["plots"] = [str(plots.classify(run_dir / "classify.png", rows, cfg))]
    return rows


def _note_complete(step: int, steps: int, dist: Dist, what: str = "") -> None:
    if step >= steps and dist.main:
        print(f"neurode: note: the run{what} is already complete (step {step} of {steps}): "
              "nothing to train; its metrics follow (extend it with a larger --steps/--epochs)",
              file=sys.stderr)


def _peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated since the model's training began; CPU: the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _print_results(results: dict, task: str) -> None:
    if task == "classify":
        print(f"{'model':<8}{'test acc':>9}{'params':>9}{'NFE f/b':>10}{'s/epoch':>9}"
              f"{'act. MB':>9}{'peak MB':>9}")
        for name, r in results.items():
            if name == "plots":
                continue
            spe = r["seconds_per_epoch"]
            print(f"{name:<8}{r['test_accuracy']:>9.3f}{r['parameters']:>9}"
                  f"{r['nfe_forward']:>5}/{r['nfe_backward']:<4}"
                  f"{'-' if spe is None else f'{spe:.2f}':>9}"
                  f"{r['activation_mb']:>9.2f}{r['peak_memory_mb']:>9.0f}")
        print("act. MB: tensors saved for the backward pass of one training batch. peak MB: "
              "CUDA peak allocated per model; on CPU the process's peak RSS so far "
              "(cumulative over the models trained). NFE b = 0: backprop through the stored "
              "graph evaluates no field.")
    else:
        for k, v in results.items():
            if k == "final_train":
                continue
            print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")


def _load_run(run: Path, device_name: str):
    cfg = _read_config(run)
    if cfg is None:
        raise CheckpointError(f"{run} is not a run folder (no config.json, no checkpoint)")
    device = _device(device_name)
    subs = [(m, run / m, {**cfg, "model": m}) for m in cfg["models"]] \
        if cfg["task"] == "classify" else [(None, run, cfg)]
    out = []
    for label, folder, c in subs:
        task = _build(c, device)
        state = load_checkpoint(folder / CHECKPOINT, c["task"])
        task.model.load_state_dict(state["model"])
        out.append((label, folder, task, state["step"]))
    return out


def _evaluate(args) -> int:
    loaded = _load_run(args.run, args.device)
    res = {}
    for label, _, task, step in loaded:
        r = {"step": step, **task.evaluate()}
        res[label or "run"] = r
    print(json.dumps(res, indent=2))
    return 0


def _plot(args) -> int:
    cfg = _read_config(args.run)
    if cfg is not None and cfg.get("task") == "classify":
        # the comparison figure is drawn from the run's results (accuracy, time, memory)
        from neurode.experiments import plots

        path = args.run / "results.json"
        if not path.exists():
            raise CheckpointError(f"{path} is missing: the classify run has not finished; "
                                  f"finish it (neurode train classify --name {args.run.name} "
                                  "--resume) to get its figure")
        rows = json.loads(path.read_text())
        print(plots.classify(args.run / "classify.png", rows, cfg))
        return 0
    loaded = _load_run(args.run, args.device)
    for _, folder, task, step in loaded:
        for p in task.plot(folder, step):
            print(p)
    return 0


def _bench(args) -> int:
    from neurode.experiments.bench import run, run_suite

    if args.suite is None:
        if args.only:
            raise NeurodeError("--only selects scripts of --suite; pass --suite too")
        run(args.repeats)
        return 0
    rows = run_suite(args.suite, args.only)
    return 0 if all(r["returncode"] == 0 for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    # the options given on the command line (all are long options): resume warns about those
    # it cannot honour
    args.explicit = {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "plot":
            return _plot(args)
        return _bench(args)
    except NeurodeError as e:
        print(f"neurode: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only runs folder, a full disk: the files written so far stay
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"neurode: error: {e.strerror or e}{where}; files already written are kept "
              "(checkpoints are written atomically); free space or choose another --runs-dir",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
