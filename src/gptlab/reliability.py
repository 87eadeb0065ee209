"""What makes a run survive: RNG state in every checkpoint, signals that save before exiting, SLURM requeue.

Resuming is exact because everything random is either carried in the checkpoint (the global torch, NumPy and
Python RNGs, here) or a pure function of (seed, epoch, position) that the checkpoint records (the training
sampler and the StatefulDataLoader's position and per-worker state, in the datamodule).
"""

from __future__ import annotations

import logging
import random
import signal
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException

from gptlab.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class ReliabilityConfig:
    slurm_requeue: bool = True  # on SLURM, Lightning requeues the job when it gets SIGUSR1 before its time limit
    stop_at_step: int | None = None  # end this process after this optimizer step with a checkpoint, as a signal would

    def __post_init__(self) -> None:
        if self.stop_at_step is not None and self.stop_at_step <= 0:
            raise ConfigError(f"reliability.stop_at_step must be a positive step or null, got {self.stop_at_step}")


class Stopped(SystemExit):
    """The run stopped early on purpose, with a checkpoint; the exit status says why (128 + signal, or 0)."""


class RNGState(L.Callback):
    """Saves the global RNG states in every checkpoint and puts them back just before the first resumed step."""

    def __init__(self) -> None:
        self._pending: dict | None = None

    def state_dict(self) -> dict:
        keys, pos, has_gauss, gauss = np.random.get_state()[1:]
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            # tensors and plain numbers only: checkpoints must load with weights_only=True
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "gauss": [has_gauss, gauss]},
            "python": random.getstate(),
        }

    def load_state_dict(self, state: dict) -> None:
        self._pending = state

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        # here, not at load time: setting up the resumed loop must not consume the draws the next step makes
        if (state := self._pending) is None:
            return
        self._pending = None
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        n = state["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], *n["gauss"]))
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))


class Interruptions(L.Callback):
    """SIGTERM, SIGINT (Ctrl-C) and `reliability.stop_at_step` end the run after the current step with a checkpoint.

    The signal only sets a flag; the checkpoint is written at the end of the step, where Lightning itself saves,
    so the resumed run continues exactly where this one stopped. Exit status 143 (SIGTERM), 130 (SIGINT), 0 (step).
    """

    def __init__(self, dirpath: str | Path, stop_at_step: int | None = None) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        self.stop_at_step = stop_at_step
        self.signum: int | None = None
        self.status: int | None = None  # set once stopped: 0, or 128 + the signal
        self.step = 0
        self._previous_sigint = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning's own SIGTERM handler sets trainer.received_sigterm (and tells DDP ranks); SIGINT is ours
        self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_sigint()

    def _on_sigint(self, signum: int, frame) -> None:
        self.signum = signal.SIGINT

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, i: int) -> None:
        if trainer.received_sigterm:
            self.signum = signal.SIGTERM
        if trainer.world_size > 1:  # every rank stops at the same step, or DDP hangs
            signum = torch.tensor([self.signum or 0], device=pl_module.device)
            self.signum = int(trainer.strategy.reduce(signum, reduce_op="max").item()) or None
        step_reached = self.stop_at_step is not None and trainer.global_step >= self.stop_at_step
        if (
            (self.signum or step_reached)
            and self.status is None
            and not trainer.fit_loop.epoch_loop._should_accumulate()
        ):
            # where Lightning's own ModelCheckpoint saves; the process ends at the next hook, once Lightning has
            # logged this step's metrics and stepped the lr schedule (trainer.should_stop would add a validation)
            self._save(trainer, 128 + self.signum if self.signum else 0)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, i: int) -> None:
        self.exit_if_stopped()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the stop step was the last one; before ModelCheckpoint's on_train_end, which would save an ended epoch
        self.exit_if_stopped()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_sigint()
        if isinstance(exception, SIGTERMException) and self.status is None:
            # Lightning raised after the step's bookkeeping (DDP: all ranks, at the next step's start); a checkpoint
            # made inside the step, where Lightning saves, counts the logger's steps one lower
            loop = trainer.fit_loop.epoch_loop
            loop._batches_that_stepped -= 1
            try:
                self._save(trainer, 128 + signal.SIGTERM)
            finally:
                loop._batches_that_stepped += 1

    def _save(self, trainer: L.Trainer, status: int) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # the full state, to resume from
        self.status, self.step = status, trainer.global_step

    def exit_if_stopped(self) -> None:
        """A stopped run ends here, with its status, and without the final sample."""
        if self.status is None:
            return
        why = f"signal {signal.Signals(self.status - 128).name}" if self.status else "reliability.stop_at_step"
        log.warning(
            "stopped by %s after step %d; checkpoint %s; continue with: python src/train.py resume=%s",
            why if self.status else f"{why}={self.stop_at_step}",
            self.step,
            self.path,
            self.path.parent.parent,
        )
        raise Stopped(self.status)


def plugins(config: ReliabilityConfig) -> list:
    """Trainer plugins; on SLURM, Lightning requeues the job on SIGUSR1 (send it with `#SBATCH --signal=SIGUSR1@90`)."""
    from gptlab.checkpoint import AtomicCheckpointIO

    found = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        found.append(SLURMEnvironment(auto_requeue=config.slurm_requeue))
    return found
