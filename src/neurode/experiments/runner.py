"""Runs: the run folder, crash-safe checkpoints, the training loop, progress, distribution.

``runs/<name>/`` holds ``config.json`` (every setting, so the run can be repeated exactly),
``metrics.jsonl`` (one JSON object per logged step), ``checkpoint.pt`` and the plots.

Checkpoints are written atomically: to a temporary file in the same folder, flushed and
``fsync``-ed, then ``os.replace``-d over the old one (and the folder entry ``fsync``-ed), so a
process killed at any instant leaves either the old or the new checkpoint, never a torn one.
SIGINT (Ctrl-C) or SIGTERM stops at the next step boundary (all ranks together), saves and exits
with status 130.

Randomness: the model is initialised from ``--seed``; step ``k`` draws its batch from a generator
seeded with ``(seed, k)`` and reseeds the global generator from ``(seed, k, rank)`` for the
loss's own draws, so a resumed run takes exactly the draws it would have taken.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is initialised (gloo on
CPU, NCCL on GPUs), the model is wrapped in ``DistributedDataParallel``, each step's global batch
is split across ranks, metrics are averaged across ranks, and only rank 0 writes files.
"""

from __future__ import annotations

import gc
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from neurode.errors import InvalidInputError, NeurodeError

__all__ = ["CheckpointError", "Dist", "Trainer", "atomic_write", "load_checkpoint",
           "save_checkpoint", "saved_for_backward_bytes", "write_text_atomic"]

CHECKPOINT = "checkpoint.pt"
FORMAT = 1


class CheckpointError(NeurodeError, RuntimeError):
    """A checkpoint that cannot be used (corrupt, from another task or configuration)."""


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file so that ``path`` holds either its old or its new content, never a torn one.

    ``write(fh)`` fills a temporary file in the same folder; it is flushed, fsync'ed and renamed
    over ``path`` (atomic on POSIX), then the folder is fsync'ed so the rename survives a crash.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            slow = os.environ.get("NEURODE_TEST_SLOW_SAVE")  # tests: a window to kill the process
            if slow:
                time.sleep(float(slow))
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - platforms without directory fsync
        pass


def write_text_atomic(path: Path, text: str) -> None:
    """`atomic_write` for a text file (UTF-8)."""
    atomic_write(path, lambda fh: fh.write(text.encode()))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, containers) to ``path`` atomically."""
    atomic_write(path, lambda fh: torch.save({"format": FORMAT, **state}, fh))


def load_checkpoint(path: Path, task: str | None = None) -> dict[str, Any]:
    """Load a checkpoint, with a clear error if it is missing, corrupt or from another task."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # no code runs
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}: "
                              f"{e}); the run cannot resume from it") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a neurode checkpoint (format {FORMAT})")
    if task is not None and state.get("task") != task:
        raise CheckpointError(f"{path} belongs to task {state.get('task')!r}, not {task!r}")
    return state


def saved_for_backward_bytes(fn: Callable[[], Any], exclude: Any = ()) -> tuple[Any, int]:
    """Run ``fn()``; return its result and the bytes autograd saved for the backward pass.

    Counts each storage once (views share one) and skips those of ``exclude`` (the parameters,
    which exist anyway). This is the activation memory a method needs per batch, measured the
    same way on every device: an ODE block under the adjoint saves its input and output, under
    backprop every stage of every step.
    """
    skip = {p.untyped_storage().data_ptr() for p in exclude}
    sizes: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            st = t.untyped_storage()
            key, nbytes = st.data_ptr(), st.nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without storage (sparse, ...)
            key, nbytes = id(t), t.numel() * t.element_size()
        if key not in skip:
            sizes[key] = max(sizes.get(key, 0), nbytes)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(sizes.values())


@dataclass
class Dist:
    """Process-group facts; a single process when not launched by torchrun."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def setup(cls, device: torch.device) -> Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(0, 1, device)
        import torch.distributed as dist

        rank = int(os.environ["RANK"])
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(rank, world, device)

    def mean(self, metrics: dict[str, float]) -> dict[str, float]:
        """Average scalar metrics across ranks."""
        if self.world == 1 or not metrics:
            return metrics
        import torch.distributed as dist

        keys = sorted(metrics)
        # on the process's device: NCCL reduces CUDA tensors only
        vals = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64,
                            device=self.device)
        dist.all_reduce(vals)
        return {k: float(v) / self.world for k, v in zip(keys, vals.tolist(), strict=True)}

    def any(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag OR-ed across ranks, so that every rank takes the same branch."""
        if self.world == 1:
            return tuple(bool(f) for f in flags)
        import torch.distributed as dist

        vals = torch.tensor([int(bool(f)) for f in flags], device=self.device)
        dist.all_reduce(vals, op=dist.ReduceOp.MAX)
        return tuple(bool(v) for v in vals.tolist())

    def from_main(self, value: int) -> int:
        """Rank 0's ``value`` on every rank."""
        if self.world == 1:
            return int(value)
        import torch.distributed as dist

        buf = torch.tensor([int(value)], dtype=torch.int64, device=self.device)
        dist.broadcast(buf, 0)
        return int(buf.item())

    def __enter__(self) -> Dist:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(wait=exc_type is None)

    def close(self, *, wait: bool = True) -> None:
        """Tear the process group down; ``wait``: first wait until every rank gets here.

        The group must be gone before the interpreter exits: a Gloo group still alive then
        (a ``DistributedDataParallel`` wrapper in a reference cycle holds one) is destroyed
        during finalization, where its threads can abort the process (SIGABRT, "terminate
        called without an active exception") after a run that succeeded. Release the
        wrappers (`Trainer.close`) before calling this. ``wait=False`` on an error
        path, where another rank may never arrive (a ``with`` block passes it so).
        """
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                if wait:  # rank 0 may still be evaluating; nobody leaves before the others
                    dist.barrier()
                gc.collect()  # wrappers kept only by reference cycles drop the group here
                dist.destroy_process_group()


def _logged_step(line: str) -> int:
    """The step a metrics line records; a line torn by a kill counts as after any checkpoint."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62


def _progress(total: int, initial: int, enabled: bool):
    """A tqdm bar when tqdm is installed and stderr is a terminal, else None."""
    if not enabled or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, dynamic_ncols=True, leave=True)


class Trainer:
    """The training loop shared by every task.

    The task provides ``model`` (an ``nn.Module``), ``make_optimizer(params)``,
    ``batch(step, generator, dist)`` and ``loss(model, batch) -> (loss, metrics)``; the trainer
    does seeding, resume, checkpoints, metrics, progress, SIGINT and DDP.
    """

    def __init__(self, task, run_dir: Path, config: dict[str, Any], dist: Dist):
        self.task, self.run_dir, self.config, self.dist = task, Path(run_dir), config, dist
        self.model: nn.Module = task.model
        if dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp: nn.Module = DistributedDataParallel(self.model)
        else:
            self.ddp = self.model
        self.opt = task.make_optimizer(self.model.parameters())
        self.step = 0
        self._stop = False

    def close(self) -> None:
        """Drop the ``DistributedDataParallel`` wrapper (and its hold on the process group)."""
        self.ddp = self.model

    # -- state -----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"task": self.task.name, "step": self.step, "config": self.config,
                "model": self.model.state_dict(), "optimizer": self.opt.state_dict()}

    def save(self) -> None:
        if self.dist.main:
            save_checkpoint(self.run_dir / CHECKPOINT, self.state())

    def resume(self) -> None:
        state = load_checkpoint(self.run_dir / CHECKPOINT, self.task.name)
        mismatch = {k for k in self.task.structural_keys
                    if state["config"].get(k) != self.config.get(k)}
        if mismatch:
            raise CheckpointError(
                f"checkpoint in {self.run_dir} was made with different "
                f"{', '.join(sorted(mismatch))}: " + ", ".join(
                    f"{k}={state['config'].get(k)!r} (now {self.config.get(k)!r})"
                    for k in sorted(mismatch)))
        try:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"checkpoint in {self.run_dir} does not fit this model: "
                                  f"{e}") from e
        self.step = int(state["step"])
        if self.dist.main:  # temporary files of saves that were killed midway
            for stale in self.run_dir.glob(".*.tmp-*"):
                stale.unlink(missing_ok=True)
        if self.dist.main:  # drop metrics logged after the checkpoint (they will be redone)
            mpath = self.run_dir / "metrics.jsonl"
            if mpath.exists():
                keep = [ln for ln in mpath.read_text().splitlines()
                        if _logged_step(ln) < self.step]
                write_text_atomic(mpath, "".join(ln + "\n" for ln in keep))

    # -- loop ------------------------------------------------------------------------------
    def _on_signal(self, signum, frame):
        self._stop = True

    def train(self, steps: int, *, checkpoint_every: int = 50,
              progress: bool = True) -> dict[str, float]:
        """Train until ``steps`` steps are done; returns the last step's metrics."""
        seed = int(self.config.get("seed", 0))
        metrics_path = self.run_dir / "metrics.jsonl"
        bar = _progress(steps, self.step, progress and self.dist.main)
        # SIGINT (Ctrl-C) and SIGTERM (torchrun, schedulers) stop at a step boundary
        old = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        last: dict[str, float] = {}
        t_last = time.perf_counter()
        try:
            while self.step < steps:
                if self.config.get("lr_schedule", "constant") == "cosine":
                    # a function of the step alone, so a resumed run gets the same rates
                    frac = 0.5 * (1 + math.cos(math.pi * min(self.step / max(steps, 1), 1.0)))
                    for group in self.opt.param_groups:
                        group["lr"] = self.config["lr"] * (0.05 + 0.95 * frac)
                # every random draw of step k, the batch's and the loss's own (ELBO samples,
                # Hutchinson probes), follows from (seed, k): a resumed run draws the same
                g = torch.Generator().manual_seed(seed * 1_000_003 + self.step)
                torch.manual_seed((seed * 1_000_003 + self.step) * 1024 + self.dist.rank)
                batch = self.task.batch(self.step, g, self.dist)
                self.model.train()
                loss, metrics = self.task.loss(self.ddp, batch)
                loss_value = float(loss.detach())
                # decided together, so no rank waits in a collective the others left
                nonfinite, stop = self.dist.any(not math.isfinite(loss_value), self._stop)
                if nonfinite:
                    raise InvalidInputError(f"the loss became non-finite at step {self.step}; "
                                            f"the last good checkpoint is kept")
                if stop:
                    self.save()
                    print(f"interrupted: checkpoint saved at step {self.step} in "
                          f"{self.run_dir}", file=sys.stderr)
                    raise KeyboardInterrupt
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
                self.step += 1
                now = time.perf_counter()
                metrics = self.dist.mean({"loss": loss_value, **metrics})
                metrics["step_s"] = now - t_last
                t_last = now
                last = metrics
                if self.dist.main:
                    with open(metrics_path, "a") as fh:
                        fh.write(json.dumps({"step": self.step - 1, **metrics}) + "\n")
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in metrics.items()
                                     if k in ("loss", "nfe_f", "nfe_b")}
                                    | {"it/s": f"{1 / max(metrics['step_s'], 1e-9):.1f}"})
                if self.step % checkpoint_every == 0 or self.step == steps:
                    self.save()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            if bar is not None:
                bar.close()
        return last
