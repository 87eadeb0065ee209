"""Stopping with a checkpoint: SIGTERM, SIGINT and `reliability.stop_at_step` end a run after the current step,
saved where Lightning saves; in a SLURM batch job, SIGUSR1 does too, and then requeues the job. What a killed save
left in the run's own folder goes when the run continues there."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException

from gptlab.checkpoints.atomic_io import AtomicCheckpointIO, remove_stray_temps
from gptlab.compat import accumulating, one_optimizer_step_back
from gptlab.config.argv import this_command
from gptlab.config.launch import slurm_batch_job
from gptlab.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class ReliabilityConfig:
    slurm_requeue: bool = True  # in a SLURM batch job, SIGUSR1 saves at the step's end and requeues the job
    stop_at_step: int | None = None  # end this process after this optimizer step with a checkpoint, as a signal would

    def __post_init__(self) -> None:
        if self.stop_at_step is not None and self.stop_at_step <= 0:
            raise ConfigError(f"reliability.stop_at_step must be a positive step or null, got {self.stop_at_step}")


class Stopped(SystemExit):
    """The run stopped early on purpose, with a checkpoint; the exit status says why (128 + signal, or 0)."""


class Interruptions(L.Callback):
    """SIGTERM, SIGINT (Ctrl-C) and `reliability.stop_at_step` end the run after the current step with a checkpoint;
    with `requeue` (a SLURM job id), SIGUSR1 does too, and then `scontrol requeue <job id>` puts the job back in the
    queue (submit with `#SBATCH --signal=SIGUSR1@90`).

    The signal only sets a flag; the checkpoint is written at the end of the step, where Lightning itself saves,
    so the resumed run continues exactly where this one stopped. Exit status 143 (SIGTERM), 130 (SIGINT), 138
    (SIGUSR1), 0 (step). Lightning's own requeue (SLURMEnvironment's auto_requeue) saves inside its signal handler,
    wherever in a step the signal finds the process, and a run resumed from that save is not the run that would
    have been (nor is every DDP rank at the same point then).
    """

    def __init__(self, dirpath: str | Path, stop_at_step: int | None = None, requeue: str | None = None) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        self.stop_at_step = stop_at_step
        self.requeue = requeue
        self.signum: int | None = None
        self.status: int | None = None  # set once stopped: 0, or 128 + the signal
        self.step = 0
        self._previous: dict[int, object] = {}  # the handlers ours replaced while fitting

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # rank 0's folder, as Lightning's ModelCheckpoint does: a later process of a torchrun, srun or hand-started
        # launch has its working folder as its own (gptlab.config.launch), and would name that in its stop line
        self.path = Path(trainer.strategy.broadcast(str(self.path)))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._remove_stray_temps()
        # Lightning's own SIGTERM handler sets trainer.received_sigterm (and tells DDP ranks); SIGINT is ours, and
        # SIGUSR1 in a SLURM job that requeues (SLURM's signal before the time limit)
        for signum in (signal.SIGINT, signal.SIGUSR1) if self.requeue else (signal.SIGINT,):
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()

    def _remove_stray_temps(self) -> None:
        # this run's own folder (a new run's is empty; a resumed one's is where resume= continues it): a save killed
        # here left them, and no other process writes here; another run's folder, named by ckpt_path, is never touched
        for stray in remove_stray_temps(self.path.parent):
            log.info("removed %s, left by a save that was killed", stray)

    def _on_signal(self, signum: int, frame) -> None:
        self.signum = signum

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, i: int) -> None:
        if trainer.received_sigterm:
            self.signum = signal.SIGTERM
        if trainer.world_size > 1:  # every rank stops at the same step, or DDP hangs
            signum = torch.tensor([self.signum or 0], device=pl_module.device)
            self.signum = int(trainer.strategy.reduce(signum, reduce_op="max").item()) or None
        step_reached = self.stop_at_step is not None and trainer.global_step >= self.stop_at_step
        if (self.signum or step_reached) and self.status is None and not accumulating(trainer):
            # where Lightning's own ModelCheckpoint saves; the process ends at the next hook, once Lightning has
            # logged this step's metrics and stepped the lr schedule (trainer.should_stop would add a validation)
            self._save(trainer, 128 + self.signum if self.signum else 0)
            if self.signum == signal.SIGUSR1 and trainer.is_global_zero:
                self._requeue()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, i: int) -> None:
        self.exit_if_stopped()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the stop step was the last one; before ModelCheckpoint's on_train_end, which would save an ended epoch
        self.exit_if_stopped()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()
        if isinstance(exception, SIGTERMException) and self.status is None:
            # Lightning raised after the step's bookkeeping (DDP: all ranks, at the next step's start); a checkpoint
            # made inside the step, where Lightning saves, counts the logger's steps one lower
            with one_optimizer_step_back(trainer):
                self._save(trainer, 128 + signal.SIGTERM)

    def _save(self, trainer: L.Trainer, status: int) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # the full state, to resume from
        self.status, self.step = status, trainer.global_step

    def _requeue(self) -> None:
        """The job back in SLURM's queue, now that its checkpoint is whole: SLURM ends this job's processes and
        later starts its script again, which continues this run (gptlab.config.launch)."""
        try:
            result = subprocess.run(["scontrol", "requeue", self.requeue], capture_output=True, text=True)
        except FileNotFoundError:
            log.warning("could not requeue SLURM job %s: no scontrol on PATH", self.requeue)
            return
        if result.returncode != 0:
            why = result.stderr.strip() or f"exit status {result.returncode}"
            log.warning("could not requeue SLURM job %s: scontrol: %s", self.requeue, why)
        else:
            log.warning("requeued SLURM job %s: it continues this run when SLURM starts it again", self.requeue)

    def exit_if_stopped(self) -> None:
        """A stopped run ends here, with its status, and without the final sample."""
        if self.status is None:
            return
        why = f"signal {signal.Signals(self.status - 128).name}" if self.status else "reliability.stop_at_step"
        log.warning(
            "stopped by %s after step %d; checkpoint %s; continue with: %s resume=%s",
            why if self.status else f"{why}={self.stop_at_step}",
            self.step,
            self.path,
            this_command(),
            self.path.parent.parent,
        )
        raise Stopped(self.status)


def plugins() -> list:
    """Trainer plugins; on SLURM, Lightning's environment without its requeue: Interruptions requeues, at a step's
    end (`requeue_job`)."""
    found = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        found.append(SLURMEnvironment(auto_requeue=False))
    return found


def requeue_job(config: ReliabilityConfig, env: Mapping[str, str] = os.environ) -> str | None:
    """The SLURM job that SIGUSR1 requeues, as `scontrol requeue` names it; None outside a SLURM batch job, or
    with `reliability.slurm_requeue=false` (SIGUSR1 then ends the process, as it would any program)."""
    return slurm_batch_job(env) if config.slurm_requeue else None
